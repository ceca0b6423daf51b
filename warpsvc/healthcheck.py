"""``python -m warpsvc.healthcheck [target]``: exit 0 only if the server reports SERVING.

A container healthcheck without the grpc_health_probe binary::

    healthcheck: {test: ["CMD", "python", "-m", "warpsvc.healthcheck"]}

``target`` defaults to ``127.0.0.1:$WARPSVC_PORT`` (50051). Exit codes: 0 SERVING, 1 anything
else (NOT_SERVING, unreachable, timeout).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys


def check(target: str, *, service: str = "", timeout: float = 3.0, tls_ca: str | None = None) -> str:
    """The health status name (``SERVING``, ``NOT_SERVING``, ...) or the gRPC error code name."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls_ca:
        creds = grpc.ssl_channel_credentials(pathlib.Path(tls_ca).read_bytes())
        channel = grpc.secure_channel(target, creds)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as err:
            return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m warpsvc.healthcheck", description=__doc__.splitlines()[0])
    default = f"127.0.0.1:{os.environ.get('WARPSVC_PORT') or 50051}"
    parser.add_argument("target", nargs="?", default=default, help=f"host:port (default {default})")
    parser.add_argument("--service", default="", help="service name to check ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    parser.add_argument("--tls-ca", default=None, help="PEM root certificate: connect with TLS")
    args = parser.parse_args(argv)
    status = check(args.target, service=args.service, timeout=args.timeout, tls_ca=args.tls_ca)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
