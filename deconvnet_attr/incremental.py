"""Exact incremental inference over a traced graph (Nakandala et al., SIGMOD 2019).

:class:`IncrementalForward` stands in for a network inside a perturbation loop. Its first call
runs the unperturbed inputs through the ``torch.fx`` graph and keeps every node's output (one
input's worth of activations). Each later call receives a batch of ``B = k * N`` perturbed copies
(Captum's layout: sample ``b`` is a copy of example ``b % N``). It finds, per sample, the
rectangle in which the input differs from the reference and carries that rectangle through the
graph with the arithmetic of ``geometry.py``:

* window ops (convolution, pooling) recompute only the output units whose window meets the
  rectangle, from a region of their input (the rectangle plus the halo the kernel needs) that is
  gathered from the cached map with the changed values pasted in;
* pointwise ops run on the rectangle; merges (residual add, channel concat) on the bounding box
  of their inputs' rectangles;
* from the first op whose rectangle covers (most of) its map, or that has no local geometry
  (flatten, linear, global pooling, ...), the batch is materialised and run as usual.

All samples of a batch share one rectangle size per node (the largest); each has its own position,
shifted inward at the borders. Recomputing a few unchanged units is harmless, so the result is
full recomputation up to float rounding. Unchanged nodes are never recomputed.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.fx import Node
from torch.fx.node import map_arg

from deconvnet_attr.geometry import GeometryError, TracedNet, trace

__all__ = ["IncrementalForward", "RunStats"]

logger = logging.getLogger("deconvnet_attr.occlusion")

_VIEW_METHODS = {
    "view",
    "reshape",
    "flatten",
    "unflatten",
    "transpose",
    "permute",
    "narrow",
    "select",
    "split",
    "chunk",
    "squeeze",
    "unsqueeze",
    "expand",
    "expand_as",
    "detach",
    "t",
    "as_strided",
    "contiguous",
    "view_as",
    "unbind",
}
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, torch.relu_}


class _Unchanged:
    """Marker: the node's value equals the cached reference (per example)."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()


@dataclass
class _Patch:
    """Values ``data`` (B, C, h, w) of the rectangle at (top[b], left[b]) of a (·, C, H, W) map;
    outside it the map equals the cached reference of example ``b % N``."""

    data: Tensor
    top: Tensor
    left: Tensor

    @property
    def size(self) -> tuple[int, int]:
        return int(self.data.shape[-2]), int(self.data.shape[-1])


@dataclass
class RunStats:
    """Convolution multiply-accumulates over the perturbed batches: done by the incremental plan
    and needed by full recomputation of the same batches (their ratio is the plan's theoretical
    speedup)."""

    conv_macs: int = 0
    conv_macs_full: int = 0
    batches: int = 0

    @property
    def theoretical_speedup(self) -> float:
        return self.conv_macs_full / max(self.conv_macs, 1)


def _inplace(node: Node, modules: dict[str, Any]) -> bool:
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    if node.op == "call_function":
        return node.target in _INPLACE_FUNCTIONS or node.kwargs.get("inplace") is True
    return node.op == "call_method" and str(node.target).endswith("_")


def _module_reason(fn: Any) -> str | None:
    """Why ``fn``'s forward passes must run as they are, if they must.

    Hooks would see rectangles instead of maps (or, for traced-through modules, tracer proxies);
    training mode makes BatchNorm depend on the batch and dropout random.
    """
    if not isinstance(fn, nn.Module):
        return None
    for name, module in fn.named_modules():
        if any(getattr(module, hooks, None) for hooks in _HOOK_DICTS):
            return f"module {name or type(fn).__name__!r} has hooks"
        if module.training:
            return f"module {name or type(fn).__name__!r} is in training mode"
    if any(getattr(nn.modules.module, f"_global{hooks}", None) for hooks in _HOOK_DICTS):
        return "global module hooks are registered"
    return None


def _aliasing_hazard(net: TracedNet) -> str | None:
    """Why the graph relies on in-place aliasing (which the engine does not model), if it does.

    An in-place op is safe when nothing reads its mutated input afterwards and that input is not
    a view of (or the caller's) tensor.
    """
    modules = dict(net.module.named_modules())
    order = {n: i for i, n in enumerate(net.nodes)}
    for node in net.nodes:
        if not _inplace(node, modules) or not node.args or not isinstance(node.args[0], Node):
            continue
        mutated = node.args[0]
        if mutated.op == "placeholder":
            return f"{node.name} modifies the input in place"
        if (
            mutated.op == "call_method"
            and mutated.target in _VIEW_METHODS
            or mutated.op == "call_function"
            and mutated.target is operator.getitem
        ):
            return f"{node.name} modifies a view ({mutated.name}) in place"
        if any(order[u] > order[node] for u in mutated.users if u is not node):
            return f"{node.name} modifies {mutated.name} in place, which is read afterwards"
    return None


