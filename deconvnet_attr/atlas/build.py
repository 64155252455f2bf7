"""Compute the atlas of a model on a data set: mining, statistics, projections, image pages.

:func:`build_atlas` is the one call (mine every analysed layer in one pass, then
:func:`atlas_from_mined`). :func:`atlas_from_mined` starts from top activations mined elsewhere
(e.g. by the report): the histograms and the image pages' top channels come from the per-image
channel maxima recorded while mining (:class:`~deconvnet_attr.atlas.ChannelMaxima`), or else from
one more streaming pass; then each layer's channels are projected in bounded chunks and handed to
the writer one by one, so memory is bounded by ``batch_size``, not by the data-set size or the
channel count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, SequentialSampler, Subset

from deconvnet_attr.deconv import DeconvProjection
from deconvnet_attr.distributed import rank_and_world
from deconvnet_attr.geometry import GeometryError, ReceptiveField, receptive_field
from deconvnet_attr.mining import TopActivations, top_activations_by_layer
from deconvnet_attr.occlusion import occlusion_maps
from deconvnet_attr.projection import project_top_activations, receptive_field_patches
from deconvnet_attr.taps import Taps, resolve_layer

from .records import ChannelRecord, ImageRecord, LayerRecord
from .site import write_atlas
from .stats import ActivationStats, ChannelMaxima, activation_stats

__all__ = ["atlas_from_mined", "build_atlas", "channel_records"]

Data = Tensor | Dataset | DataLoader

Projector = Callable[[str, TopActivations], Tensor]
"""``project(layer, top) -> (C, k, *input_shape)``: the deconvnet projections of the seeds of
``top`` (rows of the layer's mined result, indices into the atlas's data), e.g. the report's
memoised :meth:`~deconvnet_attr.report.context.ReportContext.project`."""


def build_atlas(
    model: nn.Module,
    layers: Sequence[str],
    data: Data,
    out_dir: str | os.PathLike,
    *,
    k: int = 9,
    batch_size: int = 64,
    num_workers: int = 0,
    per_image: int = 8,
    occlusion_images: Sequence[int] = (),
    class_names: Sequence[str] | None = None,
    title: str = "Unit atlas",
    progress: bool = True,
) -> Path:
    """Write the unit atlas of ``layers`` of ``model`` over ``data`` into ``out_dir``.

    Args:
        model: the network in eval mode (not modified).
        layers: names of the analysed layers (every channel of each gets a tile and a page).
        data: a tensor ``(N, C, H, W)`` in [0, 1], a map-style ``Dataset`` of ``(image, label)``
            pairs or images, or an unshuffled ``DataLoader`` over one.
        out_dir: the atlas folder (created); ``out_dir/index.html`` is its entry page.
        k: top images per channel.
        batch_size: images per forward pass and seeds per projection pass (bounds memory).
        num_workers: DataLoader workers when ``data`` is a ``Dataset``.
        per_image: channels per layer listed on each image page.
        occlusion_images: data-set positions whose image pages also show the paper's Fig. 7
            occlusion maps (for the last analysed layer with a spatial map).
        class_names: captions of the integer labels (image pages, occlusion figures).
        title: the atlas's title.
        progress: show tqdm progress bars.

    Returns:
        the path of ``out_dir/index.html``. One streaming pass over ``data`` for all layers
        (two under ``torch.distributed``: the statistics pass is not sharded).
    """
    _, loader = _sources(data, batch_size, num_workers)
    maxima = ChannelMaxima() if rank_and_world()[1] == 1 else None
    try:
        mined = top_activations_by_layer(
            model,
            list(layers),
            loader,
            k=k,
            batch_size=batch_size,
            progress=progress,
            maxima=maxima,
        )
        return atlas_from_mined(
            model,
            data,
            mined,
            out_dir,
            maxima=maxima,
            batch_size=batch_size,
            num_workers=num_workers,
            per_image=per_image,
            occlusion_images=occlusion_images,
            class_names=class_names,
            title=title,
            progress=progress,
        )
    finally:
        if maxima is not None:
            maxima.close()


def atlas_from_mined(
    model: nn.Module,
    data: Data,
    mined: Mapping[str, TopActivations],
    out_dir: str | os.PathLike,
    *,
    stats: ActivationStats | None = None,
    maxima: ChannelMaxima | None = None,
    project: Projector | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    per_image: int = 8,
    occlusion_images: Sequence[int] = (),
    class_names: Sequence[str] | None = None,
    title: str = "Unit atlas",
    progress: bool = True,
    write: bool = True,
) -> Path:
    """:func:`build_atlas` from ``mined`` (layer → :class:`TopActivations` on ``data``).

    ``stats`` (from :func:`~deconvnet_attr.atlas.activation_stats` over the same data, watching
    every mined image and ``occlusion_images``) is computed here when not given: from ``maxima``
    (a :class:`~deconvnet_attr.atlas.ChannelMaxima` recorded while mining ``mined`` over the same
    data, at no pass over it) or else by one streaming pass. ``project``
    replaces the projection of each chunk of channels (default:
    :func:`~deconvnet_attr.projection.project_top_activations`). ``write=False`` (the ranks
    other than 0 under torchrun) only projects every chunk of channels -- the projections are
    collective -- and writes nothing: no statistics, image pages or files. Other arguments as in
    :func:`build_atlas`.
    """
    if not mined:
        raise ValueError("mined is empty: no layers to put in the atlas")
    dataset, loader = _sources(data, batch_size, num_workers)
    if not isinstance(per_image, int) or per_image < 1:
        raise ValueError(f"per_image must be a positive integer, got {per_image!r}")
    occlusion_images = [int(i) for i in occlusion_images]
    spatial = [name for name, top in mined.items() if top.locations.shape[-1] == 2]
    size = len(dataset)  # type: ignore[arg-type]
    outside = [i for i in occlusion_images if not 0 <= i < size]
    if outside:
        raise ValueError(f"occlusion_images {outside} are not positions in the {size} images")
    if occlusion_images and not spatial:
        raise ValueError("occlusion maps need an analysed layer with a spatial (C, H, W) map")
    if not write:
        for name, top in mined.items():
            for _ in channel_records(
                model, name, dataset, top, batch_size=batch_size, project=project
            ):
                pass
        return Path(out_dir) / "index.html"
    pages = sorted({int(i) for top in mined.values() for i in top.indices.flatten().tolist()})
    pages = sorted(set(pages) | set(occlusion_images))
    channels = {name: top.channels for name, top in mined.items()}
    if stats is None and maxima is not None:
        stats = maxima.stats(channels, watch=pages, per_image=per_image)
    if stats is None:
        stats = activation_stats(
            model,
            channels,
            loader,
            watch=pages,
            per_image=per_image,
            batch_size=batch_size,
            progress=progress,
        )
    example = _example(dataset, 0)[None]
    layers = []
    sizes = _num_channels(model, list(mined), example)
    for (name, top), num_channels in zip(mined.items(), sizes, strict=True):
        found = _field(model, name, example) if top.locations.shape[-1] == 2 else None
        field = found if isinstance(found, ReceptiveField) else None
        layers.append(
            LayerRecord(
                name,
                num_channels,
                channel_records(
                    model,
                    name,
                    dataset,
                    top,
                    stats,
                    field=field,
                    batch_size=batch_size,
                    project=project,
                ),
                f"unknown ({found}): whole images shown"
                if isinstance(found, str)
                else None
                if field is None
                else f"{field.size[0]}×{field.size[1]} px, stride {field.stride[0]}",
            )
        )
    images = _image_records(
        model,
        dataset,
        stats,
        pages,
        occlusion_images,
        spatial[-1] if spatial else "",
        class_names,
        batch_size,
    )
    k = max(top.values.shape[1] for top in mined.values())
    summary = f"{stats.num_images:,} images, top {k} per channel"
    return write_atlas(
        out_dir,
        layers,
        images,
        title=title,
        summary=summary,
        class_names=class_names,
        progress=progress,
    )


def channel_records(
    model: nn.Module,
    layer: str,
    data: Tensor | Dataset,
    top: TopActivations,
    stats: ActivationStats | None = None,
    *,
    field: ReceptiveField | None = None,
    batch_size: int = 64,
    project: Projector | None = None,
) -> Iterator[ChannelRecord]:
    """The :class:`ChannelRecord` of each channel of ``top``, projected ``batch_size`` seeds at a
    time (each chunk's images are fetched from ``data`` once; ``project``, when given, projects
    each chunk instead, from ``data``'s positions)."""
    name, module = resolve_layer(model, layer)
    weight = _first_conv_filters(model, module)
    per_chunk = max(1, batch_size // max(1, top.values.shape[1]))
    for start in range(0, len(top.channels), per_chunk):
        rows = torch.arange(start, min(start + per_chunk, len(top.channels)))
        ids = top.indices[rows]
        unique, position = torch.unique(ids, return_inverse=True)
        images = torch.stack([_example(data, int(i)) for i in unique])
        if project is None:
            chunk = TopActivations(
                top.values[rows], position, top.locations[rows], top.channels[rows]
            )
            projections = project_top_activations(
                model, name, images, chunk, batch_size=batch_size, progress=False
            )
        else:
            chunk = TopActivations(top.values[rows], ids, top.locations[rows], top.channels[rows])
            projections = project(name, chunk)
        for r, row in enumerate(rows.tolist()):
            channel = int(top.channels[row])
            shown, patches = projections[r], images[position[r]]
            if field is not None:
                nan = float("nan")
                shown = receptive_field_patches(shown, top.locations[row], field, fill=nan)
                patches = receptive_field_patches(patches, top.locations[row], field, fill=nan)
            yield ChannelRecord(
                channel=channel,
                values=top.values[row],
                image_ids=top.indices[row],
                image_names=[_filename(data, int(i)) for i in top.indices[row]],
                projections=shown,
                patches=patches,
                histogram=None if stats is None else stats.histograms[layer].histogram(row),
                filter=None if weight is None else weight[channel],
            )


def _image_records(
    model: nn.Module,
    data: Tensor | Dataset,
    stats: ActivationStats,
    pages: Sequence[int],
    occlusion_images: Sequence[int],
    occlusion_layer: str,
    class_names: Sequence[str] | None,
    batch_size: int,
) -> Iterator[ImageRecord]:
    """One :class:`ImageRecord` per page, fetched one at a time; occlusion maps (for
    ``occlusion_layer``, a square of the occlusion images' mean grey) where asked."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    occluded = set(occlusion_images)
    grey = float(torch.stack([_example(data, i) for i in occluded]).mean()) if occluded else 0.0
    for index in pages:
        image, label = _item(data, index)
        maps = projection = None
        if index in occluded:
            height = image.shape[-2]
            maps = occlusion_maps(
                model, image.to(device), max(1, height // 4), max(1, height // 14),
                occlusion_layer, target=label, baseline=grey, perturbations_per_eval=batch_size,
            )  # fmt: skip
            projector = DeconvProjection(model, model.get_submodule(occlusion_layer))
            projection = projector.attribute(
                image[None].to(device), target=maps.channel, neuron="max"
            )[0].detach().cpu()  # fmt: skip
        caption = None
        if label is not None:
            caption = class_names[label] if class_names is not None else f"label {label}"
        yield ImageRecord(
            index=index,
            image=image,
            name=_filename(data, index),
            label=caption,
            top=stats.top.get(index, {}),
            occlusion=maps,
            projection=projection,
        )


def _sources(
    data: Data, batch_size: int, num_workers: int
) -> tuple[Tensor | Dataset, Tensor | DataLoader]:
    """``(random-access data, data-set-ordered stream of batches)`` of the caller's ``data``."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(data, Tensor):
        if data.dim() < 2 or len(data) == 0:
            raise ValueError(
                f"data must be a non-empty (N, C, ...) tensor, got {tuple(data.shape)}"
            )
        return data, data
    if isinstance(data, DataLoader):
        if not isinstance(data.sampler, SequentialSampler):
            raise ValueError(
                "the atlas names images by data-set position: pass an unshuffled DataLoader, "
                f"got one with a {type(data.sampler).__name__}"
            )
        return data.dataset, data
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        loader = DataLoader(data, batch_size=batch_size, num_workers=num_workers)
        return data, loader
    raise TypeError(
        f"data must be a tensor, a map-style Dataset or a DataLoader, got {type(data).__name__}"
    )


def _item(data: Tensor | Dataset, index: int) -> tuple[Tensor, int | None]:
    """Item ``index``'s image ``(C, H, W)`` and integer label (``None``: none, or ``-1``)."""
    item = data[index]
    image, label = (
        (item[0], item[1] if len(item) > 1 else None)
        if isinstance(item, tuple | list)
        else (item, None)
    )
    if not isinstance(image, Tensor):
        raise TypeError(f"data item {index} is a {type(image).__name__}, expected a tensor image")
    if isinstance(label, Tensor) and label.numel() == 1:
        label = int(label)
    return image, label if isinstance(label, int) and label >= 0 else None


def _example(data: Tensor | Dataset, index: int) -> Tensor:
    return _item(data, index)[0]


def _filename(data: Tensor | Dataset, index: int) -> str | None:
    """The image's file name, for an ImageFolder-like data set (also inside Subsets/wrappers)."""
    current: Any = data
    while True:
        if isinstance(current, Subset):
            current, index = current.dataset, int(current.indices[index])
        elif hasattr(current, "samples"):
            return Path(str(current.samples[index][0])).name
        elif isinstance(getattr(current, "dataset", None), Dataset):
            current = current.dataset
        else:
            return None


def _field(model: nn.Module, layer: str, example: Tensor) -> ReceptiveField | str:
    """The layer's receptive field, or why it is unknown."""
    try:
        return receptive_field(model, layer, example)
    except GeometryError as error:
        return error.reason


def _num_channels(model: nn.Module, layers: Sequence[str], example: Tensor) -> list[int]:
    """Channels of each layer's output (dim 1), from one forward pass on one example."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        outputs = Taps(model, list(layers), stop=True)(example.to(device))
    return [int(out.shape[1]) for out in outputs.values()]


def _first_conv_filters(model: nn.Module, module: nn.Module) -> Tensor | None:
    """``(C_out, C_in, kh, kw)`` filters of ``module`` if it is the model's first convolution on
    1- or 3-channel inputs, else ``None``."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not module or first.in_channels not in (1, 3):
        return None
    return first.weight.detach().cpu().clone()
