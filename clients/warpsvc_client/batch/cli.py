"""``warpsvc-batch {warp,align,jacobian} INPUT_DIR OUTPUT_DIR [options]`` (see ``docs/batch.md``).

Exit codes: 0 every image succeeded (or was already complete with ``--resume``); 1 at least one
image failed (the manifest says which and why); 2 bad usage (refused folders, bad options).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import sys

from . import manifest, paths
from .jobs import JOBS, AlignOptions, JobSpec, Task, WarpOptions, output_name
from .transforms import TransformSpecError, from_matrix, numbers, polar_option, read_file


def _shape(text: str):
    v = [int(x) for x in numbers(text, "shape")]
    if len(v) != 2 or min(v) <= 0:
        raise argparse.ArgumentTypeError("expected H,W (two positive integers)")
    return tuple(v)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("input_dir", type=pathlib.Path, metavar="INPUT_DIR")
    common.add_argument("output_dir", type=pathlib.Path, metavar="OUTPUT_DIR")
    g = common.add_argument_group("where and how")
    g.add_argument("--target", action="append", default=None,
                   help="server host:port or dns:///name:port (round robin over its addresses); repeatable. "
                        "'local' (the default) runs the library in a process pool, no server needed")
    g.add_argument("--manifest", type=pathlib.Path, help="JSONL manifest (default OUTPUT_DIR/manifest.jsonl)")
    g.add_argument("--resume", action="store_true",
                   help="skip images whose output is complete and recorded ok in the manifest")
    g.add_argument("--dry-run", action="store_true", help="list what would be done; write nothing")
    g.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="only paths (relative, or the file name) matching; repeatable")
    g.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="skip matching paths; repeatable")
    g.add_argument("--allow-nested-output", action="store_true", help="accept OUTPUT_DIR inside INPUT_DIR")
    g.add_argument("--jobs", type=int, default=0, help="local: worker processes (default: one per core)")
    g.add_argument("--server-workers", type=int, default=2,
                   help="worker processes behind each server address (sets the defaults below; default 2)")
    g.add_argument("--inflight", type=int, default=0,
                   help="gRPC: most outstanding requests (default 2 per server worker)")
    g.add_argument("--connections", type=int, default=0,
                   help="gRPC: connections per target (default 2 per server worker; SO_REUSEPORT spreads "
                        "connections, not calls, over a server's workers)")
    g.add_argument("--deadline", type=float, default=600.0, help="seconds per image, retries included (default 600)")
    g.add_argument("--rpc-timeout", type=float, default=120.0, help="seconds per attempt (default 120)")
    g.add_argument("--retries", type=int, default=5,
                   help="retries on UNAVAILABLE/DEADLINE_EXCEEDED/overload, with backoff (default 5)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-report", action="store_true", help="skip report.html and contact_sheet.png")
    g.add_argument("--report-limit", type=int, default=24, help="images pictured in the report (default 24)")
    g.add_argument("--no-fsync", action="store_true",
                   help="skip fsync (faster; outputs are still renamed atomically, but a power cut may lose them)")
    s = common.add_argument_group("security (gRPC)")
    s.add_argument("--tls", action="store_true", help="TLS with the system roots")
    s.add_argument("--root-cert", type=pathlib.Path, help="PEM root certificates (implies TLS)")
    s.add_argument("--server-name", help="TLS host name to verify")
    s.add_argument("--token-env", default="WARPSVC_TOKEN",
                   help="environment variable holding the bearer token (default WARPSVC_TOKEN)")

    warp_opts = argparse.ArgumentParser(add_help=False)
    w = warp_opts.add_argument_group("warp options (passed to the library / RPC)")
    w.add_argument("--interpolation", default="linear", choices=("nearest", "linear", "cubic", "lanczos"))
    w.add_argument("--border", default="constant", choices=("constant", "replicate", "reflect", "symmetric", "wrap"))
    w.add_argument("--border-value", type=float, default=0.0)
    w.add_argument("--intensity", default="plain", choices=("plain", "conserve"))
    w.add_argument("--antialias", action="store_true", help="integrate each output pixel's preimage")
    w.add_argument("--output-shape", type=_shape, metavar="H,W", help="output size (default: the transform's)")
    w.add_argument("--jpeg-quality", type=int, default=95)

    transform_opts = argparse.ArgumentParser(add_help=False)
    t = transform_opts.add_argument_group("the transform (input -> output coordinates)")
    t.add_argument("--matrix", help="6 (affine) or 9 (homography) numbers, row-major, comma/space separated")
    t.add_argument("--polar", metavar="CX,CY,RADIUS,H,W", help="Cartesian -> polar (H angle rows, W radius columns)")
    t.add_argument("--log", action="store_true", help="with --polar: log-polar")
    t.add_argument("--polar-inverse", action="store_true", help="with --polar: polar -> Cartesian")
    t.add_argument("--cartesian-shape", type=_shape, metavar="H,W", help="with --polar-inverse: output size")
    t.add_argument("--transforms", type=pathlib.Path, metavar="FILE",
                   help="one transform per image: CSV (path,matrix[,output]) or JSONL (path, matrix|polar, output)")

    parser = argparse.ArgumentParser(prog="warpsvc-batch", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="job", required=True)
    sub.add_parser("warp", parents=[common, transform_opts, warp_opts], help="warp every image")
    a = sub.add_parser("align", parents=[common, warp_opts], help="align every image to a reference")
    g = a.add_argument_group("alignment options")
    g.add_argument("--reference", type=pathlib.Path, required=True, help="the template image")
    g.add_argument("--model", default="homography",
                   choices=("translation", "euclidean", "similarity", "affine", "homography"))
    g.add_argument("--robust", choices=("huber", "tukey"))
    g.add_argument("--photometric", choices=("gain_bias",))
    g.add_argument("--levels", default="auto", help="pyramid levels or 'auto'")
    g.add_argument("--max-iterations", type=int)
    g.add_argument("--tolerance", type=float)
    g.add_argument("--time-budget", type=float, help="seconds per alignment")
    g.add_argument("--fail-unconverged", action="store_true", help="record non-converged alignments as failed")
    j = sub.add_parser("jacobian", parents=[common, transform_opts], help="Jacobian-determinant map per image")
    j.add_argument("--format", dest="jacobian_format", default="tiff", choices=("tiff", "npy"),
                   help="float32 TIFF (default) or .npy")
    j.add_argument("--output-shape", type=_shape, metavar="H,W", help="map size (default: the transform's output)")
    return parser


class UsageError(Exception):
    pass


def _transform(args):
    given = [n for n in ("matrix", "polar", "transforms") if getattr(args, n, None)]
    if len(given) != 1:
        raise UsageError(f"{args.job} needs exactly one of --matrix, --polar, --transforms")
    if args.matrix:
        return from_matrix(numbers(args.matrix, "--matrix"), "--matrix")
    if args.polar:
        return polar_option(args.polar, log=args.log, inverse=args.polar_inverse, cartesian_shape=args.cartesian_shape)
    return None


def make_spec(args) -> JobSpec:
    warp = WarpOptions()
    if args.job in ("warp", "align"):
        warp = WarpOptions(interpolation=args.interpolation, border=args.border, border_value=args.border_value,
                           intensity=args.intensity, antialias=args.antialias, output_shape=args.output_shape,
                           jpeg_quality=args.jpeg_quality)
    elif args.output_shape:
        warp = WarpOptions(output_shape=args.output_shape)
    spec = dict(job=args.job, input_dir=args.input_dir, output_dir=args.output_dir, warp=warp, fsync=not args.no_fsync)
    if args.job == "align":
        from . import files
        from .jobs import decode

        levels = args.levels if args.levels == "auto" else int(args.levels)
        spec["align"] = AlignOptions(model=args.model, robust=args.robust, photometric=args.photometric, levels=levels,
                                     max_iterations=args.max_iterations, tolerance=args.tolerance,
                                     time_budget=args.time_budget, fail_unconverged=args.fail_unconverged)
        try:
            spec["reference"] = decode(files.read_input(args.reference))
        except Exception as err:  # noqa: BLE001
            raise UsageError(f"--reference {args.reference}: {err}") from None
    else:
        spec["transform"] = _transform(args)
    if args.job == "jacobian":
        spec["jacobian_format"] = args.jacobian_format
    return JobSpec(**spec)


def make_tasks(args, spec: JobSpec) -> list[paths.Planned | Task]:
    """The planned images, each a :class:`Task` or a ``Planned`` with an error."""
    fmt = getattr(args, "jacobian_format", "tiff")
    per_image = {}
    if getattr(args, "transforms", None):
        pairs = []
        for row in read_file(args.transforms):
            if not paths.selected(row["path"], args.include, args.exclude):
                continue
            pairs.append((row["path"], row["output"] or output_name(spec.job, row["path"], spec.warp, fmt)))
            per_image.setdefault(row["path"], row["transform"])
    else:
        skip = args.output_dir if paths.is_within(args.output_dir, args.input_dir) else None
        found = paths.discover(args.input_dir, include=args.include, exclude=args.exclude, skip=skip)
        pairs = [(rel, output_name(spec.job, rel, spec.warp, fmt)) for rel in found]
    out = []
    for i, p in enumerate(paths.plan(pairs, args.input_dir, args.output_dir)):
        out.append(p if p.error else Task(i, p.input, p.output, per_image.get(p.input)))
    return out


def _engine(args):
    targets = args.target or ["local"]
    if "local" in targets:
        if len(targets) > 1:
            raise UsageError("--target local cannot be combined with server targets")
        return None
    from .backends import GrpcEngine, RetryPolicy, address_count

    for t in targets:
        if not t.strip() or t.count(":") == 0:
            raise UsageError(f"--target {t!r}: expected host:port, dns:///name:port or local")
    per_worker = max(1, args.server_workers)
    addresses = sum(address_count(t) for t in targets)
    inflight = args.inflight or 2 * per_worker * addresses
    connections = args.connections or 2 * per_worker
    token = os.environ.get(args.token_env) or None
    client_kwargs = dict(tls=args.tls, token=token, server_name=args.server_name,
                         root_certificates=args.root_cert.read_bytes() if args.root_cert else None)
    policy = RetryPolicy(retries=max(0, args.retries), rpc_timeout=args.rpc_timeout)
    return GrpcEngine(targets, inflight=inflight, connections=connections, policy=policy, client_kwargs=client_kwargs)


def _planning_record(p: paths.Planned, job: str) -> dict:
    return {"input": p.input, "output": p.output, "status": "failed", "error": f"PathError: {p.error}", "job": job,
            "target": None, "attempts": 0, "bytes": None, "sha256": None, "matrix": None, "inverse": None,
            "convergence": None, "timings": {}}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        return run(args, "warpsvc-batch " + shlex.join(argv))
    except (UsageError, paths.PathError, TransformSpecError, OSError) as err:
        print(f"warpsvc-batch: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("warpsvc-batch: interrupted; rerun with --resume to finish", file=sys.stderr)
        return 130


def run(args, command: str) -> int:
    import warpsvc

    from . import files, pipeline

    paths.check_trees(args.input_dir, args.output_dir, args.allow_nested_output)
    try:
        spec = make_spec(args)
    except (warpsvc.WarpsvcError, ValueError) as err:
        raise UsageError(str(err)) from None
    planned = make_tasks(args, spec)
    manifest_path = args.manifest or args.output_dir / "manifest.jsonl"
    if paths.is_within(manifest_path, args.input_dir) and not paths.is_within(manifest_path, args.output_dir):
        raise UsageError(f"--manifest {manifest_path} is inside INPUT_DIR: inputs are never overwritten")
    previous = manifest.load(manifest_path) if args.resume else {}
    todo, skipped, invalid = [], [], []
    for p in planned:
        if isinstance(p, paths.Planned):
            invalid.append(p)
        elif args.resume and manifest.is_complete(previous.get(p.input), args.output_dir, p.output):
            skipped.append(p)
        else:
            todo.append(p)
    if args.dry_run:
        for t in todo:
            print(f"{t.input} -> {t.output}")
        for p in invalid:
            print(f"{p.input}: REFUSED: {p.error}")
        print(f"dry run: {len(todo)} to do, {len(skipped)} complete (skipped), {len(invalid)} refused; "
              f"outputs under {args.output_dir}, manifest {manifest_path}")
        return 1 if invalid else 0

    engine = _engine(args)
    counts = pipeline.Counts(total=len(planned), skipped=len(skipped))
    records: list[dict] = []
    with files.FolderLock(args.output_dir):
        files.sweep_temp_files(args.output_dir)
        dirsync = files.DirSync(enabled=not args.no_fsync)
        writer = manifest.Writer(manifest_path, append=args.resume, dirsync=dirsync, fsync=not args.no_fsync)
        try:
            for p in invalid:
                rec = _planning_record(p, spec.job)
                writer.write(rec)
                counts.failed += 1
                counts.failures.append(rec)
                records.append(rec)

            def on_record(rec):
                writer.write(rec)
                records.append(rec)

            opts = pipeline.RunOptions(jobs=args.jobs, deadline=args.deadline, progress=not args.no_progress)
            pipeline.run(todo, spec, engine, opts, on_record, counts, dirsync)
        finally:
            writer.close()
        report_note = ""
        if not args.no_report:
            from . import report
            from .backends import LocalEngine

            try:
                html_path, _ = report.write(spec, engine or LocalEngine(), sorted(records, key=lambda r: r["input"]),
                                            counts, limit=args.report_limit, command=command)
                report_note = f"; report {html_path}"
            except Exception as err:  # noqa: BLE001 - the images are done; a failed picture must not hide that
                report_note = f"; report failed: {type(err).__name__}: {err}"
    if engine is not None:
        engine.close()
    for rec in counts.failures[:10]:
        print(f"FAILED {rec['input']}: {rec['error']}", file=sys.stderr)
    if len(counts.failures) > 10:
        print(f"... and {len(counts.failures) - 10} more failures (see the manifest)", file=sys.stderr)
    extra = f", {counts.unconverged} not converged" if spec.job == "align" else ""
    print(f"warpsvc-batch {spec.job}: {counts.ok} ok, {counts.failed} failed, {counts.skipped} skipped{extra} "
          f"of {counts.total} images in {counts.elapsed:.1f} s ({counts.rate():.1f} images/s); "
          f"manifest {manifest_path}{report_note}")
    return 1 if counts.failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
