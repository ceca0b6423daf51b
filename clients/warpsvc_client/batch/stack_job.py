"""``warpsvc-batch stack INPUT OUTPUT``: register a folder's frames as a sequence and co-add them.

The frames are the images the other jobs would find (:func:`.paths.discover`: recursive,
``--include`` / ``--exclude``), taken in sorted order as one sequence (so ``--shard`` is refused).

1. **Registration** (in order, one pass): ``--target local`` (default) runs the library's
   :func:`warpsvc.align_sequence` in this process; ``--target host:port`` streams the decoded
   frames over the ``AlignStream`` RPC (:meth:`warpsvc_client.WarpClient.align_stream`) of the
   first target. The reference (``--reference``) is a frame of the folder (by its relative name
   or its path) or any other image; by default the first frame that can be read. Frames that
   cannot be read (or whose channel count differs from the reference's) are recorded as failed
   and left out of the sequence; a frame the library cannot register (``method
   "unregistered"``) is recorded as failed too (its predicted matrix is kept in the record).
2. **Resampling**: each registered frame is resampled once onto the reference grid,
   ``intensity="conserve", antialias=True`` (flux conserved locally), written atomically as
   ``aligned/<name>.tif`` (float32) and recorded in the manifest with its SHA-256. The warps go
   through the same engine as the other jobs (:mod:`.backends`): the library, or the server's
   ``Warp`` RPC with ``--target`` (the file's bytes are sent, the float32 TIFF comes back),
   while the next frames are being registered.
3. **Stack** (:mod:`.stack_combine`): the verified aligned frames are read back (their SHA-256
   checked against the manifest) and co-added with the library's ``Stacker`` (``--combine mean |
   sum | median``, ``--sigma-clip KAPPA``); ``stack.tiff`` (float32; NaN where no frame covers for
   mean/median) and ``coverage.tiff`` (float32, frames covering each pixel, fractional at frame
   edges) are written, then ``trajectory.json`` / ``trajectory.csv`` (:mod:`.stack_trajectory`)
   and ``report.html`` (:mod:`.stack_report`).

**Manifest and --resume.** One record per frame (``input`` the frame, ``output`` its aligned
file, ``matrix`` / ``inverse`` = ``reference_from_frame`` / its inverse, ``convergence`` the
sequence result: method, hops, covariance, ...), plus one per product (``input`` ``(stack)``,
``(coverage)``, ``(trajectory.json)``, ``(trajectory.csv)``: names no discovered frame can have).
A frame is *verified* when its last record is ``ok`` for the same aligned file, that file has
the recorded size and SHA-256, and the record was made with the same registration settings
(model, options, reference image digest: ``settings`` in the record). ``--resume`` re-uses
verified frames (neither resampled nor rewritten) and always recomputes the stack, coverage,
trajectory and report from the verified aligned frames, so a resumed run writes the same bytes
as an uninterrupted one. Registration is a chain (a frame's result depends on its
predecessors' state: previous frame, keyframes), so when frames are missing the verified frames
before the last missing one are registered again (*replayed*: aligned only, to rebuild that
state; their recorded results are kept and compared) -- nothing is replayed when every frame is
verified.

Exit codes as for the other jobs: 0 every frame registered and stacked, 1 at least one frame (or
the stack) failed, 2 bad usage (``--shard``, ``--engine dask``, an unreadable ``--reference``).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from warpsvc_api.alpha_warp import alpha_as_nan

from . import files, manifest, paths, pixels, storage
from .argtypes import correlation, levels
from .jobs import EncodedImage, WarpOptions, _error_text, decode, decode_image, read_image
from .paths import printable
from .record import Record

JOB = "stack"
ALIGNED_DIR = "aligned"
PRODUCTS = {"stack": "stack.tiff", "coverage": "coverage.tiff", "trajectory.json": "trajectory.json",
            "trajectory.csv": "trajectory.csv"}
MODELS = ("translation", "euclidean", "similarity", "affine", "homography")


class StackUsageError(Exception):
    """Bad usage of ``stack`` (exit 2)."""


# -- command line ------------------------------------------------------------------------------------
def add_parser(sub, common) -> argparse.ArgumentParser:
    s = sub.add_parser("stack", parents=[common], help="register the frames as a sequence and co-add them",
                       description="Register INPUT's frames (sorted) as one sequence, resample each onto the "
                                   "reference grid with flux conserved, and co-add them (docs/batch.md).")
    g = s.add_argument_group("sequence registration")
    g.add_argument("--reference", metavar="FILE",
                   help="the reference: a frame of INPUT (relative name or path) or another image (path or URL); "
                        "default: the first frame that can be read")
    g.add_argument("--model", default="homography", choices=MODELS)
    g.add_argument("--robust", choices=("huber", "tukey"))
    g.add_argument("--photometric", choices=("gain_bias", "none"),
                   help="appearance model of each pairwise alignment (default gain_bias, the sequence default: "
                        "exposure flicker; 'none' compares intensities as they are)")
    g.add_argument("--levels", type=levels, default="auto", help="pyramid levels (1-12) or 'auto'")
    g.add_argument("--max-iterations", type=int)
    g.add_argument("--tolerance", type=float)
    g.add_argument("--min-zncc", type=correlation, metavar="Z",
                   help="smallest noise-corrected correlation of a converged pairwise alignment, in [-1, 1]; "
                        "below it that alignment fails with reason 'low_correlation' (default: the library's, 0.97)")
    g.add_argument("--motion-prior", choices=("static", "constant_velocity"),
                   help="initial guess of a frame-to-frame step (default static: a shaky camera)")
    g.add_argument("--max-keyframes", type=int, help="keyframes kept as extra anchors (default 4)")
    g.add_argument("--no-reanchor", action="store_true",
                   help="pure chaining of frame-to-frame steps (the error then grows with the sequence)")
    k = s.add_argument_group("stacking")
    k.add_argument("--combine", default="mean", choices=("mean", "sum", "median"),
                   help="mean (flux per pixel, default), sum (total flux preserved) or median")
    k.add_argument("--pad", type=int, default=0, metavar="PX",
                   help="extend the reference grid by PX pixels on every side (aligned frames, stack and coverage; "
                        "frames that drift out of the reference keep their flux); default 0")
    k.add_argument("--sigma-clip", type=float, metavar="KAPPA",
                   help="reject samples further than KAPPA standard deviations from the per-pixel median")
    return s


def refuse(args) -> None:
    """Options that make no sense for a sequence (exit 2, with the reason)."""
    if args.shard:
        raise StackUsageError("--shard: a sequence is registered in order as one chain and stacked as a whole; "
                              "it cannot be split into shards (run stack on the whole folder)")
    if args.engine == "dask":
        raise StackUsageError("--engine dask: stack registers one sequence in order; use --target local or a server")
    if args.max_pixels < 1:
        raise StackUsageError("--max-pixels must be positive")
    if args.sigma_clip is not None and not (args.sigma_clip > 0 and np.isfinite(args.sigma_clip)):
        raise StackUsageError(f"--sigma-clip must be a positive number of standard deviations, got {args.sigma_clip}")
    if not 0 <= args.pad <= 1 << 15:
        raise StackUsageError(f"--pad must be between 0 and 32768 pixels, got {args.pad}")


def registration_options(args) -> tuple[dict, dict]:
    """``(pairwise, sequence)`` keyword options given on the command line (unset: library default)."""
    pairwise = {"robust": args.robust, "levels": None if args.levels == "auto" else args.levels,
                "max_iterations": args.max_iterations, "tolerance": args.tolerance, "min_zncc": args.min_zncc}
    pairwise = {k: v for k, v in pairwise.items() if v is not None}
    if args.photometric is not None:  # 'none' is the library's None (sent as PHOTOMETRIC_NONE)
        pairwise["photometric"] = None if args.photometric == "none" else args.photometric
    sequence = {"motion_prior": args.motion_prior, "max_keyframes": args.max_keyframes,
                "reanchor": False if args.no_reanchor else None}
    return pairwise, {k: v for k, v in sequence.items() if v is not None}


# -- planning ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    index: int          # position in the sorted list of frames
    input: str
    output: str         # aligned/<name>.tif
    error: str | None = None


@dataclass
class Reference:
    name: str                   # a frame's relative name, or the --reference text
    index: int | None           # the frame's index, None for an external image
    image: np.ndarray | None = None
    sha256: str = ""
    alpha: bool = False         # the file says its last channel is alpha (registered as a mask)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape[:2])

    @property
    def channels(self) -> int:
        return channels_of(self.image)


def channels_of(img: np.ndarray) -> int:
    return 1 if img.ndim == 2 else img.shape[2]


def aligned_name(rel: str) -> str:
    return f"{ALIGNED_DIR}/{paths.with_suffix(rel, '.tif')}"


def plan_frames(args, inputs, outputs) -> list[Frame]:
    nested = paths.is_under(outputs.canonical(), inputs.canonical()) and outputs.canonical() != inputs.canonical()
    found = paths.discover(inputs, include=args.include, exclude=args.exclude, skip=outputs.url if nested else None)
    planned = paths.plan([(rel, aligned_name(rel)) for rel in found], inputs, outputs)
    return [Frame(i, p.input, p.output, p.error) for i, p in enumerate(planned)]


def read_frame(inputs, rel: str, max_pixels: int) -> tuple[bytes, np.ndarray]:
    data = inputs.read(rel)
    return data, decode(data, max_pixels)


def registration_pixels(data: bytes, img: np.ndarray, max_pixels: int, like: np.ndarray | None = None) -> np.ndarray:
    """What the sequence registration sees of a frame decoded from ``data``: a file whose header
    says it has alpha gives its colour channels with the transparent pixels NaN (missing), as
    the server's AlignStream does (:func:`warpsvc_api.alpha_warp.alpha_as_nan`; ``like``: the
    reference, for a grey + alpha frame against a grey one); any other frame as decoded. The
    stack itself resamples the file's own pixels."""
    if img.ndim != 3 or img.shape[2] not in (2, 4):
        return img
    return alpha_as_nan(img, read_image(data, max_pixels).cost.alpha, like)


