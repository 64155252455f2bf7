"""Leave a model exactly as it was found: the guarantee every attribution in the package gives."""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class _Snapshot:
    """A model's state as the first of its concurrent (or nested) users found it."""

    buffers: list[tuple[Tensor, Tensor]]
    training: list[tuple[nn.Module, bool]]
    requires_grad: list[tuple[nn.Parameter, bool]]
    users: int = field(default=0)

    @classmethod
    def of(cls, model: nn.Module) -> _Snapshot:
        return cls(
            [(b, b.detach().clone()) for b in model.buffers()],
            [(m, m.training) for m in model.modules()],
            [(p, p.requires_grad) for p in model.parameters()],
        )

    def restore(self) -> None:
        with torch.no_grad():
            for buffer, saved in self.buffers:
                buffer.copy_(saved)
        for module, flag in self.training:
            module.training = flag
        for param, flag in self.requires_grad:
            param.requires_grad_(flag)


_LOCK = threading.Lock()
_ACTIVE: dict[int, _Snapshot] = {}


@contextmanager
def preserved_state(model: object) -> Iterator[None]:
    """Restore ``model``'s buffers, training flags and ``requires_grad`` flags on exit.

    Forward passes in training mode update BatchNorm running statistics; an attribution must not.
    Buffers are copied back in place (same tensor objects), also when the block raises. Blocks on
    the same model that overlap -- nested, or in several threads at once -- share one snapshot,
    taken when the first enters and restored when the last leaves, so no thread restores (or
    saves) a state that another thread's forward pass is in the middle of changing. A plain
    callable that is not an ``nn.Module`` has no state to keep.
    """
    if not isinstance(model, nn.Module):
        yield
        return
    with _LOCK:
        snapshot = _ACTIVE.get(id(model))
        if snapshot is None:
            snapshot = _ACTIVE[id(model)] = _Snapshot.of(model)
        snapshot.users += 1
    try:
        yield
    finally:
        with _LOCK:
            snapshot.users -= 1
            if snapshot.users == 0:
                del _ACTIVE[id(model)]
                snapshot.restore()


def modules_behind(fn: object, depth: int = 3) -> list[nn.Module]:
    """The ``nn.Module`` objects a ``forward_func`` runs, as far as they can be found statically.

    ``fn`` itself if it is a module; the ``self`` of a bound method (and, for an object that is
    not a module, the modules among its attributes); a ``functools.partial``'s function and
    arguments; for a plain function or lambda, the modules among its closure cells and the global
    names its code reads, following referenced functions ``depth`` levels deep. A model reached
    any other way (e.g. built inside the function) is not found. Outermost modules only.
    """
    found: dict[int, nn.Module] = {}

    def visit(obj: object, level: int) -> None:
        if isinstance(obj, nn.Module):
            found.setdefault(id(obj), obj)
        elif level > depth:
            return
        elif isinstance(obj, functools.partial):
            for part in (obj.func, *obj.args, *obj.keywords.values()):
                visit(part, level + 1)
        elif inspect.ismethod(obj):
            visit(obj.__self__, level + 1)
            visit(obj.__func__, level + 1)
        elif inspect.isfunction(obj):
            names = inspect.getclosurevars(obj)
            for value in (*names.nonlocals.values(), *names.globals.values()):
                visit(value, level + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type) and not inspect.ismodule(obj):
            for value in vars(obj).values():
                if isinstance(value, nn.Module):
                    visit(value, level + 1)

    visit(fn, 0)
    inner = {id(m) for module in found.values() for m in module.modules() if m is not module}
    return [module for key, module in found.items() if key not in inner]


@contextmanager
def preserved_forward_state(*fns: object) -> Iterator[None]:
    """:func:`preserved_state` for every module :func:`modules_behind` finds behind ``fns``."""
    modules = {id(m): m for fn in fns for m in modules_behind(fn)}
    with ExitStack() as stack:
        for module in modules.values():
            stack.enter_context(preserved_state(module))
        yield
