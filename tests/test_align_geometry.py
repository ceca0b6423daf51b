"""Alignment uses the transforms' geometry: the motion-model registry, the matrix guard, and
option merging that honours explicit keywords (issue 10 item 4)."""

import importlib

import numpy as np
import pytest
from skimage import data

import warpsvc
from warpsvc import AffineTransform, AlignOptions, align
from warpsvc.core.align import REASONS, Reason, Start
from warpsvc.core.align.losses import Huber, Tukey
import inspect

from warpsvc.core.align.options import merge_options
from warpsvc.core.errors import InvalidTransformError
from warpsvc.core.transforms.models import identity_jacobian, submodel_columns


def test_the_second_geometry_copy_is_gone():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("warpsvc.core.align.jacobians")
    api = importlib.import_module("warpsvc.core.align.api")
    assert not hasattr(api, "SUBMODEL_COLUMNS")


def test_identity_jacobian_equals_motion_model_jacobian():
    u = np.random.default_rng(2).uniform(-1, 1, (50, 2))
    for model in warpsvc.MODELS:
        jx, jy = identity_jacobian(model, u)
        ref = warpsvc.MotionModel(model).jacobian_params(np.zeros(jx.shape[1]), u)
        assert np.allclose(np.stack([jx, jy], axis=1), ref, atol=1e-12)


# Oracle: the parameter orders of the table in warpsvc.core.transforms.models, read by hand.
EXPECTED_SUBMODELS = {
    ("homography", "translation"): (2, 5), ("homography", "affine"): (0, 1, 2, 3, 4, 5),
    ("affine", "translation"): (2, 5), ("similarity", "translation"): (2, 3),
    ("euclidean", "translation"): (1, 2), ("homography", "euclidean"): None, ("affine", "similarity"): None,
}


@pytest.mark.parametrize(("model", "sub"), sorted(EXPECTED_SUBMODELS))
def test_submodel_columns(model, sub):
    cols = submodel_columns(model, sub)
    assert cols == EXPECTED_SUBMODELS[(model, sub)]
    if cols is not None:  # and the columns really are the sub-model's Jacobian
        u = np.random.default_rng(3).uniform(-1, 1, (40, 2))
        jx, jy = identity_jacobian(model, u)
        sx, sy = identity_jacobian(sub, u)
        assert np.allclose(jx[:, list(cols)], sx, atol=1e-12) and np.allclose(jy[:, list(cols)], sy, atol=1e-12)


def test_large_translation_init_is_accepted_like_the_transforms_accept_it():
    """The transforms accept a 1e6-px translation; so must align(init=...) (one guard)."""
    m = np.array([[1.0, 0.0, 1e6], [0.0, 1.0, -1e6], [0.0, 0.0, 1.0]])
    AffineTransform(m)  # the transforms' guard accepts it
    camera = data.camera().astype(np.float32)
    result = align(camera[100:200, 100:200], camera, "translation", m)
    assert not result.converged and result.reason == "insufficient_overlap"
    assert np.allclose(result.matrix, m)  # the start is reported back unchanged


@pytest.mark.parametrize("bad", [np.zeros((3, 3)), np.diag([1.0, 1e-14, 1.0]), np.full((3, 3), np.nan)])
def test_init_is_refused_where_the_transforms_refuse(bad):
    camera = data.camera().astype(np.float32)
    with pytest.raises(InvalidTransformError) as a:
        AffineTransform(bad) if np.all(np.isfinite(bad)) and not bad[2, :2].any() else warpsvc.HomographyTransform(bad)
    with pytest.raises(InvalidTransformError) as b:
        align(camera[:50, :50], camera, "affine", bad)
    assert b.value.field == "init" and a.value.field == "matrix"


def test_explicit_keyword_equal_to_default_overrides_options():
    opts = AlignOptions(model="affine", robust="huber", max_iterations=7, search="local")
    merged = merge_options(opts, {"model", "robust", "max_iterations"}, model="homography", robust=None,
                           max_iterations=50, search="auto")
    assert merged.model == "homography" and merged.robust is None and merged.max_iterations == 50
    assert merged.search == "local"  # not passed: the options object's value stays
    assert merge_options(None, set(), model="affine") == AlignOptions()
    # the signature shows the real defaults, and no trace of the bookkeeping argument
    params = inspect.signature(align).parameters
    assert params["photometric"].default == "auto" and params["search"].default == "auto"
    assert params["robust"].default is None and "_given" not in params
    camera = data.camera().astype(np.float32)
    result = align(camera[150:250, 180:280], camera, model="homography", init=np.eye(3),
                   options=AlignOptions(model="affine"))
    assert result.model == "homography"
    # robust=None passed explicitly beats the options object's "huber"
    plain = align(camera[150:250, 180:280], camera, "affine", np.eye(3), robust=None,
                  options=AlignOptions(robust="huber"))
    huber = align(camera[150:250, 180:280], camera, "affine", np.eye(3), options=AlignOptions(robust="huber"))
    # a robust loss doubles the coarsest level's minimum side: 3 levels instead of 4 for 100x100
    assert (plain.levels, huber.levels) == (4, 3)
    with pytest.raises(TypeError):
        align(camera, camera, nonsense=1)

def test_reasons_are_a_str_enum_with_unchanged_values():
    assert REASONS[:9] == ("converged", "max_iterations", "time_budget", "cancelled", "no_progress",
                           "insufficient_overlap", "flat_template", "degenerate_warp", "low_correlation")
    assert Reason.CONVERGED == "converged" and str(Reason.NO_PROGRESS) == "no_progress"
    assert {s.value for s in Start} >= {"identity", "init", "features"}


def test_robust_losses_as_objects_match_their_formulas():
    z = np.linspace(0, 8, 81)
    h, t = Huber(), Tukey()
    # weights are rho'(z) / z: check against a central finite difference of rho
    dz = 1e-6
    for loss in (h, t):
        zz = z[1:]
        drho = (loss.rho(zz + dz) - loss.rho(zz - dz)) / (2 * dz)
        assert np.allclose(loss.weights(zz), drho / zz, atol=1e-5)
    assert np.all(t.weights(np.array([t.c + 0.1])) == 0)
    assert h.weights(np.array([0.5]))[0] == 1.0
