"""The guided-backpropagation comparison figure: for the same images and class, the plain
gradient, the deconvnet projection, guided backpropagation and Guided Grad-CAM side by side.

:func:`guided_comparison_maps` computes the four maps with the public API;
:func:`plot_guided_comparison` draws them (one row per image); :func:`guided_comparison_figure`
does both, the figure the report's section and ``docs/guided.md`` show.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from captum.attr import Saliency
from matplotlib.figure import Figure
from torch import Tensor, nn

from deconvnet_attr.deconv import Deconvolution
from deconvnet_attr.guided import GuidedBackprop, GuidedGradCam
from deconvnet_attr.state import preserved_state
from deconvnet_attr.taps import LayerSpec, resolve_layer

from .common import _show, contrast_stretch, image_display

__all__ = ["METHODS", "guided_comparison_figure", "guided_comparison_maps", "last_conv_layer"]

#: The columns of the comparison, in order.
METHODS = ("gradient", "deconvnet", "guided backprop", "guided Grad-CAM")


def last_conv_layer(model: nn.Module) -> str:
    """Dotted name of the model's last ``nn.Conv2d`` (in ``named_modules`` order): the usual
    Grad-CAM layer. Raises ValueError when the model has none."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer for Grad-CAM")
    return names[-1]


def guided_comparison_maps(
    model: nn.Module, images: Tensor, layer: LayerSpec, targets: Tensor | None = None
) -> dict[str, Tensor]:
    """The four attribution maps of ``images`` (N, C, H, W) for ``targets`` (N,) (default: the
    predicted class), each (N, C, H, W), keyed by :data:`METHODS`. Grad-CAM of ``layer``
    (module or dotted name), upsampled bilinearly as in the Grad-CAM paper. The model's state
    (training flag included) is left as it was; it is evaluated in eval mode."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (N, C, H, W) tensor, got {shape}")
    resolve_layer(model, layer)
    with preserved_state(model):
        model.eval()
        if targets is None:
            with torch.no_grad():
                targets = model(images).argmax(1)
        target = targets.tolist()
        return {
            "gradient": Saliency(model).attribute(images, target=target, abs=False),
            "deconvnet": Deconvolution(model).attribute(images, target=target),
            "guided backprop": GuidedBackprop(model).attribute(images, target=target),
            "guided Grad-CAM": GuidedGradCam(model, layer).attribute(
                images, target=target, interpolate_mode="bilinear"
            ),
        }


def plot_guided_comparison(
    images: Tensor,
    maps: dict[str, Tensor],
    labels: list[str] | None = None,
    title: str | None = None,
) -> Figure:
    """One row per image: the image, then each map of ``maps`` (columns in its order), each map
    contrast-stretched on its own scale (grey = 0). ``labels`` name the rows."""
    n, columns = len(images), ["image", *maps]
    fig, axes = plt.subplots(
        n, len(columns), figsize=(1.6 * len(columns), 1.6 * n + 0.4), squeeze=False
    )
    shown = [image_display(images)] + [contrast_stretch(m.detach()) for m in maps.values()]
    for row in range(n):
        for col, name in enumerate(columns):
            ax = axes[row, col]
            _show(ax, shown[col][row])
            if row == 0:
                ax.set_title(name, fontsize=8)
            if col == 0 and labels:
                ax.set_ylabel(labels[row], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def guided_comparison_figure(
    model: nn.Module,
    images: Tensor,
    layer: LayerSpec | None = None,
    targets: Tensor | None = None,
    class_names: tuple[str, ...] | None = None,
    title: str | None = None,
) -> Figure:
    """Gradient vs deconvnet vs guided backprop vs Guided Grad-CAM for ``images`` (N, C, H, W)
    in [0, 1]; ``layer`` defaults to :func:`last_conv_layer`. Rows are labelled with the class
    each map explains (``class_names`` when given)."""
    layer = last_conv_layer(model) if layer is None else layer
    with preserved_state(model):
        model.eval()
        if targets is None:
            with torch.no_grad():
                targets = model(images).argmax(1)
    maps = guided_comparison_maps(model, images, layer, targets)
    labels = [class_names[int(t)] if class_names else f"class {int(t)}" for t in targets]
    return plot_guided_comparison(images, maps, labels, title)
