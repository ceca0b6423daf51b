"""Bad transform constructor inputs raise the library's typed errors naming the argument (a new
user's audit found bare numpy ``ValueError`` / ``LinAlgError`` for these, LAPACK text on stderr)."""

from __future__ import annotations

import numpy as np
import pytest

from warpsvc import AffineTransform, HomographyTransform, PolarTransform
from warpsvc.core.errors import InvalidArgumentError, InvalidTransformError


@pytest.mark.parametrize("bad", ["abc", [[1, 2], [3]], [[1, 0, "x"], [0, 1, 0]]])
@pytest.mark.parametrize("cls", [AffineTransform, HomographyTransform])
def test_non_numeric_matrix(cls, bad):
    with pytest.raises(InvalidTransformError) as err:
        cls(bad)
    assert err.value.field == "matrix"


@pytest.mark.parametrize("cls", [AffineTransform, HomographyTransform])
def test_from_points_with_a_non_finite_point(cls, capfd):
    good = [[0, 0], [10, 0], [10, 10], [0, 10]]
    for field, src, dst in (("src", [[0, 0], [10, 0], [10, 10], [np.nan, 10]], good),
                            ("dst", good, [[0, 0], [10, 0], [np.inf, 10], [0, 10]])):
        with pytest.raises(InvalidArgumentError) as err:
            cls.from_points(src, dst)
        assert err.value.field == field
    assert "LAPACK" not in capfd.readouterr().err


def test_from_components_takes_one_number_for_an_isotropic_scale():
    np.testing.assert_array_equal(AffineTransform.from_components(scale=2.0, translation=3.0).matrix,
                                  [[2, 0, 3], [0, 2, 3], [0, 0, 1]])
    np.testing.assert_array_equal(AffineTransform.from_components(scale=(2.0, 3.0)).matrix,
                                  AffineTransform([[2, 0, 0], [0, 3, 0]]).matrix)
    with pytest.raises(InvalidArgumentError) as err:
        AffineTransform.from_components(scale="big")
    assert err.value.field == "scale"


@pytest.mark.parametrize("kw, field", [({"max_radius": "a"}, "max_radius"), ({"center": "xy"}, "center")])
def test_polar_arguments(kw, field):
    args = {"center": (5.0, 5.0), "max_radius": 4.0, "polar_shape": (8, 8), **kw}
    with pytest.raises(InvalidTransformError) as err:
        PolarTransform(**args)
    assert err.value.field == field