def find_reference(args, frames: list[Frame], inputs) -> Reference | None:
    """The ``--reference`` as a frame (matched by relative name, then by canonical path) or an
    external image; ``None`` when not given (then the first readable frame is the reference)."""
    text = args.reference
    if text is None:
        return None
    usable = [f for f in frames if f.error is None]
    norm = text.replace("\\", "/")
    for f in usable:
        if f.input == norm:
            return Reference(f.input, f.index)
    head, _, name = norm.rpartition("/")
    try:
        store = storage.open_store(head or ".", args.storage_options)
        canonical = store.canonical(name)
    except (paths.PathError, OSError, ValueError):
        canonical = None
    if canonical is not None:
        for f in usable:
            try:
                if inputs.canonical(f.input) == canonical:
                    return Reference(f.input, f.index)
            except paths.PathError:
                continue
    try:
        data = storage.open_store(head or ".", args.storage_options).read(name)
        encoded = read_image(data, args.max_pixels)
        img = decode_image(encoded)
    except Exception as err:  # noqa: BLE001
        raise StackUsageError(f"--reference {printable(text)}: {printable(_error_text(err))}") from None
    return Reference(text, None, img, hashlib.sha256(data).hexdigest(), bool(encoded.cost.alpha))


def settings_key(model: str, pairwise: dict, sequence: dict, reference: Reference, pad: int = 0) -> str:
    """Digest of what decides a frame's registration and resampling: model, options, reference
    image. A record made with other settings is not re-used by ``--resume``."""
    doc = {"model": model, "pairwise": pairwise, "sequence": sequence, "reference_sha256": reference.sha256,
           "reference_index": reference.index, "resample": "conserve+antialias", "pad": pad}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


