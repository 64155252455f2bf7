"""Flattened layer outputs of a batch of images: the features the invariance and correspondence
analyses compare (paper Fig. 5 and Table 1)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from deconvnet_attr.state import preserved_state
from deconvnet_attr.taps import LayerSpec, Taps

__all__ = ["flat_layer_outputs"]


def flat_layer_outputs(
    model: nn.Module,
    inputs: Tensor,
    layers: Sequence[LayerSpec],
    batch_size: int = 256,
) -> tuple[dict[str, Tensor], Tensor]:
    """Flattened outputs of ``layers`` and the model output for ``inputs`` (N, ...).

    Returns ``(features, outputs)``: ``features[name]`` is (N, D_layer) — the layer's output tensor
    flattened per example — keyed by the layer's name in ``model``; ``outputs`` is the model output
    (N, ...); both on the CPU. Runs under ``torch.no_grad()`` in batches of ``batch_size``; the
    taps are removed and buffers / training flags restored also when the forward raises. A layer
    must return one tensor and run once per forward pass (a reused module is ambiguous and
    rejected with a :class:`~deconvnet_attr.taps.LayerCallError`).
    """
    taps = Taps(model, layers, once=True, min_dim=1)
    if not isinstance(inputs, Tensor) or inputs.dim() < 1 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must be a non-empty tensor (N, ...), got {_describe(inputs)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    feats: dict[str, list[Tensor]] = {name: [] for name in taps.names}
    outs: list[Tensor] = []
    with torch.no_grad(), preserved_state(model):
        for batch in inputs.split(batch_size):
            captured = taps.run(partial(model, batch))
            outs.append(captured.result.detach().cpu())
            for name, output in captured.outputs.items():
                feats[name].append(output.flatten(1).float().cpu())
    return {n: torch.cat(v) for n, v in feats.items()}, torch.cat(outs)


def _describe(x: object) -> str:
    """Short description of a bad argument for error messages."""
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__
