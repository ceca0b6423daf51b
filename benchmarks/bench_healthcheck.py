"""Weight of one health probe (issue 12 item 4: <= 40 MB RSS and <= 0.3 s CPU per probe).

Against a CLI-started plaintext server on loopback, ``--runs`` (15) rounds, each running, in
alternating order, one process of every variant below; each process is started by a small wrapper
whose ``getrusage(RUSAGE_CHILDREN)`` then holds that one child only (peak RSS, user + system CPU),
plus the wall time of the child. Medians per variant, and ratios against the anchor measured in
the same rounds (``python -c pass``: the interpreter alone).

* ``script``: ``python warpsvc/healthcheck.py TARGET`` (the module without the package);
* ``module``: ``python -m warpsvc.healthcheck TARGET`` (runs ``warpsvc/__init__.py`` first);
* ``grpc-only``: ``python -c "import grpc; from grpc_health.v1 import health_pb2_grpc"`` (floor);
* ``anchor``: ``python -c pass``.

Results: ``benchmarks/results/healthcheck.json`` (with ``os.getloadavg()``; the machine is shared,
so CPU figures are pessimistic) and a table on stdout.

    .venv/bin/python benchmarks/bench_healthcheck.py             # ~1 minute
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "healthcheck.json"
PROBE = REPO / "warpsvc" / "healthcheck.py"
WRAPPER = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
out = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=120)
wall = time.perf_counter() - t
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": out.returncode, "stdout": out.stdout.strip(), "maxrss_mb": r.ru_maxrss / 1024,
                  "cpu_s": r.ru_utime + r.ru_stime, "wall_s": wall}))
"""


def measure(cmd: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], cwd=REPO, capture_output=True, text=True,
                         timeout=180, check=True)
    return json.loads(out.stdout)


def start_server() -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WARPSVC_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "warpsvc.cli", "serve", "--port", "0"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        m = re.search(r"serving on \S+:(\d+)", line)
        if m:
            return proc, f"127.0.0.1:{m.group(1)}"
    raise RuntimeError("server did not start")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)
    proc, target = start_server()
    try:
        variants = {
            "script": [sys.executable, str(PROBE), target],
            "module": [sys.executable, "-m", "warpsvc.healthcheck", target],
            "grpc-only": [sys.executable, "-c", "import grpc; from grpc_health.v1 import health_pb2_grpc"],
            "anchor": [sys.executable, "-c", "pass"],
        }
        deadline = time.monotonic() + 30
        while measure(variants["script"])["stdout"] != "SERVING":
            if time.monotonic() > deadline:
                raise RuntimeError("server not SERVING")
        samples: dict[str, list[dict]] = {k: [] for k in variants}
        names = list(variants)
        for i in range(args.runs):
            order = names if i % 2 == 0 else names[::-1]  # alternate to spread the machine's noise
            for name in order:
                samples[name].append(measure(variants[name]))
    finally:
        proc.terminate()
        proc.wait(30)
    for name in ("script", "module"):
        bad = [s for s in samples[name] if s["stdout"] != "SERVING" or s["rc"] != 0]
        if bad:
            raise RuntimeError(f"{name}: probes that did not report SERVING: {bad[:3]}")
    med = {name: {k: statistics.median(s[k] for s in runs) for k in ("maxrss_mb", "cpu_s", "wall_s")}
           for name, runs in samples.items()}
    anchor = med["anchor"]
    result = {
        "runs": args.runs,
        "target_bounds": {"maxrss_mb": 40, "cpu_s": 0.3},
        "medians": med,
        "ratio_vs_anchor": {name: {k: m[k] / anchor[k] for k in m} for name, m in med.items()},
        "samples": samples,
        "loadavg": os.getloadavg(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("| variant | RSS MB (median) | CPU s (median) | wall s | RSS / anchor | CPU / anchor |")
    print("|---|---|---|---|---|---|")
    for name, m in med.items():
        r = result["ratio_vs_anchor"][name]
        print(f"| {name} | {m['maxrss_mb']:.1f} | {m['cpu_s']:.3f} | {m['wall_s']:.3f} | {r['maxrss_mb']:.2f} | "
              f"{r['cpu_s']:.2f} |")
    print(f"load average {result['loadavg']}; bounds: 40 MB, 0.3 s")
    return 0 if med["script"]["maxrss_mb"] <= 40 and med["script"]["cpu_s"] <= 0.3 else 1


if __name__ == "__main__":
    sys.exit(main())
