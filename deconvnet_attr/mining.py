"""Streaming top-k activations of a layer over a data set (Zeiler & Fergus 2013, Fig. 2).

For every channel of a layer's output, :func:`top_activations` finds the ``k`` images of a data set
whose strongest unit in that channel's map is largest, and where in the map that unit sits. It makes
one streaming pass (memory is ``O(C * (k + batch))`` whatever the data-set size) and, under
``torchrun``, mines each rank's shard and merges the per-rank results exactly.

:func:`project_top_activations` then projects all those units to pixel space through
:class:`~deconvnet_attr.deconv.DeconvProjection`, many (image, channel, location) seeds per
forward/backward pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset
from tqdm.auto import tqdm

from deconvnet_attr.geometry import ReceptiveField, receptive_field_crop

__all__ = [
    "TopActivations",
    "project_top_activations",
    "receptive_field_patches",
    "resolve_layer",
    "top_activations",
    "top_activations_by_layer",
]


@dataclass(frozen=True)
class TopActivations:
    """The ``k`` strongest activations of each mined channel, sorted by value, descending.

    Attributes:
        values: ``(C, k)`` float — the activation of the strongest unit of the channel map for each
            of the top images.
        indices: ``(C, k)`` long — data-set positions of those images (see :func:`top_activations`).
        locations: ``(C, k, S)`` long — position of that unit in the layer's output map, ``S`` =
            number of spatial dimensions (2 for a conv layer: ``(row, col)``; 0 for a linear layer).
        channels: ``(C,)`` long — which channel of the layer each row describes.

    Ties are broken by the smaller data-set position (between images) and by the first unit in
    row-major order (within an image's map), so results are deterministic.
    """

    values: Tensor
    indices: Tensor
    locations: Tensor
    channels: Tensor


def resolve_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    """Return ``layer`` itself, or the submodule of ``model`` named ``layer`` (e.g. ``"conv5"``)."""
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"layer {layer!r} is not a submodule of the model")
        return layer
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError as err:
            names = [n for n, _ in model.named_modules() if n]
            raise ValueError(f"model has no submodule {layer!r}; available: {names}") from err
    raise TypeError(f"layer must be an nn.Module or a submodule name, got {type(layer).__name__}")


class ReceptiveFieldLike(Protocol):
    """What :func:`receptive_field_patches` needs of a receptive field: (height, width) pairs."""

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the mined layer needs computing."""


def _layer_outputs(model: nn.Module, layers: Sequence[nn.Module], inputs: Tensor) -> list[Tensor]:
    """Run ``model`` on ``inputs`` until every layer has run; their (first-call) outputs."""
    captured: dict[int, Tensor] = {}

    def hook_for(position: int):
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            if position in captured:
                return
            if not isinstance(output, Tensor):
                raise TypeError(f"layer output must be a tensor, got {type(output).__name__}")
            captured[position] = output
            if len(captured) == len(layers):
                raise _StopForward

        return hook

    handles = [layer.register_forward_hook(hook_for(i)) for i, layer in enumerate(layers)]
    try:
        model(inputs)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [layers[i] for i in range(len(layers)) if i not in captured]
    if missing:
        raise RuntimeError(f"layers {missing} were not called during the model's forward pass")
    return [captured[i] for i in range(len(layers))]


def _inputs_of(batch: object) -> Tensor:
    """The input tensor of a batch: the batch itself, or the first element of a tuple/list."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(
        "each batch must be a tensor or an (inputs, labels, ...) tuple/list whose first element "
        f"is a tensor, got {type(batch).__name__}"
    )


def _batches(
    data: Tensor | Iterable, batch_size: int, rank: int, world: int
) -> tuple[Iterator[tuple[Tensor, Tensor]], int | None]:
    """Yield ``(inputs, data-set positions)`` for this rank's share of ``data``; also a length."""
    if isinstance(data, Tensor):
        positions = torch.arange(rank, data.shape[0], world)

        def tensor_batches() -> Iterator[tuple[Tensor, Tensor]]:
            for chunk in positions.split(batch_size):
                yield data[chunk], chunk

        return tensor_batches(), -(-len(positions) // batch_size)

    if world > 1:
        sampler = getattr(data, "sampler", None)
        if not (isinstance(data, DataLoader) and isinstance(sampler, DistributedSampler)):
            raise ValueError(
                "under torch.distributed, data must be a tensor (sharded automatically) or a "
                f"DataLoader with a DistributedSampler, got {type(data).__name__}"
                + (f" with sampler {type(sampler).__name__}" if sampler is not None else "")
            )
        dataset_indices: Tensor | None = torch.as_tensor(list(iter(sampler)), dtype=torch.long)
    else:
        dataset_indices = None

    def iterable_batches() -> Iterator[tuple[Tensor, Tensor]]:
        seen = 0
        for batch in data:
            inputs = _inputs_of(batch)
            pos = torch.arange(seen, seen + inputs.shape[0])
            seen += inputs.shape[0]
            yield inputs, pos if dataset_indices is None else dataset_indices[pos]

    try:
        length: int | None = len(data)  # type: ignore[arg-type]
    except TypeError:
        length = None
    return iterable_batches(), length


def _select(values: Tensor, indices: Tensor, locations: Tensor, k: int) -> tuple[Tensor, ...]:
    """Keep the ``k`` best distinct images per row: value descending, then position ascending.

    ``values``/``indices``: ``(C, M)``; ``locations``: ``(C, M, S)``. Entries with a negative
    position are padding and are dropped; an image seen twice (a DistributedSampler pads its
    shards with repeats) is kept once, at its best value. Every row holds the same images, so the
    result stays rectangular: ``(C, k')`` with ``k' = min(k, number of distinct images)``.
    """
    by_pos = torch.argsort(indices, dim=1, stable=True)
    values, indices = values.gather(1, by_pos), indices.gather(1, by_pos)
    locations = locations.gather(1, by_pos[..., None].expand_as(locations))
    by_val = torch.argsort(values, dim=1, descending=True, stable=True)
    values, indices = values.gather(1, by_val), indices.gather(1, by_val)
    locations = locations.gather(1, by_val[..., None].expand_as(locations))

    # first occurrence of each position (in value order) is kept; padding never is
    grouped = torch.argsort(indices, dim=1, stable=True)
    sorted_pos = indices.gather(1, grouped)
    first = torch.ones_like(sorted_pos, dtype=torch.bool)
    first[:, 1:] = sorted_pos[:, 1:] != sorted_pos[:, :-1]
    keep = torch.empty_like(first).scatter_(1, grouped, first) & (indices >= 0)
    kept = min(k, int(keep[0].sum())) if keep.shape[0] else 0
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :kept]
    return (
        values.gather(1, order),
        indices.gather(1, order),
        locations.gather(1, order[..., None].expand(-1, -1, locations.shape[-1])),
    )


def _merge_ranks(values: Tensor, indices: Tensor, locations: Tensor, k: int) -> tuple[Tensor, ...]:
    """Gather every rank's top-k (padded to exactly k) and select the global top-k."""
    pad = k - values.shape[1]
    values = torch.cat([values, values.new_full((values.shape[0], pad), -float("inf"))], 1)
    indices = torch.cat([indices, indices.new_full((indices.shape[0], pad), -1)], 1)
    locations = torch.cat(
        [locations, locations.new_zeros((locations.shape[0], pad, locations.shape[2]))], 1
    )
    world = dist.get_world_size()
    gathered = []
    for local in (values, indices, locations):
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local.contiguous())
        gathered.append(torch.cat(parts, dim=1))
    return _select(*gathered, k)


