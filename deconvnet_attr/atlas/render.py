"""Small images for the atlas: PNG tiles (Pillow) and inline SVG histograms.

Matplotlib figures cost tens of milliseconds each; an atlas has tens of thousands of images, so
tiles are written directly with Pillow and histograms are a few SVG rectangles in the page.
"""

from __future__ import annotations

import html
import os

import numpy as np
from PIL import Image

from .records import Histogram

__all__ = ["histogram_svg", "save_png"]


def save_png(image: np.ndarray, path: str | os.PathLike, size: int) -> tuple[int, int]:
    """Write ``image`` ``(H, W)`` (grey) or ``(H, W, 3)`` in [0, 1] as a PNG about ``size`` px.

    NaN pixels (outside the input image) become transparent. A small image is enlarged by the
    largest integer factor that keeps its longer side <= ``size`` (nearest neighbour: pixels stay
    sharp); a larger one is shrunk to ``size`` (box filter). Returns the written ``(width,
    height)``.
    """
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {image.shape}")
    missing = np.isnan(image) if image.ndim == 2 else np.isnan(image).any(axis=2)
    pixels = np.round(np.nan_to_num(np.clip(image, 0.0, 1.0)) * 255).astype(np.uint8)
    if missing.any():
        alpha = np.where(missing, 0, 255).astype(np.uint8)
        pixels = np.dstack([pixels, alpha])
        picture = Image.fromarray(pixels, "LA" if image.ndim == 2 else "RGBA")
    else:
        picture = Image.fromarray(pixels, "L" if image.ndim == 2 else "RGB")
    height, width = image.shape[:2]
    longest = max(height, width)
    if longest <= size:
        factor = max(1, size // longest)
        picture = picture.resize((width * factor, height * factor), Image.Resampling.NEAREST)
    else:
        scale = size / longest
        shape = (max(1, round(width * scale)), max(1, round(height * scale)))
        picture = picture.resize(shape, Image.Resampling.BOX)
    picture.save(path, optimize=False, compress_level=3)
    return picture.size


def histogram_svg(
    histogram: Histogram, mark: float | None = None, width: int = 360, height: int = 120
) -> str:
    """An inline ``<svg>`` bar chart of ``histogram``; ``mark`` draws a vertical line (e.g. at
    the k-th strongest activation). The counts and edges are kept in ``data-counts`` /
    ``data-edges`` attributes, each bar has a tooltip."""
    counts, edges = histogram.counts, histogram.edges
    left, bottom, top = 4, 18, 4
    plot_w, plot_h = width - 2 * left, height - bottom - top
    low, high = float(edges[0]), float(edges[-1])
    span = high - low if high > low else 1.0
    tallest = max(int(counts.max()), 1)

    def x(value: float) -> float:
        return left + (value - low) / span * plot_w

    bars = []
    for b, count in enumerate(counts.tolist()):
        x0, x1 = x(float(edges[b])), x(float(edges[b + 1]))
        h = plot_h * count / tallest
        tip = f"[{edges[b]:.4g}, {edges[b + 1]:.4g}): {count} images"
        bars.append(
            f'<rect x="{x0:.2f}" y="{top + plot_h - h:.2f}" width="{max(x1 - x0 - 0.5, 0.5):.2f}" '
            f'height="{h:.2f}"><title>{html.escape(tip)}</title></rect>'
        )
    marker = ""
    if mark is not None and low <= mark <= high:
        xm = x(mark)
        marker = f'<line class="mark" x1="{xm:.2f}" x2="{xm:.2f}" y1="{top}" y2="{top + plot_h}"/>'
    counts_attr = ",".join(str(int(c)) for c in counts)
    edges_attr = ",".join(repr(float(e)) for e in edges)
    axis = (
        f'<text x="{left}" y="{height - 4}">{low:.4g}</text>'
        f'<text x="{width - left}" y="{height - 4}" text-anchor="end">{high:.4g}</text>'
        f'<text x="{width / 2}" y="{height - 4}" text-anchor="middle">max activation per image'
        "</text>"
    )
    return (
        f'<svg class="histogram" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'data-counts="{counts_attr}" data-edges="{edges_attr}" role="img" '
        f'aria-label="histogram of the channel\'s activation">{"".join(bars)}{marker}{axis}</svg>'
    )
