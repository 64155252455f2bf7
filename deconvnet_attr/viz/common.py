"""Display scaling shared by the figures: projections contrast-stretched around 0, images clipped
to [0, 1], one tile drawn without axes."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["contrast_stretch", "image_display", "tile_grid"]


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


def tile_grid(tiles: np.ndarray, gap_value: float = 1.0) -> np.ndarray:
    """Display tiles ``(n, H, W)`` or ``(n, H, W, 3)`` in [0, 1] → one image, the tiles row-major
    in a square grid of ``ceil(sqrt(n))`` columns, 1 pixel of ``gap_value`` (white) between them
    and in unused cells."""
    if tiles.ndim not in (3, 4) or not len(tiles):
        raise ValueError(f"tiles must be (n, H, W) or (n, H, W, 3) with n > 0, got {tiles.shape}")
    n, h, w = tiles.shape[:3]
    side = int(np.ceil(np.sqrt(n)))
    rows = -(-n // side)
    grid = np.full((rows * (h + 1) - 1, side * (w + 1) - 1, *tiles.shape[3:]), gap_value)
    for j in range(n):
        r, c = divmod(j, side)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = tiles[j]
    return grid
