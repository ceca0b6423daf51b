"""The ``warpsvc`` command: ``warpsvc demo`` (library tour) and ``warpsvc serve`` (gRPC server)."""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys


def build_parser() -> argparse.ArgumentParser:
    from .server.settings import add_arguments

    parser = argparse.ArgumentParser(prog="warpsvc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="warp a bundled image every way and write PNGs + Jacobian heatmaps")
    demo.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/demo"), help="output folder")
    serve = sub.add_parser(
        "serve", help="run the gRPC server (warpsvc.v1.WarpService + health + reflection)",
        description="Run the gRPC server. Every setting can also come from the environment as "
                    "WARPSVC_<SETTING> (e.g. WARPSVC_PORT, WARPSVC_TOKEN_FILE); a --no-X flag's variable is "
                    "WARPSVC_X=false (e.g. WARPSVC_REFLECTION=false). Flags win. See docs/service.md.",
    )
    add_arguments(serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run

        for line in run(args.out):
            print(line)
        return 0
    if args.command == "serve":
        from .server import serve
        from .server.settings import from_args

        try:
            settings = from_args(args)
        except (ValueError, OSError) as err:
            print(f"warpsvc serve: {err}", file=sys.stderr)
            return 2
        logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
        try:
            code = serve(settings)
        except OSError as err:  # a port that cannot be bound (gRPC or metrics)
            print(f"warpsvc serve: {err}", file=sys.stderr)
            return 1
        _exit_now(code)
    return 2  # pragma: no cover - argparse rejects unknown commands


def _exit_now(code: int) -> None:
    """End a served process once :func:`warpsvc.server.serve` has drained and cleaned up, without
    the interpreter's finalisation (as the forked workers already do): a daemon thread may still
    be inside native code then -- the kernel warm-up compiling in LLVM or starting OpenMP threads
    -- and C++ static destructors running under it abort the process (SIGABRT, exit -6, seen on
    a SIGTERM half a second after SERVING). Logs and standard streams are flushed first."""
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
