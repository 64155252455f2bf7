"""Streaming top-k activations of a layer over a data set (Zeiler & Fergus 2013, Fig. 2).

For every channel of a layer's output, :func:`top_activations` finds the ``k`` images of a data set
whose strongest unit in that channel's map is largest, and where in the map that unit sits. It makes
one streaming pass (memory is ``O(C * (k + batch))`` whatever the data-set size) and, under
``torchrun``, mines each rank's shard and merges the per-rank results exactly. The layers are read
through :class:`~deconvnet_attr.taps.Taps`, the forward of each batch stopping after the last one.

Projecting the mined units to pixel space is :mod:`deconvnet_attr.projection`'s job.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from deconvnet_attr.distributed import all_gather_cat, rank_and_world, shard_indices, sharded_loader
from deconvnet_attr.state import preserved_state
from deconvnet_attr.taps import LayerSpec, Taps

if TYPE_CHECKING:  # the atlas imports this module
    from deconvnet_attr.atlas.stats import ChannelMaxima

__all__ = ["TopActivations", "top_activations", "top_activations_by_layer"]


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
        positions = (
            shard_indices(data.shape[0], rank, world) if world > 1 else torch.arange(data.shape[0])
        )

        def tensor_batches() -> Iterator[tuple[Tensor, Tensor]]:
            for chunk in positions.split(batch_size):
                yield data[chunk], chunk

        return tensor_batches(), -(-len(positions) // batch_size)

    source: Iterable = data
    dataset_indices: Tensor | None = None
    if world > 1:
        loader = sharded_loader(data, rank, world)
        source, dataset_indices = loader, torch.as_tensor(list(loader.sampler), dtype=torch.long)

    def iterable_batches() -> Iterator[tuple[Tensor, Tensor]]:
        seen = 0
        for batch in source:
            inputs = _inputs_of(batch)
            pos = torch.arange(seen, seen + inputs.shape[0])
            seen += inputs.shape[0]
            yield inputs, pos if dataset_indices is None else dataset_indices[pos]

    try:
        length: int | None = len(source)  # type: ignore[arg-type]
    except TypeError:
        length = None
    return iterable_batches(), length


def _select(
    values: Tensor, indices: Tensor, locations: Tensor, k: int
) -> tuple[Tensor, Tensor, Tensor]:
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


def _merge_ranks(
    values: Tensor, indices: Tensor, locations: Tensor, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Gather every rank's top-k (padded to exactly k) and select the global top-k."""
    pad = k - values.shape[1]
    values = torch.cat([values, values.new_full((values.shape[0], pad), -float("inf"))], 1)
    indices = torch.cat([indices, indices.new_full((indices.shape[0], pad), -1)], 1)
    locations = torch.cat(
        [locations, locations.new_zeros((locations.shape[0], pad, locations.shape[2]))], 1
    )
    values, indices, locations = (all_gather_cat(t, dim=1) for t in (values, indices, locations))
    return _select(values, indices, locations, k)


