"""Engines: where an image's pixels are computed. Both have the same three methods
(``warp``, ``align``, ``jacobian``) so :func:`.jobs.process` does not care; images come in as
:class:`~.jobs.EncodedImage` (the file's bytes, its header already probed).

* :class:`LocalEngine`: the in-process library (``--target local``); the pipeline runs it in a
  pool of processes (one per core: the GIL makes one process about one core). It alone loads
  the compute stack (OpenCV, numba): decoding and encoding with OpenCV as the server does, so
  local and remote outputs are the same bytes.
* :class:`GrpcEngine`: one :class:`~warpsvc_client.WarpClient` per ``--target`` (``host:port`` or
  ``dns:///name:port``, whose channel balances calls round robin over every address). Images
  travel as their encoded file bytes (the ``align`` reference too, when the spec holds its
  file) and come back encoded in the output's format, so the server's workers do the decoding
  and encoding and the client decodes no pixel (it runs without OpenCV or numba). At most
  ``inflight`` RPCs are outstanding (a semaphore); UNAVAILABLE, DEADLINE_EXCEEDED (of one
  attempt), load shedding (RESOURCE_EXHAUSTED without a field) and ABORTED are retried with
  exponential backoff and jitter, preferring another target after a failure, within the
  image's deadline. A target answering UNAVAILABLE is avoided for ``cooldown`` seconds,
  doubling while it keeps failing (used again only when no other target is up).

  Retries live in this one layer: the channels are made with gRPC's own retry policy off
  (``WarpClient(retries=1)``), so ``--retries 5`` means at most 6 tries on the wire, and the
  manifest's ``attempts`` (1 + the retried failures) is the number of tries made.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass

import numpy as np

from warpsvc.core.errors import InvalidArgumentError, InvalidImageError
from warpsvc_api.alpha_warp import align_inputs, warp_keeping_alpha
from warpsvc_api.tiff_alpha import declare_alpha

from .jobs import CallContext, EncodedImage, decode_image
from .probe import DEFAULT_MAX_PIXELS


def _alpha(reference) -> bool:
    """Whether a reference given as a file says its last channel is alpha (pixels: never)."""
    return isinstance(reference, EncodedImage) and bool(reference.cost.alpha)


LOCAL = "local"


class ImageDeadlineError(TimeoutError):
    """The per-image deadline (``--deadline``) ran out, retries included."""


# Output formats able to hold each result dtype (the server's response forms agree).
FORMAT_DTYPES = {"png": ("uint8", "uint16"), "jpeg": ("uint8",), "tiff": ("uint8", "uint16", "float32", "float64")}


def encode(arr: np.ndarray, fmt: str, jpeg_quality: int = 95) -> bytes:
    """``arr`` as the bytes of a ``png``/``jpeg``/``tiff`` file, by OpenCV as the server does."""
    import cv2

    if arr.dtype.name not in FORMAT_DTYPES[fmt]:
        raise InvalidArgumentError(f"a {fmt.upper()} file cannot hold {arr.dtype} pixels; use a .tif output",
                                   field="output")
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if fmt == "jpeg" else []
    ok, buf = cv2.imencode({"png": ".png", "jpeg": ".jpg", "tiff": ".tiff"}[fmt], arr, params)
    if not ok:
        raise InvalidImageError(f"OpenCV could not encode the result as {fmt}", field="output")
    return declare_alpha(buf.tobytes()) if fmt == "tiff" else buf.tobytes()  # the server's bytes too


def one_thread_per_process() -> None:
    """One OpenCV thread and one BLAS thread in this process (the pool's and Dask's workers, as
    the server's): the parallelism is the processes, and spinning BLAS threads of N processes
    would fight over the same cores."""
    import cv2

    cv2.setNumThreads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl comes with warpsvc[server]
        pass


class LocalEngine:
    """The library, in this process (imported on first use: only this engine needs OpenCV)."""

    name = LOCAL

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.max_pixels = max_pixels
        self._last = (None, None)  # (EncodedImage, decoded): align decodes once for its two calls
        self._reference = (None, None)  # (EncodedImage, decoded): once per process

    def _decode(self, image: EncodedImage) -> np.ndarray:
        if self._last[0] is not image:
            self._last = (image, decode_image(image))
        return self._last[1]

    def _pixels(self, reference) -> np.ndarray:
        if not isinstance(reference, EncodedImage):
            return reference
        if self._reference[0] is not reference:
            self._reference = (reference, decode_image(reference))
        return self._reference[1]

    def warp(self, image: EncodedImage, transform, opts, fmt: str, ctx: CallContext) -> bytes:
        out = warp_keeping_alpha(self._decode(image), transform, opts.output_shape, alpha=image.cost.alpha,
                                 **opts.kwargs())
        self._last = (None, None)
        return encode(out, fmt, opts.jpeg_quality)

    def align(self, reference, image: EncodedImage, opts, ctx: CallContext):
        import warpsvc

        kw = opts.kwargs()
        if ctx.deadline is not None:  # the image's deadline stops the iterations (reason "cancelled")
            kw["should_stop"] = lambda: ctx.remaining() <= 0
        # a file's alpha is where its colour is defined: a mask, not a channel to align on
        template, kw["template_mask"], pixels, kw["image_mask"] = align_inputs(
            self._pixels(reference), _alpha(reference), kw.get("template_mask"),
            self._decode(image), image.cost.alpha, kw.get("image_mask"))
        return warpsvc.align(template, pixels, **kw)

    def jacobian(self, transform, shape, ctx: CallContext) -> np.ndarray:
        import warpsvc

        return warpsvc.jacobian_determinant(transform, shape, dtype=np.float32)


@dataclass
class RetryPolicy:
    retries: int = 5              # extra attempts after the first
    backoff: float = 0.2          # seconds before the first retry, doubled each time
    max_backoff: float = 5.0
    rpc_timeout: float = 120.0    # deadline of one attempt (the image's deadline caps it)
    cooldown: float = 2.0         # seconds a target that answered UNAVAILABLE is avoided


@dataclass
class _Target:
    """One connection (a channel with its own subchannel pool) to one ``--target``."""

    name: str
    client: object
    inflight: int = 0
    down_until: float = 0.0
    latency: float = 0.0  # moving average of successful call times, seconds (0: untried)

    def score(self) -> float:
        # Expected wait if one more call joins: connections that land on a busy worker answer
        # slower and get fewer calls (the client cannot see which worker a connection reached).
        return self.latency * (self.inflight + 1)


def _retryable_codes():
    import grpc

    return {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.ABORTED}


def address_count(target: str) -> int:
    """How many servers a target names: the addresses ``dns:///name:port`` resolves to, else 1."""
    if not target.startswith("dns:"):
        return 1
    hostport = target.split("/")[-1]
    host, _, port = hostport.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port or 0), type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        return 1
    return max(1, len({info[4][:2] for info in infos}))


