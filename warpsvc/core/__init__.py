"""The domain core: transforms, Jacobians, resampling. numpy + OpenCV only (no transport)."""

from .align import AlignOptions, AlignResult, align
from .errors import (
    ImageTooLargeError, InvalidArgumentError, InvalidImageError, InvalidTransformError, WarpsvcError,
)
from .transforms import (
    MODELS, AffineTransform, ComposedTransform, HomographyTransform, MotionModel, PolarTransform,
    Transform, compose,
)
from .warp import jacobian_determinant, warp

__all__ = [
    "AlignOptions", "AlignResult", "align",
    "AffineTransform", "ComposedTransform", "HomographyTransform", "ImageTooLargeError",
    "InvalidArgumentError", "InvalidImageError", "InvalidTransformError", "MODELS", "MotionModel",
    "PolarTransform", "Transform", "WarpsvcError", "compose", "jacobian_determinant", "warp",
]
