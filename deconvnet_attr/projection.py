"""Deconvnet projections of mined units and the receptive-field crops beside them (Fig. 2).

:func:`project_top_activations` projects every unit found by
:func:`~deconvnet_attr.mining.top_activations` to pixel space through
:class:`~deconvnet_attr.deconv.DeconvProjection`, many (image, channel, location) seeds per
forward/backward pass; :func:`receptive_field_patches` cuts each unit's receptive field out of the
images (or of their projections), as the paper shows them side by side.
"""

from __future__ import annotations

import warnings
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from deconvnet_attr.deconv import DeconvProjection
from deconvnet_attr.distributed import all_gather_rows, rank_and_world, shard_range
from deconvnet_attr.geometry import ReceptiveField, receptive_field_crop
from deconvnet_attr.mining import TopActivations, _inputs_of
from deconvnet_attr.taps import LayerSpec, Taps, resolve_layer

__all__ = ["project_top_activations", "receptive_field_patches"]


class ReceptiveFieldLike(Protocol):
    """What :func:`receptive_field_patches` needs of a receptive field: (height, width) pairs."""

    @property
    def size(self) -> tuple[int, int]: ...

    @property
    def stride(self) -> tuple[int, int]: ...

    @property
    def offset(self) -> tuple[int, int]: ...


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
    layer: LayerSpec,
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
        model, layer: as given to :func:`~deconvnet_attr.mining.top_activations`.
        data: the mined data, with random access: a tensor ``(N, ...)``, a map-style ``Dataset``
            (items are tensors or ``(input, label, ...)`` tuples) or a ``DataLoader`` over one.
        top: the result of :func:`~deconvnet_attr.mining.top_activations` on ``data``.
        batch_size: seeds per forward/backward pass.
        progress: show a tqdm progress bar (on rank 0 only under torch.distributed).

    Returns:
        ``(C, k, *input_shape)`` — ``[c, j]`` is the projection of the unit
        ``top.locations[c, j]`` of channel ``top.channels[c]`` for image ``top.indices[c, j]``.

    Raises:
        ValueError: an example fetched from ``data`` does not reproduce the mined value
            ``top.values`` at its seed (checked per batch with one extra forward pass up to the
            layer; relative tolerance 1e-2): ``data`` is not what was mined, e.g. ``top`` came
            from a shuffled ``DataLoader``. In training mode the check is skipped with a warning.

    Distributed:
        If ``torch.distributed`` is initialised (e.g. under ``torchrun``), every rank must call
        this with the same arguments: each projects a contiguous block of the seed batches and
        the blocks are all-gathered, so all ranks return the same tensor, batched exactly as in
        a single process.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    _, module = resolve_layer(model, layer)
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
    seed_values = top.values.reshape(-1)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    projector = DeconvProjection(model, module)
    taps = Taps(model, [module], stop=True, min_dim=2)
    check = not any(m.training for m in model.modules())
    if not check:
        warnings.warn(
            "model is in training mode: activations depend on the batch, so the projected "
            "images cannot be checked against the mined values (call model.eval())",
            stacklevel=2,
        )

    if not len(seed_images):
        raise ValueError("top holds no mined units to project")
    rank, world = rank_and_world()
    starts = range(0, len(seed_images), batch_size)
    block = shard_range(len(starts), rank, world)  # all of them in a single process
    pieces = []
    for start in tqdm(
        starts[block.start : block.stop],
        desc="projections",
        disable=not progress or rank != 0,
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
        if check:  # after the projection, which checks that channels and locations fit
            _check_reproduced(
                taps,
                images.to(device),
                seed_channels[start:stop],
                seed_locations[start:stop],
                seed_values[start:stop],
                seed_images[start:stop],
            )
        pieces.append(projected.detach().cpu())
    projections = torch.cat(pieces) if pieces else torch.empty(0)
    if world > 1:  # each rank projected a block of batches: put them back in seed order
        projections = all_gather_rows(projections)
    return projections.reshape(num_channels, k, *projections.shape[1:])


def _check_reproduced(
    taps: Taps,
    images: Tensor,
    channels: Tensor,
    locations: Tensor,
    mined: Tensor,
    positions: Tensor,
) -> None:
    """Raise unless the layer activation of each seed equals the value that was mined for it.

    ``images`` ``(M, ...)`` are the examples fetched for seeds with ``channels`` ``(M,)``,
    ``locations`` ``(M, S)``, mined ``values`` ``(M,)`` and data-set ``positions`` ``(M,)``. A
    mismatch means the example at that position is not the one that was mined: typically
    ``top_activations`` was given a shuffled ``DataLoader`` (its positions are those of that one
    pass), other data, or data with random augmentation.
    """
    with torch.no_grad():
        act = taps(images)[taps.names[0]].float().cpu()
    index = (torch.arange(len(images)), channels, *locations.T)
    value = act[index]
    scale = float(mined.abs().max()) if mined.numel() else 0.0
    ok = torch.isclose(value, mined.float(), rtol=1e-2, atol=1e-3 * scale + 1e-6)
    if not bool(ok.all()):
        j = int((~ok).nonzero()[0])
        raise ValueError(
            f"the example at data-set position {int(positions[j])} gives activation "
            f"{float(value[j]):.4g} at channel {int(channels[j])}, location "
            f"{tuple(locations[j].tolist())} of layer {taps.names[0]!r}, but top_activations "
            f"mined {float(mined[j]):.4g} there ({int((~ok).sum())} of {len(ok)} seeds in this "
            "batch differ): data is not the data that was mined, in the same order. Mine a "
            "tensor, a Dataset or an unshuffled DataLoader (shuffle=False) without random "
            "augmentation, and project with the same data"
        )


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
