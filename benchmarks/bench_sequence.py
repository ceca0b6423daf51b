"""Sequence registration and stacking on a synthetic shaky video cut from a real photograph.

    python benchmarks/bench_sequence.py                 # 300 frames (the issue's figure)
    python benchmarks/bench_sequence.py --frames 60     # smoke run

Data. ``skimage.data.astronaut()`` (grey, enlarged 1.5x to 768x768 with bicubic interpolation
to leave room for the drift, Gaussian blur sigma = 1 px for the optics) seen by a 192x256
camera whose ``photo_from_frame`` homography does a bounded random walk: a drift whose
velocity is itself a random walk (per frame N(0, 0.35 px) per axis, N(0, 0.05 deg) of roll,
N(0, 0.05 %) of zoom; damped 0.99; reflected at +-150 / +-100 px, +-20 deg, +-6 %), plus
per-frame shake (N(0, 1.5 px) per axis, N(0, 0.15 deg), N(0, 0.1 %)) and perspective terms
walking by N(0, 5e-6) within +-1e-4. Frames are rendered with the
antialiased warp (each pixel integrates the photograph over its footprint: a shift-invariant
blur, so frames differ by the geometry only), then exposure flicker (gain 1 + N(0, 0.05),
bias N(0, 5)) and Gaussian noise (sigma = 2 grey levels) are applied; frame 0 is the reference.
The truth ``reference_from_frame = inv(P_0) P_k`` is known exactly.

Methods, on the same pre-rendered frames (a list handed over as an iterator):

* ``sequence``: ``align_sequence(frames, "homography")`` (frame-to-frame steps, re-anchoring on
  the reference or keyframes).
* ``direct`` (the anchor): ``warpsvc.align(reference, frame_k, "homography")`` from the
  identity for every frame, the same per-pair options (gain/bias) as ``sequence``.
* ``chain``: ``align_sequence(..., options=SequenceOptions(reanchor=False))``: products of the
  frame-to-frame steps only (the error of a pure chain grows like a random walk).

Error: the largest distance, over the frame's four corners mapped into the reference, between
estimate and truth (reference px); a direct alignment that does not converge counts as
failed (infinite error). Registered within 0.1 px = error <= 0.1. Error vs frame
index: median / max over consecutive blocks of 30 frames. Covariance check: share of the
reference corners whose true image in the frame lies inside the 95 % ellipse of
``FrameResult.corner_covariance`` (chi^2, 2 dof).

Speed: frames/s of ``sequence`` and ``direct`` with OpenCV's default threads and BLAS as
loaded, and with one thread each (``cv2.setNumThreads(1)``, ``threadpoolctl``); and of
``stream``: the same ``sequence`` over the AlignStream RPC to a ``warpsvc serve`` the benchmark
starts on 127.0.0.1 (one worker, metrics on, the same thread counts), whose ratio to the local
``sequence`` is the issue's ">= 0.9x local" figure (``--no-stream`` skips it); the three
methods alternate, ``--repeats`` times per setting; medians. The machine is shared (2 cores,
other work running): the load average is recorded.

Stacking (``stack`` with the ``sequence`` transforms onto the reference grid):

* noise: the residual of the mean stack of the first N noisy frames against the mean stack of
  the same frames without noise (same flicker), over the reference pixels all N frames cover;
  the ratio of its std to ``sqrt(mean_k var_k / N)`` (``var_k`` the single frames'
  residual variances there, the 1/sqrt(N) law for independent frames) should be ~1;
* flux: the sum stack on a grid that every frame lands inside (the bounding box of all
  footprints); relative difference of its total from the sum of all frames' totals (float64).

Output: JSON in ``benchmarks/results/sequence.json`` (``--json``), a summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage import color, data
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import warpsvc
from warpsvc.core.sequence import SequenceOptions, align_sequence, stack
from warpsvc.core.sequence.options import default_align_options

FRAME = (192, 256)  # (h, w)
PHOTO_SCALE = 1.5
CHI2_2DOF_95 = 5.991464547107979
BLOCK = 30
NOISE_COUNTS = (1, 4, 16, 64, 300)


# -- the sequence ------------------------------------------------------------------------------
def photograph() -> np.ndarray:
    """The astronaut, grey, enlarged 1.5x (room for the drift) and blurred by 1 px (optics)."""
    grey = (color.rgb2gray(data.astronaut()) * 255.0).astype(np.float32)
    grey = cv2.resize(grey, None, fx=PHOTO_SCALE, fy=PHOTO_SCALE, interpolation=cv2.INTER_CUBIC)
    return ndi.gaussian_filter(grey, 1.0)


def reflect(value, velocity, bound):
    """One step of a walk kept inside ``[-bound, bound]`` (reflected, velocity reversed)."""
    v = value + velocity
    if v > bound:
        return 2 * bound - v, -velocity
    if v < -bound:
        return -2 * bound - v, -velocity
    return v, velocity


def trajectory(n: int, seed: int, photo_shape) -> list[np.ndarray]:
    """``photo_from_frame`` (3x3) per frame: the bounded random walk of the module docstring."""
    rng = np.random.default_rng(seed)
    h, w = FRAME
    ph, pw = photo_shape
    centre = np.array([[1, 0, (pw - w) / 2], [0, 1, (ph - h) / 2], [0, 0, 1.0]])
    about = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1.0]])
    # state: drift (tx, ty, roll, zoom) and its velocity; shake is added on top per frame
    pos = np.zeros(4)
    vel = np.zeros(4)
    bounds = np.array([150.0, 100.0, np.deg2rad(20.0), 0.06])
    accel = np.array([0.35, 0.35, np.deg2rad(0.05), 0.0005])
    shake = np.array([1.5, 1.5, np.deg2rad(0.15), 0.001])
    persp = np.zeros(2)
    out = []
    for k in range(n):
        if k:
            vel = 0.99 * vel + rng.normal(0, accel)
            for i in range(4):
                pos[i], vel[i] = reflect(pos[i], vel[i], bounds[i])
            persp = np.clip(persp + rng.normal(0, 5e-6, 2), -1e-4, 1e-4)
        tx, ty, angle, zoom = pos + (rng.normal(0, shake) if k else 0.0)
        c, s = np.cos(angle) * (1 + zoom), np.sin(angle) * (1 + zoom)
        local = np.array([[c, -s, 0], [s, c, 0], [persp[0], persp[1], 1.0]])
        out.append(np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1.0]]) @ centre @ about @ local @ np.linalg.inv(about))
    return out


def render(photo: np.ndarray, photo_from_frame: np.ndarray) -> np.ndarray:
    """The noise-free frame: the photograph's part under the frame, antialiased (cropped first,
    so the scatter only visits the pixels that matter)."""
    h, w = FRAME
    corners = warpsvc.HomographyTransform(photo_from_frame).map([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1.0]])
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int) - 4, 0)
    x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 5, photo.shape[::-1])
    crop_from_frame = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1.0]]) @ photo_from_frame
    return warpsvc.warp(photo[y0:y1, x0:x1], warpsvc.HomographyTransform(crop_from_frame).inverse(), FRAME,
                        antialias=True)


def make_frames(n: int, seed: int):
    photo = photograph()
    truth = trajectory(n, seed, photo.shape)
    rng = np.random.default_rng(seed + 1)
    clean, noisy = [], []
    for m in truth:
        f = render(photo, m).astype(np.float64)
        f = f * (1 + rng.normal(0, 0.05)) + rng.normal(0, 5.0)  # exposure flicker
        clean.append(f)
        noisy.append((f + rng.normal(0, 2.0, f.shape)).astype(np.float32))
    ref_from = [np.linalg.inv(truth[0]) @ m for m in truth]
    return clean, noisy, ref_from, truth


# -- measures ---------------------------------------------------------------------------------
def frame_corners():
    h, w = FRAME
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1.0]])


def corner_error(estimate, truth) -> float:
    x = frame_corners()
    a = warpsvc.HomographyTransform(estimate).map(x)
    b = warpsvc.HomographyTransform(truth).map(x)
    return float(np.linalg.norm(a - b, axis=1).max())


def ellipse_hits(result, truth) -> list[bool]:
    """Per reference corner: is its true image in the frame inside the 95 % ellipse?"""
    if result.covariance is None:
        return []
    x = frame_corners()
    est = warpsvc.HomographyTransform(result.inverse).map(x)
    tru = warpsvc.HomographyTransform(np.linalg.inv(truth)).map(x)
    hits = []
    for e, cov in zip(est - tru, result.corner_covariance):
        try:
            hits.append(bool(e @ np.linalg.solve(cov, e) <= CHI2_2DOF_95))
        except np.linalg.LinAlgError:
            hits.append(False)
    return hits


def by_block(errors):
    rows = []
    for start in range(0, len(errors), BLOCK):
        e = np.asarray(errors[start:start + BLOCK])
        rows.append({"frames": [start, start + len(e) - 1], "median": float(np.median(e)), "max": float(e.max())})
    return rows


def summary(errors):
    e = np.asarray(errors)
    return {"within_0.1px": float(np.mean(e <= 0.1)), "median": float(np.median(e)), "max": float(e.max()),
            "p99": float(np.quantile(e, 0.99, method="higher")), "failed": float(np.mean(~np.isfinite(e))), "last_frame": float(e[-1]), "by_block": by_block(errors)}


# -- runs -------------------------------------------------------------------------------------
def run_sequence(frames, options=None):
    t = time.perf_counter()
    results = list(align_sequence(iter(frames), "homography", options=options))
    return results, time.perf_counter() - t


def run_direct(frames):
    opts = default_align_options().replace(model="homography")
    t = time.perf_counter()
    results = [warpsvc.align(frames[0], f, "homography", options=opts) for f in frames[1:]]
    return results, time.perf_counter() - t


def run_stream(client, frames):
    """The same sequence over the AlignStream RPC (frame 0 the reference, frames sent raw)."""
    t = time.perf_counter()
    results = list(client.align_stream(iter(frames), 0, "homography"))
    return results, time.perf_counter() - t


def timed_runs(frames, repeats, stream=True):
    """Alternate sequence / direct / stream, default threads then one thread; medians of frames/s.

    ``stream``: a ``warpsvc serve`` subprocess on 127.0.0.1 per thread setting (one worker, the
    same OpenCV / BLAS threads as the local runs, metrics on: ``bench_stream.start_server``); its
    frames/s against the local ``sequence`` run of the same round is the issue-15 ratio (>= 0.9),
    and every stream matrix must equal the local one exactly."""
    from bench_stream import start_server, stop_server
    from warpsvc_client import WarpClient

    default_cv = cv2.getNumThreads()
    out = {}
    seq_results = direct_results = None
    for label, cv_threads, blas in (("default_threads", default_cv, None), ("one_thread", 1, 1)):
        cv2.setNumThreads(cv_threads)
        seq_fps, direct_fps, stream_fps, equal = [], [], [], True
        server = client = None
        try:
            if stream:
                server, target = start_server(cv_threads, blas or os.cpu_count())
                client = WarpClient(target, timeout=3600, retries=1)
                run_stream(client, frames[:5])  # warm-up: connection, the server's kernels
            with threadpool_limits(limits=blas):
                for _ in range(repeats):
                    seq_results, dt = run_sequence(frames)
                    seq_fps.append(len(frames) / dt)
                    direct_results, dt = run_direct(frames)
                    direct_fps.append((len(frames) - 1) / dt)
                    if client is not None:
                        remote, dt = run_stream(client, frames)
                        stream_fps.append(len(frames) / dt)
                        equal = equal and len(remote) == len(seq_results) and all(
                            np.array_equal(r.matrix, loc.matrix) for r, loc in zip(remote, seq_results))
        finally:
            if client is not None:
                client.close()
            if server is not None:
                stop_server(server)
        out[label] = {"opencv_threads": cv_threads, "blas_threads": blas or "as loaded",
                      "sequence_fps": float(np.median(seq_fps)), "direct_fps": float(np.median(direct_fps)),
                      "sequence_fps_runs": seq_fps, "direct_fps_runs": direct_fps,
                      "sequence_over_direct_time": float(np.median(direct_fps) / np.median(seq_fps))}
        if stream_fps:
            out[label].update({"stream_fps": float(np.median(stream_fps)), "stream_fps_runs": stream_fps,
                               "stream_over_sequence": float(np.median(stream_fps) / np.median(seq_fps)),
                               "stream_matrices_equal_local": equal})
    cv2.setNumThreads(default_cv)
    return out, seq_results, direct_results


def stacking(clean, noisy, results):
    transforms = [r.matrix for r in results]
    n_all = len(noisy)
    # single-frame residuals (noisy - clean, each warped alone), float32 to bound memory
    residuals = [(stack([noisy[k]], [transforms[k]], FRAME).image
                  - stack([clean[k]], [transforms[k]], FRAME).image).astype(np.float32) for k in range(n_all)]
    noise_rows = []
    for n in sorted({min(c, n_all) for c in NOISE_COUNTS}):
        t = time.perf_counter()
        noisy_stack = stack(noisy[:n], transforms[:n], FRAME)
        dt = time.perf_counter() - t
        region = noisy_stack.coverage >= n * (1 - 1e-3)  # pixels all n frames cover (w_k = 1 to round-off)
        resid = noisy_stack.image - stack(clean[:n], transforms[:n], FRAME).image
        measured = float(resid[region].std())
        expected = float(np.sqrt(np.mean([float(r[region].astype(np.float64).var()) for r in residuals[:n]]) / n))
        noise_rows.append({"n": n, "region_pixels": int(region.sum()), "noise": measured,
                           "expected_1_over_sqrt_n": expected, "ratio": measured / expected, "stack_seconds": dt})
    # flux: a grid large enough that every frame lands inside it
    edges = frame_corners() + [[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]  # pixel-area corners
    ext = np.concatenate([warpsvc.HomographyTransform(m).map(edges) for m in transforms])
    x0, y0 = np.floor(ext.min(0)).astype(int) - 4
    x1, y1 = np.ceil(ext.max(0)).astype(int) + 4
    shifted = [np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1.0]]) @ m for m in transforms]
    h, w = int(y1 - y0), int(x1 - x0)
    inside = all(bool(np.all((p > 1) & (p < [w - 2, h - 2])))
                 for p in (warpsvc.HomographyTransform(m).map(edges) for m in shifted))
    frames64 = [f.astype(np.float64) for f in noisy]
    t = time.perf_counter()
    summed = stack(frames64, shifted, (h, w), combine="sum")
    dt = time.perf_counter() - t
    total_in = float(sum(f.sum() for f in frames64))
    return {
        "noise": noise_rows,
        "flux": {"frames": n_all, "grid": [h, w], "every_frame_inside": inside, "total_in": total_in,
                 "total_out": float(summed.image.sum()),
                 "relative_error": abs(float(summed.image.sum()) - total_in) / abs(total_in),
                 "coverage_total_over_frame_area": float(summed.coverage.sum() / (n_all * FRAME[0] * FRAME[1])),
                 "frames_per_second": n_all / dt},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-stream", action="store_true", help="skip the AlignStream row (no server)")
    ap.add_argument("--json", default=str(pathlib.Path(__file__).parent / "results" / "sequence.json"))
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    clean, noisy, truth, _photo_from = make_frames(args.frames, args.seed)
    drift = [float(np.linalg.norm(m[:2, 2] - truth[0][:2, 2])) for m in truth]
    angles = [float(np.degrees(np.arctan2(m[1, 0], m[0, 0]))) for m in truth]
    run_sequence(noisy[:5])  # warm-up (numba kernels, caches)
    speed, seq, direct = timed_runs(noisy, args.repeats, stream=not args.no_stream)
    chain, chain_seconds = run_sequence(noisy, SequenceOptions(reanchor=False))

    seq_err = [corner_error(r.matrix, truth[r.index]) for r in seq]
    direct_err = [0.0] + [corner_error(r.matrix, truth[k + 1]) if r.converged else float("inf")
                          for k, r in enumerate(direct)]
    chain_err = [corner_error(r.matrix, truth[r.index]) for r in chain]
    hits_seq = [h for r in seq[1:] for h in ellipse_hits(r, truth[r.index])]
    hits_chain = [h for r in chain[1:] for h in ellipse_hits(r, truth[r.index])]
    methods = {m: sum(r.method == m for r in seq) for m in {r.method for r in seq}}
    stacked = stacking(clean, noisy, seq)

    report = {
        "benchmark": "bench_sequence", "command": "python benchmarks/bench_sequence.py " + " ".join(argv or sys.argv[1:]),
        "frames": args.frames, "frame_shape": FRAME, "seed": args.seed,
        "loadavg": os.getloadavg(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "opencv": cv2.__version__, "numpy": np.__version__,
        "drift": {"max_shift_px": max(drift), "max_roll_deg": float(np.max(np.abs(angles)))},
        "sequence": {**summary(seq_err), "registered": float(np.mean([r.registered for r in seq])),
                     "methods": methods, "max_hops": max(r.hops for r in seq),
                     "ellipse95_coverage": float(np.mean(hits_seq)) if hits_seq else None},
        "direct": {**summary(direct_err), "converged": float(np.mean([r.converged for r in direct]))},
        "chain": {**summary(chain_err), "seconds": chain_seconds,
                  "ellipse95_coverage": float(np.mean(hits_chain)) if hits_chain else None},
        "speed": speed,
        "stacking": stacked,
        "elapsed": time.perf_counter() - t0,
    }
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=float))
    print_summary(report)
    print(f"\nJSON: {path}")


def print_summary(r):
    s, d, c = r["sequence"], r["direct"], r["chain"]
    print(f"{r['frames']} frames {r['frame_shape'][1]}x{r['frame_shape'][0]}, drift up to {r['drift']['max_shift_px']:.0f} px "
          f"and {r['drift']['max_roll_deg']:.1f} deg; load average {r['loadavg'][0]:.2f} on {r['cpus']} CPUs")
    print(f"{'method':<10} {'<=0.1px':>8} {'median':>8} {'p99':>8} {'max':>9} {'last':>8}")
    for name, m in (("sequence", s), ("direct", d), ("chain", c)):
        print(f"{name:<10} {100 * m['within_0.1px']:7.1f}% {m['median']:8.4f} {m['p99']:8.4f} {m['max']:9.4f} "
              f"{m['last_frame']:8.4f}  (failed {100 * m['failed']:.1f}%)")
    print(f"sequence methods {s['methods']}, max hops {s['max_hops']}, 95% ellipse coverage "
          f"{s['ellipse95_coverage']}; chain coverage {c['ellipse95_coverage']}")
    print("error vs frame index (median / max per block): sequence | chain")
    for a, b in zip(s["by_block"], c["by_block"]):
        print(f"  {a['frames'][0]:4d}-{a['frames'][1]:4d}  {a['median']:.4f} / {a['max']:.4f}  |  "
              f"{b['median']:.4f} / {b['max']:.4f}")
    for label, v in r["speed"].items():
        print(f"{label}: sequence {v['sequence_fps']:.1f} frames/s, direct {v['direct_fps']:.1f} frames/s "
              f"(sequence time / direct time = {v['sequence_over_direct_time']:.2f})")
        if "stream_fps" in v:
            print(f"{label}: stream (AlignStream RPC, warpsvc serve on loopback) {v['stream_fps']:.1f} frames/s, "
                  f"stream / local sequence = {v['stream_over_sequence']:.2f} (target >= 0.9), matrices equal "
                  f"the local ones: {v['stream_matrices_equal_local']}")
    st = r["stacking"]
    for row in st["noise"]:
        print(f"stack N={row['n']:4d}: noise {row['noise']:.4f}, 1/sqrt(N) law {row['expected_1_over_sqrt_n']:.4f} "
              f"(ratio {row['ratio']:.3f}, {row['region_pixels']} px)")
    f = st["flux"]
    print(f"flux of the sum stack: relative error {f['relative_error']:.2e} over {f['frames']} frames, all inside "
          f"the {f['grid'][1]}x{f['grid'][0]} grid: {f['every_frame_inside']} ({f['frames_per_second']:.1f} frames/s)")


if __name__ == "__main__":
    main()