class GrpcEngine:
    """Calls spread over ``targets`` (least outstanding first), bounded, retried (see module doc)."""

    def __init__(self, targets: list[str], *, inflight: int, connections: int = 1,
                 policy: RetryPolicy | None = None, client_kwargs: dict | None = None):
        import grpc

        from .. import WarpClient

        self._grpc = grpc
        self.policy = policy or RetryPolicy()
        # retries=1: no gRPC-level retry policy; _call below is the only retry layer
        kw = {**(client_kwargs or {}), "retries": 1, "timeout": self.policy.rpc_timeout}
        # A local subchannel pool per channel: without it gRPC shares one TCP connection between
        # channels with equal arguments, and every call would reach the same server worker.
        opts = [("grpc.use_local_subchannel_pool", 1)]
        self.targets = [_Target(t, WarpClient(t, options=opts, **kw)) for t in targets for _ in range(connections)]
        self.name = ",".join(targets)
        self.inflight = inflight
        self._slots = threading.BoundedSemaphore(inflight)
        self._lock = threading.Lock()
        self._turn = 0
        self._streak: dict[str, int] = {}
        self._retryable = _retryable_codes()

    def close(self) -> None:
        for t in self.targets:
            t.client.close()

    def _mark_down(self, name: str) -> None:
        """Avoid every connection to ``name`` for a while: ``cooldown`` seconds, doubling with
        each consecutive UNAVAILABLE (at most 16x), so a dead server costs few attempts."""
        with self._lock:
            streak = self._streak.get(name, 0)
            self._streak[name] = streak + 1
            until = time.monotonic() + self.policy.cooldown * 2 ** min(streak, 4)
            for t in self.targets:
                if t.name == name:
                    t.down_until = max(t.down_until, until)

    def _pick(self, avoid: str | None) -> _Target:
        now = time.monotonic()
        with self._lock:
            up = [t for t in self.targets if t.down_until <= now] or self.targets
            if avoid is not None and len(up) > 1:
                up = [t for t in up if t.name != avoid] or up
            self._turn += 1
            n = len(up)
            best = min(range(n), key=lambda i: (up[(i + self._turn) % n].score(), i))
            target = up[(best + self._turn) % n]
            target.inflight += 1
            return target

    def _call(self, ctx: CallContext, fn):
        """``fn(client, timeout)`` with retries (module docstring). A failure is added to
        ``ctx.retried`` only when the retry actually starts, so ``ctx.attempts`` counts tries."""
        policy = self.policy
        avoid = None
        failed = None  # the last retryable failure, not yet followed by a retry
        for attempt in range(policy.retries + 1):
            remaining = ctx.remaining()
            if remaining is not None and remaining <= 0:
                raise ImageDeadlineError("per-image deadline exceeded"
                                         + (f" after {failed}" if failed else "")
                                         + (f" (retried: {'; '.join(ctx.retried)})" if ctx.retried else ""))
            if failed is not None:
                ctx.retried.append(failed)
                failed = None
            timeout = policy.rpc_timeout if remaining is None else min(policy.rpc_timeout, remaining)
            with self._slots:
                target = self._pick(avoid)
                ctx.target = target.name
                t0 = time.monotonic()
                try:
                    result = fn(target.client, timeout)
                    took = time.monotonic() - t0
                    with self._lock:
                        target.latency = took if target.latency == 0 else 0.8 * target.latency + 0.2 * took
                        self._streak[target.name] = 0
                    return result
                except self._grpc.RpcError as err:
                    code = err.code() if callable(getattr(err, "code", None)) else None
                    if code not in self._retryable or attempt == policy.retries:
                        raise
                    failed = f"{target.name}: {code.name}"
                    if code is self._grpc.StatusCode.UNAVAILABLE:
                        self._mark_down(target.name)
                    avoid = target.name
                finally:
                    with self._lock:
                        target.inflight -= 1
            pause = min(policy.max_backoff, policy.backoff * 2 ** attempt) * (0.5 + random.random() / 2)
            remaining = ctx.remaining()
            time.sleep(max(0.0, pause if remaining is None else min(pause, remaining)))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the engine interface -------------------------------------------------------------------
    def warp(self, image: EncodedImage, transform, opts, fmt: str, ctx: CallContext) -> bytes:
        kw = dict(opts.kwargs(), jpeg_quality=opts.jpeg_quality)
        data = image.data
        if fmt == "npy":  # pragma: no cover - warp outputs are images
            raise InvalidArgumentError("warp outputs are images", field="output")
        return self._call(ctx, lambda c, t: c.warp(data, transform, opts.output_shape, response_form=fmt,
                                                   timeout=t, **kw))

    def align(self, reference, image: EncodedImage, opts, ctx: CallContext):
        kw = opts.kwargs()
        model = kw.pop("model")
        template = reference.data if isinstance(reference, EncodedImage) else reference  # the file, as it is
        return self._call(ctx, lambda c, t: c.align(template, image.data, model, timeout=t, **kw))

    def jacobian(self, transform, shape, ctx: CallContext) -> np.ndarray:
        return self._call(ctx, lambda c, t: c.jacobian_determinant(transform, shape, dtype=np.float32, timeout=t))


__all__ = ["LOCAL", "GrpcEngine", "LocalEngine", "RetryPolicy", "address_count", "encode", "one_thread_per_process"]
