"""Fig. 7: the occlusion panels of one image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from .common import _show, contrast_stretch, image_display, tile_grid

if TYPE_CHECKING:
    from deconvnet_attr.occlusion import OcclusionMaps

__all__ = ["plot_occlusion_maps"]


def plot_occlusion_maps(
    image: Tensor,
    maps: OcclusionMaps,
    class_names: Sequence[str] | None = None,
    projection: Tensor | None = None,
    title: str | None = None,
) -> Figure:
    """The paper's Fig. 7 panels for one image from :func:`~deconvnet_attr.occlusion_maps`.

    (a) the image with the occluder at its first position; (b) total activation of the layer's
    strongest feature map; (c) optional: that map's deconvnet ``projection`` ``(C, H, W)``, or
    ``(n, C, H, W)`` projections (as the paper: this image's first, then the map's projections
    from other images) tiled row-major in a square grid, each contrast-stretched around 0;
    (d) probability of the target class on a fixed [0, 1] scale; (e) most probable class --
    each as a function of the occluder's position (drawn at the occluder's centre). ``image`` is
    ``(C, H, W)`` in [0, 1] (C = 1 or 3); ``class_names`` label classes in (d) and (e).
    """
    img = image_display(image.unsqueeze(0) if image.dim() == 3 else image)[0]
    height, width = img.shape[:2]
    (wh, ww), rows, cols = maps.window, maps.rows.tolist(), maps.cols.tolist()
    step_r = rows[1] - rows[0] if len(rows) > 1 else wh
    step_c = cols[1] - cols[0] if len(cols) > 1 else ww
    extent = (
        cols[0] + ww / 2 - step_c / 2,
        cols[-1] + ww / 2 + step_c / 2,
        rows[-1] + wh / 2 + step_r / 2,
        rows[0] + wh / 2 - step_r / 2,
    )

    def name(k: int) -> str:
        return class_names[k] if class_names is not None else f"class {k}"

    panels = 5 if projection is not None else 4
    fig = Figure(figsize=(2.6 * panels, 3.0), layout="constrained")
    axes = fig.subplots(1, panels)
    _show(axes[0], img)
    axes[0].add_patch(plt.Rectangle((cols[0] - 0.5, rows[0] - 0.5), ww, wh, color="0.5"))
    axes[0].set_title(f"(a) input: {name(maps.clean_label)}", fontsize=8)
    heat = [
        (f"(b) total activation,\n{maps.layer} map {maps.channel}", maps.feature, "viridis", None),
        (f"(d) p({name(maps.target)})", maps.probability, "magma", (0.0, 1.0)),
    ]
    at = 1
    for label, values, cmap, limits in heat:
        if at == 2 and projection is not None:
            tiles = projection.unsqueeze(0) if projection.dim() == 3 else projection
            _show(axes[at], tile_grid(contrast_stretch(tiles)))
            axes[at].set_title(
                f"(c) projections of map {maps.channel}"
                + ("\n(this image first, then others)" if len(tiles) > 1 else ""),
                fontsize=8,
            )
            at += 1
        vmin, vmax = limits if limits is not None else (None, None)
        im = axes[at].imshow(
            values.numpy(), cmap=cmap, extent=extent, interpolation="nearest", vmin=vmin, vmax=vmax
        )
        axes[at].set_xlim(0, width)
        axes[at].set_ylim(height, 0)
        axes[at].set_title(label, fontsize=8)
        axes[at].set_xticks([])
        axes[at].set_yticks([])
        fig.colorbar(im, ax=axes[at], shrink=0.75)
        at += 1
    labels = maps.label.numpy()
    classes, counts = np.unique(labels, return_counts=True)
    order = classes[np.argsort(-counts)]
    index = {k: i for i, k in enumerate(order)}
    colours = plt.get_cmap("tab10" if len(order) <= 10 else "tab20", max(len(order), 1))
    axes[at].imshow(
        np.vectorize(index.get)(labels),
        cmap=colours,
        vmin=-0.5,
        vmax=len(order) - 0.5,
        extent=extent,
        interpolation="nearest",
    )
    axes[at].set_xlim(0, width)
    axes[at].set_ylim(height, 0)
    axes[at].set_xticks([])
    axes[at].set_yticks([])
    axes[at].set_title("(e) most probable class", fontsize=8)
    shown = order[:8]
    axes[at].legend(
        handles=[plt.Rectangle((0, 0), 1, 1, color=colours(index[k])) for k in shown],
        labels=[name(int(k)) for k in shown],
        fontsize=6,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        frameon=False,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
