"""Work and memory budgets of one :func:`~warpsvc.warp` / :func:`~warpsvc.jacobian_determinant`
call, checked *before* the work starts (refusals raise :class:`ResourceExhaustedError` naming
the field at fault).

A caller that advertises a pixel limit ``P`` (a server) wants every request to cost at most a
constant times ``P``. Output size and input size are bounded by the caller's own pixel checks;
what else scales a call's cost is bounded here, *relative to the pixels involved*:

* ``transform``: each step of a chain (after matrices are multiplied out) is evaluated at every
  output pixel (and at every antialias node): at most ``max_transform_steps`` steps.
* ``antialias``: the scatter visits ``sum_blocks pixels x m^2`` nodes, ``m = ceil(1.5 s)`` from
  the Jacobian's largest singular value ``s`` on each 32x32 block (known before any
  allocation). Uniform warps need at most ~9 nodes per pixel (``m = 3`` just above unit
  scale); strongly anisotropic maps need up to 4096 per source pixel. At most
  ``max_nodes_per_pixel`` nodes per pixel of the larger of input and output.
* working memory of the antialiased path (float64 accumulator and output, one window of
  padded float64 source rows and its tent-sum normaliser, node chunks of the generic path,
  post-processing strips): at most ``max_bytes_per_sample`` bytes per pixel x channel of the
  larger of input and output, or ``floor_bytes`` if that is larger (the window and the node
  chunks are fixed costs). The source, and its border extension for non-constant borders /
  polar seams (the source extended over the output's preimage, up to 3x3 source sizes), is
  read one window of rows at a time, so the extension costs no memory beyond the window.

Defaults admit every ordinary warp (see ``docs/warping.md``); a server can tighten them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidArgumentError, ResourceExhaustedError


@dataclass(frozen=True)
class WarpLimits:
    """Budgets of one call (see the module docstring)."""

    max_transform_steps: int = 16
    max_nodes_per_pixel: float = 256.0
    max_bytes_per_sample: float = 160.0
    floor_bytes: int = 1 << 28

    def __post_init__(self):
        for name in ("max_transform_steps", "max_nodes_per_pixel", "max_bytes_per_sample", "floor_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise InvalidArgumentError(f"limits.{name} must be a positive number, got {v!r}", field="limits")


DEFAULT_LIMITS = WarpLimits()


def check_limits(limits) -> WarpLimits:
    if limits is None:
        return DEFAULT_LIMITS
    if not isinstance(limits, WarpLimits):
        raise InvalidArgumentError(f"limits must be a WarpLimits, got {type(limits).__name__}", field="limits")
    return limits


def transform_steps(transform) -> int:
    """Non-mergeable steps of a transform chain (a plain transform is one step)."""
    steps = getattr(transform, "steps", None)
    if steps is None:
        return 1
    return sum(transform_steps(s) for s in steps)


def check_transform_steps(transform, limits: WarpLimits) -> None:
    n = transform_steps(transform)
    if n > limits.max_transform_steps:
        raise ResourceExhaustedError(
            f"transform is a chain of {n} steps; at most {limits.max_transform_steps} are allowed "
            "(adjacent matrices count as one)", field="transform")


def check_antialias_cost(cost, limits: WarpLimits) -> None:
    """Refuse an antialiased warp whose node count or working memory exceeds the budget.

    ``cost``: a :class:`~.warp.AntialiasCost` (``nodes``, ``working_bytes``, ``pixels`` = the
    larger of input and output pixel counts, ``channels``, ``extension_pixels`` = pixels of the
    border-extended source, 0 when the source is not extended)."""
    nodes, working_bytes, pixels, channels = cost.nodes, cost.working_bytes, cost.pixels, cost.channels
    max_nodes = limits.max_nodes_per_pixel * pixels
    if nodes > max_nodes:
        raise ResourceExhaustedError(
            f"antialias would scatter {nodes} footprint nodes ({nodes / pixels:.1f} per pixel; the transform "
            f"stretches the source strongly in some direction); the budget is {limits.max_nodes_per_pixel:g} "
            f"per pixel ({int(max_nodes)})", field="antialias")
    max_bytes = max(limits.max_bytes_per_sample * pixels * channels, limits.floor_bytes)
    if working_bytes > max_bytes:
        raise ResourceExhaustedError(
            f"antialias would need {working_bytes / 2**20:.1f} MiB of working memory (float64 accumulator, "
            f"output and a window of source rows); the budget is {max_bytes / 2**20:.1f} MiB "
            f"({limits.max_bytes_per_sample:g} bytes per pixel and channel, at least "
            f"{limits.floor_bytes / 2**20:.0f} MiB)",
            field="antialias")
