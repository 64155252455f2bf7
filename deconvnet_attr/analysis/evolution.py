"""Evolution of features during training (Zeiler & Fergus 2013, Fig. 4).

For each training checkpoint, the strongest activation of each chosen channel over a data set is
found (:func:`~deconvnet_attr.mining.top_activations_by_layer` with ``k=1``) and projected to pixel
space with the deconvnet. Read along a row of the figure, a feature sharpens as training goes on;
the paper notes that lower layers converge within a few epochs and upper layers only after many.
Two measured statistics test that claim on any checkpoints: :func:`filter_similarity` (mean cosine
of each checkpoint's filters to the final ones, per layer) and :func:`top_image_stability` (how
often a channel's strongest image stays the same between consecutive checkpoints).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from deconvnet_attr.mining import TopActivations, top_activations_by_layer
from deconvnet_attr.projection import project_top_activations
from deconvnet_attr.taps import LayerSpec, resolve_layer

__all__ = ["FeatureEvolution", "feature_evolution", "filter_similarity", "top_image_stability"]


@dataclass(frozen=True)
class FeatureEvolution:
    """The strongest unit of each channel at each checkpoint and its projection.

    Attributes:
        epochs: ``(E,)`` the checkpoints' epochs, ascending.
        channels: ``(C,)`` the channels followed.
        values: ``(C, E)`` the strongest activation of the channel over the data set.
        indices: ``(C, E)`` the data-set position of the image holding it.
        locations: ``(C, E, S)`` its position in the layer's output map.
        projections: ``(C, E, *input_shape)`` its deconvnet projection.
    """

    epochs: Tensor
    channels: Tensor
    values: Tensor
    indices: Tensor
    locations: Tensor
    projections: Tensor


def feature_evolution(
    checkpoints: Mapping[int, nn.Module],
    layers: Mapping[Any, Sequence[int] | Tensor | None],
    data: Tensor | Dataset | DataLoader,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, FeatureEvolution]:
    """Follow the strongest activation of chosen channels across training checkpoints.

    Args:
        checkpoints: ``{epoch: model}`` — the same architecture at several epochs (e.g.
            :func:`deconvnet_attr.models.load_checkpoints`), each run as given (eval mode).
        layers: ``{layer: channels}`` (``None``: all channels); a layer is a dotted name,
            resolved in every checkpoint, or a module of one of the checkpoints, standing for
            its name. All layers are mined in one pass over ``data`` per checkpoint.
        data: inputs with random access: a tensor ``(N, ...)``, a map-style dataset or a
            DataLoader over one (see :func:`~deconvnet_attr.projection.project_top_activations`).
        batch_size: examples per forward pass while mining, seeds per projection batch.
        progress: show progress bars.

    Returns:
        ``{dotted layer name: FeatureEvolution}``, one column per checkpoint, in epoch order.
    """
    if isinstance(layers, str) or not isinstance(layers, Mapping) or not layers:
        raise TypeError(f"layers must be a non-empty mapping name -> channels, got {layers!r}")
    if not checkpoints:
        raise ValueError("checkpoints is empty")
    layers = {_layer_name(checkpoints, layer): chosen for layer, chosen in layers.items()}
    epochs = sorted(checkpoints)
    columns: dict[str, list[tuple[TopActivations, Tensor]]] = {name: [] for name in layers}
    for epoch in epochs:
        model = checkpoints[epoch]
        mined = top_activations_by_layer(
            model,
            layers,
            _mining_input(data, batch_size),
            k=1,
            batch_size=batch_size,
            progress=progress,
        )
        for name, top in mined.items():
            projections = project_top_activations(
                model, name, data, top, batch_size=batch_size, progress=progress
            )
            columns[name].append((top, projections))
    return {
        name: FeatureEvolution(
            epochs=torch.tensor(epochs),
            channels=column[0][0].channels,
            values=torch.cat([top.values for top, _ in column], dim=1),
            indices=torch.cat([top.indices for top, _ in column], dim=1),
            locations=torch.cat([top.locations for top, _ in column], dim=1),
            projections=torch.cat([p for _, p in column], dim=1),
        )
        for name, column in columns.items()
    }


def _mining_input(data: Tensor | Dataset | DataLoader, batch_size: int) -> Tensor | Iterable:
    """A tensor or DataLoader passes through; a map-style dataset is read in order."""
    if isinstance(data, (Tensor, DataLoader)):
        return data
    return DataLoader(data, batch_size=batch_size)


def _layer_name(checkpoints: Mapping[int, nn.Module], layer: LayerSpec) -> str:
    """The dotted name of ``layer``: a name as given, a module by its name in its checkpoint."""
    if isinstance(layer, str):
        return layer
    models = list(checkpoints.values())
    owner = next((m for m in models if any(sub is layer for sub in m.modules())), models[0])
    return resolve_layer(owner, layer)[0]  # LayerError when no checkpoint holds it


def filter_similarity(checkpoints: Mapping[int, nn.Module], layer: str) -> Tensor:
    """Mean cosine similarity of ``layer``'s filters at each checkpoint to the last checkpoint's.

    Each output channel's weights (``weight[c]`` flattened; the bias is left out) are one filter;
    per checkpoint the cosines of its ``C`` filters to the same filters of the last (highest-epoch)
    checkpoint are averaged. Returns ``(E,)`` in epoch order (the last entry is 1).

    Raises:
        ValueError: fewer than one checkpoint, or ``layer`` has no ``weight`` tensor.
    """
    if not checkpoints:
        raise ValueError("checkpoints is empty")
    weights = []
    for epoch in sorted(checkpoints):
        _, module = resolve_layer(checkpoints[epoch], layer)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, Tensor):
            raise ValueError(f"layer {layer!r} has no weight tensor (epoch {epoch})")
        weights.append(weight.detach().flatten(1).double())
    final = weights[-1]
    return torch.stack(
        [torch.nn.functional.cosine_similarity(w, final, dim=1).mean() for w in weights]
    ).float()


def top_image_stability(evolution: FeatureEvolution) -> Tensor:
    """Fraction of the followed channels whose strongest image is the same at consecutive
    checkpoints: ``(E - 1,)``, entry ``e`` compares epochs ``e`` and ``e + 1``."""
    same = evolution.indices[:, 1:] == evolution.indices[:, :-1]
    return same.double().mean(0).float()
