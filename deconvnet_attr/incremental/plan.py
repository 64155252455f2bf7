"""The incremental engine's plan, built once from the unperturbed call: is ``fn`` eligible, which
cached values die after which node (liveness), and what each node costs in full.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.fx import Node
from torch.fx.node import map_arg

from deconvnet_attr.geometry import GeometryError, TracedNet, trace
from deconvnet_attr.geometry.trace import may_write
from deconvnet_attr.incremental.fold import fold_batch_norms
from deconvnet_attr.incremental.patches import Patch, paste
from deconvnet_attr.ops import OpKind, any_layout, op_kind

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


#: A batch whose largest activation exceeds this many bytes per thread is split into calls
#: (of at most :data:`CALL_BYTES` per thread each) when the engine computes it in full. Larger
#: tensors than glibc's largest dynamic mmap threshold (32 MiB) are mapped afresh (page faults)
#: on every call and leave the caches: split, the same work ran up to 1.8x faster (EfficientNet-B0
#: at one thread, 32 images at 224 px: 1.40 s -> 0.76 s; docs/performance.md). Smaller batches
#: are not split: every call re-reads the weights (AlexNet's fully connected head: 20 % slower).
#: Per thread, because at two threads small calls of mobile networks' cheap ops used the second
#: core poorly (ShuffleNet-v2, GhostNet: 5-20 % slower in calls of 8 images); measured at 1 and
#: 2 threads only.
SPLIT_FROM = 32 * 2**20
#: The largest activation one call of a split batch may produce, per thread.
CALL_BYTES = 16 * 2**20


def per_example(value: Any, examples: int) -> bool:
    """True for a tensor with ``examples`` rows (a batch value), or a tuple / list of them."""
    if isinstance(value, list | tuple):
        return bool(value) and all(per_example(v, examples) for v in value)
    return isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == examples


class Ineligible(Exception):
    """``fn`` cannot be evaluated incrementally; the message says why."""


@dataclass
class Plan:
    """What the executor needs to know about the traced graph, computed once.

    ``net`` is the trace with every node's reference value (N examples); ``reference`` the
    unperturbed call's arguments; ``release[node]`` the batch-dependent values no node after
    ``node`` reads; ``macs[node]`` the multiply-accumulates of one sample's full output of a
    convolution node.
    """

    net: TracedNet
    reference: tuple
    examples: int
    modules: dict[str, Any]
    release: dict[Node, list[Node]]
    macs: dict[Node, int]
    #: bytes of one example's largest activation at or after each node (by position)
    peak_bytes: list[int] = field(default_factory=list)
    #: whether the output is per-example tensors (so a batch can be run in parts and joined)
    batched_output: bool = False
    #: the convolutions that also compute the batch norm after them (:mod:`.fold`)
    folded: set[Node] = field(default_factory=set)
    #: the first position from which every node computes the same on channels-last maps
    #: (:func:`make_plan` finds it; the default: none)
    channels_last_from: int = 2**62

    def copies_per_call(self, copies: int, start: int = 0) -> int:
        """How many of ``copies`` perturbed copies one forward call of ``fn`` (or of its nodes
        from position ``start`` on) should take (:data:`SPLIT_FROM`, :data:`CALL_BYTES`);
        ``copies`` when the output is not per-example tensors."""
        if not self.batched_output:
            return copies
        peak = self.peak_bytes[start] if start < len(self.peak_bytes) else 0
        per_copy = max(peak * self.examples, 1)
        threads = torch.get_num_threads()
        if per_copy * copies <= SPLIT_FROM * threads:
            return copies
        return max(1, min(copies, CALL_BYTES * threads // per_copy))

    def reference_output(self) -> Any:
        """The unperturbed call's result, from the recorded values."""
        output = next(n for n in self.net.nodes if n.op == "output")
        return map_arg(output.args[0], lambda n: self.net.values[n])

    def whole(self, args: tuple, copies: int) -> tuple:
        """``args`` with each :class:`~deconvnet_attr.incremental.patches.Patch` pasted into
        ``copies`` copies of its reference input (the batch a plain forward pass needs)."""
        return tuple(
            paste(ref, arg, copies) if isinstance(arg, Patch) else arg
            for arg, ref in zip(args, self.reference, strict=True)
        )

    def batch_size(self, args: tuple) -> int | None:
        """The batch size B if ``args`` are perturbed copies of the reference, else None.
        A :class:`~deconvnet_attr.incremental.patches.Patch` stands for the reference of a 4-D
        input with its rectangle replaced."""
        if len(args) != len(self.reference):
            return None
        batch = None
        for arg, ref in zip(args, self.reference, strict=True):
            if not isinstance(ref, Tensor):
                if isinstance(arg, Tensor | Patch) or (arg is not ref and arg != ref):
                    return None
                continue
            samples = _samples(arg, ref)
            if samples is None or (batch is not None and samples != batch):
                return None
            batch = samples
        return batch


def _samples(arg: Any, ref: Tensor) -> int | None:
    """How many perturbed copies' samples ``arg`` holds, or None if it is not such a batch of
    the reference input ``ref`` (a tensor, or a :class:`Patch` of a 4-D one)."""
    data = arg.data if isinstance(arg, Patch) else arg
    if not isinstance(data, Tensor) or ref.dim() == 0 or data.dim() != ref.dim():
        return None
    same = (
        data.shape[1:-2] == ref.shape[1:-2]
        if isinstance(arg, Patch)
        else data.shape[1:] == ref.shape[1:]
    )
    if not same or (isinstance(arg, Patch) and ref.dim() != 4):
        return None
    if data.dtype != ref.dtype or data.device != ref.device or data.shape[0] % ref.shape[0]:
        return None
    return int(data.shape[0])


