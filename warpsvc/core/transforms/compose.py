"""Composition of transforms, resampled once.

``compose(t1, t2, ..., tn)`` applies ``t1`` first: ``T = tn ∘ ... ∘ t2 ∘ t1``. Adjacent matrix
transforms are multiplied out exactly (``dst_from_src = dst_from_mid @ mid_from_src``), so a
chain of affines stays one affine and still takes OpenCV's fast path. The Jacobian follows
the chain rule, evaluated along the path of intermediate points::

    x_0 = x,  x_k = t_k(x_{k-1})
    J_T(x) = J_tn(x_{n-1}) · ... · J_t2(x_1) · J_t1(x_0)         (N, 2, 2) each

and the inverse is the reversed chain of inverses.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError
from .base import FrozenTransform, Transform, as_points
from .matrix import AffineTransform, HomographyTransform


def _merge(first: Transform, second: Transform) -> Transform:
    """``second ∘ first`` for two matrix transforms, as one matrix transform."""
    dst_from_src = second.matrix @ first.matrix
    if isinstance(first, AffineTransform) and isinstance(second, AffineTransform):
        return AffineTransform(dst_from_src)
    return HomographyTransform(dst_from_src)


def compose(*transforms: Transform) -> Transform:
    """The transform applying ``transforms[0]`` first, then ``transforms[1]``, ..."""
    steps: list[Transform] = []
    for t in transforms:
        if not isinstance(t, Transform):
            raise InvalidArgumentError(f"compose takes Transform objects, got {type(t).__name__}", field="transforms")
        for s in t.steps if isinstance(t, ComposedTransform) else (t,):
            if steps and steps[-1].is_matrix() and s.is_matrix():
                steps[-1] = _merge(steps[-1], s)
            else:
                steps.append(s)
    if not steps:
        raise InvalidArgumentError("compose needs at least one transform", field="transforms")
    return steps[0] if len(steps) == 1 else ComposedTransform(tuple(steps))


class ComposedTransform(FrozenTransform):
    """A chain of transforms (build it with :func:`compose` or ``Transform.then``)."""

    def __init__(self, steps: tuple[Transform, ...]):
        self._freeze(steps=tuple(steps))

    def _key(self) -> tuple:
        return self.steps

    def __repr__(self):
        return "compose(" + ", ".join(repr(s) for s in self.steps) + ")"

    def map(self, xy) -> np.ndarray:
        pts = as_points(xy)
        for step in self.steps:
            pts = step.map(pts)
        return pts

    def jacobian(self, xy) -> np.ndarray:
        pts = as_points(xy)
        jac = np.broadcast_to(np.eye(2), (len(pts), 2, 2))
        for step in self.steps:
            jac = step.jacobian(pts) @ jac  # J_step(x_{k-1}) · J_so_far
            pts = step.map(pts)
        return jac

    def inverse(self) -> "ComposedTransform":
        return ComposedTransform(tuple(s.inverse() for s in reversed(self.steps)))

    def default_output_shape(self, input_shape):
        shape = input_shape
        for step in self.steps:
            shape = step.default_output_shape(shape)
        return shape

    def source_row_period(self):
        return self.steps[0].source_row_period()

    def output_row_period(self):
        return self.steps[-1].output_row_period()
