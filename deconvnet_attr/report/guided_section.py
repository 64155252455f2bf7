"""The report's guided-backpropagation section: gradient vs deconvnet vs guided backprop vs
Guided Grad-CAM for the same images (:func:`~deconvnet_attr.viz.guided.guided_comparison_figure`).

Builder as in :mod:`.sections`: ``builder(ctx, mined) -> Section | None``; it does not use the
mined top activations.
"""

from __future__ import annotations

import html

from deconvnet_attr.viz.guided import guided_comparison_figure, last_conv_layer

from .context import Mined, ReportContext, Section
from .html import paragraph
from .studies import examples_of_classes

__all__ = ["guided_comparison_section"]


def guided_comparison_section(ctx: ReportContext, mined: Mined) -> Section | None:
    """The four maps of a few images of different classes, for their true class (or the
    predicted one when labels are unknown); Grad-CAM of the model's last convolution.
    ``None`` for a model without one."""
    try:
        layer = last_conv_layer(ctx.model)
    except ValueError:
        return None
    images, targets = examples_of_classes(ctx, 3 if ctx.quick else 6)
    device = next(ctx.model.parameters()).device
    fig = guided_comparison_figure(
        ctx.model,
        images.to(device),
        layer,
        targets.to(device),
        ctx.class_names,
        title=ctx.model_name,
    )
    intro = paragraph(
        "For each image and its "
        + ("true" if ctx.has_labels else "predicted")
        + " class: the plain gradient; the deconvnet projection (relu* of the backward signal "
        "at every activation); guided backpropagation (the activation's true backward, "
        "rectified: relu(f'(x)·grad) at every activation, not only nn.ReLU modules); Guided "
        f"Grad-CAM (guided backpropagation times the rectified Grad-CAM map of "
        f"<code>{html.escape(layer)}</code>, upsampled bilinearly). Each map is contrast-"
        "stretched on its own scale, grey = 0."
    )
    return Section(
        "Gradient, deconvnet and guided backpropagation",
        intro + ctx.save(fig, "guided-comparison.png", "gradient vs deconvnet vs guided"),
    )
