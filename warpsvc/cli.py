"""The ``warpsvc`` command: ``warpsvc demo`` (library tour)."""

from __future__ import annotations

import argparse
import pathlib
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="warpsvc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="warp a bundled image every way and write PNGs + Jacobian heatmaps")
    demo.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/demo"), help="output folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run

        for line in run(args.out):
            print(line)
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