def _gather(
    ref: Tensor, patch: _Patch | None, top: Tensor, left: Tensor, h: int, w: int, pad_value: float
) -> Tensor:
    """Rectangles (B, C, h, w) at (top[b], left[b]) of the map ``patch``-over-``ref``.

    ``ref`` (n, C, H, W) is the reference map (sample ``b`` reads example ``b % n``); rows and
    columns outside it read ``pad_value``; inside ``patch``'s rectangle they read the patch.
    """
    batch = top.shape[0]
    height, width = ref.shape[-2:]
    device = ref.device
    rows = top[:, None] + torch.arange(h, device=device)
    cols = left[:, None] + torch.arange(w, device=device)
    example = torch.arange(batch, device=device) % ref.shape[0]
    out = ref[
        example[:, None, None],
        :,
        rows.clamp(0, height - 1)[:, :, None],
        cols.clamp(0, width - 1)[:, None, :],
    ]  # (B, h, w, C)
    outside = (rows < 0) | (rows >= height), (cols < 0) | (cols >= width)
    if outside[0].any() or outside[1].any():
        mask = outside[0][:, :, None] | outside[1][:, None, :]
        out = out.masked_fill(mask[..., None], pad_value)
    if patch is not None:
        ph, pw = patch.size
        prow, pcol = rows - patch.top[:, None], cols - patch.left[:, None]
        inside = ((prow >= 0) & (prow < ph))[:, :, None] & ((pcol >= 0) & (pcol < pw))[:, None, :]
        values = patch.data[
            torch.arange(batch, device=device)[:, None, None],
            :,
            prow.clamp(0, ph - 1)[:, :, None],
            pcol.clamp(0, pw - 1)[:, None, :],
        ]
        out = torch.where(inside[..., None], values, out)
    return out.permute(0, 3, 1, 2)


def _bounds(changed: Tensor) -> tuple[Tensor, Tensor]:
    """First and last True index along the last dim of ``changed`` (B, L); (0, -1) if none."""
    length = changed.shape[-1]
    as_int = changed.to(torch.int8)
    first = as_int.argmax(-1)
    last = length - 1 - as_int.flip(-1).argmax(-1)
    none = ~changed.any(-1)
    return first.masked_fill(none, 0), last.masked_fill(none, -1)


def _place(first: Tensor, last: Tensor, size: int) -> tuple[Tensor, int]:
    """Common extent (the widest ``last - first + 1``) and starts shifted inward to fit."""
    extent = int((last - first + 1).max().clamp(min=0))
    return torch.minimum(first, torch.tensor(size - extent, device=first.device)), extent


