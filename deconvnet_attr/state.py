"""Leave a model exactly as it was found: the guarantee every attribution in the package gives."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def preserved_state(model: object) -> Iterator[None]:
    """Restore ``model``'s buffers, training flags and ``requires_grad`` flags on exit.

    Forward passes in training mode update BatchNorm running statistics; an attribution must not.
    Buffers are copied back in place (same tensor objects), also when the block raises. A plain
    callable that is not an ``nn.Module`` has no state to keep.
    """
    if not isinstance(model, nn.Module):
        yield
        return
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    training = [(m, m.training) for m in model.modules()]
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for module, flag in training:
            module.training = flag
        for param, flag in requires_grad:
            param.requires_grad_(flag)
