"""Fig. 2 (projection grids beside their patches) and Fig. 4 (projections across epochs)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

from .common import _show, contrast_stretch, image_display

__all__ = ["feature_block", "plot_evolution", "plot_feature_grid"]


def plot_feature_grid(
    projections: Sequence[Tensor],
    patches: Sequence[Tensor],
    labels: Sequence[str] | None = None,
    title: str | None = None,
    blocks_per_row: int = 4,
    percentile: float = 99.5,
    outside: str | None = None,
) -> Figure:
    """The paper's Fig. 2 for one layer: per channel, top-k projections beside their image patches.

    Args:
        projections: one tensor ``(k, C, h, w)`` per channel — deconvnet projections of the
            channel's top-k units, cropped to their receptive fields (contrast-stretched here).
        patches: one tensor ``(k, C, h, w)`` per channel — the matching input patches in [0, 1].
        labels: a caption per channel (e.g. ``"ch 12"``).
        title: figure title.
        blocks_per_row: channels side by side.
        percentile: see :func:`contrast_stretch`.
        outside: a matplotlib colour for pixels outside the image (NaN; the receptive field's
            part beyond the border, i.e. the layer's padding), explained in a legend; default:
            transparent like the gaps between tiles.

    Each channel is a block: a square grid of its projections (left) and of its patches (right),
    strongest activation first (row-major), drawn as one image (see :func:`feature_block`), so a
    figure of many channels renders quickly.
    """
    if len(projections) != len(patches) or not projections:
        raise ValueError(
            f"need the same non-zero number of projection and patch sets, got {len(projections)} "
            f"and {len(patches)}"
        )
    if labels is not None and len(labels) != len(projections):
        raise ValueError(f"{len(labels)} labels for {len(projections)} channels")
    fill = None if outside is None else to_rgb(outside)
    # 8-bit blocks, made one at a time: a float64 block of 9 tiles of 112 px is ~9 MB, and
    # matplotlib copies float images again to normalise them (Fig. 2 of a large model was the
    # report's memory peak); the screen shows 8 bits anyway
    blocks = [
        _8bit(feature_block(proj, patch, percentile, outside=fill))
        for proj, patch in zip(projections, patches, strict=True)
    ]
    cols = min(blocks_per_row, len(blocks))
    rows = -(-len(blocks) // cols)
    height, width = max(b.shape[0] for b in blocks), max(b.shape[1] for b in blocks)
    scale = 3.2 / width  # inches per mosaic pixel: a block is 3.2 inches wide
    fig = Figure(
        figsize=(cols * width * scale + 0.3, rows * (height * scale + 0.3) + 0.4),
        layout="constrained",
    )
    axes = fig.subplots(rows, cols, squeeze=False)
    for b, ax in enumerate(axes.flat):
        if b >= len(blocks):
            ax.set_axis_off()
            continue
        ax.set_facecolor("#c9d6e8")  # gaps and out-of-image pixels: neither black, grey nor white
        ax.imshow(blocks[b], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("0.8")
        if labels is not None:
            ax.set_title(labels[b], fontsize=8, pad=2)
    if outside is not None:
        fig.legend(
            handles=[Patch(color=outside, label="outside the image (padding)")],
            loc="outside lower center",
            fontsize=8,
            frameon=False,
        )
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _8bit(image: np.ndarray) -> np.ndarray:
    """An image in [0, 1] as ``uint8`` (0-255, rounded)."""
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def feature_block(
    projections: Tensor,
    patches: Tensor,
    percentile: float = 99.5,
    outside: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """One channel's block of :func:`plot_feature_grid` as an RGBA image ``(H, W, 4)``.

    ``projections`` and ``patches`` are ``(k, C, h, w)``. The ``k`` contrast-stretched projections
    fill a square grid of ``side = ceil(sqrt(k))`` tiles, row-major, tiles 1 pixel apart; a gap of
    ``w`` pixels; then the patches in the same arrangement. Gaps are transparent; NaN pixels
    (outside the image) too, or opaque in the RGB colour ``outside`` (values in [0, 1]).
    """
    if len(projections) != len(patches):
        raise ValueError(f"{len(projections)} projections but {len(patches)} patches")
    if projections.shape[2:] != patches.shape[2:]:
        raise ValueError(
            f"projections {tuple(projections.shape)} and patches {tuple(patches.shape)} differ in "
            "size"
        )
    k, (h, w) = len(projections), projections.shape[2:]
    side = int(np.ceil(np.sqrt(k)))
    grid = side * (w + 1) - 1
    block = np.zeros((side * (h + 1) - 1, 2 * grid + w, 4))
    for part, tiles in enumerate(
        (contrast_stretch(projections, percentile), image_display(patches))
    ):
        rgb = tiles if tiles.ndim == 4 else np.repeat(tiles[..., None], 3, axis=-1)
        left = part * (grid + w)
        for j in range(k):
            r, c = divmod(j, side)
            top, col = r * (h + 1), left + c * (w + 1)
            missing = np.isnan(rgb[j]).any(axis=-1)
            tile = np.nan_to_num(rgb[j])
            if outside is not None:
                tile[missing] = outside
            block[top : top + h, col : col + w, :3] = tile
            block[top : top + h, col : col + w, 3] = ~missing if outside is None else 1.0
    return block


def plot_evolution(
    projections: Tensor,
    epochs: Sequence[int],
    labels: Sequence[str] | None = None,
    title: str | None = None,
    percentile: float = 99.5,
) -> Figure:
    """The paper's Fig. 4: the strongest projection of each channel (rows) at each epoch (columns).

    Args:
        projections: ``(channels, epochs, C, H, W)``.
        epochs: the epoch of each column.
        labels: a caption per row.
        title: figure title.
        percentile: see :func:`contrast_stretch`.
    """
    if projections.dim() != 5 or projections.shape[1] != len(epochs):
        raise ValueError(
            f"projections must be (channels, {len(epochs)} epochs, C, H, W), got "
            f"{tuple(projections.shape)}"
        )
    rows, cols = projections.shape[:2]
    shown = contrast_stretch(projections.flatten(0, 1), percentile)
    fig = Figure(figsize=(0.9 * cols + 1.0, 0.9 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            _show(ax, shown[r * cols + c])
            if r == 0:
                ax.set_title(f"epoch {epochs[c]}", fontsize=7)
            if c == 0 and labels is not None:
                ax.set_ylabel(labels[r], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
