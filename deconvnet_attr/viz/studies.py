"""Figures of the whole-model studies: Fig. 5 invariance curves, the correspondence bars
(Table 1) and ablation accuracy bars (Table 3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from deconvnet_attr.analysis.invariance import transform_images

from .common import image_display

if TYPE_CHECKING:
    from deconvnet_attr.ablation import AccuracyTable
    from deconvnet_attr.analysis.correspondence import CorrespondenceTable
    from deconvnet_attr.analysis.invariance import InvarianceCurve, InvarianceResult

__all__ = ["plot_accuracy_table", "plot_correspondence", "plot_invariance"]


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


def plot_invariance(
    result: InvarianceResult,
    images: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    example: int = 0,
    all_strips: bool = False,
) -> Figure:
    """Figure in the layout of the paper's Fig. 5: one column per transform.

    Rows: (optional) five transformed versions of ``images[example]`` -- or, with
    ``all_strips``, of every image, one row each, as the paper shows all five of its images --
    then one row per layer with the feature distance against the transform parameter, then the
    true-class probability. One line per image, labelled with its class (``class_names[label]``
    when given). Returns a matplotlib ``Figure``.
    """
    transforms = list(result.curves)
    strips = [] if images is None else list(range(len(images))) if all_strips else [example]
    shown = images if images is not None else torch.empty(0)
    rows = len(result.layers) + 1 + len(strips)
    ratios = [0.6] * len(strips) + [1.0] * (rows - len(strips))
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
        for row, i in enumerate(strips):
            _draw_strip(axes[row, col], shown[i : i + 1], curve, result.fill)
            if all_strips and col == 0:
                axes[row, 0].set_ylabel(labels[i], fontsize=8)
            if row:
                axes[row, col].set_title("")
        row = len(strips)
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
    if images is not None and labels is not None:
        for p, part in enumerate(table.parts):
            ax = fig.add_subplot(grid[0, p])
            index = int(torch.nonzero(labels == part.label)[0])
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
