"""The streaming tier of large conserve scalings (:mod:`warpsvc.core._stream_kernels`): bit for
bit the numpy tier 0 for every source dtype, channel count and alignment of the result; used
exactly for results of at least ``STREAM_MIN_BYTES``; real non-temporal stores in the machine
code; loaded in the background after the third large call, never by small ones."""

from __future__ import annotations

import platform
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.test_projective_tiers import CASES, _source
from warpsvc import AffineTransform, HomographyTransform, PolarTransform, warp
from warpsvc.core import _compiled, _scale_kernels

DTYPES = [np.uint8, np.uint16, np.float32]


@pytest.fixture(scope="module")
def sk():
    _scale_kernels.compile_stream_tier1()
    from warpsvc.core import _stream_kernels

    return _stream_kernels


def _misaligned(shape, offset):
    """A float32 C-contiguous array of ``shape`` starting ``offset`` floats past a fresh
    allocation's start (so row starts fall at every 4-byte position of a cache line)."""
    size = int(np.prod(shape))
    return np.full(size + 16, 77, np.float32)[offset:offset + size].reshape(shape)


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 7])
@pytest.mark.parametrize("channels", [1, 3, 4, 5])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_projective_stream_is_tier0_bit_for_bit(sk, case, dtype, channels, offset):
    m, det_m, row0, (h, w) = CASES[case]
    src = _source(dtype, (h, w, channels), special=True)
    ref = np.empty(src.shape, np.float32)
    _scale_kernels._projective_numpy(src, m, det_m, row0, ref)
    out = _misaligned(src.shape, offset)
    sk.rows_projective(src.reshape(h, -1), channels, np.ascontiguousarray(m, np.float64), float(det_m), row0,
                       out.reshape(h, -1))
    np.testing.assert_array_equal(out, ref)  # NaN positions equal too
    assert (np.signbit(out) == np.signbit(ref)).all()


@pytest.mark.parametrize("offset", [0, 3])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 1), (7, 11, 3), (40, 257, 3), (9, 70, 4)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_and_column_streams_are_tier0_bit_for_bit(sk, dtype, shape, offset):
    src = _source(dtype, shape, special=True)
    h, w, c = shape
    factor = np.float32(0.7123)
    columns = (np.random.default_rng(3).random(w * c) * 5).astype(np.float32)
    columns[::7] = 0
    for tier0, fac in [(lambda o: _scale_kernels.scale_by_constant(src, factor, o), np.full(w * c, factor, np.float32)),
                       (lambda o: _scale_kernels.scale_by_columns(src, columns, o), columns)]:
        ref = np.empty(shape, np.float32)
        with np.errstate(invalid="ignore"):  # inf * 0 in the special values: NaN, as streamed
            tier0(ref)
        out = _misaligned(shape, offset)
        sk.rows_times_row(src.reshape(h, -1), fac, out.reshape(h, -1))
        np.testing.assert_array_equal(out, ref)
        assert (np.signbit(out) == np.signbit(ref)).all()


