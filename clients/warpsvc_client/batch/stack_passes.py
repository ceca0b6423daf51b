"""The two passes of ``warpsvc-batch stack`` (see :mod:`.stack_job` for what and why).

* :func:`register_and_resample`: frames in order through ``align_sequence`` (local) or the
  ``AlignStream`` RPC; each registered frame is resampled and written by a small thread pool
  while the next ones are registered (warps release the GIL; with ``--target`` they are RPCs).
* :func:`stack_and_write`: the verified aligned frames, in frame order, into the library's
  ``Stacker``; then ``stack.tiff``, ``coverage.tiff``, ``trajectory.json`` / ``.csv``.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import time

import numpy as np

from warpsvc_api.alpha_warp import alpha_as_nan

from . import files, pixels, stack_trajectory
from .jobs import CallContext, decode, read_image
from .paths import printable
from .record import Record, Timings
from .stack_combine import DEFAULT_MAX_STORED, ResampledStacker, coverage_weight, stored_bytes
from .stack_job import (
    JOB,
    PRODUCTS,
    StackUsageError,
    _error_text,
    channels_of,
    read_frame,
    registration_pixels,
    warp_options,
)

CORNER_MATCH_PX = 1e-6  # a replayed registration "matches" the manifest within this corner distance


def check_memory(r) -> None:
    """``median`` / sigma clipping hold every aligned frame: refuse up front when that exceeds the
    library's ``StackOptions.max_stored_bytes``."""
    args = r.args
    if args.combine != "median" and args.sigma_clip is None:
        return
    need = stored_bytes(len(r.frames), r.grid_shape, r.reference.channels)
    if need > DEFAULT_MAX_STORED:
        raise StackUsageError(f"--combine {args.combine}{' --sigma-clip' if args.sigma_clip else ''} keeps every "
                              f"aligned frame in memory: {len(r.frames)} x {r.grid_shape} x "
                              f"{r.reference.channels + 1} float32 = {need} bytes > {DEFAULT_MAX_STORED}; "
                              "use --combine mean or sum (streaming)")


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc="stack", disable=True if not enabled else None, dynamic_ncols=True,
                smoothing=0.05, mininterval=0.5)


def _corner_distance(a, b, shape) -> float:
    h, w = shape
    x = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1.0]]).T
    pa, pb = np.asarray(a, np.float64) @ x, np.asarray(b, np.float64) @ x
    return float(np.abs(pa[:2] / pa[2] - pb[:2] / pb[2]).max())


# -- pass 1 ------------------------------------------------------------------------------------------
def _resample(r, f, data: bytes, matrix, fields: dict, registration_seconds: float, out_shape) -> Record:
    """Resample one registered frame onto the reference grid and write ``aligned/<name>.tif``."""
    t0 = time.monotonic()
    ctx = CallContext(deadline=t0 + r.args.deadline)
    base = dict(input=f.input, output=f.output, job=JOB, **fields)
    try:
        out = r.warp_engine().warp(read_image(data, r.args.max_pixels), r.grid_transform(matrix), warp_options(r.grid_shape), "tiff", ctx)
        t1 = time.monotonic()
        r.outputs.write_atomic(f.output, out, r.run_id)
        t2 = time.monotonic()
    except Exception as err:  # noqa: BLE001 - the frame fails, the run goes on
        took = time.monotonic() - t0
        return Record(**base, error=_error_text(err), target=ctx.target or r.target_name, attempts=ctx.attempts,
                      retried=tuple(ctx.retried), timings=Timings(compute=registration_seconds + took,
                                                                 total=registration_seconds + took))
    return Record(**base, status="ok", target=ctx.target or r.target_name, attempts=ctx.attempts,
                  retried=tuple(ctx.retried), bytes=len(out), sha256=files.sha256(out), shape=list(out_shape),
                  dtype="float32", timings=Timings(compute=registration_seconds + t1 - t0, write=t2 - t1,
                                                   total=registration_seconds + t2 - t0))


