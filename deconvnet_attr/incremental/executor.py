"""One perturbed batch through a :class:`~deconvnet_attr.incremental.plan.Plan`.

Each node's value is :data:`~deconvnet_attr.incremental.patches.UNCHANGED`, a
:class:`~deconvnet_attr.incremental.patches.Patch` or a full tensor. A node whose inputs are all
unchanged is unchanged; otherwise a handler chosen by the node's geometry (``window``,
``pointwise``, ``merge``: :data:`Executor.HANDLERS`) computes the changed rectangle, and anything
no handler takes is run on the full batch. Multiply-accumulates are counted in one place,
:meth:`Executor._count`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, cast

import torch
from torch import Tensor
from torch.fx import Node
from torch.fx.node import map_arg

from deconvnet_attr.geometry import GeometryError
from deconvnet_attr.incremental.patches import (
    UNCHANGED,
    Patch,
    Rect,
    changed_rect,
    concat,
    gather,
    paste,
    place,
    same_map,
    window_input,
)
from deconvnet_attr.incremental.plan import Plan, per_example


@dataclass
class RunStats:
    """Convolution multiply-accumulates over the perturbed batches: done by the incremental plan
    and needed by full recomputation of the same batches (their ratio is the plan's theoretical
    speedup)."""

    conv_macs: int = 0
    conv_macs_full: int = 0
    batches: int = 0
    #: elements read or written by rectangle bookkeeping (gathers, pastes, rectangle ops)
    moved: int = 0
    #: ops run on rectangles
    rect_ops: int = 0
    #: output elements of the ops the plan ran (rectangles and whole batches; views excluded)
    elements: int = 0
    #: output elements of the same ops under full recomputation
    elements_full: int = 0

    @property
    def theoretical_speedup(self) -> float:
        return self.conv_macs_full / max(self.conv_macs, 1)


class Executor:
    """Evaluates perturbed batches (``B = copies * N`` samples) of one plan, counting into
    ``stats``. ``full_fraction``: a rectangle covering at least this fraction of its map is
    computed in full (and so is everything after it)."""

    def __init__(self, plan: Plan, stats: RunStats, full_fraction: float) -> None:
        self.plan = plan
        self.net = plan.net
        self.stats = stats
        self.full_fraction = full_fraction

    def run(self, args: tuple, copies: int) -> Any:
        """The graph's output for the perturbed ``args`` (tensors in contiguous memory)."""
        return _contiguous(self._run(args, copies))

    def _run(self, args: tuple, copies: int) -> Any:
        net, reference = self.net, self.plan.reference
        self.stats.batches += 1
        env: dict[Node, Any] = {}
        placeholders = iter(range(len(args)))
        whole = False  # every live map is a whole batch (and stays one to the end)
        moved = False  # the live maps went channels-last
        for at, node in enumerate(net.nodes):
            if node.op == "placeholder":
                i = next(placeholders, None)
                value = args[i] if i is not None else node.args[0]
                ref = reference[i] if i is not None else node.args[0]
                env[node] = self._diff(value, ref, copies)
            elif node.op == "output":
                return map_arg(node.args[0], lambda n: self._full(n, env, copies))
            elif node not in net.depends:
                env[node] = net.values[node]
            else:
                env[node] = self._step(node, env, copies)
            for used in self.plan.release.get(node, ()):
                del env[used]
            if not whole and isinstance(env.get(node), Tensor):
                per_call = self._tail_copies(env, copies, at + 1)
                if per_call is not None and per_call < copies:
                    return self._tail(at + 1, env, copies, per_call)
                # whole values stay whole and Plan.peak_bytes only falls from here on
                whole = per_call is not None
            if whole:
                moved = self._channels_last(env, at + 1, node if moved else None)
        raise GeometryError("graph without output")  # fx graphs always end in an output node

    def _tail_copies(self, env: dict[Node, Any], copies: int, start: int) -> int | None:
        """Copies per call for the nodes from ``start`` on, if every live batch value is a
        whole batch by then (nothing left to do on rectangles), else ``None``. Live meta
        values do not count: a full op recomputes them from the maps they read."""
        batch = copies * self.plan.examples
        for node, value in env.items():
            if self._sliced(node) and not (isinstance(value, Tensor) and per_example(value, batch)):
                return None
        return self.plan.copies_per_call(copies, start)

    def _channels_last(self, env: dict[Node, Any], at: int, node: Node | None) -> bool:
        """Before position ``at`` of a graph that runs on whole maps from here on: from
        ``Plan.channels_last_from`` on, move the live maps (``node`` None) or ``node``'s new map
        (a reshape's output) to channels-last memory, where convolutions and batch norms run
        faster on CPU (docs/occlusion.md, step 4). Returns whether the maps are moved."""
        if at < self.plan.channels_last_from:
            return False
        for n in list(env) if node is None else (node,):
            value = env.get(n)
            if self._sliced(n) and isinstance(value, Tensor) and value.dim() == 4:
                env[n] = value.contiguous(memory_format=torch.channels_last)
        return True

    def _tail(self, start: int, env: dict[Node, Any], copies: int, per_call: int) -> Any:
        """The nodes from ``start`` on, run on ``per_call`` copies at a time (as
        :meth:`Plan.copies_per_call` says: smaller activations, reused memory)."""
        net, examples = self.net, self.plan.examples
        rest = net.nodes[start:]
        parts = []
        for first in range(0, copies, per_call):
            part = min(per_call, copies - first)
            rows = slice(first * examples, (first + part) * examples)
            sub = {n: v[rows] if self._sliced(n) else v for n, v in env.items()}
            moved = self._channels_last(sub, start, None)
            for at, node in enumerate(rest, start):
                if node.op == "output":
                    parts.append(map_arg(node.args[0], partial(self._full, env=sub, copies=part)))
                    break
                sub[node] = (
                    net.values[node] if node not in net.depends else self._step(node, sub, part)
                )
                for used in self.plan.release.get(node, ()):
                    del sub[used]
                moved = self._channels_last(sub, at + 1, node if moved else None)
        return concat(parts)

    def _sliced(self, node: Node) -> bool:
        """Whether ``node``'s value is a batch that the tail's calls take in parts."""
        return node in self.net.depends and self.net.specs[node].kind != "meta"

    def _count(self, node: Node, samples: int, done: tuple[int, int] = (1, 1)) -> None:
        """Count ``node``'s full cost for ``samples`` and the part ``done[0] / done[1]`` of it
        that was computed."""
        full = self.plan.macs.get(node, 0) * samples
        self.stats.conv_macs_full += full
        self.stats.conv_macs += full * done[0] // done[1]

    def _diff(self, value: Any, ref: Any, copies: int) -> Any:
        """The placeholder's value as UNCHANGED, a patch, or itself (a patch given stays)."""
        if isinstance(value, Patch):
            return value
        found = changed_rect(value, ref, copies, self.full_fraction)
        if not isinstance(found, Rect):
            return found
        return Patch(
            gather(value, None, found.top, found.left, found.h, found.w, 0.0), found.top, found.left
        )

    def _step(self, node: Node, env: dict[Node, Any], copies: int) -> Any:
        result = self._evaluate(node, env, copies)
        ref_out = self.net.values[node]
        if self.net.specs[node].kind in PRODUCING and per_example(ref_out, self.plan.examples):
            self.stats.elements_full += _numel(ref_out) * copies
            if isinstance(result, Patch):
                self.stats.elements += result.data.numel()
            elif isinstance(result, Tensor):
                self.stats.elements += result.numel()
        return result

    def _evaluate(self, node: Node, env: dict[Node, Any], copies: int) -> Any:
        net = self.net
        spec = net.specs[node]
        if spec.kind == "meta":
            return self._meta(node, env)
        ref_out = net.values[node]
        inputs = [a for a in node.all_input_nodes if a in net.depends]
        maps = [a for a in inputs if net.specs[a].kind != "meta"]
        batched = per_example(ref_out, self.plan.examples)
        if batched and all(env[a] is UNCHANGED for a in maps):
            if isinstance(ref_out, Tensor):
                self._count(node, ref_out.shape[0] * copies, (0, 1))
            return UNCHANGED
        handler = self.HANDLERS.get(spec.kind)
        if (
            handler is not None
            and batched
            and maps
            and all(env[a] is UNCHANGED or _is_patch(env[a]) for a in maps)
        ):
            result = handler(self, node, maps, env)
            if result is not None:
                return result
        return self._run_op(node, env, copies)

    def _meta(self, node: Node, env: dict[Node, Any]) -> Any:
        """A layout value (``x.shape``, ``x.size(1) // 2``) of the rectangles it is read from."""
        return self._call(
            node, *map_arg((node.args, node.kwargs), lambda n: _data(env[n], n, self.net))
        )

    def _layout(self, node: Node, inputs: list[Node], env: dict[Node, Any]) -> Any:
        """Space-keeping reshape / split / index / channel reduction: run on the rectangle."""
        if len(inputs) != 1 or not _is_patch(env[inputs[0]]):
            return None
        if self.net.specs[node].channels_last != self.net.specs[inputs[0]].channels_last:
            return env[inputs[0]]  # into / out of channels-last: patches stay channels-first
        first = _first_patch(env[inputs[0]])
        args = map_arg((node.args, node.kwargs), lambda n: _data(env[n], n, self.net))
        out = self._call(node, *args)
        self.stats.rect_ops += 1
        return _wrap(out, first, node)

    def _window(self, node: Node, inputs: list[Node], env: dict[Node, Any]) -> Any:
        """Convolution / pooling: recompute the outputs whose window meets the input patch."""
        net = self.net
        patch = window_input(net, node, inputs, env, Patch)
        if patch is None:
            return None
        spec = net.specs[node]
        window = spec.window
        assert window is not None and spec.unpadded is not None  # window_input checked them
        ref_in, ref_out = net.values[cast(Node, node.args[0])], net.values[node]
        out_h, out_w = ref_out.shape[-2:]
        ph, pw = patch.size
        samples = patch.data.shape[0]
        top, h = place(*window.affected_outputs(patch.top, patch.top + ph - 1, out_h, 0), out_h)
        left, w = place(*window.affected_outputs(patch.left, patch.left + pw - 1, out_w, 1), out_w)
        if h <= 0 or w <= 0:
            self._count(node, samples, (0, 1))
            return UNCHANGED
        if h * w >= self.full_fraction * out_h * out_w:
            return None  # computed (and counted) in full by _run_op
        self._count(node, samples, (h * w, out_h * out_w))
        in_top, _ = window.inputs_needed(top, top, 0)
        in_left, _ = window.inputs_needed(left, left, 1)
        region = gather(
            ref_in,
            patch,
            in_top,
            in_left,
            (h - 1) * window.stride[0] + window.span(0),
            (w - 1) * window.stride[1] + window.span(1),
            spec.pad_value,
        )
        self.stats.moved += region.numel()
        self.stats.rect_ops += 1
        out = spec.unpadded(region)
        if spec.scale is not None:  # per output unit (average pooling without the padding)
            out = out * gather(spec.scale.to(out)[None, None], None, top, left, h, w, 1.0)
        return Patch(out, top, left)

    def _pointwise(self, node: Node, inputs: list[Node], env: dict[Node, Any]) -> Any:
        """Pointwise ops and merges: run the op on the (common bounding box of the) patches."""
        net = self.net
        if net.specs[node].channels_last:
            return self._pointwise_last(node, inputs, env)
        height, width = net.values[node].shape[-2:]
        if not all(isinstance(env[a], Patch) or env[a] is UNCHANGED for a in inputs):
            return None
        if not same_map(net.values, inputs, height, width):
            return None
        patches = [env[a] for a in inputs if isinstance(env[a], Patch)]
        first = patches[0]
        if len(patches) == len(inputs) and all(
            p.size == first.size
            and torch.equal(p.top, first.top)
            and torch.equal(p.left, first.left)
            for p in patches[1:]
        ):
            top, left, (h, w) = first.top, first.left, first.size
            regions = {a: env[a].data for a in inputs}
        else:
            bottom = torch.stack([p.top + p.size[0] for p in patches]).amax(0)
            right = torch.stack([p.left + p.size[1] for p in patches]).amax(0)
            top, h = place(torch.stack([p.top for p in patches]).amin(0), bottom - 1, height)
            left, w = place(torch.stack([p.left for p in patches]).amin(0), right - 1, width)
            regions = {
                a: gather(
                    net.values[a],
                    env[a] if isinstance(env[a], Patch) else None,
                    top,
                    left,
                    h,
                    w,
                    0.0,
                )
                for a in inputs
            }
        for a in node.all_input_nodes:
            static = net.values.get(a)
            if (
                a not in net.depends
                and isinstance(static, Tensor)
                and static.shape[-2:] == (height, width)
                and height * width > 1
            ):
                if static.dim() != net.values[node].dim():
                    return None
                regions[a] = gather(static, None, top, left, h, w, 0.0)
        out = self._call(
            node,
            *map_arg((node.args, node.kwargs), lambda n: regions[n] if n in regions else env[n]),
        )
        if not isinstance(out, Tensor) or out.shape[-2:] != (h, w):
            raise GeometryError(f"{node.name} changed the spatial size of a rectangle")
        self.stats.moved += out.numel() * (1 + len(regions))
        self.stats.rect_ops += 1
        return Patch(out, top, left)

    def _pointwise_last(self, node: Node, inputs: list[Node], env: dict[Node, Any]) -> Any:
        """A per-position op on a channels-last map (LayerNorm, Linear): run on the rectangle
        moved to (B, h, w, C); the patch keeps it channels-first."""
        if len(inputs) != 1 or not isinstance(env[inputs[0]], Patch):
            return None
        patch = env[inputs[0]]
        region = patch.data.permute(0, 2, 3, 1)
        args = map_arg((node.args, node.kwargs), lambda n: region if n is inputs[0] else env[n])
        out = self._call(node, *args)
        if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[:3] != region.shape[:3]:
            raise GeometryError(f"{node.name} changed the spatial size of a rectangle")
        height, width = self.net.values[node].shape[1:3]
        self._count(node, out.shape[0], (out.shape[1] * out.shape[2], height * width))
        self.stats.moved += out.numel() * 2
        self.stats.rect_ops += 1
        return Patch(out.permute(0, 3, 1, 2), patch.top, patch.left)

    #: The handler of each geometry kind (``OpSpec.kind``); other kinds run on the full batch.
    HANDLERS: ClassVar[dict[str, Any]] = {
        "window": _window,
        "pointwise": _pointwise,
        "merge": _pointwise,
        "layout": _layout,
    }

    def _run_op(self, node: Node, env: dict[Node, Any], copies: int) -> Any:
        args, kwargs = map_arg((node.args, node.kwargs), lambda n: self._full(n, env, copies))
        out = self._call(node, args, kwargs)
        if isinstance(out, Tensor) and out.dim() >= 1:
            self._count(node, out.shape[0])
        return out

    def _call(self, node: Node, args: tuple, kwargs: dict) -> Any:
        if node.op == "call_module":
            return self.plan.modules[str(node.target)](*args, **kwargs)
        if node.op == "call_function":
            return cast(Callable, node.target)(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        raise GeometryError(f"cannot run {node.op} node {node.name}")

    def _full(self, node: Node, env: dict[Node, Any], copies: int) -> Any:
        """The node's value for the whole batch (the reference repeated, the patch pasted in)."""
        if node not in self.net.depends:
            return self.net.values[node]
        if self.net.specs[node].kind == "meta":  # of the whole maps, not of their rectangles
            args = map_arg((node.args, node.kwargs), lambda n: self._full(n, env, copies))
            return self._call(node, *args)
        value, ref = env[node], self.net.values[node]
        if self.net.specs[node].channels_last and isinstance(value, Patch):
            whole = paste(ref.permute(0, 3, 1, 2), value, copies).permute(0, 2, 3, 1)
        else:
            whole = _whole(value, ref, copies)
        if isinstance(whole, Tensor) and value is not whole:
            self.stats.moved += whole.numel()
        return whole


def _whole(value: Any, ref: Any, copies: int) -> Any:
    if value is UNCHANGED:
        if isinstance(ref, list | tuple):
            return type(ref)(_whole(UNCHANGED, r, copies) for r in ref)
        return ref.repeat(copies, *([1] * (ref.dim() - 1)))
    if isinstance(value, list | tuple) and isinstance(ref, list | tuple):
        return type(value)(_whole(v, r, copies) for v, r in zip(value, ref, strict=True))
    if isinstance(value, Patch):
        return paste(ref, value, copies)
    return value


#: Geometry kinds whose ops write new output elements (layout ops are views or cheap copies,
#: meta ops compute shapes): what ``RunStats.elements`` counts.
PRODUCING = frozenset({"window", "pointwise", "merge", "opaque"})


def _contiguous(value: Any) -> Any:
    """``value`` with its tensors (and those of its tuples / lists) in contiguous memory."""
    if isinstance(value, list | tuple):
        return type(value)(_contiguous(v) for v in value)
    return value.contiguous() if isinstance(value, Tensor) else value


def _numel(value: Any) -> int:
    """Elements of a tensor or of a tuple / list of tensors."""
    if isinstance(value, list | tuple):
        return sum(_numel(v) for v in value)
    return value.numel() if isinstance(value, Tensor) else 0


def _is_patch(value: Any) -> bool:
    """A patch, or a tuple / list of patches of one rectangle (a channel split)."""
    if isinstance(value, list | tuple):
        return bool(value) and all(isinstance(v, Patch) for v in value)
    return isinstance(value, Patch)


def _first_patch(value: Any) -> Patch:
    return value[0] if isinstance(value, list | tuple) else value


def _data(value: Any, node: Node, net: Any) -> Any:
    """What an op reads for an argument: a patch's rectangle (moved to (B, h, w, C) for a
    channels-last node), the reference for UNCHANGED."""
    if isinstance(value, Patch):
        return value.data.permute(0, 2, 3, 1) if net.specs[node].channels_last else value.data
    if isinstance(value, list | tuple) and _is_patch(value):
        return type(value)(v.data for v in value)
    if value is UNCHANGED:
        return net.values[node]
    return value


def _wrap(out: Any, like: Patch, node: Node) -> Any:
    """``out`` (a tensor or a tuple / list of them) as patches at ``like``'s place."""
    if isinstance(out, list | tuple):
        return type(out)(_wrap(o, like, node) for o in out)
    if (
        not isinstance(out, Tensor)
        or out.dim() < 3
        or out.shape[0] != like.data.shape[0]
        or tuple(out.shape[-2:]) != like.size
    ):
        raise GeometryError(f"{node.name} changed the spatial size of a rectangle")
    return Patch(out, like.top, like.left)
