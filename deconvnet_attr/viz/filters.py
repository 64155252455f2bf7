"""Figures of convolution filters for the paper's Fig. 6: first-layer weights as image tiles and
second-layer features as their strongest deconvnet projections, several models side by side.

Functions return a :class:`matplotlib.figure.Figure` and draw tensors from the public API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from .common import contrast_stretch

__all__ = ["filter_mosaic", "plot_filter_panels", "weight_tiles"]


def weight_tiles(weight: Tensor) -> np.ndarray:
    """Filters ``(F, C, k, k)`` (C = 1 or 3) → ``(F, k, k[, 3])`` in [0, 1], each on its own scale.

    As the paper shows conv1: every filter is contrast-stretched from its own minimum (0) to its
    maximum (1); a constant filter (no contrast to stretch) is drawn mid-grey.
    """
    if not isinstance(weight, Tensor) or weight.dim() != 4 or weight.shape[1] not in (1, 3):
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a (F, C, k, k) tensor with C = 1 or 3, got {shape}")
    w = weight.detach().cpu().double().numpy()
    low = w.min(axis=(1, 2, 3), keepdims=True)
    span = w.max(axis=(1, 2, 3), keepdims=True) - low
    tiles = np.where(span > 0, (w - low) / np.where(span > 0, span, 1.0), 0.5)
    return tiles[:, 0] if w.shape[1] == 1 else tiles.transpose(0, 2, 3, 1)


def filter_mosaic(
    tiles: np.ndarray, columns: int = 8, gap: int = 1, dead: Sequence[bool] | None = None
) -> np.ndarray:
    """Tiles ``(F, h, w)`` in [0, 1] → one RGB mosaic ``(rows*(h+gap)+gap, ...)``, row-major.

    Gaps are white; a tile flagged in ``dead`` gets a red frame (drawn in its gap) so dead filters
    stand out as in the paper's Fig. 6 annotations.
    """
    if tiles.ndim == 3:
        tiles = np.repeat(tiles[..., None], 3, axis=-1)
    count, h, w = tiles.shape[:3]
    rows = -(-count // columns)
    mosaic = np.ones((rows * (h + gap) + gap, columns * (w + gap) + gap, 3))
    for f in range(count):
        r, c = divmod(f, columns)
        top, left = gap + r * (h + gap), gap + c * (w + gap)
        if dead is not None and dead[f] and gap:
            mosaic[top - gap : top + h + gap, left - gap : left + w + gap] = (0.85, 0.1, 0.1)
        mosaic[top : top + h, left : left + w] = tiles[f]
    return mosaic


def plot_filter_panels(
    conv1: Mapping[str, Tensor],
    conv2_projections: Mapping[str, Tensor] | None = None,
    dead: Mapping[str, Sequence[bool]] | None = None,
    captions: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Figure:
    """Fig. 6: per model (a column), conv1 weights as tiles and, below, conv2's top projections.

    Args:
        conv1: ``{model label: conv1 weight (F, C, k, k)}``, drawn with :func:`weight_tiles`.
        conv2_projections: ``{label: (F2, C, h, w)}`` deconvnet projections of each conv2 channel's
            strongest unit, cropped to its receptive field; contrast-stretched symmetrically around
            zero (:func:`~deconvnet_attr.viz.contrast_stretch`). Same keys as ``conv1``.
        dead: ``{label: (F,) bools}`` conv1 filters to frame in red.
        captions: a line under each column (e.g. accuracy and aliasing score).
        title: figure title.
    """
    labels = list(conv1)
    if not labels:
        raise ValueError("conv1 must hold at least one model's weights")
    for name, other in (("conv2_projections", conv2_projections), ("dead", dead)):
        if other is not None and set(other) != set(labels):
            raise ValueError(f"{name} has keys {sorted(other)}, conv1 has {sorted(labels)}")
    mosaics = [
        [
            filter_mosaic(weight_tiles(conv1[label]), dead=None if dead is None else dead[label])
            for label in labels
        ]
    ]
    if conv2_projections is not None:
        mosaics.append([filter_mosaic(contrast_stretch(conv2_projections[x])) for x in labels])
    aspects = [max(m.shape[0] / m.shape[1] for m in row) for row in mosaics]
    fig = Figure(
        figsize=(3.2 * len(labels), 3.2 * sum(aspects) + 0.6 * len(mosaics) + 0.5),
        layout="constrained",
    )
    axes = fig.subplots(len(mosaics), len(labels), squeeze=False, height_ratios=aspects)
    for col, label in enumerate(labels):
        axes[0, col].imshow(mosaics[0][col], interpolation="nearest")
        axes[0, col].set_title(f"{label}\nconv1 {tuple(conv1[label].shape[-2:])}", fontsize=8)
        if conv2_projections is not None:
            axes[1, col].imshow(mosaics[1][col], interpolation="nearest")
            axes[1, col].set_title("conv2: top projection per channel", fontsize=8)
        if captions is not None:
            axes[-1, col].set_xlabel(captions[label], fontsize=8)
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
