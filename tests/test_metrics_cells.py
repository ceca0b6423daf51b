"""The fast cell path (warpsvc/server/metric_cells.py) writes exactly what prometheus-client's public
``inc`` / ``observe`` write: the same random sequence of updates goes through both into twin
metrics, in memory and in multiprocess mode (mmap files merged by ``MultiProcessCollector``), and
every sample must be equal. The oracle is prometheus-client itself."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from warpsvc.server import metric_cells

DRIVE = textwrap.dedent("""
    import numpy as np
    from prometheus_client import Counter, Gauge, Histogram
    from warpsvc.server import metric_cells
    from warpsvc.server.metrics import LATENCY_BUCKETS

    def drive(registry=None, force_public=False):
        fam = {}
        for kind in ("fast", "public"):
            fam[kind] = (Counter(f"{kind}_c", "c", ("k",), registry=registry),
                         Gauge(f"{kind}_g", "g", ("k",), multiprocess_mode="livesum", registry=registry),
                         Histogram(f"{kind}_h", "h", ("k",), buckets=LATENCY_BUCKETS, registry=registry))
        cells = metric_cells.Cells()
        if force_public:
            metric_cells.supported = lambda child: False
        rng = np.random.default_rng(7)
        made = {}
        for _ in range(3000):
            label = f"l{rng.integers(3)}"
            op = rng.integers(3)
            c, g, h = fam["public"]
            fc, fg, fh = fam["fast"]
            if op == 0:
                amount = float(rng.integers(1, 1 << 20))
                c.labels(label).inc(amount)
                cell = made.get(("c", label)) or made.setdefault(("c", label), cells.cell(fc.labels(label)))
                cells.add1(cell, amount)
            elif op == 1:
                amount = float(rng.choice([-1.0, 1.0, 2.5]))
                g.labels(label).inc(amount)
                cell = made.get(("g", label)) or made.setdefault(("g", label), cells.cell(fg.labels(label)))
                cells.add(((cell, amount),))
            else:
                seconds = float(rng.choice([*LATENCY_BUCKETS, 0.0, 1e-5, 100.0, *rng.random(3) * 3]))
                h.labels(label).observe(seconds)
                hc = made.get(("h", label)) or made.setdefault(("h", label), cells.histogram(fh.labels(label)))
                cells.add(hc.pairs(seconds))
""")


def _samples(families) -> dict:
    """{(kind, suffix of the sample name, labels): value} for the fast_* and public_* families."""
    out = {}
    for family in families:
        for s in family.samples:
            kind, _, rest = s.name.partition("_")
            if kind in ("fast", "public") and not rest.endswith("_created"):
                out[(kind, rest, tuple(sorted(s.labels.items())))] = s.value
    return out


def _assert_twins(samples: dict) -> None:
    fast = {k[1:]: v for k, v in samples.items() if k[0] == "fast"}
    public = {k[1:]: v for k, v in samples.items() if k[0] == "public"}
    assert len(public) > 40, public  # 3 labels x (counter, gauge, 17 histogram samples)
    assert fast == public


@pytest.mark.parametrize("force_public", [False, True])
def test_in_memory_cells_equal_the_public_api(force_public, monkeypatch):
    namespace: dict = {}
    exec(DRIVE, namespace)  # noqa: S102 - the same driver code as the subprocess cases
    registry = CollectorRegistry()
    monkeypatch.setattr(metric_cells, "supported", metric_cells.supported)  # restored after the test
    namespace["drive"](registry, force_public)
    _assert_twins(_samples(registry.collect()))


def test_the_fast_path_is_taken_for_this_prometheus_client():
    """The internals the fast path needs exist (else every server runs the slow fallback)."""
    registry = CollectorRegistry()
    assert metric_cells.supported(Counter("x", "x", ("k",), registry=registry).labels("a"))
    assert metric_cells.supported(Gauge("y", "y", ("k",), registry=registry).labels("a"))
    assert metric_cells.supported(Histogram("z", "z", ("k",), registry=registry).labels("a"))


@pytest.mark.parametrize("force_public", [False, True])
def test_multiprocess_cells_equal_the_public_api(tmp_path, force_public):
    """In a fresh process with PROMETHEUS_MULTIPROC_DIR (mmap values), the files the fast path
    wrote merge to the same samples as those of the public API."""
    code = DRIVE + f"\ndrive(None, {force_public})\n"
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    samples = _samples(registry.collect())
    _assert_twins(samples)
    assert any(v > 0 for k, v in samples.items() if k[1] == "h_count")


def test_bucket_choice_matches_le_bounds():
    """An observation equal to a bound lands in that bound's bucket (``le`` is inclusive)."""
    registry = CollectorRegistry()
    child = Histogram("b", "b", buckets=(0.1, 1.0), registry=registry)
    cells = metric_cells.Cells()
    hc = cells.histogram(child)
    for v in (0.1, 0.1000001, 1.0, 5.0, 0.0):
        cells.add(hc.pairs(v))
    got = {s.labels.get("le"): s.value for s in next(iter(registry.collect())).samples if s.name == "b_bucket"}
    assert got == {"0.1": 2.0, "1.0": 4.0, "+Inf": 5.0}
    assert np.isclose(next(s.value for s in next(iter(registry.collect())).samples if s.name == "b_sum"), 6.2000001)
