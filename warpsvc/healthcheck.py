"""``python -m warpsvc.healthcheck [target]``: exit 0 only if the server reports SERVING.

A container healthcheck without the grpc_health_probe binary::

    healthcheck: {test: ["CMD", "python", "-m", "warpsvc.healthcheck"]}

It reads the server's own ``WARPSVC_*`` environment, so the same container configuration that
starts ``warpsvc serve`` also makes the probe work:

* target: ``--target``/positional, else ``WARPSVC_HOST:WARPSVC_PORT`` with a wildcard host
  (``0.0.0.0``, ``::``, empty) replaced by ``127.0.0.1`` (default ``127.0.0.1:50051``);
* TLS: on when ``--tls-ca`` / ``WARPSVC_TLS_CA`` or the server's ``WARPSVC_TLS_CERT`` is set. The
  trusted roots are the CA file if given, else the server's certificate itself (right for a
  self-signed certificate); ``--server-name`` / ``WARPSVC_TLS_SERVER_NAME`` is the name checked
  against the certificate when the target address is not in it (``127.0.0.1`` vs
  ``warpsvc.internal``); ``--tls-client-cert/--tls-client-key`` (``WARPSVC_TLS_CLIENT_CERT``,
  ``WARPSVC_TLS_CLIENT_KEY``) present a client certificate;
* token: ``--token-file`` or ``WARPSVC_TOKEN`` is sent as ``authorization: Bearer`` (the health
  service is exempt from the token today; sending it keeps the probe working behind a proxy
  that checks it).

Exit codes (Docker's convention: 0 healthy, 1 unhealthy; 2 only for a bad command line): 0 when
the status is SERVING, 1 for anything else -- NOT_SERVING, SERVICE_UNKNOWN, or a gRPC error such as
UNAVAILABLE (unreachable, TLS handshake refused) or DEADLINE_EXCEEDED. The status or error code
name is printed on stdout.

Weight: this module imports only ``grpc`` and the health stubs (``grpc_health.v1``): no numpy,
no OpenCV, nothing from the warpsvc library, and not ``warpsvc.server.settings`` (so that the
probe costs ~37 MB and ~0.1 s of CPU; ``benchmarks/bench_healthcheck.py`` measures it). The
environment names below therefore duplicate those of ``warpsvc/server/settings.py`` (where the
setting is ``ENV_PREFIX + field.upper()``); ``tests/test_healthcheck.py`` checks they still match.
Run as ``python -m warpsvc.healthcheck``, Python first executes ``warpsvc/__init__.py``: the probe
is only as light as that file (``python .../warpsvc/healthcheck.py`` skips it).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from dataclasses import dataclass

# Names shared with warpsvc/server/settings.py (Settings field -> WARPSVC_<FIELD>); duplicated on
# purpose, see the module docstring.
SERVER_ENV = {"host": "WARPSVC_HOST", "port": "WARPSVC_PORT", "tls_cert": "WARPSVC_TLS_CERT",
              "token": "WARPSVC_TOKEN"}
# Read by the probe only (the server ignores WARPSVC_* names that are not settings).
PROBE_ENV = {"tls_ca": "WARPSVC_TLS_CA", "server_name": "WARPSVC_TLS_SERVER_NAME",
             "client_cert": "WARPSVC_TLS_CLIENT_CERT", "client_key": "WARPSVC_TLS_CLIENT_KEY"}
WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}
DEFAULT_PORT = 50051


@dataclass(frozen=True)
class TlsOptions:
    """How to connect with TLS: PEM file paths and the name to verify."""

    ca: str | None = None  # trusted root certificates
    client_cert: str | None = None  # presented to servers that ask for one (with client_key)
    client_key: str | None = None
    server_name: str | None = None  # certificate name to verify instead of the target's host

    def credentials(self):
        import grpc

        def read(path):
            return pathlib.Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.ca), read(self.client_key), read(self.client_cert))


def check(target: str, *, service: str = "", timeout: float = 3.0, tls_ca: str | None = None,
          tls: TlsOptions | None = None, token: str | None = None) -> str:
    """The health status name (``SERVING``, ``NOT_SERVING``, ...) or the gRPC error code name.

    ``tls_ca`` is shorthand for ``tls=TlsOptions(ca=tls_ca)``; without either the channel is
    plaintext."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls is None and tls_ca:
        tls = TlsOptions(ca=tls_ca)
    if tls is not None:
        options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
        channel = grpc.secure_channel(target, tls.credentials(), options=options)
    else:
        channel = grpc.insecure_channel(target)
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout, metadata=metadata)
        except grpc.RpcError as err:
            return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def default_target(environ) -> str:
    host = environ.get(SERVER_ENV["host"], "").strip()
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{environ.get(SERVER_ENV['port']) or DEFAULT_PORT}"


def tls_from(args, environ) -> TlsOptions | None:
    """TLS options from the flags, else the environment; ``None`` when TLS is off."""
    ca = args.tls_ca or environ.get(PROBE_ENV["tls_ca"]) or environ.get(SERVER_ENV["tls_cert"])
    if not ca:
        return None
    return TlsOptions(
        ca=ca,
        client_cert=args.tls_client_cert or environ.get(PROBE_ENV["client_cert"]) or None,
        client_key=args.tls_client_key or environ.get(PROBE_ENV["client_key"]) or None,
        server_name=args.server_name or environ.get(PROBE_ENV["server_name"]) or None,
    )


def main(argv: list[str] | None = None, environ=None) -> int:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="python -m warpsvc.healthcheck", description=__doc__.splitlines()[0])
    default = default_target(environ)
    parser.add_argument("target", nargs="?", default=default, help=f"host:port (default {default})")
    parser.add_argument("--service", default="", help="service name to check ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    parser.add_argument("--tls-ca", default=None,
                        help="PEM root certificates: connect with TLS (default $WARPSVC_TLS_CA, else $WARPSVC_TLS_CERT)")
    parser.add_argument("--server-name", default=None, help="name the server certificate must carry")
    parser.add_argument("--tls-client-cert", default=None, help="PEM client certificate (with --tls-client-key)")
    parser.add_argument("--tls-client-key", default=None, help="PEM client private key")
    parser.add_argument("--token-file", type=pathlib.Path, default=None,
                        help="bearer token to send (default $WARPSVC_TOKEN)")
    args = parser.parse_args(argv)
    if (args.tls_client_cert is None) != (args.tls_client_key is None):
        parser.error("--tls-client-cert and --tls-client-key go together")
    token = args.token_file.read_text().strip() if args.token_file else environ.get(SERVER_ENV["token"]) or None
    try:
        status = check(args.target, service=args.service, timeout=args.timeout, tls=tls_from(args, environ),
                       token=token)
    except OSError as err:  # an unreadable certificate file: unhealthy, said plainly
        status = f"ERROR {err}"
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
