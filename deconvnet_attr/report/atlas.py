"""The report's unit atlas: every (or the ``ctx.atlas_channels`` strongest) channel of each
analysed layer as browsable pages in ``ctx.out/atlas/``, from the report's own mined result.

The atlas (:func:`~deconvnet_attr.atlas.atlas_from_mined`) reuses the report's one mining pass;
the activation histograms and the image pages' top channels come from the channel maxima that
pass recorded (``ctx.maxima``; one more streaming pass when there are none, e.g. under torchrun);
then it projects each layer's channels in chunks of ``ctx.batch_size`` seeds, so its memory is
bounded by the batch size, not by the data-set size or the channel count.
"""

from __future__ import annotations

import html

import torch

from deconvnet_attr.atlas import ChannelMaxima, atlas_from_mined
from deconvnet_attr.mining import TopActivations

from .context import Mined, ReportContext

__all__ = ["ATLAS_DIR", "atlas_channels", "write_report_atlas"]

ATLAS_DIR = "atlas"
"""The atlas's folder inside the report's output directory."""


def atlas_channels(mined: Mined, count: int | None) -> dict[str, TopActivations]:
    """``mined`` cut to the ``count`` channels of each layer with the largest mean top-k
    activation, strongest first (``None``: every mined channel, in channel order)."""
    if count is None:
        return dict(mined)
    picked = {}
    for layer, top in mined.items():
        order = torch.argsort(top.values.mean(dim=1), descending=True, stable=True)[:count]
        picked[layer] = TopActivations(
            top.values[order], top.indices[order], top.locations[order], top.channels[order]
        )
    return picked


def write_report_atlas(ctx: ReportContext, mined: Mined) -> str:
    """Write the unit atlas of ``mined`` (cut to ``ctx.atlas_channels``) into ``ctx.out/atlas/``
    and return the HTML that links to it from the top of the report's page."""
    shown = atlas_channels(mined, ctx.atlas_channels)
    occlusion = [] if ctx.quick else [0]
    atlas_from_mined(
        ctx.model,
        ctx.loader(),
        shown,
        ctx.out / ATLAS_DIR,
        maxima=ctx.maxima if _recorded(ctx.maxima, shown) else None,
        project=lambda layer, top: ctx.project(layer, top, keep=False, take=True),
        batch_size=ctx.batch_size,
        occlusion_images=occlusion,
        class_names=ctx.class_names,
        title=f"Unit atlas: {ctx.model_name}",
        progress=ctx.progress,
        write=ctx.draws,
    )
    which = "all channels" if ctx.atlas_channels is None else f"the {ctx.atlas_channels} strongest"
    rows = "".join(
        f"<tr><td>{html.escape(layer)}</td><td>{len(top.channels)}</td></tr>"
        for layer, top in shown.items()
    )
    intro = (
        f'<p><a href="{ATLAS_DIR}/index.html">Open the unit atlas</a>: '
        f"{html.escape(which)} of each analysed layer, each with its top-{ctx.k} projections, "
        "receptive-field patches and activation histogram; one page per image with its most "
        "active channels. Static pages, offline, from <code>file://</code>.</p>"
    )
    head = "<thead><tr><th>layer</th><th>channels in the atlas</th></tr></thead>"
    return f'<div class="atlas">{intro}<table>{head}<tbody>{rows}</tbody></table></div>'


def _recorded(maxima: ChannelMaxima | None, shown: Mined) -> bool:
    """Whether ``maxima`` holds every shown layer (not so for a caller's own ``mined``)."""
    return maxima is not None and all(
        maxima.has(layer, top.channels) for layer, top in shown.items()
    )
