"""A model's observable state, for the tests that an attribution leaves the model untouched."""

import torch


def snapshot(model: torch.nn.Module) -> tuple:
    """(state dict copy, training flags, requires_grad flags, .grad copies, hook counts)."""
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
    )
