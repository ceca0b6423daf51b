"""What one job does to one image, independent of where the pixels are computed.

:class:`JobSpec` holds every option of a run (grouped: :class:`WarpOptions`,
:class:`AlignOptions`) and the two stores (:mod:`.storage`); :func:`process` -- a pure function
of (task, spec, engine) -- reads one input beneath INPUT, checks its header against
``max_pixels`` before anything is decoded (:mod:`.probe`), asks an *engine* (see
:mod:`.backends`: the gRPC service or the in-process library) for the result, writes the output
atomically and returns its :class:`~.record.Record`. Failures become records with
``status="failed"`` and the error, never exceptions (one bad file must not stop a run of
thousands).

``attempts`` counts *tries* of the image's work: 1, plus one per retried failure (an ``align``
job's two calls -- align, then warp onto the reference -- are one try).

Only the numpy geometry of the library is imported here (transforms, errors): the compute
functions (``warpsvc.warp``, ``align``, ...) are the local engine's, loaded by it alone, so a
client-only install (no OpenCV, no numba) runs every job against ``--target`` servers. With
OpenTelemetry configured (``OTEL_TRACES_EXPORTER``), each image's work is one span whose context
travels to the server with its RPCs (:mod:`warpsvc_client.tracing`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field

import numpy as np

from warpsvc.core.errors import InvalidArgumentError, InvalidImageError, WarpsvcError
from warpsvc.core.transforms import ComposedTransform, PolarTransform
from warpsvc_api.image_probe import ImageCost

from .. import tracing
from . import files, pixels, probe
from .paths import image_format, printable, with_suffix
from .record import Record, Timings

JOBS = ("warp", "align", "jacobian")


@dataclass(frozen=True)
class EncodedImage:
    """An image file's bytes and what its header says decoding them produces and costs
    (:class:`~warpsvc_api.image_probe.ImageCost`, checked against ``max_pixels``). A server gets
    the bytes as they are and decodes them itself; the local engine decodes them (once)."""

    data: bytes
    cost: ImageCost

    @property
    def shape(self) -> tuple[int, ...]:
        """What ``cv2.imdecode(IMREAD_UNCHANGED)`` returns: ``(H, W)`` or ``(H, W, C)``."""
        return self.cost.shape


@dataclass(frozen=True)
class WarpOptions:
    """Pass-through options of ``warp`` (library names and defaults)."""

    interpolation: str = "linear"
    border: str = "constant"
    border_value: float = 0.0
    intensity: str = "plain"
    antialias: bool = False
    output_shape: tuple[int, int] | None = None
    jpeg_quality: int = 95

    @property
    def float_output(self) -> bool:
        """The library returns float32/float64 for these options, whatever the input dtype."""
        return self.intensity == "conserve" or self.antialias

    def kwargs(self) -> dict:
        return dict(interpolation=self.interpolation, border=self.border, border_value=self.border_value,
                    intensity=self.intensity, antialias=self.antialias)


@dataclass(frozen=True)
class AlignOptions:
    """Pass-through options of ``align`` (``None``: the library's default). ``search``: how a
    start is found with no initial guess (``"auto"``, ``"local"``, ``"global"``; the library's
    ``search=``)."""

    model: str = "homography"
    robust: str | None = None
    photometric: str | None = "auto"  # the library's default; None is its opt-out (identical exposure)
    levels: object = "auto"
    max_iterations: int | None = None
    tolerance: float | None = None
    time_budget: float | None = None
    fail_unconverged: bool = False
    search: str = "auto"
    max_corner_error: float | None = None  # pixels; inf turns the "uncertain" check off
    denoise: str | None = "auto"  # the library's default; None: never solve on a denoised copy
    min_zncc: float | None = None  # None: the library's default (0.97)

    def kwargs(self) -> dict:
        kw = dict(model=self.model, search=self.search, robust=self.robust, photometric=self.photometric,
                  levels=self.levels, denoise=self.denoise)
        for name in ("max_iterations", "tolerance", "time_budget", "max_corner_error", "min_zncc"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        return kw


@dataclass(frozen=True)
class JobSpec:
    """Everything one image's work needs (picklable: it travels to pool and Dask workers)."""

    job: str
    inputs: object                      # a storage.LocalStore / FsspecStore
    outputs: object
    run_id: str = "000000000000"        # marks this run's temporary files
    max_pixels: int = probe.DEFAULT_MAX_PIXELS
    warp: WarpOptions = WarpOptions()
    align: AlignOptions = AlignOptions()
    transform: object = None            # one warpsvc transform for every image (warp, jacobian)
    reference: EncodedImage | np.ndarray | None = None  # align: the reference file (or its pixels)
    jacobian_format: str = "tiff"       # jacobian: "tiff" (float32) or "npy"
    reference_sha256: str | None = None  # align: of the reference's bytes (set by the CLI: settings_digest)


@dataclass
class Task:
    """One image to do. ``transform`` overrides the spec's (``--transforms`` manifests)."""

    index: int
    input: str
    output: str
    transform: object = None


@dataclass
class CallContext:
    """What an engine reports about the calls made for one image, and its deadline. The image's
    tries are ``1 + len(retried)``: engines append each failure they retry."""

    deadline: float | None = None          # time.monotonic() value, or None
    target: str | None = None
    retried: list = field(default_factory=list)

    @property
    def attempts(self) -> int:
        return 1 + len(self.retried)

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


def output_name(job: str, rel_input: str, spec_warp: WarpOptions, jacobian_format: str = "tiff") -> str:
    """Where an image's output goes, relative to OUTPUT_DIR: the same name, except that float
    results of a PNG/JPEG input become ``.tif`` and Jacobian maps are ``.tif`` or ``.npy``."""
    if job == "jacobian":
        return with_suffix(rel_input, ".npy" if jacobian_format == "npy" else ".tif")
    if spec_warp.float_output and image_format(rel_input) != "tiff":
        return with_suffix(rel_input, ".tif")
    return rel_input


def output_format(rel_output: str) -> str:
    if rel_output.lower().endswith(".npy"):
        return "npy"
    fmt = image_format(rel_output)
    if fmt is None:
        raise InvalidArgumentError(f"output {rel_output!r}: unknown extension (png, jpg, tif, npy)", field="output")
    return fmt


def read_image(data: bytes, max_pixels: int = probe.DEFAULT_MAX_PIXELS) -> EncodedImage:
    """A PNG/JPEG/TIFF file, its header checked against ``max_pixels`` (:mod:`.probe`, the
    server's probe): ``InvalidImageError`` (field ``image``) when it is refused. Nothing is
    decoded."""
    try:
        return EncodedImage(bytes(data), probe.cost(data, max_pixels))
    except probe.ImageHeaderError as err:
        raise InvalidImageError(str(err), field="image") from None


def decode_image(image: EncodedImage, *, exact: bool = True) -> np.ndarray:
    """The pixels as ``cv2.imdecode(IMREAD_UNCHANGED)`` gives them (stored bit depth, BGR order):
    OpenCV when installed, else Pillow/tifffile (:mod:`.pixels`; ``exact=False`` accepts their
    8-bit reading of 16-bit colour files, for pictures)."""
    return pixels.decode(image.data, image.cost, exact=exact)


def decode(data: bytes, max_pixels: int = probe.DEFAULT_MAX_PIXELS, *, exact: bool = True) -> np.ndarray:
    """:func:`read_image` then :func:`decode_image`: nothing is decoded before the header passed."""
    return decode_image(read_image(data, max_pixels), exact=exact)


def pixels_of(image: EncodedImage | np.ndarray, *, exact: bool = True) -> np.ndarray:
    """An image given as a file or as pixels, as pixels."""
    return decode_image(image, exact=exact) if isinstance(image, EncodedImage) else image


def transform_record(transform) -> dict:
    """The manifest's description of a transform: its matrix, or the polar parameters."""
    if hasattr(transform, "matrix"):
        return {"matrix": np.asarray(transform.matrix, np.float64).tolist()}
    if isinstance(transform, PolarTransform):
        return {"polar": {"center": list(transform.center), "max_radius": transform.max_radius,
                          "polar_shape": list(transform.polar_shape), "log": transform.log,
                          "inverse": transform.is_inverse,
                          "cartesian_shape": list(transform.cartesian_shape) if transform.cartesian_shape else None}}
    if isinstance(transform, ComposedTransform):
        return {"chain": [transform_record(t) for t in transform.steps]}
    return {}


ORIENTATIONS = {2: "mirrored", 3: "rotated 180 degrees", 4: "flipped", 5: "transposed", 6: "rotated 90 degrees clockwise",
                7: "transversed", 8: "rotated 90 degrees counter-clockwise"}


def input_notes(cost: ImageCost) -> list[str]:
    """What an output leaves out of its input, for the record's ``notes``: the decoder (OpenCV's
    ``IMREAD_UNCHANGED``, the server's too) reads a TIFF's first directory only and does not
    apply a JPEG's EXIF orientation (a TIFF's it does), so the work is on those pixels as stored.
    Found by a new-user test: both were silent (a 3-page TIFF gave one page, an Orientation=6
    JPEG an output displayed 90 degrees off its input)."""
    notes = []
    if cost.pages > 1:
        notes.append(f"TIFF with {cost.pages} directories (pages): only the first was read")
    if cost.orientation != 1:
        notes.append(f"orientation tag {cost.orientation} ({ORIENTATIONS[cost.orientation]} for display) not "
                     "applied: the work is on the pixels as stored, and the output carries no orientation tag")
    return notes


SETTINGS_VERSION = 1  # bump when the meaning of an output for the same settings changes


def reference_sha256(reference) -> str | None:
    """SHA-256 of the align reference: its file's bytes, or its pixels with their shape and dtype."""
    if reference is None:
        return None
    if isinstance(reference, EncodedImage):
        return hashlib.sha256(reference.data).hexdigest()
    a = np.ascontiguousarray(reference)
    return hashlib.sha256(f"{a.shape}{a.dtype}".encode() + a.tobytes()).hexdigest()


def settings_digest(spec: JobSpec, transform) -> str:
    """The record's ``settings``: 16 hex digits of SHA-256 over what decides an image's output
    besides the image itself -- the job, the warp options (``--intensity``, ``--output-shape``,
    ``--jpeg-quality``, ...), for ``warp`` / ``jacobian`` the transform (this image's, from
    ``--transforms``, or the run's) and the map format, for ``align`` the alignment options and
    the reference's SHA-256. ``--resume`` re-uses an output only when its record carries the
    digest of the current run's settings, so a changed matrix, option or job redoes the image
    instead of keeping an output made otherwise."""
    doc = {"v": SETTINGS_VERSION, "job": spec.job, "warp": dataclasses.asdict(spec.warp)}
    if spec.job == "align":
        doc["align"] = dataclasses.asdict(spec.align)
        doc["reference"] = spec.reference_sha256 or reference_sha256(spec.reference)
    else:
        doc["transform"] = transform_record(transform)
    if spec.job == "jacobian":
        doc["format"] = spec.jacobian_format
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def convergence(result) -> dict:
    return {"converged": bool(result.converged), "reason": result.reason, "iterations": list(result.iterations),
            "rms_error": _finite(float(result.rms_error)), "zncc": _finite(float(result.zncc)),
            "overlap": _finite(float(result.overlap)), "levels": int(result.levels), "model": result.model,
            "start": str(getattr(result, "start", "") or ""), "elapsed": _finite(float(result.elapsed)),
            # image ~ gain * reference + bias per channel (the report's residuals undo it)
            "gain": [_finite(float(g)) for g in result.gain], "bias": [_finite(float(b)) for b in result.bias]}


def _error_text(err: BaseException) -> str:
    name = type(err).__name__
    code = getattr(err, "code", None)
    if callable(code):  # grpc.RpcError
        try:
            return f"{code().name}: {err.details()}"
        except Exception:  # noqa: BLE001 - a non-call RpcError
            pass
    return f"{name}: {err}"


@dataclass(frozen=True)
class Staged:
    """An output already written to a temporary file (by a pool process), awaiting :func:`store`."""

    tmp: str
    size: int
    sha256: str


@dataclass
class _Result:
    """What one image's computation produced, gathered into the :class:`Record` at the end."""

    fields: dict = field(default_factory=dict)
    out: bytes | None = None


def _work(task: Task, spec: JobSpec, engine, ctx: CallContext, res: _Result, timings: dict) -> None:
    t0 = time.monotonic()
    image = read_image(spec.inputs.read(task.input), spec.max_pixels)  # before any decoding, local or remote
    t1 = time.monotonic()
    timings["read"] = t1 - t0
    fmt = output_format(task.output)
    transform = task.transform if task.transform is not None else spec.transform
    f = res.fields
    notes = input_notes(image.cost)
    if notes:
        f["notes"] = notes
    if spec.job == "warp":
        res.out = engine.warp(image, transform, spec.warp, fmt, ctx)
        f.update(transform_record(transform))
    elif spec.job == "align":
        result = engine.align(spec.reference, image, spec.align, ctx)
        f["matrix"], f["inverse"] = result.matrix.tolist(), result.inverse.tolist()
        f["convergence"] = convergence(result)
        if spec.align.fail_unconverged and not result.converged:
            raise WarpsvcError(f"alignment did not converge ({result.reason})")
        opts = dataclasses.replace(spec.warp, output_shape=spec.reference.shape[:2])
        res.out = engine.warp(image, result.transform, opts, fmt, ctx)
    elif spec.job == "jacobian":
        shape = spec.warp.output_shape or transform.default_output_shape(image.shape[:2])
        det = engine.jacobian(transform, tuple(shape), ctx)
        res.out = pixels.encode_map(det, fmt)
        f["shape"], f["dtype"] = list(det.shape), "float32"
        f.update(transform_record(transform))
    else:  # pragma: no cover - argparse limits the choices
        raise ValueError(f"unknown job {spec.job!r}")
    timings["compute"] = time.monotonic() - t1


def compute(task: Task, spec: JobSpec, engine, deadline_seconds: float | None = None, *,
            stage: bool = False) -> tuple[Record, bytes | Staged | None]:
    """Read one input and compute its output file's bytes with ``engine``.

    Returns the record so far and the bytes to write (``None`` when the image failed: the
    record then says why), or with ``stage=True`` a :class:`Staged` temporary file holding them
    (pool processes write it themselves rather than pickle the bytes back). Syncing and
    renaming are :func:`store`'s job, so that a slow disk (``fsync``) never holds a compute
    process or an RPC slot.

    With batch tracing on (:func:`warpsvc_client.tracing.start_batch`) the work is one span,
    current while the engine calls the server (so its RPCs carry the span's ``traceparent``);
    off, the span is a shared null context.
    """
    t0 = time.monotonic()
    ctx = CallContext(deadline=None if deadline_seconds is None else t0 + deadline_seconds)
    res, timings, error = _Result(), {}, None
    with tracing.image_span(spec.job, printable(task.input)) as span:
        try:
            _work(task, spec, engine, ctx, res, timings)
            if stage and res.out is not None and spec.outputs.can_stage:
                out = res.out
                res.out = Staged(spec.outputs.stage(task.output, out, spec.run_id), len(out), files.sha256(out))
        except Exception as err:  # noqa: BLE001 - every failure becomes the image's record
            error, res.out = _error_text(err), None
        timings["total"] = time.monotonic() - t0
        transform = task.transform if task.transform is not None else spec.transform
        rec = Record(input=task.input, output=task.output, job=spec.job, error=error,
                     target=ctx.target or getattr(engine, "name", None), attempts=ctx.attempts,
                     retried=tuple(ctx.retried), settings=settings_digest(spec, transform),
                     timings=Timings(**timings), **res.fields)
        if span is not None:
            tracing.image_outcome(span, rec.error, attempts=rec.attempts, target=rec.target,
                                  converged=(rec.convergence or {}).get("converged"))
    return rec, res.out


def store(rec: Record, out: bytes | Staged, spec: JobSpec) -> Record:
    """Write ``out`` atomically to the record's output (or commit the staged temporary file);
    the record becomes ``ok`` (or says why not: ``ENOSPC`` fails this image, not the run)."""
    t0 = time.monotonic()
    try:
        if isinstance(out, Staged):
            spec.outputs.commit(rec.output, out.tmp)
            done = dict(status="ok", bytes=out.size, sha256=out.sha256)
        else:
            spec.outputs.write_atomic(rec.output, out, spec.run_id)
            done = dict(status="ok", bytes=len(out), sha256=files.sha256(out))
    except Exception as err:  # noqa: BLE001
        done = dict(error=_error_text(err))
    took = time.monotonic() - t0
    timings = dataclasses.replace(rec.timings, write=took, total=(rec.timings.total or 0.0) + took)
    return rec.replace(timings=timings, **done)


def process(task: Task, spec: JobSpec, engine, deadline_seconds: float | None = None) -> Record:
    """:func:`compute` then :func:`store`: one image, start to finish; returns its record."""
    rec, out = compute(task, spec, engine, deadline_seconds)
    return rec if out is None else store(rec, out, spec)
