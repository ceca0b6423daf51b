"""Transforms are frozen value objects: immutable, ``==`` and ``hash`` agree for every family."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from warpsvc import AffineTransform, HomographyTransform, PolarTransform, compose

HOM = [[0.9, 0.08, 6.0], [-0.05, 1.05, 3.0], [4e-4, -3e-4, 1.0]]


def _pairs():
    """(a, b): equal values built separately."""
    polar = dict(center=(30.0, 20.0), max_radius=25.0, polar_shape=(90, 40))
    return {
        "affine": (AffineTransform([[1, 0, 2.0], [0, 1, -1.0]]), AffineTransform.from_matrix(
            np.array([[1, 0, 2.0], [0, 1, -1.0], [0, 0, 1]]))),
        "affine-negative-zero": (AffineTransform([[1, 0.0, 0], [0, 1, 0]]), AffineTransform([[1, -0.0, 0], [0, 1, 0]])),
        "homography": (HomographyTransform(HOM), HomographyTransform(np.array(HOM))),
        "polar": (PolarTransform(**polar), PolarTransform(**polar)),
        "composed": (compose(HomographyTransform(HOM), PolarTransform(**polar)),
                     compose(HomographyTransform(HOM), PolarTransform(**polar))),
    }


@pytest.mark.parametrize("name", list(_pairs()))
def test_equal_values_hash_alike_and_survive_pickle(name):
    a, b = _pairs()[name]
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert pickle.loads(pickle.dumps(a)) == a


@pytest.mark.parametrize("name", list(_pairs()))
def test_transforms_are_immutable(name):
    a, _ = _pairs()[name]
    with pytest.raises(AttributeError, match="immutable"):
        a.anything = 1
    attr = next(iter(vars(a)))
    with pytest.raises(AttributeError, match="immutable"):
        setattr(a, attr, None)
    with pytest.raises(AttributeError, match="immutable"):
        delattr(a, attr)


def test_different_values_differ():
    a = AffineTransform([[1, 0, 2.0], [0, 1, -1.0]])
    assert a != AffineTransform([[1, 0, 2.5], [0, 1, -1.0]])
    assert a != HomographyTransform(a.matrix)  # another family is another value
    assert a != a.with_model("similarity")
    p = PolarTransform((30.0, 20.0), 25.0, (90, 40))
    assert p != p.inverse() and p.inverse().inverse() == p
    with pytest.raises(ValueError, match="read-only"):
        a.matrix[0, 0] = 3.0
