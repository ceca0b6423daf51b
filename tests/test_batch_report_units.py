"""The report's residuals are in the reference's grey levels: each aligned image is taken
through its alignment's photometric fit first, so a 16-bit or differently exposed file shares
the run's scale with the 8-bit ones. Oracles: the exact inversion of a known gain / bias, and a
real ``warpsvc-batch align`` run whose files are the same scene stored at 8 and 16 bits and at
another exposure (their residuals after alignment must agree)."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
from test_batch_helpers import make_align_folder, read_manifest, run_batch

pytest.importorskip("matplotlib", reason="the report's summary plots need matplotlib (extra 'warpsvc[batch]')")


def test_in_reference_units_inverts_the_fit_and_guards():
    from warpsvc_client.batch.report import in_reference_units

    ref = np.random.default_rng(0).random((8, 9, 3)) * 200
    gain, bias = [257.0, 300.0, 200.0], [10.0, -5.0, 0.0]
    img = ref * np.array(gain) + np.array(bias)
    np.testing.assert_allclose(in_reference_units(img, {"gain": gain, "bias": bias}), ref, rtol=1e-12)
    grey = ref[:, :, 0] * 3.0 + 7.0
    np.testing.assert_allclose(in_reference_units(grey, {"gain": [3.0], "bias": [7.0]}), ref[:, :, 0])
    for fit in (None, {}, {"gain": [0.0], "bias": [1.0]}, {"gain": [None], "bias": [0.0]},
                {"gain": [1.0, 2.0], "bias": [0.0, 0.0]}):  # absent, degenerate, or not this image's channels
        np.testing.assert_array_equal(in_reference_units(img, fit), img)


def _rms_after(html: str, name: str) -> float:
    """The row's 'residual RMS before -> after' figure (after)."""
    row = html[html.index(name):]
    return float(re.search(r"residual RMS [\d.]+ -&gt; ([\d.]+)|residual RMS [\d.]+ -> ([\d.]+)", row).group(1)
                 or re.search(r"residual RMS [\d.]+ -> ([\d.]+)", row).group(1))


def test_mixed_bit_depths_and_exposures_share_the_reference_scale(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    tmpl, _ = make_align_folder(src, 1, seed=3)
    cv2.imwrite(str(tmp_path / "ref.png"), tmpl)
    eight = cv2.imread(str(src / "set0" / "img000.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(src / "set0" / "img000_16bit.png"), (eight.astype(np.uint16) * 257))  # same scene, 16 bits
    darker = np.clip(eight.astype(np.float64) * 0.6 + 20, 0, 255).round().astype(np.uint8)
    cv2.imwrite(str(src / "set0" / "img000_darker.png"), darker)  # same scene, another exposure
    res = run_batch("align", src, out, "--reference", tmp_path / "ref.png", "--model", "affine", "--jobs", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    records = {r["input"]: r for r in read_manifest(out / "manifest.jsonl")}
    fit16 = records["set0/img000_16bit.png"]["convergence"]
    assert 250 < fit16["gain"][0] < 265  # the record carries the photometric fit
    html = (out / "report.html").read_text()
    rms = {name: _rms_after(html, name) for name in ("img000.png", "img000_16bit.png", "img000_darker.png")}
    # before, the 16-bit file's residual was in its own units (~257x the 8-bit file's) and the
    # exposure change showed as misalignment; now all three are the 8-bit file's, within rounding
    assert rms["img000.png"] < 3.0, rms
    assert abs(rms["img000_16bit.png"] - rms["img000.png"]) < 0.5, rms
    assert rms["img000_darker.png"] < rms["img000.png"] + 1.5, rms
