"""Leave a model exactly as it was found: the guarantee every attribution in the package gives."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
