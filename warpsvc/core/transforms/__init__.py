"""Transforms: affine, homography, (log-)polar and their compositions."""

from .base import Transform, as_points
from .compose import ComposedTransform, compose
from .matrix import AffineTransform, HomographyTransform
from .models import MODELS, MotionModel
from .polar import PolarTransform

__all__ = [
    "AffineTransform", "ComposedTransform", "HomographyTransform", "MODELS", "MotionModel",
    "PolarTransform", "Transform", "as_points", "compose",
]