def _results(r, source, seq_ref: int, n_push: int):
    """The registration results (library or stream) of the frames ``source`` yields."""
    args, ref = r.args, r.reference
    registered_ref = None if ref.image is None else alpha_as_nan(ref.image, ref.alpha)  # a file's alpha: a mask
    if r.engine is None:
        from warpsvc.core.sequence import SequenceOptions, align_sequence
        from warpsvc.core.sequence.options import default_align_options

        pairwise = dict(r.pairwise)
        align = default_align_options().replace(**pairwise) if pairwise else None
        options = SequenceOptions(align=align, **r.sequence)
        return align_sequence(source, args.model, reference=registered_ref if ref.index is None else seq_ref,
                              options=options)
    client = r.engine.targets[0].client
    # A frame reference other than the stream's first frame goes as an image (the stream cannot
    # hold the frames before it): every frame, the reference included, is then aligned to it.
    reference = 0 if (ref.index is not None and seq_ref == 0) else registered_ref
    return client.align_stream(source, reference, args.model, timeout=args.deadline * max(1, n_push),
                               **r.pairwise, **r.sequence)


def register_and_resample(r, before) -> None:
    """Pass 1 (module docstring): record every frame (failed, verified or newly registered)."""
    args, ref = r.args, r.reference
    for f in r.frames:
        if f.error is not None:
            r.record(r._failed(f, f"PathError: {f.error}"), f.index)

    def flush():
        while r.pending_failures:
            idx, rec = r.pending_failures.popleft()
            r.record(rec, idx)

    flush()
    frames = [f for f in r.frames if f.error is None and f.index not in r.records]
    for f in frames:
        if r.verified(f):
            r.records[f.index] = r.previous[f.input]
            r.reused.add(f.index)
    decoded = {f.index: (data, img) for f, data, img in before}
    needed = [f for f in frames if f.index not in r.reused]
    if args.resume:  # frames still unreadable fail now, without forcing a replay of the chain
        keep = []
        for f in needed:
            if f.index in decoded:
                keep.append(f)
                continue
            try:
                read_frame(r.inputs, f.input, args.max_pixels)
                keep.append(f)
            except Exception as err:  # noqa: BLE001
                r.record(r._failed(f, _error_text(err)), f.index)
        needed = keep
    if not needed:
        return
    needed_set = {f.index for f in needed}
    limit = max(max(needed_set), ref.index if ref.index is not None else -1)
    push = [f for f in frames if f.index <= limit and (f.index in r.reused or f.index in needed_set)]
    seq: list = []     # sequence position -> Frame
    held: dict = {}    # frame index -> (bytes, shape) until its result arrives
    seq_ref = sum(1 for f, _, img in before if f.index != ref.index and channels_of(img) == ref.channels)

    def source():
        for f in push:
            if f.index in decoded:
                data, img = decoded.pop(f.index)
            else:
                try:
                    data, img = read_frame(r.inputs, f.input, args.max_pixels)
                except Exception as err:  # noqa: BLE001
                    if f.index in needed_set:
                        r.pending_failures.append((f.index, r._failed(f, _error_text(err))))
                    continue
            if channels_of(img) != ref.channels:
                if f.index in needed_set:
                    r.pending_failures.append((f.index, r._failed(
                        f, f"InvalidImageError: frame has {channels_of(img)} channel(s), the reference "
                           f"{ref.channels}")))
                continue
            seq.append(f)
            if f.index in needed_set:
                held[f.index] = (data, img.shape[:2])
            yield registration_pixels(data, img, args.max_pixels, like=ref.image)

    workers = max(1, args.jobs or 2)
    executor = cf.ThreadPoolExecutor(workers, thread_name_prefix="warpsvc-stack")
    inflight: dict = {}
    out_shape = list(r.grid_shape) + ([ref.channels] if ref.channels > 1 else [])
    left = set(needed_set)
    bar = _progress(len(needed_set), not args.no_progress)

    def settle(block: bool):
        if not inflight:
            return
        done, _ = cf.wait(list(inflight), timeout=None if block else 0, return_when=cf.FIRST_COMPLETED)
        for fut in done:
            r.record(fut.result(), inflight.pop(fut))
            bar.update(1)

    results = _results(r, source(), seq_ref, len(push))
    stopped = None
    try:
        for res in results:
            flush()
            f = seq[res.index]
            if f.index not in needed_set:  # replay: only the chain's state was wanted
                r.tally.replayed += 1
                rec = r.records[f.index]
                shape = (rec.convergence or {}).get("frame_shape") or ref.shape
                if rec.matrix is None or _corner_distance(rec.matrix, res.matrix, shape) > CORNER_MATCH_PX:
                    r.tally.replay_mismatch += 1
            else:
                data, shape = held.pop(f.index)
                fields = r.frame_fields(f, res, shape, ref.channels, lambda s: seq[s].index)
                r.tally.registered += 1
                left.discard(f.index)
                if not res.registered:
                    r.tally.unregistered += 1
                    r.record(Record(input=f.input, output=f.output, job=JOB, target=r.target_name, attempts=1,
                                    error=f"not registered: {res.reason}",
                                    timings=Timings(compute=res.elapsed, total=res.elapsed), **fields), f.index)
                    bar.update(1)
                else:
                    while len(inflight) >= 2 * workers:
                        settle(block=True)
                    fut = executor.submit(_resample, r, f, data, res.matrix, fields, res.elapsed, out_shape)
                    inflight[fut] = f.index
                settle(block=False)
            if not left:
                break
    except Exception as err:  # noqa: BLE001 - a broken stream or library error fails the frames left
        stopped = _error_text(err)
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
        while inflight:
            settle(block=True)
        executor.shutdown(wait=True)
        flush()
        bar.close()
    for f in needed:
        if f.index not in r.records:
            why = f"registration stopped: {stopped}" if stopped else "no registration result (the sequence ended)"
            r.record(r._failed(f, why), f.index)


