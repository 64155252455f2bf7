"""The unit atlas: every channel of every analysed layer as static, offline HTML pages.

:func:`build_atlas` mines a model's layers over a data set and writes the atlas;
:func:`atlas_from_mined` starts from already-mined :class:`~deconvnet_attr.TopActivations`;
:func:`write_atlas` only writes pages from precomputed records (:mod:`.records`). See
``docs/atlas.md``.
"""

from .build import atlas_from_mined, build_atlas, channel_records
from .records import ChannelRecord, Histogram, ImageRecord, LayerRecord, TopChannels
from .site import write_atlas
from .stats import ActivationStats, ChannelMaxima, StreamingHistogram, activation_stats

__all__ = [
    "ActivationStats",
    "ChannelMaxima",
    "ChannelRecord",
    "Histogram",
    "ImageRecord",
    "LayerRecord",
    "StreamingHistogram",
    "TopChannels",
    "activation_stats",
    "atlas_from_mined",
    "build_atlas",
    "channel_records",
    "write_atlas",
]
