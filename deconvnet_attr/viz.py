"""Matplotlib figures: projection grids, occlusion panels, invariance curves, correspondence and
accuracy bar charts.

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

from .analysis.invariance import transform_images

if TYPE_CHECKING:
    from .ablation import AccuracyTable
    from .analysis.correspondence import CorrespondenceTable
    from .analysis.invariance import InvarianceCurve, InvarianceResult
    from .occlusion import OcclusionMaps


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
    colours keep their sign and the grey background is comparable across images. NaN pixels
    (outside the image) are ignored and stay NaN. Returns
    ``(N, H, W)`` for one channel (show with a grey colour map), ``(N, H, W, 3)`` for three.
    """
    x = _channels_last(projections, "projections").astype(np.float64)
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    flat = np.abs(x.reshape(len(x), -1))
    if flat.shape[1] and not np.isnan(flat).all(axis=1).any():
        scale = np.nanpercentile(flat, percentile, axis=1)
    else:  # an empty or all-NaN projection: nothing to scale
        scale = np.ones(len(x))
    scale = np.where(scale > 0, scale, 1.0).reshape(-1, *([1] * (x.ndim - 1)))
    return np.clip(0.5 + 0.5 * x / scale, 0.0, 1.0)


def image_display(images: Tensor) -> np.ndarray:
    """Images ``(N, C, H, W)`` (C = 1 or 3) → ``(N, H, W[, 3])`` clipped to [0, 1], for display.

    NaN pixels (outside the image, see :func:`~deconvnet_attr.projection.receptive_field_patches`)
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
    ax.imshow(
        image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest"
    )
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
    blocks = [
        feature_block(proj, patch, percentile)
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
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def feature_block(projections: Tensor, patches: Tensor, percentile: float = 99.5) -> np.ndarray:
    """One channel's block of :func:`plot_feature_grid` as an RGBA image ``(H, W, 4)``.

    ``projections`` and ``patches`` are ``(k, C, h, w)``. The ``k`` contrast-stretched projections
    fill a square grid of ``side = ceil(sqrt(k))`` tiles, row-major, tiles 1 pixel apart; a gap of
    ``w`` pixels; then the patches in the same arrangement. Gaps and NaN pixels (outside the
    image) are transparent.
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
            block[top : top + h, col : col + w, :3] = np.nan_to_num(rgb[j])
            block[top : top + h, col : col + w, 3] = ~np.isnan(rgb[j]).any(axis=-1)
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


