"""Changed rectangles of feature maps: the values the incremental engine carries between nodes.

A node's value in a perturbed batch is :data:`UNCHANGED` (equal to the cached reference), a
:class:`Patch` (the reference with a rectangle replaced, per sample) or a plain tensor. This module
holds the tensor arithmetic on rectangles: finding them, reading them out of a map, pasting them
back in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


class _Unchanged:
    """Marker: the node's value equals the cached reference (per example)."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()


@dataclass
class Patch:
    """Values ``data`` (B, *C, h, w) of the rectangle at (top[b], left[b]) of a (·, *C, H, W)
    map (``*C``: one or more channel dims); outside it the map equals the cached reference of
    example ``b % N``."""

    data: Tensor
    top: Tensor
    left: Tensor

    @property
    def size(self) -> tuple[int, int]:
        return int(self.data.shape[-2]), int(self.data.shape[-1])


@dataclass
class Rect:
    """A changed rectangle without its values: ``h x w`` at (top[b], left[b]) for each sample."""

    top: Tensor
    left: Tensor
    h: int
    w: int


def changed_rect(value: Any, ref: Any, copies: int, full_fraction: float) -> Any:
    """Where the batch ``value`` (``copies`` copies of the N examples of ``ref``) differs from
    ``ref``: :data:`UNCHANGED`, a :class:`Rect` of a 4-D map, or ``value`` itself (not a tensor,
    not 4-D but changed, or a rectangle covering at least ``full_fraction`` of the map). A
    :class:`Patch` given for the value (the caller knows where it changed) is its rectangle."""
    if isinstance(value, Patch):
        return Rect(value.top, value.left, *value.size)
    if not isinstance(value, Tensor):
        return value
    n = ref.shape[0]
    changed = (value.view(copies, n, *ref.shape[1:]) != ref).view(value.shape)
    if ref.dim() != 4:
        return value if changed.any() else UNCHANGED
    changed = changed.any(1)
    height, width = ref.shape[-2:]
    top, h = place(*bounds(changed.any(2)), height)
    left, w = place(*bounds(changed.any(1)), width)
    if h == 0:
        return UNCHANGED
    if h * w >= full_fraction * height * width:
        return value
    return Rect(top, left, h, w)


def gather(
    ref: Tensor, patch: Patch | None, top: Tensor, left: Tensor, h: int, w: int, pad_value: float
) -> Tensor:
    """Rectangles (B, *C, h, w) at (top[b], left[b]) of the map ``patch``-over-``ref``.

    ``ref`` (n, *C, H, W) is the reference map (sample ``b`` reads example ``b % n``); rows and
    columns outside it read ``pad_value``; inside ``patch``'s rectangle they read the patch.
    One ``torch.gather`` per source over flattened positions (contiguous NCHW output, several
    times faster than advanced indexing on a (B, h, w) index grid).
    """
    channels = ref.shape[1:-2]
    ref = ref.reshape(ref.shape[0], -1, *ref.shape[-2:])
    examples, depth, height, width = ref.shape
    batch = top.shape[0]
    device = ref.device
    rows = top[:, None] + torch.arange(h, device=device)
    cols = left[:, None] + torch.arange(w, device=device)
    flat = ref.reshape(examples, depth, height * width)
    source = (
        flat.expand(batch, -1, -1)
        if examples == 1
        else flat[torch.arange(batch, device=device) % examples]
    )
    out = _take(source, rows.clamp(0, height - 1), cols.clamp(0, width - 1), width)
    outside = (rows < 0) | (rows >= height), (cols < 0) | (cols >= width)
    if outside[0].any() or outside[1].any():
        mask = outside[0][:, :, None] | outside[1][:, None, :]
        out = out.masked_fill(mask[:, None], pad_value)
    if patch is not None:
        _overlay(
            out, patch.data.reshape(batch, depth, *patch.size), patch.top - top, patch.left - left
        )
    return out.reshape(batch, *channels, h, w)


