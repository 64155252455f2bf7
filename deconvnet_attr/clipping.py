"""Feature-scale clipping (Zeiler & Fergus 2013, Sec. 3): cap the RMS of every convolution filter.

The paper renormalises "each filter in the convolutional layers whose RMS value exceeds a fixed
radius of 10^-1 to this fixed radius", after every update, to stop a few first-layer filters from
dominating. A filter is one output channel's weights (``weight[o]``, all input channels and taps).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["feature_scale_clip"]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@torch.no_grad()
def feature_scale_clip(model: nn.Module, max_rms: float = 0.1) -> int:
    """Rescale, in place, each conv filter of ``model`` with RMS above ``max_rms`` to ``max_rms``.

    Filters at or below the radius, biases and non-conv layers are untouched. Returns the number of
    filters that were rescaled. ``max_rms`` must be a positive number.
    """
    if not isinstance(max_rms, int | float) or isinstance(max_rms, bool) or not max_rms > 0:
        raise ValueError(f"max_rms must be a positive number, got {max_rms!r}")
    clipped = 0
    for module in model.modules():
        if not isinstance(module, _CONV_TYPES):
            continue
        weight = module.weight
        rms = weight.detach().pow(2).flatten(1).mean(dim=1).sqrt()
        over = rms > max_rms
        if over.any():
            scale = torch.where(over, max_rms / rms, torch.ones_like(rms))
            weight.mul_(scale.view(-1, *([1] * (weight.dim() - 1))))
            clipped += int(over.sum())
    return clipped