class IncrementalForward:
    """A drop-in for ``fn`` in a perturbation loop that recomputes only what changed.

    ``fn`` is an ``nn.Module`` or a function ``torch.fx`` can trace. The first call must carry
    the unperturbed inputs (N examples); later calls carry ``B = k * N`` perturbed copies in
    Captum's layout. Anything the engine cannot handle -- ``fn`` not traceable, a module with
    hooks or in training mode, in-place aliasing, inputs of other shapes -- is passed to ``fn``
    unchanged; ``reason`` says why.
    ``full_fraction``: an op whose changed output rectangle covers at least this fraction of its
    map is computed in full (and so is everything after it).
    """

    def __init__(self, fn: Callable[..., Any], *, full_fraction: float = 0.9) -> None:
        self.fn = fn
        self.full_fraction = full_fraction
        self.net: TracedNet | None = None
        self.reason: str | None = None
        self.stats = RunStats()
        self._reference: tuple = ()
        self._examples = 0
        self._last_use: dict[Node, list[Node]] = {}
        self._modules: dict[str, Any] = {}

    @property
    def incremental(self) -> bool:
        """True while calls are evaluated incrementally (after a successful first call)."""
        return self.net is not None and self.reason is None

    def __call__(self, *args: Any) -> Any:
        if self.net is None and self.reason is None:
            return self._start(args)
        if self.reason is not None:
            return self.fn(*args)
        batch = self._batch(args)
        if batch is None:
            return self.fn(*args)
        try:
            with torch.no_grad():
                return self._run(args, batch // self._examples)
        except Exception as error:  # an op behaved unlike its description: be safe, run fn
            self.reason = f"incremental evaluation failed ({type(error).__name__}: {error})"
            logger.warning("%s; full recomputation from here on", self.reason)
            return self.fn(*args)

    def _start(self, args: tuple) -> Any:
        self.reason = _module_reason(self.fn)
        if self.reason is not None:
            return self.fn(*args)
        try:
            net = trace(self.fn, args, keep_values=True)
        except GeometryError as error:
            self.reason = str(error)
            return self.fn(*args)
        self.reason = _aliasing_hazard(net)
        tensors = [a for a in args if isinstance(a, Tensor)]
        if self.reason is None and not tensors:
            self.reason = "no tensor input"
        if self.reason is not None:
            return self.fn(*args)  # the recorded run copied in-place ops' inputs: run eagerly
        self.net, self._reference = net, args
        self._examples = tensors[0].shape[0]
        self._modules = dict(net.module.named_modules())
        last_use: dict[Node, Node] = {}
        for node in net.nodes:
            for used in node.all_input_nodes:
                last_use[used] = node
        for used, user in last_use.items():
            self._last_use.setdefault(user, []).append(used)
        output = next(n for n in net.nodes if n.op == "output")
        return map_arg(output.args[0], lambda n: net.values[n])

    def _batch(self, args: tuple) -> int | None:
        """The batch size B if ``args`` are perturbed copies of the reference, else None."""
        if len(args) != len(self._reference):
            return None
        batch = None
        for arg, ref in zip(args, self._reference, strict=True):
            if isinstance(ref, Tensor) != isinstance(arg, Tensor):
                return None
            if not isinstance(ref, Tensor):
                if arg is not ref and arg != ref:
                    return None
                continue
            if (
                ref.dim() == 0
                or arg.shape[1:] != ref.shape[1:]
                or arg.dtype != ref.dtype
                or arg.device != ref.device
                or arg.shape[0] % ref.shape[0]
            ):
                return None
            if batch is not None and arg.shape[0] != batch:
                return None
            batch = arg.shape[0]
        return batch

    # -- one perturbed batch -------------------------------------------------------------------

    def _run(self, args: tuple, copies: int) -> Any:
        net = self.net
        self.stats.batches += 1
        env: dict[Node, Any] = {}
        placeholders = iter(range(len(args)))
        for node in net.nodes:
            if node.op == "placeholder":
                i = next(placeholders, None)
                value = args[i] if i is not None else node.args[0]
                ref = self._reference[i] if i is not None else node.args[0]
                env[node] = self._diff(value, ref, copies)
            elif node.op == "output":
                return map_arg(node.args[0], lambda n: self._full(n, env, copies))
            elif node not in net.depends:
                env[node] = net.values[node]
            else:
                env[node] = self._step(node, env, copies)
            for used in self._last_use.get(node, ()):
                if used in net.depends:
                    del env[used]
        raise GeometryError("graph without output")  # fx graphs always end in an output node

    def _diff(self, value: Any, ref: Any, copies: int) -> Any:
        """The placeholder's value as UNCHANGED, a patch, or itself."""
        if not isinstance(value, Tensor):
            return value
        n = ref.shape[0]
        changed = (value.view(copies, n, *ref.shape[1:]) != ref).view(value.shape)
        if ref.dim() != 4:
            return value if changed.any() else UNCHANGED
        changed = changed.any(1)
        height, width = ref.shape[-2:]
        top, h = _place(*_bounds(changed.any(2)), height)
        left, w = _place(*_bounds(changed.any(1)), width)
        if h == 0:
            return UNCHANGED
        if h * w >= self.full_fraction * height * width:
            return value
        return _Patch(_gather(value, None, top, left, h, w, 0.0), top, left)

    def _step(self, node: Node, env: dict[Node, Any], copies: int) -> Any:
        net = self.net
        ref_out = net.values[node]
        inputs = [a for a in node.all_input_nodes if a in net.depends]
        batched = (
            isinstance(ref_out, Tensor)
            and ref_out.dim() >= 1
            and ref_out.shape[0] == self._examples
        )
        spec = net.specs[node]
        if batched and all(env[a] is UNCHANGED for a in inputs):
            self.stats.conv_macs_full += ref_out.numel() * spec.macs * copies
            return UNCHANGED
        if (
            batched
            and ref_out.dim() == 4
            and all(env[a] is UNCHANGED or isinstance(env[a], _Patch) for a in inputs)
        ):
            if spec.kind == "window" and spec.unpadded is not None and len(inputs) == 1:
                result = self._window(node, env[inputs[0]], copies)
            elif spec.kind in ("pointwise", "merge"):
                result = self._pointwise(node, inputs, env)
            else:
                result = None
            if result is not None:
                return result
        return self._run_op(node, env, copies)

    def _window(self, node: Node, patch: _Patch, copies: int) -> Any:
        net = self.net
        spec, window = net.specs[node], net.specs[node].window
        source = node.args[0]
        ref_in, ref_out = net.values[source], net.values[node]
        out_h, out_w = ref_out.shape[-2:]
        ph, pw = patch.size
        top, h = _place(*window.affected_outputs(patch.top, patch.top + ph - 1, out_h, 0), out_h)
        left, w = _place(*window.affected_outputs(patch.left, patch.left + pw - 1, out_w, 1), out_w)
        full = ref_out[0].numel() * spec.macs * patch.data.shape[0]
        if h <= 0 or w <= 0:
            self.stats.conv_macs_full += full
            return UNCHANGED
        if h * w >= self.full_fraction * out_h * out_w:
            return None  # computed (and counted) in full by _run_op
        self.stats.conv_macs_full += full
        self.stats.conv_macs += full * h * w // (out_h * out_w)
        in_top, _ = window.inputs_needed(top, top, 0)
        in_left, _ = window.inputs_needed(left, left, 1)
        region = _gather(
            ref_in,
            patch,
            in_top,
            in_left,
            (h - 1) * window.stride[0] + window.span(0),
            (w - 1) * window.stride[1] + window.span(1),
            spec.pad_value,
        )
        return _Patch(spec.unpadded(region), top, left)

    def _pointwise(self, node: Node, inputs: list[Node], env: dict[Node, Any]) -> Any:
        net = self.net
        height, width = net.values[node].shape[-2:]
        if any(
            not isinstance(net.values[a], Tensor)
            or net.values[a].dim() != 4
            or net.values[a].shape[-2:] != (height, width)
            for a in inputs
        ):
            return None
        patches = [env[a] for a in inputs if isinstance(env[a], _Patch)]
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
            top, h = _place(torch.stack([p.top for p in patches]).amin(0), bottom - 1, height)
            left, w = _place(torch.stack([p.left for p in patches]).amin(0), right - 1, width)
            regions = {
                a: _gather(
                    net.values[a],
                    env[a] if isinstance(env[a], _Patch) else None,
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
                if static.dim() != 4:
                    return None
                regions[a] = _gather(static, None, top, left, h, w, 0.0)
        out = self._call(
            node,
            *map_arg((node.args, node.kwargs), lambda n: regions[n] if n in regions else env[n]),
        )
        if not isinstance(out, Tensor) or out.shape[-2:] != (h, w):
            raise GeometryError(f"{node.name} changed the spatial size of a rectangle")
        return _Patch(out, top, left)

    def _run_op(self, node: Node, env: dict[Node, Any], copies: int) -> Any:
        spec = self.net.specs[node]
        args, kwargs = map_arg((node.args, node.kwargs), lambda n: self._full(n, env, copies))
        out = self._call(node, args, kwargs)
        if spec.macs and isinstance(out, Tensor):
            macs = out[0].numel() * spec.macs * out.shape[0]
            self.stats.conv_macs += macs
            self.stats.conv_macs_full += macs
        return out

    def _call(self, node: Node, args: tuple, kwargs: dict) -> Any:
        if node.op == "call_module":
            return self._modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        raise GeometryError(f"cannot run {node.op} node {node.name}")

    def _full(self, node: Node, env: dict[Node, Any], copies: int) -> Any:
        """The node's value for the whole batch (the reference repeated, the patch pasted in)."""
        if node not in self.net.depends:
            return self.net.values[node]
        value = env[node]
        if value is UNCHANGED:
            ref = self.net.values[node]
            return ref.repeat(copies, *([1] * (ref.dim() - 1)))
        if not isinstance(value, _Patch):
            return value
        ref = self.net.values[node]
        out = ref.repeat(copies, 1, 1, 1)
        h, w = value.size
        device = out.device
        rows = value.top[:, None, None] + torch.arange(h, device=device)[None, :, None]
        cols = value.left[:, None, None] + torch.arange(w, device=device)[None, None, :]
        out[torch.arange(out.shape[0], device=device)[:, None, None], :, rows, cols] = (
            value.data.permute(0, 2, 3, 1)
        )
        return out