def _overlay(out: Tensor, data: Tensor, down: Tensor, right: Tensor) -> None:
    """Copy ``data`` (B, C, ph, pw) into ``out`` (B, C, h, w) at offset (down[b], right[b]),
    clipped to ``out``: one slice assignment per distinct offset (windows away from the border
    share one; windows shifted inward at the border add a few)."""
    (ph, pw), (h, w) = data.shape[-2:], out.shape[-2:]
    offsets = torch.stack([down, right], 1)
    distinct = offsets.unique(dim=0)
    for dy, dx in distinct.tolist():
        rows = slice(max(dy, 0), min(dy + ph, h))
        cols = slice(max(dx, 0), min(dx + pw, w))
        if rows.start >= rows.stop or cols.start >= cols.stop:
            continue
        inside = (
            ...,
            slice(rows.start - dy, rows.stop - dy),
            slice(cols.start - dx, cols.stop - dx),
        )
        if len(distinct) == 1:
            out[..., rows, cols] = data[inside]
        else:
            which = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).nonzero().squeeze(1)
            out[which, :, rows, cols] = data[which][inside]


def _take(flat: Tensor, rows: Tensor, cols: Tensor, width: int) -> Tensor:
    """``flat`` (B, C, H * W) at rows (B, h) x cols (B, w) of each sample: (B, C, h, w)."""
    batch, depth = flat.shape[:2]
    h, w = rows.shape[1], cols.shape[1]
    index = (rows[:, :, None] * width + cols[:, None, :]).view(batch, 1, h * w)
    return torch.gather(flat, 2, index.expand(batch, depth, h * w)).view(batch, depth, h, w)


def paste(ref: Tensor, patch: Patch, copies: int) -> Tensor:
    """The whole batch (B, *C, H, W): ``ref`` (N, *C, H, W) repeated ``copies`` times,
    ``patch`` pasted in (one ``scatter_`` over flattened positions)."""
    out = ref.repeat(copies, *([1] * (ref.dim() - 1)))
    batch, (height, width) = out.shape[0], out.shape[-2:]
    flat = out.view(batch, -1, height * width)
    h, w = patch.size
    device = out.device
    rows = patch.top[:, None] + torch.arange(h, device=device)
    cols = patch.left[:, None] + torch.arange(w, device=device)
    index = (rows[:, :, None] * width + cols[:, None, :]).view(batch, 1, h * w)
    depth = flat.shape[1]
    flat.scatter_(2, index.expand(batch, depth, h * w), patch.data.reshape(batch, depth, h * w))
    return out


def concat(parts: list[Any]) -> Any:
    """The outputs of calls on consecutive slices of one batch, joined along the batch: tensors,
    or tuples / lists of them."""
    if isinstance(parts[0], Tensor):
        return torch.cat(parts)
    return type(parts[0])(torch.cat(list(p)) for p in zip(*parts, strict=True))


def bounds(changed: Tensor) -> tuple[Tensor, Tensor]:
    """First and last True index along the last dim of ``changed`` (B, L); (0, -1) if none."""
    length = changed.shape[-1]
    as_int = changed.to(torch.int8)
    first = as_int.argmax(-1)
    last = length - 1 - as_int.flip(-1).argmax(-1)
    none = ~changed.any(-1)
    return first.masked_fill(none, 0), last.masked_fill(none, -1)


def place(first: Tensor, last: Tensor, size: int) -> tuple[Tensor, int]:
    """Common extent (the widest ``last - first + 1``) and starts shifted inward to fit."""
    extent = int((last - first + 1).max().clamp(min=0))
    return torch.minimum(first, torch.tensor(size - extent, device=first.device)), extent


def same_map(values: dict, inputs: list, height: int, width: int) -> bool:
    """True when every one of ``inputs`` is a map ``(..., height, width)`` in ``values`` (the
    reference run's node values): a pointwise op or merge can then run on rectangles of them."""
    return all(
        isinstance(values[a], Tensor)
        and values[a].dim() >= 3
        and values[a].shape[-2:] == (height, width)
        for a in inputs
    )


def window_input(net: Any, node: Any, inputs: list, env: dict, kind: type) -> Any:
    """The one changed input of the window op ``node`` (convolution / pooling), if the rectangle
    engine can run it: a :class:`~.window.Window` spec with its unpadded form, one map input whose
    value in ``env`` is a ``kind`` (Patch for the executor, Rect for the dry count) and a 4-d
    output; else None (the op then runs whole)."""
    spec = net.specs[node]
    if spec.window is None or spec.unpadded is None or len(inputs) != 1:
        return None
    if net.values[node].dim() != 4 or not isinstance(env[inputs[0]], kind):
        return None
    return env[inputs[0]]
