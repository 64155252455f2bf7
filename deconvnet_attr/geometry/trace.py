"""One ``torch.fx`` trace of a network, run once on an example, every node described by its
:class:`~deconvnet_attr.geometry.window.OpSpec`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.fx import GraphModule, Interpreter, Node

from deconvnet_attr.geometry.specs import node_spec
from deconvnet_attr.geometry.window import GeometryError, OpSpec, Shaped
from deconvnet_attr.ops import OpKind, op_kind, writes_input
from deconvnet_attr.state import preserved_state
from deconvnet_attr.tracing import symbolic_trace

__all__ = ["TracedNet", "may_write", "trace"]


@dataclass
class TracedNet:
    """A traced network and the geometry of each node, from one run on an example.

    ``shapes`` are the tensor shapes on the example; ``layouts`` every node's output with
    tensors replaced by :class:`~deconvnet_attr.geometry.window.Shaped`; ``values`` every
    node's output (with ``keep_values``; otherwise only the outputs that do not depend on the
    inputs); ``depends`` are the nodes computed from a placeholder.
    """

    module: GraphModule
    specs: dict[Node, OpSpec]
    shapes: dict[Node, torch.Size]
    depends: set[Node]
    values: dict[Node, Any] = field(default_factory=dict)
    layouts: dict[Node, Any] = field(default_factory=dict)

    @property
    def nodes(self) -> list[Node]:
        return list(self.module.graph.nodes)

    def placeholders(self) -> list[Node]:
        return [n for n in self.module.graph.nodes if n.op == "placeholder"]


def _layout(value: Any) -> Any:
    if isinstance(value, Tensor):
        return Shaped(value.shape)
    if isinstance(value, list | tuple) and not isinstance(value, torch.Size):
        return type(value)(_layout(v) for v in value) if type(value) in (list, tuple) else value
    return value


class _Recorder(Interpreter):
    """Runs the graph once, recording every node's layout and keeping node outputs.

    Outputs that do not depend on a placeholder (weights, constants) are always kept; the others
    only with ``keep`` -- then in-place ops run on copies so that kept values stay intact.
    """

    def __init__(self, module: GraphModule, keep: bool) -> None:
        super().__init__(module)
        self.keep = keep
        self.modules = dict(module.named_modules())
        self.values: dict[Node, Any] = {}
        self.layouts: dict[Node, Any] = {}
        self.depends: set[Node] = set()

    def run_node(self, n: Node) -> Any:
        if n.op == "placeholder":
            self.depends.add(n)
            result = super().run_node(n)
        else:
            if any(a in self.depends for a in n.all_input_nodes):
                self.depends.add(n)
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            if self.keep and may_write(n, self.modules):
                args, kwargs = _copy_tensors(args), _copy_tensors(kwargs)
            self.current_node = n
            result = getattr(self, n.op)(n.target, args, kwargs)
        self.layouts[n] = _layout(result)
        if self.keep or n not in self.depends:
            self.values[n] = result
        return result


def may_write(node: Node, modules: dict[str, Any]) -> bool:
    """True when ``node`` may write one of its inputs (``relu_``, ``ReLU(inplace=True)``).

    Dropout in eval mode (``nn.Dropout(inplace=True)`` of an eval-mode model, ``F.dropout(x,
    training=False, inplace=True)``) returns its input untouched: no write.
    """
    if node.op == "call_module":
        module = modules[str(node.target)]
        if op_kind(module) is OpKind.DROPOUT and not module.training:
            return False
        return bool(getattr(module, "inplace", False))
    if node.op == "call_function":
        if writes_input(node.target):
            return True
        arguments = _arguments(node)
        if arguments is None:  # builtins without a signature: assume the worst
            return node.kwargs.get("inplace") is True or any(a is True for a in node.args[1:])
        if op_kind(node.target) is OpKind.DROPOUT and arguments.get("training", True) is False:
            return False
        return arguments.get("inplace") is True
    return node.op == "call_method" and writes_input(getattr(Tensor, str(node.target), None))


def _arguments(node: Node) -> dict[str, Any] | None:
    """A functional call's arguments by parameter name (``F.relu(x, True)``: ``inplace``), or
    None when the callable has no signature."""
    try:
        signature = _signature(node.target)  # TypeError too for an unhashable target
        if signature is None:
            raise TypeError
        return dict(signature.bind(*node.args, **node.kwargs).arguments)
    except TypeError:
        return None


@functools.lru_cache(maxsize=1024)
def _signature(target: Any) -> inspect.Signature | None:
    """``inspect.signature(target)`` (None when it has none), computed once per function: parsing
    a builtin's text signature took a third of the time of planning a small network."""
    try:
        return inspect.signature(cast(Callable, target))
    except (TypeError, ValueError):
        return None


def _copy_tensors(tree: Any) -> Any:
    return torch.utils._pytree.tree_map(lambda x: x.clone() if isinstance(x, Tensor) else x, tree)


def _name_of(fn: Any) -> str:
    """A short name for messages: the class of a module (not its multi-line printout)."""
    if isinstance(fn, nn.Module):
        return type(fn).__name__
    return getattr(fn, "__qualname__", type(fn).__name__)


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def trace(
    fn: Callable[..., Any],
    example_args: tuple,
    *,
    structural: bool = False,
    keep_values: bool = False,
) -> TracedNet:
    """Trace ``fn`` (an ``nn.Module`` or a traceable function) and describe every node.

    ``example_args`` are run once through the traced graph (under ``no_grad``; the model's
    buffers and flags are restored afterwards) to learn tensor shapes; with ``structural`` the
    run may stop early (e.g. an example too small for the classifier), leaving later nodes
    without shapes. With ``keep_values`` every node's output is kept (the incremental engine's
    cache). ``structural=True`` describes the layout only and ignores training-mode
    randomness/batch statistics (receptive fields).
    Raises :class:`GeometryError` when ``torch.fx`` cannot trace ``fn``.
    """
    try:
        gm = symbolic_trace(fn)
    except Exception as error:  # fx raises many types (TraceError, NameError, TypeError, ...)
        raise GeometryError(
            f"torch.fx cannot trace {_name_of(fn)}: {type(error).__name__}: {_first_line(error)}"
        ) from error
    recorder = _Recorder(gm, keep_values)
    with torch.no_grad(), preserved_state(fn):
        try:
            recorder.run(*example_args)
        except Exception:
            if not structural:
                raise
            # the layout needs no values: nodes past the failure are described without shapes
    modules = dict(gm.named_modules())
    specs: dict[Node, OpSpec] = {}
    for node in gm.graph.nodes:
        specs[node] = node_spec(
            node, modules, recorder.values, recorder.layouts, specs, recorder.depends, structural
        )
    shapes = {n: v.shape for n, v in recorder.layouts.items() if isinstance(v, Shaped)}
    return TracedNet(gm, specs, shapes, recorder.depends, recorder.values, recorder.layouts)