# -- pass 2 ------------------------------------------------------------------------------------------
class AlignedFrameError(ValueError):
    """An aligned frame that is gone or changed since it was recorded: the frame fails (and is
    redone by ``--resume``), the stack is made of the others."""


def _loaded(r, idx: int, rec: Record):
    """``(flux, weight)`` of one verified aligned frame: the file (SHA-256 checked against the
    manifest) and its coverage weight recomputed from the recorded matrix."""
    try:
        data = r.outputs.read(rec.output)
    except OSError as err:
        raise AlignedFrameError(f"{rec.output}: cannot be read back ({err})") from None
    if len(data) != rec.bytes or files.sha256(data) != rec.sha256:
        raise AlignedFrameError(f"{rec.output}: does not match the manifest (size/SHA-256); rerun with --resume")
    flux = decode(data, r.args.max_pixels)
    conv = rec.convergence or {}
    shape = tuple(conv.get("frame_shape") or r.reference.shape)
    eng = r.warp_engine()
    ctx = CallContext(deadline=time.monotonic() + r.args.deadline)
    t = r.grid_transform(rec.matrix)
    ones = r.ones_png(shape)
    area = decode(eng.warp(ones, t, warp_options(r.grid_shape), "tiff", ctx), r.args.max_pixels)
    det = eng.jacobian(t, r.grid_shape, ctx)
    return flux, coverage_weight(area, det)


