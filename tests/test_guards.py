"""Every guard rejects what it should, with a typed error naming the field."""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest

from warpsvc import (
    AffineTransform, HomographyTransform, ImageTooLargeError, InvalidArgumentError, InvalidImageError,
    InvalidTransformError, MotionModel, PolarTransform, compose, jacobian_determinant, warp,
)

IMG = np.zeros((20, 30), np.float32)
OK = AffineTransform.identity()


@pytest.mark.parametrize("matrix,fragment", [
    ([[1, 0, np.nan], [0, 1, 0]], "non-finite"),
    ([[1, 0, np.inf], [0, 1, 0], [0, 0, 1]], "non-finite"),
    ([[1, 2, 0], [2, 4, 0], [0, 0, 1]], "singular"),
    ([[0, 0, 0], [0, 0, 0], [0, 0, 0]], "zeros"),
    ([[1e-20, 0, 0], [0, 1, 0], [0, 0, 1]], "singular"),
    ([[1, 0], [0, 1]], "shape"),
])
def test_bad_matrices_are_rejected(matrix, fragment):
    for cls in (AffineTransform, HomographyTransform):
        with pytest.raises(InvalidTransformError, match=fragment) as exc:
            cls(matrix)
        assert exc.value.field == "matrix"


def test_large_translations_are_not_mistaken_for_singular_matrices():
    for t in (1e6, -3e7):
        a = AffineTransform([[1, 0, t], [0, 1, 5.0]])
        assert abs(a.inverse().map(a.map([[10.0, 20.0]]))[0, 0] - 10.0) < 1e-6
        HomographyTransform([[1, 0, t], [0, 1, 0], [1e-4, 0, 1]])


def test_affine_requires_affine_last_row():
    with pytest.raises(InvalidTransformError, match="last row"):
        AffineTransform([[1, 0, 0], [0, 1, 0], [1e-3, 0, 1]])


@pytest.mark.parametrize("kwargs,field", [
    (dict(center=(0, 0), max_radius=0, polar_shape=(10, 10)), "max_radius"),
    (dict(center=(0, 0), max_radius=-5, polar_shape=(10, 10)), "max_radius"),
    (dict(center=(0, 0), max_radius=np.nan, polar_shape=(10, 10)), "max_radius"),
    (dict(center=(0, 0), max_radius=1.0, polar_shape=(10, 10), log=True), "max_radius"),
    (dict(center=(np.inf, 0), max_radius=5, polar_shape=(10, 10)), "center"),
    (dict(center=(0, 0), max_radius=1e300, polar_shape=(10, 10)), "max_radius"),
    (dict(center=(1e300, 0), max_radius=5, polar_shape=(10, 10)), "center"),
    (dict(center=(0, 0, 0), max_radius=5, polar_shape=(10, 10)), "center"),
    (dict(center=(0, 0), max_radius=5, polar_shape=(0, 10)), "polar_shape"),
    (dict(center=(0, 0), max_radius=5, polar_shape=(10.5, 10)), "polar_shape"),
    (dict(center=(0, 0), max_radius=5, polar_shape=(10, 10), cartesian_shape=(-1, 4)), "cartesian_shape"),
])
def test_bad_polar_parameters_are_rejected(kwargs, field):
    with pytest.raises(InvalidTransformError) as exc:
        PolarTransform(**kwargs)
    assert exc.value.field == field


@pytest.mark.parametrize("shape", [(0, 10), (10, -1), (10,), (10, 10, 3), (2.5, 4), ("a", 3), (True, 3), 7])
def test_bad_output_shapes_are_rejected(shape):
    with pytest.raises(InvalidArgumentError) as exc:
        warp(IMG, OK, shape)
    assert exc.value.field == "output_shape"


@pytest.mark.parametrize("shape,names,not_named", [
    ((1 << 21, 10), "1048576 pixels per side", "1073741824"),
    ((1 << 16, 1 << 16), "4294967296 pixels exceeds the limit of 1073741824 pixels", "per side"),
])
def test_absurd_output_shapes_are_refused_before_allocating(shape, names, not_named):
    """Each refusal names the one limit it hit (a side, or the pixel count), not both."""
    with pytest.raises(ImageTooLargeError) as exc:
        warp(IMG, OK, shape)
    assert exc.value.field == "output_shape"
    assert names in str(exc.value) and not_named not in str(exc.value)
    with pytest.raises(ImageTooLargeError):
        jacobian_determinant(OK, shape)


@pytest.mark.parametrize("image,fragment", [
    (np.zeros((0, 10), np.uint8), "empty"),
    (np.zeros((10, 0, 3), np.uint8), "empty"),
    (np.zeros((10,), np.uint8), "dimensions"),
    (np.zeros((2, 3, 4, 5), np.uint8), "dimensions"),
    (np.zeros((4, 4), np.int32), "dtype"),
    (np.zeros((4, 4), np.float16), "dtype"),
    (np.zeros((4, 4), bool), "dtype"),
    (np.zeros((4, 4), np.complex64), "dtype"),
    ([[1, 2], [3, 4]], "numpy array"),
])
def test_bad_images_are_rejected(image, fragment):
    with pytest.raises(InvalidImageError, match=fragment) as exc:
        warp(image, OK)
    assert exc.value.field == "image"


@pytest.mark.parametrize("kwargs,field", [
    (dict(interpolation="area"), "interpolation"),
    (dict(border="mirror"), "border"),
    (dict(intensity="flux"), "intensity"),
    (dict(antialias="yes"), "antialias"),
    (dict(border_value=float("nan")), "border_value"),
    (dict(border_value="x"), "border_value"),
    (dict(antialias=True, interpolation="cubic"), "interpolation"),
])
def test_bad_options_are_rejected(kwargs, field):
    with pytest.raises(InvalidArgumentError) as exc:
        warp(IMG, OK, **kwargs)
    assert exc.value.field == field


def test_non_transforms_are_rejected():
    with pytest.raises(InvalidTransformError) as exc:
        warp(IMG, np.eye(3))
    assert exc.value.field == "transform"
    with pytest.raises(InvalidArgumentError):
        compose(OK, "not a transform")
    with pytest.raises(InvalidArgumentError):
        jacobian_determinant(OK, (10, 10), dtype=np.int32)


def test_bad_model_parameters_are_rejected():
    with pytest.raises(InvalidArgumentError, match="model"):
        MotionModel("projective")
    with pytest.raises(InvalidArgumentError, match="params"):
        AffineTransform.from_params([0, 0, 0], model="affine")
    with pytest.raises(InvalidTransformError, match="not a similarity"):
        AffineTransform.from_components(scale=(1, 2)).with_model("similarity").params
    with pytest.raises(InvalidArgumentError, match="homography"):
        AffineTransform.identity(model="homography")


def test_bad_points_are_rejected():
    with pytest.raises(InvalidArgumentError, match=r"\(N, 2\)"):
        OK.map(np.zeros((3, 3)))
    with pytest.raises(InvalidArgumentError):
        HomographyTransform.from_points(np.zeros((3, 2)), np.zeros((3, 2)))


def test_core_imports_no_transport_code():
    """The core stays a pure library: no grpc/protobuf/server imports anywhere under it."""
    core = pathlib.Path(__file__).resolve().parents[1] / "warpsvc" / "core"
    banned = ("grpc", "google.protobuf", "warpsvc.server", "warpsvc.v1")
    offenders = []
    for path in core.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(banned)]
    assert offenders == []
    assert len(list(core.rglob("*.py"))) >= 10
