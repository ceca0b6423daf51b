"""Server settings: one frozen dataclass, filled from ``WARPSVC_*`` environment variables and
then from command-line flags (flags win). Importing this module imports no grpc, so the CLI can
fork worker processes before any grpc object exists.

=========================  ==============================  ===========  ================================
setting                    environment variable            default      meaning
=========================  ==============================  ===========  ================================
host                       WARPSVC_HOST                    127.0.0.1    address to bind
port                       WARPSVC_PORT                    50051        port (0: pick a free one)
workers                    WARPSVC_WORKERS                 usable CPUs  processes sharing the port
threads                    WARPSVC_THREADS                 4            work calls computing at once
                                                                        per worker (compute slots)
max_concurrent_rpcs        WARPSVC_MAX_CONCURRENT_RPCS     16           work calls admitted per worker
                                                                        (computing or waiting for a
                                                                        slot); excess answered
                                                                        RESOURCE_EXHAUSTED
max_message_bytes          WARPSVC_MAX_MESSAGE_BYTES       67108864     request and response limit
max_input_pixels           WARPSVC_MAX_INPUT_PIXELS        33554432     per decoded input image (H*W)
max_output_pixels          WARPSVC_MAX_OUTPUT_PIXELS       33554432     per output grid (H*W)
grace_seconds              WARPSVC_GRACE_SECONDS           30           drain time on SIGTERM/SIGINT
tls_cert / tls_key         WARPSVC_TLS_CERT / _TLS_KEY     (off)        PEM files; both or neither
token                      WARPSVC_TOKEN, or               (off)        required bearer token
                           WARPSVC_TOKEN_FILE / --token-file            (a file holding it)
cv_threads                 WARPSVC_CV_THREADS              usable CPUs  cv2.setNumThreads per worker
kernel_threads             WARPSVC_KERNEL_THREADS          cv_threads   threads of one compiled-kernel
                                                                        call (warpsvc.core.threads;
                                                                        the library reads the same
                                                                        variable)
blas_threads               WARPSVC_BLAS_THREADS            1            BLAS threads per worker
                                                                        (threadpoolctl)
reflection                 WARPSVC_REFLECTION              true         server reflection service
tune_malloc                WARPSVC_TUNE_MALLOC             true         keep big buffers in the heap
                                                                        (runner.tune_allocator)
trim_idle_seconds          WARPSVC_TRIM_IDLE_SECONDS       5            after this long without calls,
                                                                        give >= 64 MiB of free heap
                                                                        back (heap_trim; 0: never)
http2_bdp_probe            WARPSVC_HTTP2_BDP_PROBE         true         grpc core's bandwidth probe,
                                                                        which grows each stream's
                                                                        receive window (off: refused
                                                                        calls' bodies are not taken
                                                                        in; uploads may be slower)
max_transform_steps        WARPSVC_MAX_TRANSFORM_STEPS     16           steps of a transform chain
                                                                        (each costs a pass per pixel)
max_antialias_nodes_per_   WARPSVC_MAX_ANTIALIAS_NODES_    256          antialias footprint nodes per
pixel                      PER_PIXEL                                    pixel (warpsvc.core.budget)
max_stream_frames          WARPSVC_MAX_STREAM_FRAMES       100000       frames per AlignStream call;
                                                                        frame N+1 is answered
                                                                        RESOURCE_EXHAUSTED on ``frame``
max_connection_age_        WARPSVC_MAX_CONNECTION_AGE_     300          a connection older than this is
seconds                    SECONDS                                      asked to reconnect (GOAWAY; its
                                                                        calls finish): clients then
                                                                        re-resolve DNS and find new
                                                                        replicas (0: never)
warm_up                    WARPSVC_WARM_UP                 true         load the compiled kernels after
                                                                        SERVING (runner._warm_up)
metrics_port               WARPSVC_METRICS_PORT            9464         Prometheus ``GET /metrics`` port
                                                                        (0 disables; see metrics.py)
log_level                  WARPSVC_LOG_LEVEL               info         python logging level
=========================  ==============================  ===========  ================================

"usable CPUs" is :func:`warpsvc.core.threads.available_cpus`: the affinity mask capped by the cgroup CPU quota (a
container's ``--cpus``), so the defaults follow what the process may really use: one worker
process per usable CPU (GIL-bound work such as alignment scales with processes), and OpenCV in
each worker allowed every usable CPU (one Warp uses the cores one call can use). The policy and its
measurements are in docs/service.md, "Defaults sized to the machine".

A ``--no-X`` flag's variable is ``WARPSVC_X=false``; ``WARPSVC_NO_X`` is refused with that hint
(it used to be ignored silently, leaving X on), as is setting both ``WARPSVC_TOKEN`` and
``WARPSVC_TOKEN_FILE``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
from dataclasses import dataclass, field

from warpsvc.core.threads import available_cpus as usable_cpus

MIB = 1 << 20
ENV_PREFIX = "WARPSVC_"


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 50051
    workers: int = field(default_factory=lambda: usable_cpus())
    threads: int = 4
    max_concurrent_rpcs: int = 16
    max_message_bytes: int = 64 * MIB
    max_input_pixels: int = 1 << 25
    max_output_pixels: int = 1 << 25
    grace_seconds: float = 30.0
    tls_cert: str | None = None
    tls_key: str | None = None
    token: str | None = field(default=None, repr=False)  # never printed
    cv_threads: int = field(default_factory=lambda: usable_cpus())
    kernel_threads: int | None = None  # None: cv_threads (see kernel_thread_count)
    blas_threads: int = 1
    reflection: bool = True
    tune_malloc: bool = True
    trim_idle_seconds: float = 5.0
    http2_bdp_probe: bool = True
    warm_up: bool = True
    metrics_port: int = 9464
    max_transform_steps: int = 16
    max_antialias_nodes_per_pixel: float = 256.0
    max_stream_frames: int = 100_000
    max_connection_age_seconds: float = 300.0
    log_level: str = "info"

    def __post_init__(self):
        positive = ("workers", "threads", "blas_threads", "max_transform_steps", "max_antialias_nodes_per_pixel",
                    "max_concurrent_rpcs", "max_message_bytes", "max_input_pixels", "max_output_pixels",
                    "max_stream_frames")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be in 0..65535, got {getattr(self, name)}")
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError(f"metrics_port and port must differ, both are {self.port}")
        if self.kernel_threads is not None and self.kernel_threads < 1:
            raise ValueError(f"kernel_threads must be >= 1, got {self.kernel_threads}")
        if self.grace_seconds < 0:
            raise ValueError("grace_seconds must be >= 0")
        if not 0 <= self.max_connection_age_seconds <= 1e6:
            raise ValueError(f"max_connection_age_seconds must be in 0..1e6, got {self.max_connection_age_seconds}")
        if not self.trim_idle_seconds >= 0:
            raise ValueError(f"trim_idle_seconds must be >= 0, got {self.trim_idle_seconds}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.token is not None and not self.token:
            raise ValueError("token must not be empty")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(n.lower() for n in LOG_LEVELS)}, "
                             f"got {self.log_level!r}")

    @property
    def kernel_thread_count(self) -> int:
        """Threads of one compiled-kernel call in a worker: ``kernel_threads``, else ``cv_threads``."""
        return self.cv_threads if self.kernel_threads is None else self.kernel_threads

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_env(cls, environ=None) -> Settings:
        return cls(**_env_values(os.environ if environ is None else environ))


_KINDS = {"int": int, "float": float, "bool": bool, "str": str}


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _env_values(environ) -> dict:
    """The settings the environment sets, parsed (``ValueError`` naming the variable)."""
    values = {}
    bools = {f.name for f in dataclasses.fields(Settings) if str(f.type).split(" |")[0] == "bool"}
    for name in environ:
        if name.startswith(ENV_PREFIX + "NO_") and name[len(ENV_PREFIX) + 3:].lower() in bools:
            flag = name[len(ENV_PREFIX) + 3:]
            raise ValueError(f"{name} is not a setting: the variable of --no-{flag.lower().replace('_', '-')} "
                             f"is {ENV_PREFIX}{flag}=false")
    token_file = environ.get(ENV_PREFIX + "TOKEN_FILE")
    if token_file:
        if environ.get(ENV_PREFIX + "TOKEN"):
            raise ValueError(f"set {ENV_PREFIX}TOKEN or {ENV_PREFIX}TOKEN_FILE, not both")
        try:
            values["token"] = pathlib.Path(token_file).read_text().strip()
        except OSError as err:
            raise ValueError(f"{ENV_PREFIX}TOKEN_FILE: cannot read {token_file!r} ({err.strerror or err})") from None
    for f in dataclasses.fields(Settings):
        raw = environ.get(ENV_PREFIX + f.name.upper())
        if raw is None or raw == "":
            continue
        kind = _KINDS.get(str(f.type).split(" |")[0], str)
        try:
            values[f.name] = _parse_bool(raw) if kind is bool else kind(raw)
        except ValueError as err:
            raise ValueError(f"{ENV_PREFIX}{f.name.upper()}: {err}") from None
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for every setting; unset flags keep the environment's (or the default) value."""
    d = argparse.SUPPRESS
    parser.add_argument("--host", default=d, help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=d, help="port; 0 picks a free one (default 50051)")
    parser.add_argument("--workers", type=int, default=d,
                        help=f"server processes sharing the port (default: usable CPUs, here {usable_cpus()})")
    parser.add_argument("--threads", type=int, default=d, help="work calls computing at once per worker (default 4)")
    parser.add_argument("--max-concurrent-rpcs", type=int, default=d,
                        help="work calls admitted per worker (computing or waiting) before RESOURCE_EXHAUSTED "
                             "(default 16)")
    parser.add_argument("--max-message-bytes", type=int, default=d, help="message limit, both ways (64 MiB)")
    parser.add_argument("--max-input-pixels", type=int, default=d, help="decoded input image limit, H*W")
    parser.add_argument("--max-output-pixels", type=int, default=d, help="output grid limit, H*W")
    parser.add_argument("--grace-seconds", type=float, default=d, help="drain time on SIGTERM (default 30)")
    parser.add_argument("--tls-cert", default=d, help="PEM certificate chain (enables TLS with --tls-key)")
    parser.add_argument("--tls-key", default=d, help="PEM private key")
    parser.add_argument("--token-file", type=pathlib.Path, default=d,
                        help="file holding the bearer token clients must send (or WARPSVC_TOKEN)")
    parser.add_argument("--cv-threads", type=int, default=d,
                        help=f"OpenCV threads per worker (default: usable CPUs, here {usable_cpus()})")
    parser.add_argument("--kernel-threads", type=int, default=d,
                        help="threads of one compiled-kernel call (conserve/antialias) per worker "
                             "(default: --cv-threads)")
    parser.add_argument("--blas-threads", type=int, default=d,
                        help="BLAS (OpenBLAS/MKL) threads per worker (default 1)")
    parser.add_argument("--no-reflection", dest="reflection", action="store_false", default=d,
                        help="disable server reflection")
    parser.add_argument("--no-tune-malloc", dest="tune_malloc", action="store_false", default=d,
                        help="leave glibc's mmap/trim thresholds alone (see docs/service.md)")
    parser.add_argument("--trim-idle-seconds", type=float, default=d,
                        help="after this many seconds without calls, return >= 64 MiB of free heap to the "
                             "system (glibc malloc_trim); 0 never (default 5)")
    parser.add_argument("--no-http2-bdp-probe", dest="http2_bdp_probe", action="store_false", default=d,
                        help="turn off grpc core's BDP probe: receive windows stay at 64 KiB, so bodies of refused "
                             "(unauthenticated) calls are not taken in; medium uploads may be slower (SECURITY.md)")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false", default=d,
                        help="do not load the compiled kernels in the background after start")
    parser.add_argument("--max-transform-steps", type=int, default=d,
                        help="steps of a transform chain, adjacent matrices counting as one (default 16)")
    parser.add_argument("--max-antialias-nodes-per-pixel", type=float, default=d,
                        help="antialias footprint nodes per pixel before RESOURCE_EXHAUSTED (default 256)")
    parser.add_argument("--max-stream-frames", type=int, default=d,
                        help="frames per AlignStream call before RESOURCE_EXHAUSTED (default 100000)")
    parser.add_argument("--max-connection-age-seconds", type=float, default=d,
                        help="ask clients to reconnect after this long (GOAWAY; calls in flight finish), so "
                             "they re-resolve DNS and reach replicas added since; 0 never (default 300)")
    parser.add_argument("--metrics-port", type=int, default=d,
                        help="port of the Prometheus GET /metrics endpoint; 0 disables (default 9464)")
    parser.add_argument("--log-level", default=d, help="logging level (default info)")


def from_args(args: argparse.Namespace, environ=None) -> Settings:
    values = _env_values(os.environ if environ is None else environ)
    names = {f.name for f in dataclasses.fields(Settings)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    token_file = getattr(args, "token_file", None)
    if token_file is not None:
        values["token"] = token_file.read_text().strip()
    return Settings(**values)
