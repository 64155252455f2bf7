"""Layout ops that keep space: reshapes, splits, indexing and reductions of channel dims.

Such an op (``x.view(b, g, c // g, h, w)``, ``torch.split(x, 16, 1)``, ``x[:, :8]``,
``x.sum(1)``) leaves the batch dim first and the two spatial dims last, unchanged; so it computes
on a rectangle of the map exactly what it computes on the map. Which arguments keep space is
checked here, on the recorded example shapes, per op; anything else is opaque.
"""

from __future__ import annotations

import operator
from typing import Any

from torch.fx import Node

from deconvnet_attr.geometry.window import LAYOUT, OpSpec, Shaped
from deconvnet_attr.ops import OpKind

__all__ = ["layout_spec"]

#: For each layout / reduce op: (positional index, keyword) of each argument that names dims.
_DIM_ARGS: dict[str, tuple[tuple[int, str], ...]] = {
    "split": ((2, "dim"),),
    "chunk": ((2, "dim"),),
    "narrow": ((1, "dim"),),
    "select": ((1, "dim"),),
    "unbind": ((1, "dim"),),
    "transpose": ((1, "dim0"), (2, "dim1")),
    "squeeze": ((1, "dim"),),
    "flatten": ((1, "start_dim"), (2, "end_dim")),
    "sum": ((1, "dim"),),
    "mean": ((1, "dim"),),
    "amax": ((1, "dim"),),
    "amin": ((1, "dim"),),
}
#: Default of each dim argument when the call leaves it out (None: every dim).
_DIM_DEFAULTS = {"split": 0, "chunk": 0, "unbind": 0, "start_dim": 0, "end_dim": -1}
#: Ops whose result shape alone shows whether they keep space.
_SHAPED = frozenset({"view", "reshape", "contiguous", "unsqueeze"})


def _spatial_kept(in_shape: Any, out: Any) -> bool:
    """Every tensor in ``out`` has ``in_shape``'s batch dim first and spatial dims last."""
    if isinstance(out, list | tuple):
        return bool(out) and all(_spatial_kept(in_shape, o) for o in out)
    return (
        isinstance(out, Shaped)
        and len(out.shape) >= 3
        and out.shape[0] == in_shape[0]
        and out.shape[-2:] == in_shape[-2:]
    )


def _dims(node: Node, name: str, ndim: int) -> list[int] | None:
    """The dims the call names, normalised to ``0 .. ndim - 1`` (None: every dim)."""
    dims: list[int] = []
    value: Any
    for position, keyword in _DIM_ARGS[name]:
        if keyword in node.kwargs:
            value = node.kwargs[keyword]
        elif len(node.args) > position:
            value = node.args[position]
        else:
            value = _DIM_DEFAULTS.get(keyword, _DIM_DEFAULTS.get(name))
        if value is None:
            return None
        values: Any = value if isinstance(value, list | tuple) else [value]
        if not all(isinstance(v, int) for v in values):
            return None
        dims += [v % ndim for v in values]
    return dims


def _index_keeps_space(index: Any, ndim: int) -> bool:
    """``x[index]`` keeps the batch dim and the two spatial dims (slices channels only)."""
    index = index if isinstance(index, tuple) else (index,)
    if not index or index[0] != slice(None):
        return False
    if any(i is None or i is Ellipsis or isinstance(i, Node) for i in index):
        return False
    ints = sum(isinstance(i, int) for i in index)
    spatial = range(ndim - 2, ndim)
    # position p of the index addresses dim p; the last two dims must be sliced whole
    return all(i == slice(None) for p, i in enumerate(index) if p in spatial) and ints < ndim - 2


def _permute_keeps_space(node: Node, ndim: int) -> bool:
    dims: Any = node.kwargs.get("dims", node.args[1:])
    if len(dims) == 1 and isinstance(dims[0], list | tuple):
        dims = dims[0]
    if len(dims) != ndim or not all(isinstance(d, int) for d in dims):
        return False
    dims = [d % ndim for d in dims]
    return dims[0] == 0 and dims[-2:] == [ndim - 2, ndim - 1]


def layout_spec(node: Node, kind: OpKind | None, name: str, layouts: dict[Node, Any]) -> OpSpec:
    """``layout`` when the LAYOUT / REDUCE call ``node`` keeps space, else opaque with why."""
    source = node.args[0] if node.args else None
    shaped = layouts.get(source) if isinstance(source, Node) else None
    out = layouts.get(node)
    mixes = "over space (global)" if kind is OpKind.REDUCE else "moves or mixes the spatial dims"
    opaque = OpSpec("opaque", reason=f"{name} {mixes}")
    if kind not in (OpKind.LAYOUT, OpKind.REDUCE):
        kind_name = f"{kind.value} " if kind is not None else ""
        return OpSpec("opaque", reason=f"{kind_name}{name}")
    if node.target is operator.getitem and isinstance(shaped, list | tuple):
        # an element of a split: the split has been checked
        return LAYOUT if isinstance(out, Shaped) else opaque
    if not isinstance(shaped, Shaped) or len(shaped.shape) < 3:
        return opaque
    if not _spatial_kept(shaped.shape, out):
        return opaque
    ndim = len(shaped.shape)
    op = str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")
    channel_dims = range(1, ndim - 2)
    if node.target is operator.getitem:
        return LAYOUT if _index_keeps_space(node.args[1], ndim) else opaque
    if op == "permute":
        return LAYOUT if _permute_keeps_space(node, ndim) else opaque
    if op in _SHAPED:
        return LAYOUT
    if op in _DIM_ARGS:
        dims = _dims(node, op, ndim)
        if dims is not None and all(d in channel_dims for d in dims):
            return LAYOUT
    return opaque
