"""Each traced node's :class:`~deconvnet_attr.geometry.window.OpSpec`, read from the op table
(:mod:`deconvnet_attr.ops`) and the node's arguments and recorded shapes.

``layouts[node]`` is the node's output on the example with every tensor replaced by its shape
(a :class:`~deconvnet_attr.geometry.window.Shaped`; non-tensor outputs -- ints,
``torch.Size`` -- are kept as they are); ``values`` holds the
outputs that do not depend on the input (weights, running statistics).
"""

from __future__ import annotations

import builtins
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.fx import Node

from deconvnet_attr.geometry.channels_last import channels_last_spec
from deconvnet_attr.geometry.layout import layout_spec
from deconvnet_attr.geometry.ops import (
    avg_pool_spec,
    conv_spec,
    identity,
    max_pool_spec,
    pad_spec,
)
from deconvnet_attr.geometry.window import MERGE, META, POINTWISE, OpSpec, Shaped, Window
from deconvnet_attr.ops import OpKind, op_kind

__all__ = ["batch_norm_args", "node_spec"]

#: Tensor attributes that describe the layout, not the data.
_META_ATTRIBUTES = frozenset({"shape", "ndim", "dtype", "device", "is_cuda", "layout"})


# Signatures of the functional ops, to bind a traced call's args/kwargs by name.
def _conv_args(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return locals()


def _max_pool_args(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    return locals()


def _avg_pool_args(
    input,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    return locals()


def _pad_args(input, pad, mode="constant", value=None):
    return locals()


def _batch_norm_args(
    input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
):
    return locals()


def _instance_norm_args(
    input,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    use_input_stats=True,
    momentum=0.1,
    eps=1e-5,
):
    return locals()


def _bind(signature_of: Callable[..., dict], node: Node, value: Callable[[Any], Any]) -> dict:
    bound = inspect.signature(signature_of).bind(*node.args, **node.kwargs)
    bound.apply_defaults()
    return {k: value(v) for k, v in bound.arguments.items()}


def batch_norm_args(node: Node) -> dict[str, Any]:
    """A traced ``F.batch_norm`` call's arguments by name (nodes as they are), defaults filled
    in. Raises TypeError for a call that does not bind."""
    return _bind(_batch_norm_args, node, lambda v: v)


def _training(node: Node, default: bool) -> bool:
    """The ``training`` argument of a traced call (``F.dropout``, ``F.rrelu``), or ``default``
    when the function takes none or its signature is unknown."""
    if not callable(node.target):
        return default
    try:
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
    except (TypeError, ValueError):  # builtins without a signature, calls that do not bind
        return default
    bound.apply_defaults()
    return bool(bound.arguments.get("training", default))


def _shape(layouts: dict[Node, Any], x: Any) -> torch.Size | None:
    shaped = layouts.get(x) if isinstance(x, Node) else None
    return shaped.shape if isinstance(shaped, Shaped) else None


def _module_spec(module: nn.Module, node: Node, layouts: dict, structural: bool) -> OpSpec:
    name = type(module).__name__
    kind = op_kind(module)
    in_shape = _shape(layouts, node.args[0] if node.args else None)
    out_shape = _shape(layouts, node)
    m: Any = module  # its attributes, untyped in nn.Module
    if kind is OpKind.CONV:
        return conv_spec(
            m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups, m.padding_mode
        )
    if kind is OpKind.MAX_POOL:
        return max_pool_spec(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices)
    if kind is OpKind.AVG_POOL:
        return avg_pool_spec(
            m.kernel_size,
            m.stride,
            m.padding,
            m.ceil_mode,
            m.count_include_pad,
            m.divisor_override,
            in_shape,
            out_shape,
            structural,
        )
    if kind is OpKind.PAD and isinstance(module, nn.ConstantPad2d):
        return pad_spec(module.padding, "constant", module.value)
    if kind is not None and kind.pointwise:
        return POINTWISE
    if kind in (OpKind.DROPOUT, OpKind.BATCH_NORM, OpKind.INSTANCE_NORM):
        if module.training and not structural:
            return OpSpec("opaque", reason=f"{name} in training mode")
        if kind is OpKind.DROPOUT:
            return POINTWISE
        if getattr(module, "running_mean", None) is None:
            return OpSpec("opaque", reason=f"{name} without running statistics (global)")
        return POINTWISE
    if kind is OpKind.ADAPTIVE_POOL and not getattr(module, "return_indices", False):
        if in_shape is not None and out_shape is not None and in_shape[-2:] == out_shape[-2:]:
            # pooling to the input's own size is the identity: a 1x1 window (on a rectangle,
            # the module itself would resize to the full output size)
            return OpSpec("window", Window((1, 1), (1, 1), (0, 0)), identity)
        return OpSpec("opaque", reason=f"{name} (global pooling)")
    if kind is OpKind.SPATIAL_NORM:
        return OpSpec("opaque", reason=f"{name} (statistics over space: global)")
    return OpSpec("opaque", reason=f"module {name}")


def _function_spec(
    node: Node, values: dict[Node, Any], layouts: dict[Node, Any], structural: bool
) -> OpSpec:
    fn = node.target

    def value(x: Any) -> Any:
        return (values.get(x, layouts.get(x, x))) if isinstance(x, Node) else x

    name = getattr(fn, "__name__", repr(fn))
    kind = op_kind(fn)
    in_shape = _shape(layouts, node.args[0] if node.args else None)
    try:
        if kind is OpKind.CONV:
            a = _bind(_conv_args, node, value)
            return conv_spec(
                a["weight"], a["bias"], a["stride"], a["padding"], a["dilation"], a["groups"]
            )
        if kind is OpKind.MAX_POOL:
            a = _bind(_max_pool_args, node, value)
            return max_pool_spec(
                a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["return_indices"]
            )
        if kind is OpKind.AVG_POOL:
            a = _bind(_avg_pool_args, node, value)
            return avg_pool_spec(
                a["kernel_size"],
                a["stride"],
                a["padding"],
                a["ceil_mode"],
                a["count_include_pad"],
                a["divisor_override"],
                in_shape,
                _shape(layouts, node),
                structural,
            )
        if kind is OpKind.PAD:
            a = _bind(_pad_args, node, value)
            return pad_spec(a["pad"], a["mode"], a["value"])
        if kind is OpKind.BATCH_NORM:
            a = _bind(_batch_norm_args, node, value)
            if a["training"] and not structural:
                return OpSpec("opaque", reason=f"{name} with batch statistics")
            return POINTWISE
        if kind is OpKind.INSTANCE_NORM:
            a = _bind(_instance_norm_args, node, value)
            if a["use_input_stats"]:
                return OpSpec("opaque", reason=f"{name} (statistics over space: global)")
            return POINTWISE
    except TypeError as error:
        return OpSpec("opaque", reason=f"unrecognised call of {name}: {error}")
    if kind is OpKind.DROPOUT or (kind is not None and kind.pointwise):
        if not structural and _training(node, default=kind is OpKind.DROPOUT):
            return OpSpec("opaque", reason=f"{name} in training mode is random")
        return POINTWISE
    if kind is OpKind.MERGE:
        return MERGE
    if kind is OpKind.CONCAT:
        tensors: Any = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        ndim = {len(_shape(layouts, t) or ()) or -1 for t in tensors}
        if ndim == {4} and dim in (1, -3):
            return MERGE
        return OpSpec("opaque", reason=f"concatenation along dim={dim}")
    if kind is OpKind.SPATIAL_NORM:
        return OpSpec("opaque", reason=f"{name} (statistics over space: global)")
    if fn is builtins.getattr and len(node.args) == 2 and node.args[1] in _META_ATTRIBUTES:
        return META
    return layout_spec(node, kind, name, layouts)


def _method_spec(node: Node, layouts: dict[Node, Any]) -> OpSpec:
    name = str(node.target)
    kind = op_kind(getattr(Tensor, name, None))
    if kind is not None and kind.pointwise:
        return POINTWISE
    if kind is OpKind.MERGE:
        return MERGE
    if kind is OpKind.META:
        return META
    return layout_spec(node, kind, f".{name}()", layouts)


def node_spec(
    node: Node,
    modules: dict[str, nn.Module],
    values: dict[Node, Any],
    layouts: dict[Node, Any],
    specs: dict[Node, OpSpec],
    depends: set[Node],
    structural: bool,
) -> OpSpec:
    """The spec of one node; ``specs`` holds those of the nodes before it, ``depends`` the
    nodes computed from an input."""
    if node.op == "placeholder":
        return OpSpec("input")
    if node.op in ("call_module", "call_function", "call_method"):
        last = channels_last_spec(node, modules, values, layouts, specs, depends, structural)
        if last is not None:
            return last
    if node.op == "call_module":
        return _module_spec(modules[str(node.target)], node, layouts, structural)
    if node.op == "call_function":
        spec = _function_spec(node, values, layouts, structural)
    elif node.op == "call_method":
        spec = _method_spec(node, layouts)
    else:
        return OpSpec("opaque", reason=node.op)
    if spec.kind == "opaque" and _computes_on_meta(node, layouts, specs, depends):
        return META
    return spec


def _computes_on_meta(
    node: Node, layouts: dict[Node, Any], specs: dict[Node, OpSpec], depends: set[Node]
) -> bool:
    """True for arithmetic on layout values (``x.size(1) // 2``, ``_assert(x.ndim == 4)``):
    a non-tensor result whose input-dependent arguments are all meta values."""
    inputs = [a for a in node.all_input_nodes if a in depends]
    return (
        node in depends
        and all(specs[a].kind == "meta" for a in inputs)
        and node in layouts
        and not _holds_tensor(layouts[node])
    )


def _holds_tensor(tree: Any) -> bool:
    if isinstance(tree, list | tuple):
        return any(_holds_tensor(t) for t in tree)
    return isinstance(tree, Shaped)
