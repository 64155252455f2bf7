"""What the atlas writer is given: per-channel, per-layer and per-image records.

The writer (:func:`deconvnet_attr.atlas.write_atlas`) never computes anything from a model: it is
handed these records, already mined and projected, and turns them into pages and PNGs. A layer's
channels are an *iterable* so that a caller can compute them in bounded batches while the writer
consumes them one at a time (nothing holds every projection of a layer in memory).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from deconvnet_attr.occlusion import OcclusionMaps

__all__ = ["ChannelRecord", "Histogram", "ImageRecord", "LayerRecord", "TopChannels"]


@dataclass(frozen=True)
class Histogram:
    """Counts of a channel's per-image maximum activation over the data set.

    ``counts`` ``(B,)`` int, ``edges`` ``(B + 1,)`` float64, increasing; bin ``b`` holds the
    images whose value ``v`` has ``edges[b] <= v < edges[b + 1]``.
    """

    counts: np.ndarray
    edges: np.ndarray

    def __post_init__(self) -> None:
        if self.counts.ndim != 1 or self.edges.shape != (len(self.counts) + 1,):
            raise ValueError(
                f"need counts (B,) and edges (B + 1,), got {self.counts.shape} and "
                f"{self.edges.shape}"
            )


@dataclass(frozen=True)
class ChannelRecord:
    """One channel's page: its ``k`` strongest activations, strongest first.

    Attributes:
        channel: the channel number in its layer.
        values: ``(k,)`` activations (the strongest unit of the channel map in each top image).
        image_ids: ``(k,)`` data-set positions of the top images.
        image_names: ``k`` file names of those images (``None`` where the data has none).
        projections: ``(k, C, h, w)`` deconvnet projections, cropped to the unit's receptive field
            (or whole, for a layer without one); NaN outside the image.
        patches: ``(k, C, h, w)`` the input patches under those fields, in [0, 1]; NaN outside.
        histogram: the channel's activation over the data set, or ``None``.
        filter: ``(C_in, kh, kw)`` the channel's filter (first convolution only), or ``None``.
    """

    channel: int
    values: Tensor
    image_ids: Tensor
    image_names: Sequence[str | None]
    projections: Tensor
    patches: Tensor
    histogram: Histogram | None = None
    filter: Tensor | None = None


@dataclass
class LayerRecord:
    """One analysed layer: its name, how many channels it has and its channels' records.

    ``channels`` is consumed once, in any order, by the writer. ``field`` describes the receptive
    field shown on the pages (e.g. ``"13×13 px, stride 2"``), ``None`` when the layer has none.
    """

    name: str
    num_channels: int
    channels: Iterable[ChannelRecord]
    field: str | None = None


@dataclass(frozen=True)
class TopChannels:
    """The channels of one layer most active on one image: ``values`` and ``channels``, ``(n,)``,
    strongest first (value = the strongest unit of the channel's map on that image)."""

    values: Tensor
    channels: Tensor


@dataclass(frozen=True)
class ImageRecord:
    """One image's page: the image, its most active channels per layer, occlusion maps if any.

    ``image`` is ``(C, H, W)`` in [0, 1]; ``top`` maps a layer name to its :class:`TopChannels`;
    ``label`` is a caption (e.g. the class name); ``occlusion`` holds the paper's Fig. 7 maps
    (with ``projection`` ``(C, H, W)``, the deconvnet projection of the occlusion layer's
    strongest map) when they were computed.
    """

    index: int
    image: Tensor
    name: str | None = None
    label: str | None = None
    top: Mapping[str, TopChannels] = field(default_factory=dict)
    occlusion: OcclusionMaps | None = None
    projection: Tensor | None = None
