"""``warpsvc-batch align`` options that reach the library, in-process and over a real server:
``--search``, ``--max-corner-error``, ``--min-zncc`` (a template of the astronaut against a view of
it turned 120 deg and scaled 1.2, with the true homography as the oracle; bad values exit 2 up
front). Split out of ``test_batch_stack.py``, which keeps the ``stack`` job."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from interop.harness import ServerProcess, wait_serving
from test_batch_helpers import read_manifest, run_batch

import warpsvc

CORNER_TOL_PX = 0.1  # template corners, px (as the stack tests' tolerance)


def translation(x, y):
    return np.array([[1, 0, x], [0, 1, y], [0, 0, 1.0]])


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--port", "0", "--workers", "1") as srv:
        wait_serving(srv.target)
        yield srv


# -- align --search ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rotated_pair(tmp_path_factory):
    """A 160x160 template from the astronaut and a 320x320 view of it turned 120 deg, scaled 1.2."""
    from skimage import color, data

    root = tmp_path_factory.mktemp("search")
    photo = (color.rgb2gray(data.astronaut()) * 255).astype(np.float32)
    c, s = 1.2 * math.cos(math.radians(120)), 1.2 * math.sin(math.radians(120))
    image_from_template = translation(160, 160) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ translation(-80, -80)
    image = warpsvc.warp(photo, warpsvc.HomographyTransform(image_from_template @ translation(-176, -176)), (320, 320),
                         antialias=True)
    (root / "in").mkdir()
    cv2.imwrite(str(root / "in" / "turned.png"), np.clip(image, 0, 255).astype(np.uint8))
    cv2.imwrite(str(root / "template.png"), photo[176:336, 176:336].astype(np.uint8))
    return root, np.linalg.inv(image_from_template)  # truth: template_from_image


def _template_corner_error(matrix, truth) -> float:
    x = np.array([[0, 0, 1], [159, 0, 1], [159, 159, 1], [0, 159, 1.0]]).T
    a, b = np.linalg.inv(matrix) @ x, np.linalg.inv(truth) @ x
    return float(np.abs(a[:2] / a[2] - b[:2] / b[2]).max())


@pytest.mark.parametrize("search, finds", [("local", False), ("auto", True), ("global", True)])
def test_align_search_option(rotated_pair, search, finds):
    root, truth = rotated_pair
    out = root / f"out_{search}"
    res = run_batch("align", root / "in", out, "--reference", root / "template.png", "--search", search, "--no-report")
    assert res.returncode == 0, res.stderr
    rec = read_manifest(out / "manifest.jsonl")[0]
    assert rec["convergence"]["converged"] is finds, rec["convergence"]
    if finds:
        assert _template_corner_error(np.asarray(rec["matrix"]), truth) < CORNER_TOL_PX
    else:
        assert _template_corner_error(np.asarray(rec["matrix"]), truth) > 10


def test_align_search_over_the_server(rotated_pair, server):
    root, truth = rotated_pair
    out = root / "out_server_global"
    res = run_batch("align", root / "in", out, "--reference", root / "template.png", "--search", "global",
                    "--target", server.target, "--no-report")
    assert res.returncode == 0, res.stderr
    rec = read_manifest(out / "manifest.jsonl")[0]
    assert rec["convergence"]["converged"] and rec["target"] == server.target
    assert _template_corner_error(np.asarray(rec["matrix"]), truth) < CORNER_TOL_PX
    res = run_batch("align", root / "in", out, "--reference", root / "template.png", "--search", "sideways")
    assert res.returncode == 2 and "--search" in res.stderr


@pytest.mark.parametrize("where", ["local", "server"])
def test_align_max_corner_error_option(rotated_pair, server, where):
    """``--max-corner-error`` reaches the library, in-process and over the server: a bound below
    any achievable error marks the (correct) result uncertain, ``inf`` turns the check off."""
    root, truth = rotated_pair
    target = ["--target", server.target] if where == "server" else []
    for bound, converged in (("1e-12", False), ("inf", True)):
        out = root / f"out_corner_{where}_{bound}"
        res = run_batch("align", root / "in", out, "--reference", root / "template.png", "--search", "global",
                        "--max-corner-error", bound, "--no-report", *target)
        assert res.returncode == 0, res.stderr
        rec = read_manifest(out / "manifest.jsonl")[0]
        assert rec["convergence"]["converged"] is converged, rec["convergence"]
        if not converged:
            assert rec["convergence"]["reason"] == "uncertain", rec["convergence"]
        assert _template_corner_error(np.asarray(rec["matrix"]), truth) < CORNER_TOL_PX
    for bad in ("-2", "0", "nan", "wide"):  # refused up front (exit 2), not image by image
        res = run_batch("align", root / "in", root / f"out_corner_bad_{where}", "--reference",
                        root / "template.png", "--max-corner-error", bad, *target)
        assert res.returncode == 2 and "--max-corner-error" in res.stderr, (bad, res.returncode, res.stderr)


@pytest.mark.parametrize("where", ["local", "server"])
def test_align_min_zncc_option(rotated_pair, server, where):
    """``--min-zncc`` reaches the align call, in-process and over the server: the parsed job carries
    the value (absent: no keyword, the library's 0.97), a run with it ends as the library says (the
    correct matrix, converged: a keyword the library or the client lacked would fail the image),
    and values outside [-1, 1] are refused up front (exit 2). Its effect on the status over the
    wire is ``tests/test_service_align.py::test_min_zncc_travels``."""
    from warpsvc_client.batch import cli

    root, truth = rotated_pair
    target = ["--target", server.target] if where == "server" else []
    common = ["align", str(root / "in"), str(root / f"out_zncc_{where}"), "--reference", str(root / "template.png")]
    parsed = cli.make_spec(cli.build_parser().parse_args([*common, "--min-zncc", "0.25"]))
    assert parsed.align.kwargs()["min_zncc"] == 0.25
    assert "min_zncc" not in cli.make_spec(cli.build_parser().parse_args(common)).align.kwargs()
    out = root / f"out_zncc_{where}"
    res = run_batch("align", root / "in", out, "--reference", root / "template.png", "--search", "global",
                    "--min-zncc", "0.5", "--no-report", *target)
    assert res.returncode == 0, res.stderr
    rec = read_manifest(out / "manifest.jsonl")[0]
    assert rec["convergence"]["converged"] is True, rec["convergence"]
    assert _template_corner_error(np.asarray(rec["matrix"]), truth) < CORNER_TOL_PX
    for bad in ("1.5", "-2", "nan", "high"):
        res = run_batch("align", root / "in", root / f"out_zncc_bad_{where}", "--reference",
                        root / "template.png", "--min-zncc", bad, *target)
        assert res.returncode == 2 and "--min-zncc" in res.stderr, (bad, res.returncode, res.stderr)


# -- values checked before any image (a new-user audit found them failing image by image, and
#    local and server engines disagreeing) -------------------------------------------------------
@pytest.mark.parametrize("where", ["local", "server"])
def test_levels_jpeg_quality_and_border_value_are_refused_up_front(rotated_pair, server, where):
    from warpsvc.core.align.options import MAX_LEVELS
    from warpsvc_client.batch import argtypes

    assert argtypes.MAX_LEVELS == MAX_LEVELS  # the CLI's copy of the library's bound
    root, _ = rotated_pair
    target = ["--target", server.target] if where == "server" else []
    bad_runs = [("align", "--levels", v) for v in ("0", "13", "foo")] + \
               [("align", "--jpeg-quality", v) for v in ("0", "200", "high")] + \
               [("align", "--border-value", v) for v in ("nan", "inf", "grey")] + \
               [("stack", "--levels", v) for v in ("0", "foo")]
    for job, flag, value in bad_runs:
        extra = ["--reference", root / "template.png"] if job == "align" else []
        res = run_batch(job, root / "in", root / f"out_bad_{where}", *extra, flag, value, *target)
        assert res.returncode == 2 and flag in res.stderr, (job, flag, value, res.returncode, res.stderr)
        assert not (root / f"out_bad_{where}" / "manifest.jsonl").exists()
    out = root / f"out_levels_{where}"
    res = run_batch("align", root / "in", out, "--reference", root / "template.png", "--search", "global",
                    "--levels", "3", "--jpeg-quality", "80", "--no-report", *target)
    assert res.returncode == 0, res.stderr
    rec = read_manifest(out / "manifest.jsonl")[0]
    assert rec["convergence"]["converged"] and len(rec["convergence"]["iterations"]) == 3, rec["convergence"]


def test_a_matrix_starting_with_a_negative_number(rotated_pair):
    """``--matrix -1,0,319,0,1,0`` (a mirror) is the value of --matrix, not an unknown option."""
    from warpsvc_client.batch import cli

    root, _ = rotated_pair
    assert cli.attach_negative_lists(["warp", "a", "b", "--matrix", "-1,0,319,0,1,0", "--border-value", "-3"]) == \
        ["warp", "a", "b", "--matrix=-1,0,319,0,1,0", "--border-value", "-3"]
    assert cli.attach_negative_lists(["--matrix", "--polar"]) == ["--matrix", "--polar"]  # not a number list
    out = root / "out_mirror"
    res = run_batch("warp", root / "in", out, "--matrix", "-1,0,319,0,1,0", "--no-report")
    assert res.returncode == 0, res.stderr
    got = cv2.imread(str(out / "turned.png"), cv2.IMREAD_UNCHANGED)
    src = cv2.imread(str(root / "in" / "turned.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(got, src[:, ::-1])


def test_missing_transforms_file_and_unset_token_variable_name_their_flag(rotated_pair, server, monkeypatch):
    root, _ = rotated_pair
    res = run_batch("warp", root / "in", root / "out_tf", "--transforms", root / "absent.csv")
    assert res.returncode == 2 and "--transforms" in res.stderr and "No such file" in res.stderr, res.stderr
    monkeypatch.delenv("WARPSVC_TEST_UNSET_TOKEN", raising=False)
    res = run_batch("warp", root / "in", root / "out_tok", "--matrix", "1,0,0,0,1,0", "--target", server.target,
                    "--token-env", "WARPSVC_TEST_UNSET_TOKEN")
    assert res.returncode == 2 and "--token-env WARPSVC_TEST_UNSET_TOKEN" in res.stderr, res.stderr
    assert not (root / "out_tok" / "manifest.jsonl").exists()


@pytest.mark.parametrize("extra, needle", [(["--matrix", "1,0,0,0,1,0", "--log"], "--log"),
                                           (["--matrix", "1,0,0,0,1,0", "--polar-inverse"], "--polar-inverse"),
                                           (["--polar", "80,80,70,90,60", "--cartesian-shape", "160,160"],
                                            "--cartesian-shape")])
def test_polar_modifiers_without_their_polar_are_refused(rotated_pair, extra, needle):
    root, _ = rotated_pair
    res = run_batch("warp", root / "in", root / "out_modifiers", *extra)
    assert res.returncode == 2 and needle in res.stderr, res.stderr