def plot_occlusion_maps(
    image: Tensor,
    maps: OcclusionMaps,
    class_names: Sequence[str] | None = None,
    projection: Tensor | None = None,
    title: str | None = None,
) -> Figure:
    """The paper's Fig. 7 panels for one image from :func:`~deconvnet_attr.occlusion_maps`.

    (a) the image with the occluder at its first position; (b) total activation of the layer's
    strongest feature map; (c) optional: that map's deconvnet ``projection`` ``(C, H, W)``;
    (d) probability of the target class; (e) most probable class -- each as a function of the
    occluder's position (drawn at the occluder's centre). ``image`` is ``(C, H, W)`` in [0, 1]
    (C = 1 or 3); ``class_names`` label classes in (d) and (e).
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
        (f"(b) total activation,\n{maps.layer} map {maps.channel}", maps.feature, "viridis"),
        (f"(d) p({name(maps.target)})", maps.probability, "magma"),
    ]
    at = 1
    for label, values, cmap in heat:
        if at == 2 and projection is not None:
            _show(axes[at], contrast_stretch(projection.unsqueeze(0))[0])
            axes[at].set_title(f"(c) projection of map {maps.channel}", fontsize=8)
            at += 1
        im = axes[at].imshow(values.numpy(), cmap=cmap, extent=extent, interpolation="nearest")
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


def plot_invariance(
    result: InvarianceResult,
    images: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    example: int = 0,
) -> Figure:
    """Figure in the layout of the paper's Fig. 5: one column per transform.

    Rows: (optional) five transformed versions of ``images[example]``, then one row per layer with
    the feature distance against the transform parameter, then the true-class probability. One line
    per image, labelled with its class (``class_names[label]`` when given). Returns a matplotlib
    ``Figure``.
    """
    transforms = list(result.curves)
    rows = len(result.layers) + 1 + (images is not None)
    ratios = [0.6] * (images is not None) + [1.0] * (rows - (images is not None))
    fig, axes = plt.subplots(
        rows,
        len(transforms),
        figsize=(4.2 * len(transforms), 2.8 * sum(ratios)),
        squeeze=False,
        gridspec_kw={"height_ratios": ratios},
    )
    units = {
        "translation": "vertical shift (px)",
        "scale": "scale factor",
        "rotation": "rotation (degrees)",
    }
    labels = [class_names[int(c)] if class_names else f"class {int(c)}" for c in result.labels]
    for col, name in enumerate(transforms):
        curve = result.curves[name]
        row = 0
        if images is not None:
            _draw_strip(axes[0, col], images[example : example + 1], curve, result.fill)
            row = 1
        panels = [(f"{layer}: ‖x − x'‖₂", curve.distances[layer]) for layer in result.layers]
        panels.append(("P(true class)", curve.probability))
        for title, data in panels:
            ax = axes[row, col]
            for i, line in enumerate(data):
                ax.plot(curve.values.numpy(), line.numpy(), marker=".", ms=3, label=labels[i])
            ax.set_ylabel(title)
            ax.grid(alpha=0.3)
            row += 1
        axes[-1, col].set_xlabel(units[name])
        axes[-1, col].set_ylim(-0.02, 1.02)
    axes[-1, -1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _draw_strip(ax, image: Tensor, curve: InvarianceCurve, fill: Sequence[float]) -> None:
    """Five evenly spaced transformed versions of one image side by side on ``ax``."""
    picks = torch.linspace(0, len(curve.values) - 1, min(5, len(curve.values))).round().long()
    tiles = [
        transform_images(image, curve.transform, float(curve.values[i]), fill)[0] for i in picks
    ]
    strip = np.concatenate(list(image_display(torch.stack(tiles))), axis=1)  # side by side
    ax.imshow(strip, cmap="gray", vmin=0, vmax=1)
    width = tiles[0].shape[-1]
    ax.set_xticks([width * (k + 0.5) for k in range(len(tiles))])
    ax.set_xticklabels([f"{float(curve.values[i]):g}" for i in picks])
    ax.set_yticks([])
    ax.set_title(curve.transform)


def plot_correspondence(
    table: CorrespondenceTable,
    images: Tensor | None = None,
    labels: Tensor | None = None,
) -> Figure:
    """Bar chart of Δ (mean ± std) per part and layer: part vs the two random controls.

    With ``images`` / ``labels`` (the data set the table was computed on) a top row shows the first
    image of each part's class with the part's box outlined. Returns a matplotlib ``Figure``.
    """
    n_parts, n_layers = len(table.parts), len(table.layers)
    show = images is not None and labels is not None
    fig = plt.figure(figsize=(max(8.0, 1.6 * n_parts), 3.4 * n_layers + 1.8 * show))
    grid = fig.add_gridspec(n_layers + show, n_parts, height_ratios=[1.0] * show + [2.0] * n_layers)
    if show:
        for p, part in enumerate(table.parts):
            ax = fig.add_subplot(grid[0, p])
            index = int((labels == part.label).nonzero()[0])
            ax.imshow(image_display(images[index : index + 1])[0], cmap="gray", vmin=0, vmax=1)
            x0, y0, x1, y1 = part.pixels(*images.shape[-2:])
            box = plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="red")
            ax.add_patch(box)
            ax.set_title(part.name, fontsize=8)
            ax.axis("off")
    x = torch.arange(n_parts, dtype=torch.float32)
    kinds = (
        ("part", table.part),
        ("random box", table.random),
        ("shared random box", table.shared),
    )
    for col, layer in enumerate(table.layers):
        ax = fig.add_subplot(grid[show + col, :])
        for k, (label, data) in enumerate(kinds):
            values = data[:, :, col]
            ax.bar(
                (x + (k - 1) * 0.27).numpy(),
                values.mean(1).numpy(),
                0.27,
                yerr=values.std(1, correction=0).numpy(),
                capsize=2,
                label=label,
            )
        ax.set_xticks(x.numpy())
        ax.set_xticklabels([p.name for p in table.parts], fontsize=8)
        ax.set_ylabel(f"{layer}: Δ (lower = consistent)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
