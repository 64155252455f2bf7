"""Batch norm folded into the convolution before it, in the plan's graph only.

In eval mode a batch norm is a per-channel affine map, ``y = (x - mean) / sqrt(var + eps) * w +
b``; after a convolution it equals one convolution with scaled weights and a shifted bias, at
every output unit (the convolution pads its input, not its output). Running the folded
convolution removes a full pass over the map from every rectangle and every whole-batch op:
memory-bound work that is a tenth of a mobile network's time (EfficientNetV2's late stages).

Only exact ``nn.Conv2d`` modules (a subclass may compute its weight in ``forward``, as timm's
weight-standardised convolutions do) followed by their only reader, an eval-mode
``nn.BatchNorm2d`` or ``F.batch_norm(..., training=False)`` with fixed statistics, are folded.
The model is not touched: the folded weights are new tensors in ``Plan.modules``, the graph is
the plan's own trace (its ``GraphModule.code`` still runs the original program), and the
reference values stay those of the original run.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import Node
from torch.nn.utils.fusion import fuse_conv_bn_weights

from deconvnet_attr.geometry import TracedNet
from deconvnet_attr.geometry.ops import conv_spec
from deconvnet_attr.geometry.specs import batch_norm_args

__all__ = ["fold_batch_norms"]


def _statistics(node: Node, modules: dict[str, Any], net: TracedNet) -> dict[str, Any] | None:
    """An eval-mode batch norm's ``running_mean``, ``running_var``, ``weight``, ``bias`` and
    ``eps`` if ``node`` is one with fixed statistics, else None."""
    if node.op == "call_module":
        bn = modules[str(node.target)]
        if type(bn) is not nn.BatchNorm2d or bn.training or bn.running_mean is None:
            return None
        return {
            "running_mean": bn.running_mean,
            "running_var": bn.running_var,
            "weight": bn.weight,
            "bias": bn.bias,
            "eps": bn.eps,
        }
    if node.op != "call_function" or node.target is not F.batch_norm:
        return None
    try:
        arguments = batch_norm_args(node)
    except TypeError:
        return None
    found = {}
    for name, arg in arguments.items():
        if isinstance(arg, Node) and name != "input":
            if arg in net.depends:
                return None  # statistics computed from the input
            arg = net.values.get(arg)
        found[name] = arg
    if found["training"] or not isinstance(found["running_mean"], Tensor):
        return None
    return found


def _foldable_conv(bn: Node, modules: dict[str, Any], net: TracedNet, uses: dict) -> Any:
    """The ``nn.Conv2d`` whose values only ``bn`` reads, or None."""
    conv = bn.args[0] if bn.args else None
    if not isinstance(conv, Node) or conv.op != "call_module":
        return None
    if any(user is not bn and net.specs[user].kind != "meta" for user in conv.users):
        return None  # shape queries (timm's ``_assert(x.ndim == 4)``) read the same layout
    module = modules[str(conv.target)]
    if type(module) is not nn.Conv2d or uses[str(conv.target)] != 1:
        return None
    if conv not in net.depends or net.specs[conv].kind != "window" or net.specs[bn].channels_last:
        return None
    return module


def fold_batch_norms(net: TracedNet, modules: dict[str, Any]) -> set[Node]:
    """Fold each eval-mode batch norm of ``net`` into the convolution it reads (see the module
    docstring); ``modules`` (target -> callable, the plan's) receives the folded convolutions.
    Returns the convolution nodes that now compute their batch norm too."""
    uses: dict[str, int] = {}
    for node in net.nodes:
        if node.op == "call_module":
            uses[str(node.target)] = uses.get(str(node.target), 0) + 1
    folded: set[Node] = set()
    for bn in net.nodes:
        stats = _statistics(bn, modules, net)
        conv_module = _foldable_conv(bn, modules, net, uses) if stats is not None else None
        if stats is None or conv_module is None:
            continue
        conv = bn.args[0]
        assert isinstance(conv, Node)  # _foldable_conv checked it
        with torch.no_grad():
            weight, bias = (
                p.detach()
                for p in fuse_conv_bn_weights(
                    conv_module.weight,
                    conv_module.bias,
                    stats["running_mean"],
                    stats["running_var"],
                    stats["eps"],
                    stats["weight"],
                    stats["bias"],
                )
            )
        c = conv_module
        modules[str(conv.target)] = partial(
            F.conv2d,
            weight=weight,
            bias=bias,
            stride=c.stride,
            padding=c.padding,
            dilation=c.dilation,
            groups=c.groups,
        )
        net.specs[conv] = conv_spec(weight, bias, c.stride, c.padding, c.dilation, c.groups)
        net.values[conv] = net.values.pop(bn)
        bn.replace_all_uses_with(conv)
        _erase(net, bn)
        folded.add(conv)
    return folded


def _erase(net: TracedNet, node: Node) -> None:
    """Remove ``node`` (no longer read) from the graph and the trace's records, and the constant
    nodes only it read."""
    inputs = node.all_input_nodes
    net.module.graph.erase_node(node)
    for record in (net.specs, net.shapes, net.values, net.layouts):
        record.pop(node, None)
    net.depends.discard(node)
    for arg in inputs:
        if not arg.users and arg not in net.depends and arg.op == "get_attr":
            _erase(net, arg)