# -- the run -----------------------------------------------------------------------------------------
@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    skipped: int = 0          # verified frames re-used
    registered: int = 0       # frames aligned in this run (registered or not: the rate's count)
    unregistered: int = 0     # ... of which the sequence could not register (recorded failed)
    replayed: int = 0         # verified frames registered again to rebuild the chain
    replay_mismatch: int = 0  # ... whose new result differs from the recorded one
    elapsed: float = 0.0
    failures: list = field(default_factory=list)
    stack_error: str | None = None


class Run:
    """State of one ``stack`` run (stores, plan, engine, manifest, records)."""

    def __init__(self, args, command: str, make_engine):
        self.args, self.command = args, command
        fsync = not args.no_fsync
        self.inputs = storage.open_store(args.input_dir, args.storage_options, fsync=fsync)
        self.outputs = storage.open_store(args.output_dir, args.storage_options, fsync=fsync)
        paths.check_trees(self.inputs, self.outputs, args.allow_nested_output)
        self.run_id = storage.new_run_id()
        self.frames = plan_frames(args, self.inputs, self.outputs)
        self.pairwise, self.sequence = registration_options(args)
        self.reference = find_reference(args, self.frames, self.inputs)
        self.m_store, self.m_name = manifest.location(args.manifest, self.outputs)
        m_canon = self.m_store.canonical(self.m_name)
        if paths.is_under(m_canon, self.inputs.canonical()) and not paths.is_under(m_canon, self.outputs.canonical()):
            raise StackUsageError(f"--manifest {printable(args.manifest)} is inside INPUT_DIR: inputs are never "
                                  "overwritten")
        self.previous = manifest.load(self.m_store, self.m_name) if args.resume else {}
        self.make_engine = make_engine
        self.engine = None
        self.records: dict[int, Record] = {}   # frame index -> its final record (this run's or verified)
        self.reused: set[int] = set()           # verified frames taken from the previous manifest
        self.tally = Tally()
        self.key = ""
        self.pending_failures: collections.deque[tuple[int, Record]] = collections.deque()  # (index, record)
        self._local = threading.local()
        self._ones: dict = {}
        self.trajectory: list[dict] = []

    # -- engines -------------------------------------------------------------------------------
    def warp_engine(self):
        """This thread's engine: the shared gRPC engine, or a LocalEngine per thread (it caches
        the last decoded image, which must not be shared)."""
        if self.engine is not None:
            return self.engine
        if not hasattr(self._local, "engine"):
            from .backends import LocalEngine

            self._local.engine = LocalEngine(self.args.max_pixels)
        return self._local.engine

    @property
    def grid_shape(self) -> tuple[int, int]:
        """The output grid: the reference's, ``--pad`` pixels wider on every side."""
        h, w = self.reference.shape
        return (h + 2 * self.args.pad, w + 2 * self.args.pad)

    def grid_transform(self, matrix):
        """``grid_from_frame = translation(pad, pad) @ reference_from_frame`` as a transform."""
        m = np.asarray(matrix, np.float64).copy()
        if self.args.pad:
            m = np.array([[1, 0, self.args.pad], [0, 1, self.args.pad], [0, 0, 1.0]]) @ m
        return as_transform(m)

    def ones_png(self, shape) -> EncodedImage:
        """A grey PNG of ones of a frame's size (its conserving warp is the frame's area per output
        pixel), as the engines take images."""
        key = tuple(shape)
        if key not in self._ones:
            self._ones[key] = read_image(pixels.png(np.ones(key[:2], np.uint8)), self.args.max_pixels)
        return self._ones[key]

    @property
    def target_name(self) -> str:
        return "local" if self.engine is None else self.engine.name

    # -- reference -----------------------------------------------------------------------------
    def resolve_reference(self) -> list[tuple[Frame, bytes, np.ndarray]]:
        """Decode the reference (a frame) and every frame before it (the library holds those until
        the reference arrives anyway); frames that cannot be read are recorded as failed. Returns the
        readable frames before the reference, in order."""
        before = []
        ref = self.reference
        if ref is not None and ref.index is None:
            return before
        for f in self.frames:
            if f.error is not None:
                continue
            if ref is not None and f.index > ref.index:
                break
            try:
                data, img = read_frame(self.inputs, f.input, self.args.max_pixels)
            except Exception as err:  # noqa: BLE001
                if ref is not None and f.index == ref.index:
                    raise StackUsageError(f"--reference {printable(f.input)}: {printable(_error_text(err))}") from None
                self.pending_failures.append((f.index, self._failed(f, _error_text(err))))
                continue
            if ref is None:
                self.reference = ref = Reference(f.input, f.index)
            if f.index == ref.index:
                ref.image, ref.sha256 = img, hashlib.sha256(data).hexdigest()
                ref.alpha = bool(read_image(data, self.args.max_pixels).cost.alpha)
                before.append((f, data, img))
                break
            before.append((f, data, img))
        if ref is None:
            raise StackUsageError("no frame of INPUT can be read (nothing to register)")
        return before

    # -- records -------------------------------------------------------------------------------
    def _failed(self, f: Frame, error: str, **fields) -> Record:
        return Record(input=f.input, output=f.output, job=JOB, error=error, target=self.target_name,
                      attempts=0 if not fields else 1, **fields)

    def record(self, rec: Record, index: int | None) -> Record:
        """Append ``rec`` to the manifest (``index``: the frame's, ``None`` for a product) and keep it
        as the frame's final record; a failed manifest write fails the frame (``--resume`` redoes it)."""
        try:
            self.writer.write(rec)
        except OSError as err:
            rec = rec.replace(status="failed", error=f"manifest not written ({err.strerror or err}); output "
                                                     f"{'written' if rec.ok else 'not written'}")
        if index is not None:
            self.records[index] = rec
            if rec.ok:
                self.dirsync.add(rec.output)
        return rec

    def count(self) -> None:
        """The tally of frames from their final records."""
        t = self.tally
        final = [self.records.get(f.index) for f in self.frames]
        t.ok = sum(1 for rec in final if rec is not None and rec.ok)
        t.failed = len(final) - t.ok
        t.failures = [rec for rec in final if rec is not None and not rec.ok]
        t.skipped = sum(1 for f in self.frames if f.index in self.reused and self.records[f.index].ok)

    def verified(self, f: Frame) -> bool:
        rec = self.previous.get(f.input)
        return (rec is not None and (rec.convergence or {}).get("settings") == self.key
                and manifest.is_complete(rec, self.outputs, f.output))

    def frame_fields(self, f: Frame, res, img_shape, channels, index_of_seq) -> dict:
        d = res.to_dict()

        def planned(seq_index):
            return None if seq_index is None else index_of_seq(seq_index)

        conv = {"converged": bool(res.registered), "reason": res.reason, "method": res.method, "hops": res.hops,
                "anchor": planned(res.anchor), "previous": planned(res.previous), "step": d["step"],
                "covariance": None if res.covariance is None else np.asarray(res.covariance).tolist(),
                "corner_sd": d["corner_sd"], "zncc": float(res.zncc), "rms_error": float(res.rms_error),
                "alignments": int(res.alignments), "index": f.index, "frame_shape": list(img_shape[:2]),
                "channels": channels, "reference_shape": list(self.reference.shape), "settings": self.key}
        return {"matrix": np.asarray(res.matrix).tolist(), "inverse": np.asarray(res.inverse).tolist(),
                "convergence": conv}