def stack_and_write(r):
    """Pass 2: the stack and coverage from the verified aligned frames, then the trajectory.
    Returns the ``StackResult`` (``None`` when no frame could be stacked)."""
    args = r.args
    ok = [(f.index, r.records[f.index]) for f in r.frames if f.index in r.records and r.records[f.index].ok]
    result = None
    if ok:
        stacker = ResampledStacker(r.grid_shape, combine=args.combine, antialias=True, clip=args.sigma_clip)
        workers = max(1, args.jobs or 2)
        executor = cf.ThreadPoolExecutor(workers, thread_name_prefix="warpsvc-stack-load")
        window: collections.deque = collections.deque()  # loads ahead, added in frame order
        todo = iter(ok)
        try:
            while True:
                while len(window) < 2 * workers and (item := next(todo, None)) is not None:
                    window.append((*item, executor.submit(_loaded, r, *item)))
                if not window:
                    break
                idx, rec, fut = window.popleft()
                try:
                    flux, weight = fut.result()
                    stacker.add_resampled(flux, weight)
                except AlignedFrameError as err:  # this frame is left out, recorded failed
                    r.reused.discard(idx)
                    r.record(rec.replace(status="failed", error=f"not stacked: {err}"), idx)
                except Exception as err:  # noqa: BLE001 - the engine failed: no partial stack
                    r.tally.stack_error = (f"stack not written: {rec.input}: {_error_text(err)} (the aligned "
                                           "frames are kept: rerun with --resume)")
                    break
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        if stacker.n_frames and r.tally.stack_error is None:
            result = stacker.result()
            _write_product(r, "stack", np.ascontiguousarray(result.image, np.float32))
            _write_product(r, "coverage", np.ascontiguousarray(result.coverage, np.float32))
    if result is None:
        r.tally.stack_error = r.tally.stack_error or "no frame was registered and resampled: nothing to stack"
        for key in ("stack", "coverage"):  # the manifest says so: a stack.tiff left by an earlier run is stale
            r.record(Record(input=f"({key})", output=PRODUCTS[key], job=JOB, error=r.tally.stack_error,
                            target=r.target_name), None)
    rows = trajectory_rows(r)
    header = {"reference": {"name": r.reference.name, "index": r.reference.index, "shape": list(r.reference.shape),
                            "channels": r.reference.channels, "sha256": r.reference.sha256},
              "pad": args.pad, "grid_shape": list(r.grid_shape), "model": args.model, "options": {"pairwise": r.pairwise, "sequence": r.sequence},
              "settings": r.key, "combine": args.combine, "sigma_clip": args.sigma_clip,
              "stacked": 0 if result is None else result.n_frames,
              "conventions": "matrix = reference_from_frame (x, y pixel centres); drift = H(c) - c at the frame "
                             "centre c; rotation/scale of the similarity closest to dH/dx at c"}
    _write_bytes(r, "trajectory.json", stack_trajectory.to_json(header, rows))
    _write_bytes(r, "trajectory.csv", stack_trajectory.to_csv(rows))
    r.trajectory = rows
    return result


def trajectory_rows(r) -> list[dict]:
    rows = []
    for f in r.frames:
        rec = r.records.get(f.index) or Record(input=f.input, output=f.output, job=JOB, error="no record")
        rows.append(stack_trajectory.row(f.index, rec))
    return rows


def _write_bytes(r, key: str, data: bytes, shape=None, dtype=None) -> None:
    name = PRODUCTS[key]
    try:
        r.outputs.write_atomic(name, data, r.run_id)
        rec = Record(input=f"({key})", output=name, job=JOB, status="ok", target=r.target_name, attempts=1,
                     bytes=len(data), sha256=files.sha256(data), shape=shape, dtype=dtype)
    except Exception as err:  # noqa: BLE001
        rec = Record(input=f"({key})", output=name, job=JOB, error=_error_text(err), target=r.target_name)
    rec = r.record(rec, None)
    if not rec.ok:
        r.tally.stack_error = f"{name}: {rec.error}"


def _write_product(r, key: str, image: np.ndarray) -> None:
    _write_bytes(r, key, pixels.encode_map(image, "tiff"), shape=list(image.shape), dtype="float32")


def write_report(r, result) -> str:
    from . import stack_report

    try:
        name = stack_report.write(r, result)
        return f"; report {printable(name)}"
    except Exception as err:  # noqa: BLE001 - the frames and stack are done; a failed page must not hide that
        return f"; report failed: {type(err).__name__}: {printable(err)}"


def dry_run(r) -> int:
    refused = todo = reused = 0
    for f in r.frames:
        if f.error is not None:
            refused += 1
            print(f"{printable(f.input)}: REFUSED: {printable(f.error)}")
        elif r.args.resume and r.verified(f):
            reused += 1
            print(f"{printable(f.input)}: verified, re-used ({printable(f.output)})")
        else:
            todo += 1
            print(f"{printable(f.input)} -> {printable(f.output)}")
    print(f"dry run: {todo} to register, {reused} verified (re-used), {refused} refused; reference "
          f"{printable(r.reference.name)} {r.reference.shape}; outputs under {printable(r.outputs.url)} "
          f"({', '.join(PRODUCTS.values())}, report.html); manifest {printable(r.m_store.canonical(r.m_name))}")
    return 1 if refused else 0
