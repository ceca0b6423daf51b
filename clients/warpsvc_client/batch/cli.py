"""``warpsvc-batch {warp,align,jacobian,stack} INPUT OUTPUT [options]`` (see ``docs/batch.md``).

INPUT and OUTPUT are folders or fsspec URLs (``s3://bucket/prefix``, ``memory://...``).
Exit codes: 0 every image succeeded (or was already complete with ``--resume``); 1 at least one
image failed (the manifest says which and why; a full disk fails the images it hits); 2 bad usage
(refused folders, bad options).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shlex
import sys

from . import argtypes, manifest, paths, probe, stack_job, storage
from .argtypes import correlation as _correlation
from .jobs import AlignOptions, JobSpec, Task, WarpOptions, output_name, reference_sha256, settings_digest
from .paths import printable
from .record import Record
from .transforms import TransformSpecError, from_matrix, numbers, polar_option, read_file


def _shape(text: str):
    v = [int(x) for x in numbers(text, "shape")]
    if len(v) != 2 or min(v) <= 0:
        raise argparse.ArgumentTypeError("expected H,W (two positive integers)")
    return tuple(v)


def _shard(text: str):
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError("expected INDEX/COUNT, e.g. 0/4") from None
    if not sep or n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError("expected INDEX/COUNT with 0 <= INDEX < COUNT")
    return i, n


def _pixels_or_inf(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number of pixels or 'inf'") from None
    if not value > 0:  # NaN, 0 and negatives
        raise argparse.ArgumentTypeError(f"expected a positive number of pixels or 'inf', got {text}")
    return value


def _json_object(text: str):
    try:
        value = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("input_dir", metavar="INPUT", help="folder or fsspec URL (s3://bucket/prefix, ...)")
    common.add_argument("output_dir", metavar="OUTPUT", help="folder or fsspec URL")
    g = common.add_argument_group("where and how")
    g.add_argument("--target", action="append", default=None,
                   help="server host:port or dns:///name:port (round robin over its addresses); repeatable. "
                        "'local' (the default) runs the library in a process pool, no server needed")
    g.add_argument("--manifest", help="JSONL manifest, a path or URL (default OUTPUT/manifest.jsonl)")
    g.add_argument("--storage-options", type=_json_object, default={}, metavar="JSON",
                   help="fsspec options for URL inputs/outputs, e.g. '{\"endpoint_url\": \"http://...\"}' "
                        "(credentials otherwise from the standard environment: AWS_*, profiles)")
    g.add_argument("--engine", default="pool", choices=("pool", "dask"),
                   help="local work: a process pool on this machine (default) or a Dask cluster")
    g.add_argument("--scheduler", metavar="tcp://HOST:8786",
                   help="--engine dask: an existing scheduler (default: an embedded LocalCluster)")
    g.add_argument("--shard", type=_shard, metavar="INDEX/COUNT",
                   help="do only every COUNT-th image of the sorted list, from INDEX (0-based)")
    g.add_argument("--max-pixels", type=int, default=probe.DEFAULT_MAX_PIXELS,
                   help=f"refuse inputs whose header claims more pixels (H*W, or a TIFF tile), before "
                        f"decoding (default {probe.DEFAULT_MAX_PIXELS}, the server's default)")
    g.add_argument("--resume", action="store_true",
                   help="skip images whose output is complete and recorded ok in the manifest")
    g.add_argument("--dry-run", action="store_true", help="list what would be done; write nothing")
    g.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="only paths (relative, or the file name) matching; repeatable")
    g.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="skip matching paths; repeatable")
    g.add_argument("--allow-nested-output", action="store_true", help="accept OUTPUT_DIR inside INPUT_DIR")
    g.add_argument("--jobs", type=int, default=0,
                   help="local: worker processes (default: one per core); --engine dask: LocalCluster workers; "
                        "stack: resampling threads (default 2)")
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
    w.add_argument("--border-value", type=argtypes.finite, default=0.0)
    w.add_argument("--intensity", default="plain", choices=("plain", "conserve"))
    w.add_argument("--antialias", action="store_true", help="integrate each output pixel's preimage")
    w.add_argument("--output-shape", type=_shape, metavar="H,W", help="output size (default: the transform's)")
    w.add_argument("--jpeg-quality", type=argtypes.jpeg_quality, default=95,
                   help="JPEG outputs' quality, 1-100 (default 95)")

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
    g.add_argument("--reference", required=True, help="the template image (path or URL)")
    g.add_argument("--model", default="homography",
                   choices=("translation", "euclidean", "similarity", "affine", "homography"))
    g.add_argument("--search", default="auto", choices=("auto", "local", "global"),
                   help="how the start is found (no initial guess): 'auto' (default) the local solve first, "
                        "then a feature-based global start if it finds no match; 'local' only the local solve; "
                        "'global' always the global start (the library's search=)")
    g.add_argument("--robust", choices=("huber", "tukey"))
    g.add_argument("--photometric", default="auto", choices=("auto", "gain_bias", "none"),
                   help="exposure model: 'auto' (default, the library's: gain/bias, with a tone curve when the "
                        "change is a curve), 'gain_bias', or 'none' (identical exposure assumed)")
    g.add_argument("--denoise", default="auto", choices=("auto", "none"),
                   help="'auto' (default, the library's): a noise-dominated template is solved on a denoised copy "
                        "first; 'none': never")
    g.add_argument("--levels", type=argtypes.levels, default="auto", help="pyramid levels (1-12) or 'auto'")
    g.add_argument("--max-iterations", type=int)
    g.add_argument("--tolerance", type=float)
    g.add_argument("--time-budget", type=float, help="seconds per alignment")
    g.add_argument("--max-corner-error", type=_pixels_or_inf, metavar="PX",
                   help="largest predicted corner error (1 sigma, pixels) of a converged alignment; "
                        "above it reason 'uncertain' (default: the library's, 1 px; 'inf' turns it off)")
    g.add_argument("--min-zncc", type=_correlation, metavar="Z",
                   help="smallest noise-corrected correlation of a converged alignment, in [-1, 1]; below it "
                        "reason 'low_correlation' (default: the library's, 0.97)")
    g.add_argument("--fail-unconverged", action="store_true", help="record non-converged alignments as failed")
    j = sub.add_parser("jacobian", parents=[common, transform_opts], help="Jacobian-determinant map per image")
    j.add_argument("--format", dest="jacobian_format", default="tiff", choices=("tiff", "npy"),
                   help="float32 TIFF (default) or .npy")
    j.add_argument("--output-shape", type=_shape, metavar="H,W", help="map size (default: the transform's output)")
    stack_job.add_parser(sub, common)
    return parser


class UsageError(Exception):
    pass


def _transform(args):
    given = [n for n in ("matrix", "polar", "transforms") if getattr(args, n, None)]
    if len(given) != 1:
        raise UsageError(f"{args.job} needs exactly one of --matrix, --polar, --transforms")
    # modifiers of --polar: given without it they used to be ignored silently
    if not args.polar and (args.log or args.polar_inverse):
        raise UsageError(f"{'--log' if args.log else '--polar-inverse'} modifies --polar, which is not given")
    if args.cartesian_shape is not None and not (args.polar and args.polar_inverse):
        raise UsageError("--cartesian-shape is the output size of --polar with --polar-inverse")
    if args.matrix:
        return from_matrix(numbers(args.matrix, "--matrix"), "--matrix")
    if args.polar:
        return polar_option(args.polar, log=args.log, inverse=args.polar_inverse, cartesian_shape=args.cartesian_shape)
    return None


def _stores(args):
    fsync = not args.no_fsync
    return (storage.open_store(args.input_dir, args.storage_options, fsync=fsync),
            storage.open_store(args.output_dir, args.storage_options, fsync=fsync))


def _read_reference(text: str, options: dict, max_pixels: int):
    """The reference as its file (bytes + probed header): a server decodes it itself, the local
    engine once per process."""
    from .jobs import read_image

    head, _, name = text.replace("\\", "/").rpartition("/")
    store = storage.open_store(head or ".", options)
    return read_image(store.read(name), max_pixels)


def make_spec(args, inputs=None, outputs=None, run_id: str = "000000000000") -> JobSpec:
    if inputs is None:
        inputs, outputs = _stores(args)
    if args.max_pixels < 1:
        raise UsageError("--max-pixels must be positive")
    warp = WarpOptions()
    if args.job in ("warp", "align"):
        warp = WarpOptions(interpolation=args.interpolation, border=args.border, border_value=args.border_value,
                           intensity=args.intensity, antialias=args.antialias, output_shape=args.output_shape,
                           jpeg_quality=args.jpeg_quality)
    elif args.output_shape:
        warp = WarpOptions(output_shape=args.output_shape)
    spec = dict(job=args.job, inputs=inputs, outputs=outputs, warp=warp, run_id=run_id, max_pixels=args.max_pixels)
    if args.job == "align":
        levels = args.levels
        spec["align"] = AlignOptions(model=args.model, search=args.search, robust=args.robust,
                                     photometric=None if args.photometric == "none" else args.photometric,
                                     denoise=None if args.denoise == "none" else args.denoise, levels=levels,
                                     max_iterations=args.max_iterations, tolerance=args.tolerance,
                                     time_budget=args.time_budget, fail_unconverged=args.fail_unconverged,
                                     max_corner_error=args.max_corner_error, min_zncc=args.min_zncc)
        try:
            spec["reference"] = _read_reference(args.reference, args.storage_options, args.max_pixels)
            spec["reference_sha256"] = reference_sha256(spec["reference"])
        except Exception as err:  # noqa: BLE001
            raise UsageError(f"--reference {printable(args.reference)}: {printable(err)}") from None
    else:
        spec["transform"] = _transform(args)
    if args.job == "jacobian":
        spec["jacobian_format"] = args.jacobian_format
    return JobSpec(**spec)


def make_tasks(args, spec: JobSpec) -> list[paths.Planned | Task]:
    """The planned images (this shard's), each a :class:`Task` or a ``Planned`` with an error."""
    fmt = getattr(args, "jacobian_format", "tiff")
    per_image = {}
    if getattr(args, "transforms", None):
        pairs = []
        try:
            rows = read_file(args.transforms)
        except OSError as err:
            raise UsageError(f"--transforms {printable(str(args.transforms))}: {err.strerror or err}") from None
        for row in rows:
            if not paths.selected(row["path"], args.include, args.exclude):
                continue
            pairs.append((row["path"], row["output"] or output_name(spec.job, row["path"], spec.warp, fmt)))
            per_image.setdefault(row["path"], row["transform"])
        if args.shard:
            keep = set(paths.shard([p for p, _ in pairs], *args.shard))
            pairs = [p for p in pairs if p[0] in keep]
    else:
        out_root, in_root = spec.outputs.canonical(), spec.inputs.canonical()
        nested = out_root.startswith(in_root.rstrip("/") + "/")
        found = paths.discover(spec.inputs, include=args.include, exclude=args.exclude,
                               skip=spec.outputs.url if nested else None)
        if args.shard:
            found = paths.shard(found, *args.shard)
        pairs = [(rel, output_name(spec.job, rel, spec.warp, fmt)) for rel in found]
    out = []
    for i, p in enumerate(paths.plan(pairs, spec.inputs, spec.outputs)):
        out.append(p if p.error else Task(i, p.input, p.output, per_image.get(p.input)))
    return out


def _engine(args):
    targets = args.target or ["local"]
    if "local" in targets:
        if len(targets) > 1:
            raise UsageError("--target local cannot be combined with server targets")
        return None
    if args.engine == "dask":
        raise UsageError("--engine dask runs the library on the Dask workers; it takes no --target servers")
    from .backends import GrpcEngine, RetryPolicy, address_count

    for t in targets:
        if not t.strip() or t.count(":") == 0:
            raise UsageError(f"--target {t!r}: expected host:port, dns:///name:port or local")
    per_worker = max(1, args.server_workers)
    addresses = sum(address_count(t) for t in targets)
    inflight = args.inflight or 2 * per_worker * addresses
    connections = args.connections or 2 * per_worker
    token = os.environ.get(args.token_env) or None
    if token is None and args.token_env != "WARPSVC_TOKEN":  # named on purpose, yet unset: every call would fail
        raise UsageError(f"--token-env {args.token_env}: that environment variable is not set (or empty)")
    client_kwargs = dict(tls=args.tls, token=token, server_name=args.server_name,
                         root_certificates=args.root_cert.read_bytes() if args.root_cert else None)
    policy = RetryPolicy(retries=max(0, args.retries), rpc_timeout=args.rpc_timeout)
    return GrpcEngine(targets, inflight=inflight, connections=connections, policy=policy, client_kwargs=client_kwargs)


# Options whose value is a list of numbers: "--matrix -1,0,511,0,1,0" (a flip) is read by argparse
# as a new option, "-1,0,...", and refused "expected one argument" (only a lone "-5" passes as a
# negative number); :func:`attach_negative_lists` writes such a pair as "--matrix=-1,0,...".
NUMBER_LIST_OPTIONS = ("--matrix", "--polar", "--output-shape", "--cartesian-shape")
_NUMBER_LIST = re.compile(r"-(?:\d|\.\d)[\d.eE+\-,;\s]*")


def attach_negative_lists(argv: list[str]) -> list[str]:
    """``argv`` with every number-list option followed by a negative list joined to it by ``=``."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in NUMBER_LIST_OPTIONS and i + 1 < len(argv) and _NUMBER_LIST.fullmatch(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(attach_negative_lists(argv))
    try:
        return run(args, "warpsvc-batch " + shlex.join(argv))
    except (UsageError, stack_job.StackUsageError, paths.PathError, paths.MissingDependencyError, TransformSpecError,
            OSError) as err:
        print(f"warpsvc-batch: {printable(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("warpsvc-batch: interrupted; rerun with --resume to finish", file=sys.stderr)
        return 130


def _plan(args, inputs, outputs, run_id):
    import warpsvc

    paths.check_trees(inputs, outputs, args.allow_nested_output)
    try:
        spec = make_spec(args, inputs, outputs, run_id)
    except (warpsvc.WarpsvcError, ValueError) as err:
        raise UsageError(printable(err)) from None
    planned = make_tasks(args, spec)
    m_store, m_name = manifest.location(args.manifest, outputs)
    m_canon = m_store.canonical(m_name)
    in_root, out_root = inputs.canonical(), outputs.canonical()
    if paths.is_under(m_canon, in_root) and not paths.is_under(m_canon, out_root):
        raise UsageError(f"--manifest {printable(args.manifest)} is inside INPUT_DIR: inputs are never overwritten")
    return spec, planned, m_store, m_name


def run(args, command: str) -> int:
    from . import files, pipeline

    if args.job == "stack":
        return stack_job.run(args, command, _engine)
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(max(1, args.max_pixels)))  # OpenCV's own cap, too
    inputs, outputs = _stores(args)
    run_id = storage.new_run_id()
    spec, planned, m_store, m_name = _plan(args, inputs, outputs, run_id)
    previous = manifest.load(m_store, m_name) if args.resume else {}
    todo, skipped, kept, invalid, made_otherwise = [], [], [], [], 0
    for p in planned:
        if isinstance(p, paths.Planned):
            invalid.append(p)
            continue
        settings = settings_digest(spec, p.transform if p.transform is not None else spec.transform)
        prev = previous.get(p.input)
        if args.resume and manifest.is_complete(prev, outputs, p.output, settings):
            skipped.append(p)
            kept.append(prev)
        else:
            made_otherwise += bool(prev and prev.ok and prev.output == p.output and prev.settings != settings)
            todo.append(p)
    if made_otherwise:
        print(f"warpsvc-batch: --resume: {made_otherwise} earlier output(s) were made with other settings (job, "
              "transform, options or reference; or by a version that did not record them): redoing them",
              file=sys.stderr)
    if args.dry_run:
        for t in todo:
            print(f"{printable(t.input)} -> {printable(t.output)}")
        for p in invalid:
            print(f"{printable(p.input)}: REFUSED: {printable(p.error)}")
        print(f"dry run: {len(todo)} to do, {len(skipped)} complete (skipped), {len(invalid)} refused; "
              f"outputs under {printable(outputs.url)}, manifest {printable(m_store.canonical(m_name))}")
        return 1 if invalid else 0

    engine = _engine(args)
    counts = pipeline.Counts(total=len(planned), skipped=len(skipped))
    records: list[Record] = []
    local_out = isinstance(outputs, storage.LocalStore)
    lock = files.FolderLock(outputs, run_id) if local_out else files.NoLock()
    with lock:
        dirsync = files.DirSync(outputs if local_out else None, enabled=not args.no_fsync)
        writer = manifest.open_writer(m_store, m_name, append=args.resume, dirsync=dirsync, fsync=not args.no_fsync)

        def record(rec: Record) -> Record:
            try:
                writer.write(rec)
            except OSError as err:  # ENOSPC: this image is not recorded, so --resume redoes it
                rec = rec.replace(status="failed", error=f"manifest not written ({err.strerror or err}); "
                                                          f"output {'written' if rec.ok else 'not written'}")
            records.append(rec)
            return rec

        try:
            for p in invalid:
                counts.add(record(Record(input=p.input, output=p.output, job=spec.job, error=f"PathError: {p.error}")))
            opts = pipeline.RunOptions(jobs=args.jobs, deadline=args.deadline, progress=not args.no_progress)
            if args.engine == "dask":
                from . import dask_engine

                dask_engine.run(todo, spec, dask_engine.DaskOptions(scheduler=args.scheduler, workers=args.jobs,
                                                                    deadline=args.deadline), record, counts, dirsync)
            else:
                pipeline.run(todo, spec, engine, opts, record, counts, dirsync)
        finally:
            lock.sweep_own()
            try:
                writer.close()
            except OSError as err:
                print(f"warpsvc-batch: manifest could not be synced: {printable(err)}", file=sys.stderr)
                counts.sync_failed = True
        report_note = ""
        if not args.no_report:
            report_note = _report(spec, engine, records, counts, args, command, kept)
    if engine is not None:
        engine.close()
    _summary(spec, counts, m_store.canonical(m_name), report_note)
    return 1 if counts.failed or counts.sync_failed else 0


def _report(spec, engine, records, counts, args, command, kept=()) -> str:
    from . import report
    from .backends import LocalEngine

    try:
        html_path = report.write(spec, engine or LocalEngine(spec.max_pixels), records, counts,
                                 limit=args.report_limit, command=command, kept=kept)
        return f"; report {printable(html_path)}"
    except Exception as err:  # noqa: BLE001 - the images are done; a failed picture must not hide that
        return f"; report failed: {type(err).__name__}: {printable(err)}"


def _summary(spec, counts, manifest_name: str, report_note: str) -> None:
    for rec in counts.failures[:10]:
        print(f"FAILED {printable(rec.input)}: {printable(rec.error)}", file=sys.stderr)
    if len(counts.failures) > 10:
        print(f"... and {len(counts.failures) - 10} more failures (see the manifest)", file=sys.stderr)
    noted = counts.noted
    for rec in noted[:3]:
        print(f"NOTE {printable(rec.input)}: {printable('; '.join(rec.notes))}", file=sys.stderr)
    if len(noted) > 3:
        print(f"... and {len(noted) - 3} more notes (see the manifest)", file=sys.stderr)
    extra = f", {counts.unconverged} not converged" if spec.job == "align" else ""
    print(f"warpsvc-batch {spec.job}: {counts.ok} ok, {counts.failed} failed, {counts.skipped} skipped{extra} "
          f"of {counts.total} images in {counts.elapsed:.1f} s ({counts.rate():.1f} images/s); "
          f"manifest {printable(manifest_name)}{report_note}", flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
