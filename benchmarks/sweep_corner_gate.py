"""Status agreement of the Baker-Matthews photograph rows against the ``uncertain`` gate's threshold.

    python benchmarks/sweep_corner_gate.py --trials 200 --set tuning
    python benchmarks/sweep_corner_gate.py --trials 200 --set held_out

The ``bm_noise{0,8,16}`` trials of ``bench_align_real.py`` (same seeds), each aligned once with
the gate off (``max_corner_error=None``); then for each threshold ``t`` (in predicted corner RMS
errors, :func:`warpsvc.core.align.verify.corner_bound` / ``BOUND_SIGMAS``) a result counts as
converged when it converged and its bound is <= ``t``. Prints agreement (converged == error <= 1
px) with converged-but-wrong / not-converged-but-right counts per noise level. An approximation of
running with each threshold: with the gate on, ``uncertain`` results are also retried.
"""

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_align_real as B  # noqa: E402

import warpsvc  # noqa: E402
from warpsvc.core.align.verify import BOUND_SIGMAS, corner_bound  # noqa: E402

THRESHOLDS = (0.3, 0.5, 0.7, 0.8, 1.0, 1.2, 1.5, 2.0, float("inf"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--set", choices=("tuning", "held_out"), default="tuning")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    photos = B.TUNING if args.set == "tuning" else B.HELD_OUT
    rows = []
    for noise in (0, 8, 16):
        for k in range(args.trials):
            tr = B.bm_trial(photos, k, noise, args.seed)
            r = warpsvc.align(tr["template"], tr["image"], "homography", np.linalg.inv(tr["start"]),
                              max_corner_error=None)
            rows.append((noise, B.rms(r.inverse, tr["tp"], tr["truth_pts"]) <= 1.0, bool(r.converged),
                         corner_bound(r.corner_covariance) / BOUND_SIGMAS))
    print(f"{args.set}, {args.trials} trials per noise level: agreement % (converged-but-wrong / not-converged-but-right)")
    print("| threshold | noise 0 | noise 8 | noise 16 |\n|---:|---|---|---|")
    for t in THRESHOLDS:
        cells = []
        for noise in (0, 8, 16):
            x = [r for r in rows if r[0] == noise]
            ok = np.array([r[1] for r in x])
            conv = np.array([r[2] and r[3] <= t for r in x])
            cells.append(f"{(ok == conv).mean() * 100:.1f} ({np.sum(conv & ~ok)} / {np.sum(~conv & ok)})")
        print(f"| {t:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