def warp_options(shape) -> WarpOptions:
    return WarpOptions(intensity="conserve", antialias=True, output_shape=tuple(shape))


def as_transform(matrix):
    import warpsvc

    m = np.asarray(matrix, np.float64)
    if np.array_equal(m[2], [0.0, 0.0, 1.0]):
        return warpsvc.AffineTransform(m)
    return warpsvc.HomographyTransform(m)


def one_blas_thread() -> None:
    """One BLAS thread in this process, as a server worker has (``--blas-threads`` 1): a float64
    reduction such as a residual's ``np.dot(e, e)`` is split across BLAS threads above ~10^4
    elements, so its last bit depends on the thread count, and a ``--resume --target local``
    after a server run would write a trajectory that differs from the uninterrupted run in the
    last digit of an ``rms_error``. The registration's threads are the parallelism here."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl comes with warpsvc
        pass


def run(args, command: str, make_engine) -> int:
    """The ``stack`` job (module docstring). ``make_engine(args)``: the gRPC engine or ``None``."""
    from . import stack_passes

    start = time.monotonic()
    os.environ.setdefault("CV_IO_MAX_IMAGE_PIXELS", str(max(1, args.max_pixels)))
    refuse(args)
    r = Run(args, command, make_engine)
    before = r.resolve_reference()
    r.key = settings_key(args.model, r.pairwise, r.sequence, r.reference, args.pad)
    stack_passes.check_memory(r)
    if args.dry_run:
        return stack_passes.dry_run(r)
    r.engine = make_engine(args)
    if r.engine is None:
        one_blas_thread()
    local_out = isinstance(r.outputs, storage.LocalStore)
    lock = files.FolderLock(r.outputs, r.run_id) if local_out else files.NoLock()
    report_note = ""
    try:
        with lock:
            r.dirsync = files.DirSync(r.outputs if local_out else None, enabled=not args.no_fsync)
            r.writer = manifest.open_writer(r.m_store, r.m_name, append=args.resume, dirsync=r.dirsync,
                                            fsync=not args.no_fsync)
            try:
                stack_passes.register_and_resample(r, before)
                result = stack_passes.stack_and_write(r)
            finally:
                lock.sweep_own()
                try:
                    r.writer.close()
                except OSError as err:
                    print(f"warpsvc-batch: manifest could not be synced: {printable(err)}", file=sys.stderr)
                    r.tally.stack_error = r.tally.stack_error or "manifest not synced"
            r.count()
            r.tally.elapsed = time.monotonic() - start
            if not args.no_report:
                report_note = stack_passes.write_report(r, result)
    finally:
        if r.engine is not None:
            r.engine.close()
    summary(r, report_note)
    return 1 if r.tally.failed or r.tally.stack_error else 0


def summary(r: Run, report_note: str) -> None:
    t = r.tally
    for rec in t.failures[:10]:
        print(f"FAILED {printable(rec.input)}: {printable(rec.error)}", file=sys.stderr)
    if len(t.failures) > 10:
        print(f"... and {len(t.failures) - 10} more failures (see the manifest)", file=sys.stderr)
    if t.stack_error:
        print(f"FAILED stack: {printable(t.stack_error)}", file=sys.stderr)
    n = len(r.frames)
    rate = t.registered / t.elapsed if t.elapsed > 0 else 0.0
    replay = f" (replayed {t.replayed}, {t.replay_mismatch} differing from the manifest)" if t.replayed else ""
    print(f"warpsvc-batch stack: {t.ok} ok, {t.failed} failed, {t.skipped} skipped (verified, re-used) of {n} frames "
          f"in {t.elapsed:.1f} s; registered {t.registered - t.unregistered} of {t.registered} aligned "
          f"({rate:.1f} frames/s){replay}; reference "
          f"{printable(r.reference.name) if r.reference else '-'}; manifest "
          f"{printable(r.m_store.canonical(r.m_name))}{report_note}", flush=True)


__all__ = ["Frame", "Reference", "Run", "add_parser", "aligned_name", "as_transform", "refuse", "run", "warp_options"]
