"""Channels-last stretches of a CNN (ConvNeXt): ``x.permute(0, 2, 3, 1)``, per-position ops on
(N, H, W, C), ``permute(0, 3, 1, 2)`` back.

ConvNeXt's blocks and its ``LayerNorm2d`` move the channels last, normalise over them
(``LayerNorm`` over the last dim: statistics per position, not over space), apply ``Linear``
layers to them (a 1x1 convolution) and move them back. Every op in between is pointwise in
space, so the stretch keeps a changed rectangle. Such nodes get ``channels_last=True`` on their
:class:`~deconvnet_attr.geometry.window.OpSpec`: their tensors hold the spatial dims at 1 and 2,
not last. The permute in is a ``layout`` node with the flag, the per-position ops ``pointwise``
with it, the permute back a plain ``layout`` node; anything else reading a channels-last map
(a merge of two, a window op) is opaque.
"""

from __future__ import annotations

import builtins
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import Node

from deconvnet_attr.geometry.window import LAYOUT, OpSpec, Shaped
from deconvnet_attr.ops import OpKind, op_kind

__all__ = ["channels_last_spec"]

TO_LAST, TO_FIRST = [0, 2, 3, 1], [0, 3, 1, 2]
POINTWISE_LAST = OpSpec("pointwise", channels_last=True)


def _permute_dims(node: Node) -> list[int] | None:
    """The dims of a ``permute`` call (method or ``torch.permute``), else None."""
    is_method = node.op == "call_method" and node.target == "permute"
    if not (is_method or (node.op == "call_function" and node.target is torch.permute)):
        return None
    dims: Any = node.kwargs.get("dims", node.args[1:])
    if len(dims) == 1 and isinstance(dims[0], list | tuple):
        dims = dims[0]
    if not all(isinstance(d, int) for d in dims):
        return None
    return [d % 4 for d in dims] if len(dims) == 4 else None


def _shape(layouts: dict[Node, Any], node: Any) -> Any:
    shaped = layouts.get(node) if isinstance(node, Node) else None
    return shaped.shape if isinstance(shaped, Shaped) else None


def _op(node: Node, modules: dict[str, nn.Module]) -> Any:
    if node.op == "call_module":
        return modules[str(node.target)]
    if node.op == "call_method":
        return getattr(Tensor, str(node.target), None)
    return node.target


def _per_position(node: Node, op: Any, values: dict[Node, Any], structural: bool) -> OpSpec | None:
    """The spec of a per-position op on a channels-last map, None if ``op`` is not one."""
    kind = op_kind(op)
    if isinstance(op, nn.Linear):
        return OpSpec("pointwise", channels_last=True, macs=op.in_features)
    if op is F.linear:
        arg = node.args[1] if len(node.args) > 1 else None
        weight = values.get(arg) if isinstance(arg, Node) else None
        return (
            OpSpec("pointwise", channels_last=True, macs=int(weight.shape[-1]))
            if isinstance(weight, Tensor)
            else None
        )
    if isinstance(op, nn.LayerNorm):
        return POINTWISE_LAST if len(op.normalized_shape) == 1 else None
    if op is F.layer_norm:
        shape = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
        return POINTWISE_LAST if isinstance(shape, list | tuple) and len(shape) == 1 else None
    if kind is OpKind.DROPOUT:
        training = isinstance(op, nn.Module) and op.training
        return None if training and not structural else POINTWISE_LAST
    if kind is not None and kind.pointwise:
        return POINTWISE_LAST
    return None


def channels_last_spec(
    node: Node,
    modules: dict[str, nn.Module],
    values: dict[Node, Any],
    layouts: dict[Node, Any],
    specs: dict[Node, OpSpec],
    depends: set[Node],
    structural: bool,
) -> OpSpec | None:
    """The spec of ``node`` if it enters, stays in or leaves a channels-last stretch, else None
    (the node is described as usual)."""
    maps = [a for a in node.all_input_nodes if a in depends and specs[a].kind != "meta"]
    last = [a for a in maps if specs[a].channels_last]
    dims = _permute_dims(node)
    in_shape, out_shape = _shape(layouts, maps[0] if maps else None), _shape(layouts, node)
    out_layout = layouts.get(node)
    if not last:
        if dims == TO_LAST and in_shape is not None and len(in_shape) == 4:
            return OpSpec("layout", channels_last=True)
        return None
    if node.target is builtins.getattr or (node in layouts and not isinstance(out_layout, Shaped)):
        return None  # x.shape, x.size(-1): a layout value, described as usual
    name = getattr(_op(node, modules), "__name__", type(_op(node, modules)).__name__)
    opaque = OpSpec("opaque", reason=f"{name} on a channels-last map")
    if len(maps) != 1:
        return opaque
    if dims == TO_FIRST:
        return LAYOUT
    spec = _per_position(node, _op(node, modules), values, structural)
    if spec is None:
        return opaque
    if structural and out_shape is None:
        return spec
    keeps = in_shape is not None and out_shape is not None and len(out_shape) == 4
    return spec if keeps and out_shape[:3] == in_shape[:3] else opaque
