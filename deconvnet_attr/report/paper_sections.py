"""The report's sections on the paper's own experiments, which use their own shipped models or
results rather than the report's model: Fig. 6 (the stems), Table 3 retrained, and transfer
(Tables 4-7, Fig. 9).

Builders as in :mod:`.sections`: ``builder(ctx, mined) -> Section | None``. They apply to the
bundled Fashion-MNIST data (28 px grey images with the Fashion-MNIST labels) and are left out of
``--quick`` smoke reports (they measure four extra models or fit many classifiers).
"""

from __future__ import annotations

from deconvnet_attr.data import FASHION_MNIST_CLASSES
from deconvnet_attr.fig6 import fig6_summary, load_fig6_models

from .context import Mined, ReportContext, Section
from .html import paragraph, record_table

__all__ = ["fig6_section", "on_fashion_mnist"]


def on_fashion_mnist(ctx: ReportContext) -> bool:
    """Whether ``ctx.data`` is labelled 28x28 grey Fashion-MNIST (the data of the paper
    experiments' shipped models)."""
    return (
        ctx.has_labels
        and tuple(ctx.class_names or ()) == FASHION_MNIST_CLASSES
        and tuple(ctx.data[0][0].shape) == (1, 28, 28)
    )


def fig6_section(ctx: ReportContext, mined: Mined) -> Section | None:
    """Fig. 6: AlexNet's 11x11/4 stem against ZFNet's 7x7/2, feature-scale clipping on and off.

    The four shipped models (:func:`~deconvnet_attr.fig6.load_fig6_models`, no training) measured
    on the report's images upsampled 4x to 112 px (:func:`~deconvnet_attr.fig6.fig6_summary`).
    ``None`` unless the data is Fashion-MNIST, or in quick mode.
    """
    if ctx.quick or not on_fashion_mnist(ctx):
        return None
    images, labels = ctx.images()
    figure, table = fig6_summary(load_fig6_models(), images, labels)
    intro = paragraph(
        "The paper's Fig. 6 experiment at Fashion-MNIST scale (docs/fig6.md): four small ZFNets, "
        "identical after conv2, trained for one epoch with the same recipe on Fashion-MNIST "
        "upsampled 4x to 112 px — AlexNet's 11×11 stride-4 first layer against ZFNet's 7×7 "
        "stride-2, each with feature-scale clipping (filter RMS capped at 0.1) on and off. "
        f"Measured on these {table.images:,} images (upsampled the same way): accuracy; dead "
        "conv1 / conv2 filters (structure or response spread at most 0.1x the layer's median); "
        "the conv1 aliasing score (the fraction of filter energy above the stride's Nyquist "
        "frequency; a white-noise filter's in brackets); and how much the spatially averaged "
        "relu2 response changes under 1-8 px input shifts (aliasing in layer 2, measured)."
    )
    caption = paragraph(
        "Top: conv1 filters (dead ones framed red). Bottom: each conv2 channel's strongest "
        "activation over the images, projected by the deconvnet and cut to its receptive field. "
        "The stride-4 stem aliases more (higher score, larger shift change), as the paper found; "
        "dead first-layer filters and an accuracy gap do not appear at this budget."
    )
    figure_tag = ctx.save(figure, "fig6-stems.png", "Fig. 6 filters of the four stems")
    return Section(
        "Architecture selection by visualisation (Fig. 6)",
        intro + record_table(table) + figure_tag + caption,
    )
