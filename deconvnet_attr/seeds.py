"""What a projection seeds: Captum ``target`` indices into a model output, and the seed of a
layer projection (one channel of each example, its strongest unit, the whole map, or given
locations). Used by :class:`deconvnet_attr.deconv.DeconvProjection`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from deconvnet_attr.captum_compat import TargetType

#: ``neuron`` of a layer projection: ``"max"``, ``"all"`` or an integer (N, k) location tensor.
NeuronSpec = Literal["max", "all"] | Tensor


def _output_indices(target: TargetType, shape: torch.Size) -> Tensor:
    """Captum's ``target`` as an ``(N, len(shape) - 1)`` index tensor into an output of ``shape``.

    Raises ValueError naming the offending value when a target does not fit the output.
    """
    n, per_example = shape[0], tuple(shape[1:])
    if target is None:
        if any(size != 1 for size in per_example):
            raise ValueError(
                f"target=None, but the model output has shape {tuple(shape)}: more than one "
                "value per example. Pass a target index."
            )
        return torch.zeros(n, len(per_example), dtype=torch.long)
    if isinstance(target, Tensor):
        if target.numel() == 1:
            target = int(target.item())
        elif target.dim() == 1:
            target = target.tolist()
        else:
            raise ValueError(f"target tensor has shape {tuple(target.shape)}; expected (N,)")
    if isinstance(target, list):
        if len(target) != n:
            raise ValueError(f"target has {len(target)} entries for {n} examples")
        rows = [t if isinstance(t, tuple) else (t,) for t in target]
    else:
        rows = [target if isinstance(target, tuple) else (target,)] * n
    for row in rows:
        if len(row) != len(per_example):
            raise ValueError(
                f"target {row if len(row) > 1 else row[0]} does not index the per-example "
                f"output shape {per_example}"
            )
        for index, size in zip(row, per_example, strict=True):
            if not -size <= int(index) < size:
                raise ValueError(
                    f"target {row if len(row) > 1 else row[0]} is out of range for the "
                    f"per-example output shape {per_example}"
                )
    return torch.tensor([[int(i) for i in row] for row in rows], dtype=torch.long).reshape(
        n, len(per_example)
    )


def _channels(target: int | Sequence[int] | Tensor | None, act: Tensor) -> Tensor:
    """Per-example channel of the layer output ``act`` (N, C, ...): ``None`` picks the channel
    holding the example's strongest activation (the paper's choice)."""
    n, c = act.shape[:2]
    if target is None:
        return act.detach().flatten(2).amax(2).argmax(1) if act.dim() > 2 else act.argmax(1)
    channels = torch.as_tensor(target, dtype=torch.long).flatten().to(act.device)
    if channels.numel() == 1:
        channels = channels.expand(n)
    if channels.numel() != n:
        raise ValueError(f"target has {channels.numel()} channels for {n} examples")
    bad = channels[(channels < 0) | (channels >= c)]
    if bad.numel():
        raise ValueError(
            f"target channel {int(bad[0])} is out of range for a layer with {c} channels"
        )
    return channels


def _layer_seed(act: Tensor, channels: Tensor, neuron: NeuronSpec) -> Tensor:
    """The gradient seed at the layer: every activation zero except the chosen one(s) of each
    example's channel, which keep their own value."""
    n = act.shape[0]
    rows = torch.arange(n, device=act.device)
    maps = act.detach()[rows, channels]  # (N, *spatial)
    seed = torch.zeros_like(act)
    if isinstance(neuron, str) and neuron == "all":
        seed[rows, channels] = maps
        return seed
    if isinstance(neuron, str) and neuron == "max":
        flat = maps.reshape(n, -1).argmax(1)
        spatial = (
            torch.stack(torch.unravel_index(flat, maps.shape[1:]), 1)
            if maps.dim() > 1
            else (torch.zeros(n, 0, dtype=torch.long, device=act.device))
        )
    elif isinstance(neuron, Tensor):
        spatial = _check_locations(neuron, act)
    else:
        raise ValueError(f"neuron={neuron!r}: expected 'max', 'all' or an (N, k) index tensor")
    index = (rows, channels, *spatial.unbind(1))
    seed[index] = act.detach()[index]
    return seed


def _check_locations(neuron: Tensor, act: Tensor) -> Tensor:
    spatial_shape = tuple(act.shape[2:])
    expected = (act.shape[0], len(spatial_shape))
    if not spatial_shape:
        raise ValueError(
            f"neuron tensor of shape {tuple(neuron.shape)}: the layer output has shape "
            f"{tuple(act.shape)} (N, F), with no locations; a unit is the feature index given "
            "as target, so pass neuron='max' (or 'all', the same single unit)"
        )
    integer = not neuron.dtype.is_floating_point and neuron.dtype != torch.bool
    if not integer or tuple(neuron.shape) != expected:
        raise ValueError(
            f"neuron tensor of shape {tuple(neuron.shape)} and dtype {neuron.dtype}: expected an "
            f"integer tensor of shape {expected}, one location in the {spatial_shape} map per "
            "example"
        )
    neuron = neuron.to(act.device, torch.long)
    for dim, size in enumerate(spatial_shape):
        bad = neuron[:, dim][(neuron[:, dim] < 0) | (neuron[:, dim] >= size)]
        if bad.numel():
            raise ValueError(f"neuron index {int(bad[0])} is out of range for map size {size}")
    return neuron
