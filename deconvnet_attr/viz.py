"""Matplotlib figures: projection grids, occlusion panels, accuracy bar charts.

Functions return a :class:`matplotlib.figure.Figure` and never reach into attribution
internals: they draw tensors and result tables produced by the public API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

if TYPE_CHECKING:
    from .ablation import AccuracyTable


def plot_accuracy_table(table: AccuracyTable, title: str | None = None) -> Figure:
    """Grouped bar chart of an :class:`~deconvnet_attr.ablation.AccuracyTable`.

    One group of bars per configuration (intact, each ablation), one bar per top-k accuracy
    (in %), the value printed above each bar.
    """
    names = [name for name, _ in table.rows]
    topk = table.topk
    width = 0.8 / len(topk)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 1.5), 3.2), layout="constrained")
    positions = np.arange(len(names))
    for i, k in enumerate(topk):
        values = [acc[k] for _, acc in table.rows]
        offset = (i - (len(topk) - 1) / 2) * width
        bars = ax.bar(positions + offset, values, width, label=f"top-{k}")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(positions, names, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 108)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    if title:
        ax.set_title(title, fontsize=9, wrap=True)
    return fig


def contrast_stretch(projections: Tensor, percentile: float = 99.5) -> np.ndarray:
    """Projections ``(N, C, H, W)`` (C = 1 or 3) → display images in [0, 1], each on its own scale.

    The paper contrast-normalises every projection for display. Here zero maps to mid-grey and
    ``±`` the ``percentile``-th percentile of the image's absolute values to 0 and 1 (clipped), so
    colours keep their sign and the grey background is comparable across images. Returns
    ``(N, H, W)`` for one channel (show with a grey colour map), ``(N, H, W, 3)`` for three.
    """
    x = _channels_last(projections, "projections").astype(np.float64)
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    flat = np.abs(x.reshape(len(x), -1))
    scale = np.percentile(flat, percentile, axis=1) if flat.shape[1] else np.zeros(len(x))
    scale = np.where(scale > 0, scale, 1.0).reshape(-1, *([1] * (x.ndim - 1)))
    return np.clip(0.5 + 0.5 * x / scale, 0.0, 1.0)


def image_display(images: Tensor) -> np.ndarray:
    """Images ``(N, C, H, W)`` (C = 1 or 3) → ``(N, H, W[, 3])`` clipped to [0, 1], for display.

    NaN pixels (outside the image, see :func:`~deconvnet_attr.mining.receptive_field_patches`)
    stay NaN and are drawn as background.
    """
    return np.clip(_channels_last(images, "images"), 0.0, 1.0)


def _channels_last(images: Tensor, name: str) -> np.ndarray:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a (N, C, H, W) tensor with C = 1 or 3, got {shape}")
    x = images.detach().to("cpu", torch.float64).numpy()
    return x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1)


def _show(ax, image: np.ndarray) -> None:
    ax.set_axis_on()
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def plot_feature_grid(
    projections: Sequence[Tensor],
    patches: Sequence[Tensor],
    labels: Sequence[str] | None = None,
    title: str | None = None,
    blocks_per_row: int = 4,
    percentile: float = 99.5,
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

    Each channel is a block: a square grid of its projections (left) and of its patches (right),
    strongest activation first (row-major).
    """
    if len(projections) != len(patches) or not projections:
        raise ValueError(
            f"need the same non-zero number of projection and patch sets, got {len(projections)} "
            f"and {len(patches)}"
        )
    if labels is not None and len(labels) != len(projections):
        raise ValueError(f"{len(labels)} labels for {len(projections)} channels")
    k = max(len(p) for p in projections)
    side = int(np.ceil(np.sqrt(k)))
    blocks = min(blocks_per_row, len(projections))
    block_rows = -(-len(projections) // blocks)
    cell = 0.5
    fig = Figure(
        figsize=(blocks * (2 * side + 0.4) * cell + 0.2, block_rows * (side + 0.5) * cell + 0.4),
        layout="constrained",
    )
    subfigs = np.atleast_2d(fig.subfigures(block_rows, blocks, wspace=0.02, hspace=0.02))
    for b, (proj, patch) in enumerate(zip(projections, patches, strict=True)):
        if len(proj) != len(patch):
            raise ValueError(f"channel block {b}: {len(proj)} projections but {len(patch)} patches")
        sub = subfigs[b // blocks, b % blocks]
        sub.set_edgecolor("0.75")
        sub.set_linewidth(1.0)
        axes = sub.subplots(side, 2 * side + 1, squeeze=False,
                            gridspec_kw={"width_ratios": [1] * side + [0.3] + [1] * side})
        for ax in axes.flat:
            ax.set_axis_off()
        shown = contrast_stretch(proj, percentile), image_display(patch)
        for j in range(len(proj)):
            r, c = divmod(j, side)
            _show(axes[r, c], shown[0][j])
            _show(axes[r, side + 1 + c], shown[1][j])
        if labels is not None:
            sub.suptitle(labels[b], fontsize=8)
    for empty in subfigs.flat[len(projections):]:
        empty.set_edgecolor("none")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


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
