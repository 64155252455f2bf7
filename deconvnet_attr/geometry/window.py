"""The two value types of the geometry: :class:`Window` (sliding-window arithmetic along height
and width) and :class:`OpSpec` (what one traced node does to the spatial layout)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["GeometryError", "OpSpec", "Shaped", "Window", "pair"]


class GeometryError(ValueError):
    """The network (or the part of it asked about) has no traceable spatial geometry.

    ``reason`` is the short cause (``"flatten (opaque: flatten)"``) for captions that name the
    layer themselves; it defaults to the whole message."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = message if reason is None else reason


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``value`` as a (height, width) pair of ints; GeometryError if it is not 1- or 2-D."""
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    if len(value) == 1:
        return (int(value[0]), int(value[0]))
    if len(value) != 2:
        raise GeometryError(f"{name}={value!r} is not a 2-D value")
    return (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class Shaped:
    """Stands for a tensor output in a recorded layout: its shape only."""

    shape: Any


@dataclass(frozen=True)
class Window:
    """Geometry of a sliding-window op along (height, width).

    Output unit ``o`` of dimension ``dim`` reads input units
    ``o * stride - padding + j * dilation`` for ``j = 0 .. kernel - 1``. Constant padding is a
    1x1 window whose ``padding`` is the top / left pad (negative: a crop).
    """

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)

    def span(self, dim: int) -> int:
        """Input units covered by one kernel along ``dim``: ``(kernel - 1) * dilation + 1``."""
        return (self.kernel[dim] - 1) * self.dilation[dim] + 1

    def affected_outputs(self, lo: Any, hi: Any, out_size: int, dim: int) -> tuple[Any, Any]:
        """Output units whose window meets input units ``lo .. hi`` (inclusive), clipped.

        Works elementwise on ints or integer tensors. An empty result has ``hi < lo``.
        """
        s, p = self.stride[dim], self.padding[dim]
        first = -((self.span(dim) - 1 - lo - p) // s)  # ceil((lo + p - span + 1) / s)
        last = (hi + p) // s
        if isinstance(first, Tensor):
            return first.clamp(min=0), last.clamp(max=out_size - 1)
        return max(first, 0), min(last, out_size - 1)

    def inputs_needed(self, lo: Any, hi: Any, dim: int) -> tuple[Any, Any]:
        """Input units (unclipped, may reach into the padding) read by outputs ``lo .. hi``."""
        s, p = self.stride[dim], self.padding[dim]
        return lo * s - p, hi * s - p + self.span(dim) - 1


@dataclass(frozen=True)
class OpSpec:
    """What one traced node does to the spatial (last two) dimensions of its tensors.

    ``kind`` is one of

    * ``"input"`` -- a placeholder;
    * ``"window"`` -- convolution, pooling, constant padding: ``window``'s arithmetic;
      ``unpadded`` computes the op on an already padded region (padding 0), ``pad_value`` is the
      value the op's own padding stands for (0, -inf for max pooling, the fill of ``F.pad``),
      ``macs`` the multiply-accumulates per output element (convolutions; 0 otherwise) and
      ``scale`` an (H_out, W_out) factor of each output unit (average pooling that does not
      count the padding: kernel area / units inside the image), or None;
    * ``"pointwise"`` -- output unit (i, j) depends on input unit (i, j) only;
    * ``"merge"`` -- same-sized maps combined unit by unit (add, mul, channel concat);
    * ``"layout"`` -- a reshape / split / index / channel reduction that keeps the batch dim
      first and the two spatial dims last: it runs on a rectangle as it does on the map;
    * ``"meta"`` -- a value about the layout (``x.shape``, ``x.size(1) // 2``), not the data;
    * ``"opaque"`` -- anything else (global pooling, flatten, attention, ...), with ``reason``.

    ``channels_last``: the node's tensor holds the spatial dims at 1 and 2 (N, H, W, C), inside a
    ConvNeXt-style permuted stretch (:mod:`~deconvnet_attr.geometry.channels_last`).
    """

    kind: str
    window: Window | None = None
    unpadded: Callable[[Tensor], Tensor] | None = None
    pad_value: float = 0.0
    macs: int = 0
    reason: str = ""
    scale: Tensor | None = None
    channels_last: bool = False


POINTWISE = OpSpec("pointwise")
MERGE = OpSpec("merge")
LAYOUT = OpSpec("layout")
META = OpSpec("meta")