def _node_op(node: Node) -> Any:
    """The callable a traced node calls (``Tensor.<name>`` for a method call)."""
    if node.op == "call_method":
        return getattr(Tensor, str(node.target), None)
    return node.target if node.op == "call_function" else None


def module_reason(fn: Any) -> str | None:
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


def aliasing_hazard(net: TracedNet) -> str | None:
    """Why the graph relies on in-place aliasing (which the engine does not model), if it does.

    An in-place op is safe when nothing reads its mutated input afterwards and that input is not
    a view of (or the caller's) tensor.
    """
    modules = dict(net.module.named_modules())
    order = {n: i for i, n in enumerate(net.nodes)}
    for node in net.nodes:
        if not may_write(node, modules) or not node.args or not isinstance(node.args[0], Node):
            continue
        mutated = node.args[0]
        if mutated.op == "placeholder":
            return f"{node.name} modifies the input in place"
        if op_kind(_node_op(mutated)) in (OpKind.LAYOUT, OpKind.ALIAS):
            return f"{node.name} modifies a view ({mutated.name}) in place"
        if any(order[u] > order[node] for u in mutated.users if u is not node):
            return f"{node.name} modifies {mutated.name} in place, which is read afterwards"
    return None


def _release(net: TracedNet) -> dict[Node, list[Node]]:
    """For each node, the batch-dependent values it is the last to need.

    A meta value (``x.shape``) is recomputed from the whole maps it reads when a full op reads
    it, so those maps are needed until the meta value's own last reader; a value nothing reads
    is released at once.
    """
    position = {node: i for i, node in enumerate(net.nodes)}
    last: dict[Node, Node] = {}
    for node in reversed(net.nodes):
        end = node
        for user in node.users:
            needs = last[user] if net.specs[user].kind == "meta" else user
            if position[needs] > position[end]:
                end = needs
        last[node] = end
    release: dict[Node, list[Node]] = {}
    for node, end in last.items():
        if node in net.depends:
            release.setdefault(end, []).append(node)
    return release


def _flat_view(node: Node, net: TracedNet) -> bool:
    """A ``view`` of a vector batch or of maps of one position (the head's flatten): the same
    in any memory layout."""
    if getattr(_node_op(node), "__name__", "") not in ("view", "view_as"):
        return False
    shape = net.shapes.get(node.all_input_nodes[0]) if node.all_input_nodes else None
    return shape is not None and (
        len(shape) <= 2 or (len(shape) == 4 and shape[-2] * shape[-1] == 1)
    )


def _channels_last_from(net: TracedNet, modules: dict[str, Any], folded: set[Node]) -> int:
    """The first position from which every op is indifferent to the memory layout of its maps
    (:func:`~deconvnet_attr.ops.any_layout`, folded convolutions; a ``view`` only of maps of one
    position): from there whole maps may run channels-last. ``len(net.nodes)`` when the last op
    is not."""
    nodes = net.nodes
    start = len(nodes)
    for at in range(len(nodes) - 1, -1, -1):
        node = nodes[at]
        calls = node.op in ("call_module", "call_function", "call_method")
        if calls and node in net.depends and node not in folded:
            op = modules[str(node.target)] if node.op == "call_module" else _node_op(node)
            if net.specs[node].kind != "meta" and not any_layout(op) and not _flat_view(node, net):
                break
        start = at
    return start


def make_plan(fn: Callable[..., Any], args: tuple) -> Plan:
    """Trace ``fn`` on the unperturbed ``args`` and plan its incremental evaluation.

    Raises :class:`Ineligible` when ``fn`` must run as it is: a module with hooks or in training
    mode, not traceable, in-place aliasing, no tensor input.
    """
    reason = module_reason(fn)
    if reason is not None:
        raise Ineligible(reason)
    try:
        net = trace(fn, args, keep_values=True)
    except GeometryError as error:
        raise Ineligible(str(error)) from error
    reason = aliasing_hazard(net)
    if reason is not None:
        raise Ineligible(reason)
    tensors = [a for a in args if isinstance(a, Tensor)]
    if not tensors:
        raise Ineligible("no tensor input")
    modules: dict[str, Any] = dict(net.module.named_modules())
    folded = fold_batch_norms(net, modules)
    macs = {
        node: net.values[node][0].numel() * net.specs[node].macs
        for node in net.nodes
        if net.specs[node].macs and isinstance(net.values.get(node), Tensor)
    }
    examples = tensors[0].shape[0]
    nodes = net.nodes
    peak = [0] * (len(nodes) + 1)
    for at in range(len(nodes) - 1, -1, -1):
        value = net.values.get(nodes[at])
        own = (
            value.numel() * value.element_size() // examples
            if isinstance(value, Tensor) and per_example(value, examples)
            else 0
        )
        peak[at] = max(own, peak[at + 1])
    plan = Plan(
        net,
        args,
        examples,
        modules,
        _release(net),
        macs,
        peak,
        folded=folded,
        channels_last_from=_channels_last_from(net, modules, folded),
    )
    output = plan.reference_output()
    plan.batched_output = all(
        isinstance(o, Tensor) and o.dim() >= 1 and o.shape[0] == examples
        for o in (output if isinstance(output, list | tuple) else (output,))
    )
    return plan