RGB = (np.arange(1100 * 1000 * 3) % 251).astype(np.uint8).reshape(1100, 1000, 3)  # result 13 MB in float32
TRANSFORMS = {
    "affine": AffineTransform.from_components(scale=(0.9, 0.8), rotation=0.2, translation=(40, 30)),
    "homography": HomographyTransform([[0.95, 0.03, 20.0], [0.01, 1.02, 5.0], [1e-4, -2e-4, 1.0]]),
    "polar": PolarTransform((500.0, 550.0), 480.0, (1100, 1000)),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_large_conserve_results_stream_and_equal_tier0(sk, monkeypatch, name):
    calls = []
    for kernel in ("rows_times_row", "rows_projective"):
        real = getattr(sk, kernel)
        monkeypatch.setattr(sk, kernel, lambda *a, real=real, kernel=kernel: (calls.append(kernel), real(*a))[1])
    streamed = warp(RGB, TRANSFORMS[name], intensity="conserve")
    assert streamed.nbytes >= _scale_kernels.STREAM_MIN_BYTES
    assert calls and set(calls) == {"rows_projective" if name == "homography" else "rows_times_row"}
    calls.clear()
    monkeypatch.setattr(_scale_kernels, "STREAM_MIN_BYTES", 1 << 62)  # tier 0 (or the cached tier 1)
    cached = warp(RGB, TRANSFORMS[name], intensity="conserve")
    assert calls == []
    np.testing.assert_array_equal(streamed, cached)


def test_small_results_neither_stream_nor_count_towards_the_upgrade(sk, monkeypatch):
    calls = []
    monkeypatch.setattr(sk, "rows_times_row", lambda *a: calls.append(1))
    before = _scale_kernels.STREAM_UPGRADE.calls
    for t in TRANSFORMS.values():
        warp(RGB[:300, :400], t, intensity="conserve", output_shape=(300, 400))
    assert calls == [] and _scale_kernels.STREAM_UPGRADE.calls == before


def test_a_float64_constant_keeps_tier0(sk):
    """numpy multiplies a float32 source by a float64 scalar in float64; the stream kernels
    take a float32 factor, so such a call stays on tier 0 (warp passes out's dtype)."""
    src = (np.random.default_rng(5).random((30, 40, 1)) * 100).astype(np.float32)
    a, b = np.empty(src.shape, np.float32), np.empty(src.shape, np.float32)
    _scale_kernels.scale_by_constant(src, np.float64(0.7123456789), a, stream=True)
    _scale_kernels.scale_by_constant(src, np.float64(0.7123456789), b)
    np.testing.assert_array_equal(a, b)


def test_other_layouts_and_dtypes_keep_tier0(sk):
    src = np.zeros((4, 8, 3), np.uint8)
    out = np.empty(src.shape, np.float32)
    assert _scale_kernels.stream_kernels(src, out, True) is sk
    assert _scale_kernels.stream_kernels(src, out, False) is None  # a small result
    assert _scale_kernels.stream_kernels(src[:, ::2], out[:, ::2], True) is None  # not C-contiguous
    assert _scale_kernels.stream_kernels(src.astype(np.int16), out, True) is None  # no such signature
    assert _scale_kernels.stream_kernels(src, out.astype(np.float64), True) is None  # float64 result
    assert _scale_kernels.stream_kernels(src, out[:3], True) is None  # shapes differ: the kernels would overrun
    frozen = src.copy()
    frozen.setflags(write=False)
    assert _scale_kernels.stream_kernels(frozen, out, True) is None  # read-only: another numba type
    odd = np.frombuffer(bytearray(out.nbytes + 1), np.uint8)[1:].view(np.float32).reshape(out.shape)
    assert not odd.flags.aligned and _scale_kernels.stream_kernels(src, odd, True) is None  # floats off 4 bytes


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 instruction names")
def test_the_machine_code_streams(sk):
    """The stores are really non-temporal (``movntps``) and ordered by a locked instruction or
    a fence before the kernel returns (compiled afresh: numba cannot show cached code)."""
    import numba

    fresh = numba.njit(nogil=True, cache=False)(sk.rows_times_row.py_func)
    fresh(np.zeros((2, 40), np.uint8), np.ones(40, np.float32), np.empty((2, 40), np.float32))
    asm = "\n".join(fresh.inspect_asm().values())
    assert re.search(r"\bv?movntps\b", asm)
    assert re.search(r"\b(mfence|sfence)\b|\block\b", asm)


UPGRADE_SCRIPT = """
import sys, numpy as np
from warpsvc import PolarTransform, warp
from warpsvc.core import _scale_kernels as sk
img = (np.arange(1100 * 1000 * 3) % 251).astype(np.uint8).reshape(1100, 1000, 3)
t = PolarTransform((500.0, 550.0), 480.0, (1100, 1000))  # with a poll: ~20 bands of remap and scaling
seen = []
polled = lambda: None  # a poll: the scaling runs in bands, still one count per call
for _ in range(3):
    seen.append((sk.STREAM_UPGRADE.ready(img.dtype), "numba" in sys.modules))
    first = warp(img, t, intensity="conserve", poll=polled)
sk.STREAM_UPGRADE.join(300)
seen.append((sk.STREAM_UPGRADE.ready(img.dtype), "numba" in sys.modules))
print(seen, bool(np.array_equal(first, warp(img, t, intensity="conserve", poll=polled))))
"""


def test_background_upgrade_after_the_third_large_call():
    out = subprocess.run([sys.executable, "-c", UPGRADE_SCRIPT], capture_output=True, text=True, check=True,
                         timeout=600)
    line = out.stdout.strip().splitlines()[-1]
    seen, same = line.rsplit(" ", 1)
    assert eval(seen) == [(False, False)] * 3 + [(True, True)]  # tier 0 until the 3rd call (not band), then loaded
    assert same == "True"  # the streamed result equals the tier-0 one


def test_failed_stream_upgrade_leaves_tier0(monkeypatch):
    def broken(key):
        raise RuntimeError("no compiler here")

    upgrade = _compiled.BackgroundUpgrade(None, None, after_calls=1, load=broken, name="streaming scaling")
    monkeypatch.setattr(_scale_kernels, "STREAM_UPGRADE", upgrade)
    monkeypatch.setattr(_compiled, "_upgrade_setting", True)
    expected = warp(RGB, TRANSFORMS["affine"], intensity="conserve")
    upgrade.join(60)
    assert upgrade.failed(np.dtype(np.uint8)) and not upgrade.ready(np.dtype(np.uint8))
    np.testing.assert_array_equal(warp(RGB, TRANSFORMS["affine"], intensity="conserve"), expected)
