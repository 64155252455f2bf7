"""``torch.fx`` tracing without side effects: the one entry point the package traces through.

``torch.fx.symbolic_trace`` patches ``nn.Module.__call__`` and ``__getattr__`` process-wide while
it traces and runs the model's Python forward on proxies. Used as is, that breaks three promises:

* another thread's plain forward pass (of any model) fails while a trace is under way (its module
  calls reach the tracer: ``module is not installed as a submodule``);
* two threads tracing at once restore each other's patches half-way (``'len' is not supported in
  symbolic tracing``, ``Node output referenced nonexistent value``);
* a forward that stores Python state (``self.last_features = x``, a call counter) is left holding a
  ``Proxy`` or a bumped counter.

:func:`symbolic_trace` here fixes all three: its tracer passes calls from other threads straight
through to the real modules, traces are serialised by one lock (a trace takes milliseconds), and
every submodule's attributes are restored to what they were before the trace.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import nn
from torch.fx import GraphModule, Tracer

# generates the graph's Python code on its first call, not at construction (torch >= 2.2)
from torch.fx._lazy_graph_module import _LazyGraphModule as _GraphModule
from torch.fx.proxy import ParameterProxy

from deconvnet_attr.ops import registered_module

__all__ = ["symbolic_trace"]

_TRACE_LOCK = threading.Lock()


class _ThreadLocalTracer(Tracer):
    """The default tracer, except that module calls and attribute reads of other threads (which
    the global patches route here too) run the real module untouched, and modules whose type is
    registered in :mod:`deconvnet_attr.ops` (timm's composite activations, users' own ops) stay
    single nodes instead of being traced into."""

    def __init__(self) -> None:
        super().__init__()
        self._owner = threading.get_ident()
        self._names: dict[tuple[bool, int], str] | None = None

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        if threading.get_ident() != self._owner:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return registered_module(m) or super().is_leaf_module(m, module_qualified_name)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        """``Tracer.getattr`` with the parameter and buffer names looked up in a dict built once
        per trace: the default scans ``named_parameters()`` on every read, which made tracing
        timm's norm+act layers (five tensor reads a call) quadratic in the model's size."""
        if threading.get_ident() != self._owner or not isinstance(attr_val, torch.Tensor):
            return attr_val
        if self._names is None:
            self._names = _tensor_names(self.root, self.proxy_buffer_attributes)
        name = self._names.get((isinstance(attr_val, nn.Parameter), id(attr_val)))
        if name is None:
            name = self._names.get((False, id(attr_val)))
        if name is None:
            return attr_val
        if name not in parameter_proxy_cache:
            factory = None
            if self.param_shapes_constant:
                value = cast(nn.Parameter, attr_val)  # torch's default passes buffers here too
                factory = lambda node: ParameterProxy(self, node, name, value)  # noqa: E731
            parameter_proxy_cache[name] = self.create_proxy(
                "get_attr", name, (), {}, proxy_factory_fn=factory
            )
        return parameter_proxy_cache[name]


def _tensor_names(root: nn.Module, buffers: bool) -> dict[tuple[bool, int], str]:
    """``(is_parameter, id(tensor)) -> qualified name``: parameters under ``True``, buffers (when
    ``buffers``) under ``False``, each under its first name as ``named_parameters()`` gives it."""
    names: dict[tuple[bool, int], str] = {}
    for name, parameter in root.named_parameters():
        names.setdefault((True, id(parameter)), name)
    if buffers:
        for name, buffer in root.named_buffers():
            names.setdefault((False, id(buffer)), name)
    return names


def _modules_of(fn: Any) -> list[nn.Module]:
    owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
    return list(owner.modules()) if isinstance(owner, nn.Module) else []


@contextmanager
def _attributes_kept(modules: list[nn.Module]) -> Iterator[None]:
    """Restore each module's instance attributes (added, changed or deleted) on exit."""
    saved = [(module, dict(vars(module))) for module in modules]
    try:
        yield
    finally:
        for module, before in saved:
            current = vars(module)
            for key in [k for k in current if k not in before]:
                del current[key]
            for key, value in before.items():
                if current.get(key, _MISSING) is not value:
                    current[key] = value


_MISSING = object()


def symbolic_trace(fn: nn.Module | Callable[..., Any]) -> GraphModule:
    """``torch.fx.symbolic_trace(fn)``, thread-safe and leaving ``fn``'s modules as they were.

    Raises whatever ``torch.fx`` raises for an untraceable ``fn``.
    """
    with _TRACE_LOCK, _attributes_kept(_modules_of(fn)):
        tracer = _ThreadLocalTracer()
        graph = tracer.trace(fn)
        name = type(fn).__name__ if isinstance(fn, nn.Module) else fn.__name__
        # lazily compiled: the geometry only interprets the graph, so most traces never pay
        # for code generation (a fifth of planning a mobile network)
        return _GraphModule(tracer.root, graph, name)