def top_activations(
    model: nn.Module,
    layer: LayerSpec,
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
        model: the network, run as given (call ``model.eval()`` first; it is not modified:
            buffers such as BatchNorm running statistics are restored, also on error).
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
        indices; a shuffled DataLoader's positions are those of that one pass).

    Raises:
        ValueError: an input or a mined layer output holds NaN or Inf; the message lists the
            data-set positions of those examples.

    Distributed:
        If ``torch.distributed`` is initialised (e.g. under ``torchrun``), each rank mines its shard
        and the results are merged exactly (all ranks return the same result). A tensor, or an
        unshuffled ``DataLoader`` over a map-style data set, is sharded automatically (rank ``r``
        takes examples ``r, r + world, ...``; :mod:`deconvnet_attr.distributed`), ``indices``
        staying data-set positions; any other iterable must be a ``DataLoader`` with a
        ``DistributedSampler`` and ``indices`` are then the data-set indices its sampler yields.
    """
    return next(iter(_mine(model, [layer], data, k, [channels], batch_size, progress).values()))


def top_activations_by_layer(
    model: nn.Module,
    layers: Sequence[LayerSpec] | Mapping[Any, Sequence[int] | Tensor | None],
    data: Tensor | Iterable,
    k: int = 9,
    *,
    batch_size: int = 64,
    progress: bool = True,
    maxima: ChannelMaxima | None = None,
) -> dict[str, TopActivations]:
    """:func:`top_activations` for several layers in one pass over ``data``.

    Args:
        layers: layers (modules of ``model`` or their dotted names), or a mapping from layer to
            the channels to mine (``None``: all).
        model, data, k, batch_size, progress: as in :func:`top_activations`; the forward pass of
            each batch stops after the last of the layers has run.
        maxima: also record every image's strongest unit per mined channel into this
            :class:`~deconvnet_attr.atlas.ChannelMaxima` (the atlas's histograms and image
            pages then need no second pass). Not under ``torch.distributed``, where each rank
            sees only its shard (``ValueError``).

    Returns:
        ``{dotted layer name: TopActivations}`` in the order of ``layers``.
    """
    if isinstance(layers, str):
        raise TypeError(f"layers must be a sequence or mapping of names, not the string {layers!r}")
    wanted = dict(layers) if isinstance(layers, Mapping) else dict.fromkeys(layers)
    if not wanted:
        raise ValueError("layers is empty")
    return _mine(model, list(wanted), data, k, list(wanted.values()), batch_size, progress, maxima)


def _mine(
    model: nn.Module,
    layers: Sequence[LayerSpec],
    data: Tensor | Iterable,
    k: int,
    channels: Sequence[Sequence[int] | Tensor | None],
    batch_size: int,
    progress: bool,
    maxima: ChannelMaxima | None = None,
) -> dict[str, TopActivations]:
    """The streaming top-k of each of ``layers`` (with its ``channels``), one pass over ``data``;
    keyed by the layers' dotted names; each batch's per-image maxima go to ``maxima``."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    taps = Taps(model, layers, stop=True, min_dim=2)
    rank, world = rank_and_world()
    distributed = world > 1
    if distributed and maxima is not None:
        raise ValueError(
            "maxima cannot be recorded under torch.distributed: each rank mines only its shard"
        )
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    names = [name for name, _ in taps.resolved]
    batches, length = _batches(data, batch_size, rank, world)
    chosen: list[Tensor] = []
    best: list[tuple[Tensor, Tensor, Tensor]] = []
    with torch.no_grad(), preserved_state(model):
        for inputs, positions in tqdm(
            batches, total=length, desc="top activations", disable=not progress or rank != 0
        ):
            if len(inputs) == 0:
                continue
            _check_finite(inputs, positions, "the inputs")
            outputs = taps(inputs.to(device))
            for i, out in enumerate(outputs[name] for name in taps.names):
                if len(chosen) == i:
                    chosen.append(_channels(channels[i], out.shape[1]))
                _check_finite(out, positions, f"layer {taps.names[i]!r}'s output")
                candidates = _candidates(out, chosen[i], positions)
                if maxima is not None:
                    maxima.record(names[i], chosen[i], candidates[0].T, positions)
                if len(best) == i:
                    best.append(_select(*candidates, k))
                else:
                    v, j, loc = (
                        torch.cat(pair, dim=1) for pair in zip(best[i], candidates, strict=True)
                    )
                    best[i] = _select(v, j, loc, k)

    if distributed:
        if not best:
            raise ValueError(f"rank {rank} received no data to mine")
        best = [_merge_ranks(*b, k) for b in best]
    if not best:
        raise ValueError("data is empty: no batches to mine")
    return {n: TopActivations(*b, c) for n, b, c in zip(names, best, chosen, strict=True)}


def _check_finite(batch: Tensor, positions: Tensor, what: str) -> None:
    """Raise naming the data-set positions of the examples whose ``batch`` rows hold NaN/Inf.

    A NaN compares as the largest value in ``max``, so one broken image would top every channel.
    """
    if not batch.is_floating_point():
        return
    bad = ~torch.isfinite(batch.reshape(batch.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        where = positions[bad.cpu()].tolist()
        raise ValueError(
            f"{what} hold NaN or Inf for the examples at data-set positions {where}: "
            "top activations would be meaningless (NaN ranks first); remove or fix them"
        )


def _candidates(out: Tensor, chosen: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each image's strongest unit per chosen channel: values/positions ``(C, B)``, locations
    ``(C, B, S)``; on ties the first unit in row-major order."""
    every = len(chosen) == out.shape[1] and torch.equal(chosen.cpu(), torch.arange(len(chosen)))
    maps = out if every else out[:, chosen]  # indexing copies the whole map (100 MB at 224 px)
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
