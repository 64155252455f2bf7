"""A dry run of one perturbed batch: the work the executor would count, without running an op.

The cost model must decide before the first occluded batch runs (a plan that goes global at the
stem would otherwise pay for one incremental batch that saves nothing). The executor's work
depends only on the rectangles' sizes and the maps' shapes, so :func:`dry_run` follows the
executor's decisions (:class:`~deconvnet_attr.incremental.executor.Executor`: which handler takes
a node, when a rectangle covers its map, where the batch is materialised) on
:class:`~deconvnet_attr.incremental.patches.Rect` values -- positions and sizes, no data -- and
counts the same :class:`~deconvnet_attr.incremental.executor.RunStats`: convolution MACs done and
needed in full, elements moved by gathers, pastes and rectangle ops, ops run on rectangles.
It costs index arithmetic on ``B`` positions per node: nothing next to one batch.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import Tensor
from torch.fx import Node
from torch.fx.node import map_arg

from deconvnet_attr.incremental.executor import PRODUCING, RunStats
from deconvnet_attr.incremental.patches import (
    UNCHANGED,
    Rect,
    changed_rect,
    place,
    same_map,
    window_input,
)
from deconvnet_attr.incremental.plan import Plan, per_example

__all__ = ["dry_run"]

#: Marker: the node's value is a whole batch (computed in full).
FULL = "full"


def _numel(ref: Any, samples: int) -> int:
    """Elements of ``samples`` copies of the per-example value ``ref`` (tensors only)."""
    if isinstance(ref, list | tuple):
        return sum(_numel(r, samples) for r in ref)
    return ref[0].numel() * samples if isinstance(ref, Tensor) and ref.dim() >= 1 else 0


def _is_rect(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return bool(value) and all(isinstance(v, Rect) for v in value)
    return isinstance(value, Rect)


class _Dry:
    """The executor's control flow on rectangles (see the module docstring)."""

    def __init__(self, plan: Plan, copies: int, full_fraction: float) -> None:
        self.plan, self.net = plan, plan.net
        self.copies, self.full_fraction = copies, full_fraction
        self.samples = copies * plan.examples
        self.stats = RunStats(batches=1)

    def run(self, args: tuple) -> RunStats:
        env: dict[Node, Any] = {}
        placeholders = iter(range(len(args)))
        for node in self.net.nodes:
            if node.op == "placeholder":
                i = next(placeholders, None)
                if i is None:
                    continue
                ref = self.plan.reference[i]
                found = changed_rect(args[i], ref, self.copies, self.full_fraction)
                env[node] = found if found is UNCHANGED or isinstance(found, Rect) else FULL
            elif node.op == "output":
                map_arg(node.args[0], lambda n: self._full(n, env))
            elif node in self.net.depends and self.net.specs[node].kind != "meta":
                env[node] = self._step(node, env)
        return self.stats

    def _count(self, node: Node, done: tuple[int, int] = (1, 1)) -> None:
        full = self.plan.macs.get(node, 0) * self.samples
        self.stats.conv_macs_full += full
        self.stats.conv_macs += full * done[0] // done[1]

    def _full(self, node: Node, env: dict[Node, Any]) -> None:
        """``node``'s value read whole: a rectangle or an unchanged map is pasted / repeated."""
        if node in self.net.depends and self.net.specs[node].kind != "meta":
            if env.get(node) is not FULL:
                self.stats.moved += _numel(self.net.values[node], self.samples)

    def _step(self, node: Node, env: dict[Node, Any]) -> Any:
        result = self._evaluate(node, env)
        ref_out, spec = self.net.values[node], self.net.specs[node]
        if spec.kind in PRODUCING and per_example(ref_out, self.plan.examples):
            self.stats.elements_full += _numel(ref_out, self.samples)
            if result is FULL:
                self.stats.elements += _numel(ref_out, self.samples)
            elif isinstance(result, Rect):
                shape = ref_out.shape
                channels = shape[-1] if spec.channels_last else math.prod(shape[1:-2])
                self.stats.elements += self.samples * channels * result.h * result.w
        return result

    def _evaluate(self, node: Node, env: dict[Node, Any]) -> Any:
        net = self.net
        ref_out = net.values[node]
        maps = [a for a in node.all_input_nodes if a in net.depends and net.specs[a].kind != "meta"]
        batched = per_example(ref_out, self.plan.examples)
        if batched and all(env[a] is UNCHANGED for a in maps):
            if isinstance(ref_out, Tensor):
                self._count(node, (0, 1))
            return UNCHANGED
        kind = net.specs[node].kind
        if batched and maps and all(env[a] is UNCHANGED or _is_rect(env[a]) for a in maps):
            handler = {
                "window": self._window,
                "pointwise": self._pointwise,
                "merge": self._pointwise,
                "layout": self._layout,
            }.get(kind)
            result = handler(node, maps, env) if handler is not None else None
            if result is not None:
                return result
        for a in node.all_input_nodes:
            self._full(a, env)
        if isinstance(ref_out, Tensor) and ref_out.dim() >= 1:
            self._count(node)
        return FULL

    def _layout(self, node: Node, maps: list[Node], env: dict[Node, Any]) -> Any:
        if len(maps) != 1 or not _is_rect(env[maps[0]]):
            return None
        value = env[maps[0]]
        if self.net.specs[node].channels_last != self.net.specs[maps[0]].channels_last:
            return value
        first = value[0] if isinstance(value, list | tuple) else value
        self.stats.rect_ops += 1
        ref = self.net.values[node]
        return type(ref)(first for _ in ref) if isinstance(ref, list | tuple) else first

    def _window(self, node: Node, maps: list[Node], env: dict[Node, Any]) -> Any:
        net = self.net
        rect = window_input(net, node, maps, env, Rect)
        if rect is None:
            return None
        spec = net.specs[node]
        window = spec.window
        assert window is not None and spec.unpadded is not None  # window_input checked them
        ref_in = net.values[cast(Node, node.args[0])]
        out_h, out_w = net.values[node].shape[-2:]
        top, h = place(*window.affected_outputs(rect.top, rect.top + rect.h - 1, out_h, 0), out_h)
        left, w = place(
            *window.affected_outputs(rect.left, rect.left + rect.w - 1, out_w, 1), out_w
        )
        if h <= 0 or w <= 0:
            self._count(node, (0, 1))
            return UNCHANGED
        if h * w >= self.full_fraction * out_h * out_w:
            return None
        self._count(node, (h * w, out_h * out_w))
        region = ((h - 1) * window.stride[0] + window.span(0)) * (
            (w - 1) * window.stride[1] + window.span(1)
        )
        channels = math.prod(ref_in.shape[1:-2])
        self.stats.moved += self.samples * channels * region
        self.stats.rect_ops += 1
        return Rect(top, left, h, w)

    def _pointwise(self, node: Node, maps: list[Node], env: dict[Node, Any]) -> Any:
        net = self.net
        ref_out = net.values[node]
        if net.specs[node].channels_last:
            return self._pointwise_last(node, maps, env)
        if not isinstance(ref_out, Tensor) or ref_out.dim() < 3:
            return None
        height, width = ref_out.shape[-2:]
        if not all(isinstance(env[a], Rect) or env[a] is UNCHANGED for a in maps):
            return None
        if not same_map(net.values, maps, height, width):
            return None
        rects = [env[a] for a in maps if isinstance(env[a], Rect)]
        bottom = torch.stack([r.top + r.h for r in rects]).amax(0)
        right = torch.stack([r.left + r.w for r in rects]).amax(0)
        top, h = place(torch.stack([r.top for r in rects]).amin(0), bottom - 1, height)
        left, w = place(torch.stack([r.left for r in rects]).amin(0), right - 1, width)
        regions = len(maps)
        for a in node.all_input_nodes:
            static = net.values.get(a)
            if (
                a not in net.depends
                and isinstance(static, Tensor)
                and static.shape[-2:] == (height, width)
                and height * width > 1
            ):
                if static.dim() != ref_out.dim():
                    return None
                regions += 1
        out = self.samples * math.prod(ref_out.shape[1:-2]) * h * w
        self.stats.moved += out * (1 + regions)
        self.stats.rect_ops += 1
        return Rect(top, left, h, w)

    def _pointwise_last(self, node: Node, maps: list[Node], env: dict[Node, Any]) -> Any:
        if len(maps) != 1 or not isinstance(env[maps[0]], Rect):
            return None
        rect = env[maps[0]]
        _, height, width, depth = self.net.values[node].shape
        self._count(node, (rect.h * rect.w, height * width))
        self.stats.moved += 2 * self.samples * rect.h * rect.w * depth
        self.stats.rect_ops += 1
        return rect


def dry_run(plan: Plan, args: tuple, copies: int, full_fraction: float) -> RunStats:
    """The :class:`RunStats` the executor would count on the perturbed batch ``args`` (``copies``
    copies of the plan's N examples), from rectangle positions and map shapes alone."""
    with torch.no_grad():
        return _Dry(plan, copies, full_fraction).run(args)