def top_activations(
    model: nn.Module,
    layer: nn.Module | str,
    data: Tensor | Iterable,
    k: int = 9,
    channels: Sequence[int] | Tensor | None = None,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> TopActivations:
    """Find, for each channel of ``layer``, the ``k`` images of ``data`` that excite it most.

    An image's score for a channel is its strongest unit in that channel's output map (the paper's
    "top activations"), so the ``k`` entries of a channel are ``k`` different images.

    Args:
        model: the network, run as given (call ``model.eval()`` first; it is not modified).
        layer: a submodule of ``model`` or its name (``"conv5"``); its output is ``(N, C, ...)``.
        data: a tensor ``(N, ...)`` of inputs, or an iterable of batches — tensors or
            ``(inputs, labels, ...)`` tuples, e.g. a ``DataLoader``. Inputs are moved to the
            device of the model's first parameter.
        k: how many images to keep per channel (fewer if the data set is smaller).
        channels: channel numbers to mine (default: all channels of the layer).
        batch_size: batch size used when ``data`` is a tensor.
        progress: show a tqdm progress bar (on rank 0 only under torch.distributed).

    Returns:
        :class:`TopActivations` with ``values`` ``(C, k)``, ``indices`` ``(C, k)``,
        ``locations`` ``(C, k, S)`` and ``channels`` ``(C,)``. ``indices`` are positions in the
        order ``data`` yields its examples (for a tensor or an unshuffled DataLoader: data-set
        indices).

    Distributed:
        If ``torch.distributed`` is initialised (e.g. under ``torchrun``), each rank mines its shard
        and the results are merged exactly (all ranks return the same result). A tensor is sharded
        automatically (rank ``r`` takes rows ``r, r + world, ...``); an iterable must be a
        ``DataLoader`` with a ``DistributedSampler`` and ``indices`` are then the data-set indices
        its sampler yields.
    """
    return _mine(model, [layer], data, k, [channels], batch_size, progress)[0]


def top_activations_by_layer(
    model: nn.Module,
    layers: Sequence[str] | Mapping[str, Sequence[int] | Tensor | None],
    data: Tensor | Iterable,
    k: int = 9,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, TopActivations]:
    """:func:`top_activations` for several layers in one pass over ``data``.

    Args:
        layers: layer names, or a mapping from layer name to the channels to mine (``None``: all).
        model, data, k, batch_size, progress: as in :func:`top_activations`; the forward pass of
            each batch stops after the last of the layers has run.

    Returns:
        ``{name: TopActivations}`` in the order of ``layers``.
    """
    if isinstance(layers, str):
        raise TypeError(f"layers must be a sequence or mapping of names, not the string {layers!r}")
    wanted = dict(layers) if isinstance(layers, Mapping) else dict.fromkeys(layers)
    if not wanted:
        raise ValueError("layers is empty")
    mined = _mine(model, list(wanted), data, k, list(wanted.values()), batch_size, progress)
    return dict(zip(wanted, mined, strict=True))


def _mine(
    model: nn.Module,
    layers: Sequence[nn.Module | str],
    data: Tensor | Iterable,
    k: int,
    channels: Sequence[Sequence[int] | Tensor | None],
    batch_size: int,
    progress: bool,
) -> list[TopActivations]:
    """The streaming top-k of each of ``layers`` (with its ``channels``), one pass over ``data``."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    modules = [resolve_layer(model, layer) for layer in layers]
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    batches, length = _batches(data, batch_size, rank, world)
    chosen: list[Tensor] = []
    best: list[tuple[Tensor, ...]] = []
    with torch.no_grad():
        for inputs, positions in tqdm(
            batches, total=length, desc="top activations", disable=not progress or rank != 0
        ):
            if len(inputs) == 0:
                continue
            outputs = _layer_outputs(model, modules, inputs.to(device))
            for i, out in enumerate(outputs):
                if out.dim() < 2:
                    raise ValueError(
                        f"output of layer {layers[i]!r} must be (N, C, ...), got shape "
                        f"{tuple(out.shape)}"
                    )
                if len(chosen) == i:
                    chosen.append(_channels(channels[i], out.shape[1]))
                candidates = _candidates(out, chosen[i], positions)
                if len(best) == i:
                    best.append(_select(*candidates, k))
                else:
                    pairs = zip(best[i], candidates, strict=True)
                    best[i] = _select(*(torch.cat(pair, dim=1) for pair in pairs), k)

    if distributed:
        if not best:
            raise ValueError(f"rank {rank} received no data to mine")
        best = [_merge_ranks(*b, k) for b in best]
    if not best:
        raise ValueError("data is empty: no batches to mine")
    return [TopActivations(*b, c) for b, c in zip(best, chosen, strict=True)]


def _candidates(out: Tensor, chosen: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each image's strongest unit per chosen channel: values/positions ``(C, B)``, locations
    ``(C, B, S)``; on ties the first unit in row-major order."""
    maps = out[:, chosen]
    flat = (maps.flatten(2) if maps.dim() > 2 else maps[..., None]).float().cpu()
    values, unit = flat.max(dim=2)
    locations = _unravel(unit, out.shape[2:])  # (B, C, S)
    return values.T, positions[None, :].expand(len(chosen), -1), locations.transpose(0, 1)


def _channels(channels: Sequence[int] | Tensor | None, num_channels: int) -> Tensor:
    """Validate the requested channels against the layer's channel count."""
    if channels is None:
        return torch.arange(num_channels)
    chosen = torch.as_tensor(channels, dtype=torch.long).reshape(-1)
    if chosen.numel() == 0:
        raise ValueError("channels must not be empty")
    bad = chosen[(chosen < 0) | (chosen >= num_channels)]
    if bad.numel():
        raise ValueError(
            f"channels {bad.tolist()} out of range for a layer with {num_channels} channels"
        )
    return chosen


def _unravel(flat_index: Tensor, shape: Sequence[int]) -> Tensor:
    """Flat unit numbers ``(...)`` → coordinates ``(..., len(shape))`` in a map of ``shape``."""
    coords = []
    for size in reversed(list(shape)):
        coords.append(flat_index % size)
        flat_index = flat_index // size
    return (
        torch.stack(coords[::-1], dim=-1)
        if coords
        else flat_index.new_zeros((*flat_index.shape, 0))
    )


def _dataset_of(data: Tensor | Dataset | DataLoader) -> Tensor | Dataset:
    """The indexable data behind ``data``: a DataLoader's data set, else ``data`` itself."""
    return data.dataset if isinstance(data, DataLoader) else data


def _examples(data: Tensor | Dataset | DataLoader, indices: Tensor) -> Tensor:
    """Input tensors ``(len(indices), ...)`` of a tensor, a map-style data set or a DataLoader's."""
    dataset = _dataset_of(data)
    if isinstance(dataset, TensorDataset):
        dataset = dataset.tensors[0]
    if isinstance(dataset, Tensor):
        return dataset[indices]
    if not hasattr(dataset, "__getitem__"):
        raise TypeError(
            "projection needs random access to the mined examples: pass a tensor, a map-style "
            f"Dataset or a DataLoader over one, got {type(data).__name__}"
        )
    return torch.stack([_inputs_of(dataset[int(i)]) for i in indices])


def project_top_activations(
    model: nn.Module,
    layer: nn.Module | str,
    data: Tensor | Dataset | DataLoader,
    top: TopActivations,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> Tensor:
    """Project every mined unit of ``top`` to pixel space with the deconvnet, in batches.

    Each (image, channel, location) seed becomes one row of a batch given to
    :meth:`DeconvProjection.attribute` with ``neuron=locations``, so a batch of ``batch_size``
    seeds costs one forward and one backward pass.

    Args:
        model, layer: as given to :func:`top_activations`.
        data: the mined data, with random access: a tensor ``(N, ...)``, a map-style ``Dataset``
            (items are tensors or ``(input, label, ...)`` tuples) or a ``DataLoader`` over one.
        top: the result of :func:`top_activations` on ``data``.
        batch_size: seeds per forward/backward pass.
        progress: show a tqdm progress bar.

    Returns:
        ``(C, k, *input_shape)`` — ``[c, j]`` is the projection of the unit
        ``top.locations[c, j]`` of channel ``top.channels[c]`` for image ``top.indices[c, j]``.
    """
    from .deconv import DeconvProjection

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    module = resolve_layer(model, layer)
    num_channels, k = top.indices.shape
    seed_channels = top.channels[:, None].expand(num_channels, k).reshape(-1)
    seed_images = top.indices.reshape(-1)
    dataset = _dataset_of(data)
    size = len(dataset) if hasattr(dataset, "__len__") else None
    if size is not None and len(seed_images) and int(seed_images.max()) >= size:
        raise ValueError(
            f"top refers to data-set position {int(seed_images.max())} but data holds {size} "
            "examples: project with the data that top_activations mined"
        )
    seed_locations = top.locations.reshape(num_channels * k, -1)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    projector = DeconvProjection(model, module)

    pieces = []
    for start in tqdm(
        range(0, len(seed_images), batch_size), desc="projections", disable=not progress
    ):
        stop = start + batch_size
        images = _examples(data, seed_images[start:stop])
        try:
            projected = projector.attribute(
                images.to(device),
                target=seed_channels[start:stop].tolist(),
                neuron=seed_locations[start:stop].to(device),
            )
        except ValueError as err:  # out-of-range channels or locations: top is from elsewhere
            raise ValueError(f"{err} (was top mined on this layer of this model?)") from err
        pieces.append(projected.detach().cpu())
    if not pieces:
        raise ValueError("top holds no mined units to project")
    projections = torch.cat(pieces)
    return projections.reshape(num_channels, k, *projections.shape[1:])


def receptive_field_patches(
    images: Tensor, locations: Tensor, receptive_field: ReceptiveFieldLike, fill: float = 0.0
) -> Tensor:
    """Cut out of each image the receptive field of one unit of a layer's output map.

    Args:
        images: ``(M, C, H, W)`` — input images, or their projections.
        locations: ``(M, 2)`` — (row, col) of the unit in the layer's output map, as in
            :attr:`TopActivations.locations`.
        receptive_field: the layer's receptive field, as returned by
            :func:`deconvnet_attr.receptive_field`: ``.size``, ``.stride``, ``.offset``, each a
            (height, width) pair; the unit at (i, j) sees rows ``offset[0] + i * stride[0]`` to
            ``offset[0] + i * stride[0] + size[0] - 1``, likewise columns.
        fill: value for the part of a field that lies outside the image (e.g. 0 for projections,
            NaN for images so that it is drawn as background).

    Returns:
        ``(M, C, h, w)`` with ``h = size[0]`` when the field is smaller than the image and
        ``h = H`` (the whole image) otherwise; likewise ``w``.
    """
    size, stride, offset = (
        (int(pair[0]), int(pair[1]))
        for pair in (receptive_field.size, receptive_field.stride, receptive_field.offset)
    )
    return receptive_field_crop(ReceptiveField(size, stride, offset), images, locations, fill)
