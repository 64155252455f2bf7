"""The report's sections on the whole model: invariance (Fig. 5), occlusion (Fig. 7), the
correspondence analysis (Sec. 5.3) and layer ablation.

Builders as in :mod:`.sections`: ``builder(ctx, mined) -> Section | None``; these do not use the
mined top activations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deconvnet_attr.ablation import PAPER_GROUPS, ablation_study
from deconvnet_attr.analysis.correspondence import correspondence_table, part_images
from deconvnet_attr.analysis.invariance import default_transforms, invariance_curves
from deconvnet_attr.deconv import DeconvProjection
from deconvnet_attr.occlusion import occlusion_maps
from deconvnet_attr.taps import LayerError, Taps, resolve_layer
from deconvnet_attr.viz import (
    plot_accuracy_table,
    plot_correspondence,
    plot_invariance,
    plot_occlusion_maps,
)

from .context import Mined, ReportContext, Section
from .html import paragraph, record_table

__all__ = ["ablation_section", "correspondence_section", "invariance_section", "occlusion_section"]


def _has_layer(model: nn.Module, name: str) -> bool:
    try:
        resolve_layer(model, name)
    except LayerError:
        return False
    return True


def _low_high_layers(ctx: ReportContext, low: str, high: str) -> list[str]:
    """The paper's pair of layers when the model has them, else the first and last analysed."""
    if _has_layer(ctx.model, low) and _has_layer(ctx.model, high):
        return [low, high]
    return list(dict.fromkeys([ctx.layers[0], ctx.layers[-1]]))


def _one_per_class(ctx: ReportContext, count: int) -> tuple[Tensor, Tensor]:
    """Up to ``count`` images of different classes (the first of each), with their labels.

    Without known labels: the first ``count`` images, labelled with the model's prediction.
    Memory: ``count`` images and one batch, whatever the data-set size.
    """
    if ctx.has_labels:
        return ctx.first_per_class(count)
    images, _ = ctx.images(count)
    device = next(ctx.model.parameters()).device
    with torch.no_grad():
        predicted = ctx.model(images.to(device)).argmax(1).cpu()
    return images, predicted


def invariance_section(ctx: ReportContext, mined: Mined) -> Section:
    """Fig. 5: feature distance and true-class probability under translation, scale, rotation."""
    images, labels = _one_per_class(ctx, 2 if ctx.quick else 5)
    layers = _low_high_layers(ctx, "conv1", "fc7")
    steps = default_transforms(images.shape[-2])
    if ctx.quick:
        steps = {name: values[::4] for name, values in steps.items()}
    result = invariance_curves(
        ctx.model, images, labels, layers, transforms=steps, batch_size=ctx.batch_size
    )
    fig = plot_invariance(result, images, ctx.class_names if ctx.has_labels else None)
    intro = paragraph(
        f"{len(images)} images, each shifted vertically, scaled and rotated step by step. Rows: "
        f"the Euclidean distance between the {' and '.join(layers)} feature vectors of the "
        "original and the transformed image, then the probability of the "
        + ("true class." if ctx.has_labels else "class predicted for the original image.")
        + " Small distances at the upper layer mean an invariant representation."
    )
    return Section(
        "Invariance (Fig. 5)", intro + ctx.save(fig, "fig5-invariance.png", "invariance curves")
    )


def occlusion_section(ctx: ReportContext, mined: Mined) -> Section:
    """Fig. 7: a grey square slid over three images; feature, probability and label maps."""
    images, labels = _one_per_class(ctx, 1 if ctx.quick else 3)
    # ZFNet: the rectified layer-5 maps
    layer = "relu5" if _has_layer(ctx.model, "relu5") else ctx.layers[-1]
    height = images.shape[-2]
    window, stride = max(1, height // 4), max(1, height // 14)
    grey = float(images.mean())  # the data's mean intensity, as the paper's grey square
    device = next(ctx.model.parameters()).device
    body = [
        paragraph(
            f"A {window}×{window} square of the images' mean grey slides over each image (stride "
            f"{stride}). (b) total activation of the {layer} feature map that is strongest on the "
            "unoccluded image, (c) that map's strongest activation projected by the deconvnet, "
            "(d) probability of the "
            + ("true" if ctx.has_labels else "predicted")
            + " class, (e) most probable class — each as a function of the square's position. "
            "The probability drops where the square hides the part the feature map responds to."
        )
    ]
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        maps = occlusion_maps(
            ctx.model,
            image.to(device),
            window,
            stride,
            layer,
            target=int(label),
            baseline=grey,
            perturbations_per_eval=ctx.batch_size,
        )
        projection = (
            DeconvProjection(ctx.model, resolve_layer(ctx.model, layer)[1])
            .attribute(image[None].to(device), target=maps.channel, neuron="max")[0]
            .detach()
            .cpu()
        )
        fig = plot_occlusion_maps(image, maps, ctx.class_names, projection=projection)
        body.append(ctx.save(fig, f"fig7-occlusion-{i}.png", "occlusion maps"))
    return Section("Occlusion sensitivity (Fig. 7)", "\n".join(body))


def correspondence_section(ctx: ReportContext, mined: Mined) -> Section | None:
    """Sec. 5.3 / Table 1: Δ for the same part occluded in several images vs random boxes."""
    if not ctx.parts or not ctx.has_labels:
        return None
    title = "Correspondence analysis (Sec. 5.3, Table 1)"
    images, labels = ctx.images()
    showing = {part: len(part_images(images, labels, part)) for part in ctx.parts}
    usable = [part for part in ctx.parts if showing[part] >= 2][: 2 if ctx.quick else None]
    skipped = [f"{part.name} ({showing[part]})" for part in ctx.parts if showing[part] < 2]
    note = (
        "Skipped, fewer than 2 of the images show the part (count in brackets): "
        + ", ".join(skipped)
        + ". Use more images (--max-images) to include them."
        if skipped
        else ""
    )
    if not usable:
        return Section(title, paragraph(note))
    layers = _low_high_layers(ctx, "conv5", "fc7")
    table = correspondence_table(
        ctx.model,
        images,
        labels,
        layers,
        parts=usable,
        n_images=min(5, *(showing[part] for part in usable)),
        n_sets=1 if ctx.quick else 5,
        n_random=3 if ctx.quick else 10,
        batch_size=ctx.batch_size,
    )
    fig = plot_correspondence(table, images, labels)
    intro = paragraph(
        f"For each part, the same box is occluded in {table.n_images} images of its class and "
        "Δ = mean pairwise normalised Hamming distance between the signs of the feature changes "
        f"at {' and '.join(layers)} is computed (lower = more consistent change, i.e. the layer "
        "establishes a correspondence between the parts); controls: a random box of the same "
        "size per image, and one shared random box. Mean ± std over random image sets."
    )
    body = intro + record_table(table) + ctx.save(fig, "correspondence.png", "Δ per part")
    return Section(title, body + (paragraph(note) if note else ""))


def _topk(ctx: ReportContext) -> tuple[int, ...]:
    """Top-1 and top-5 accuracy, or top-1 alone for a model with fewer than 5 classes."""
    device = next(ctx.model.parameters()).device
    with torch.no_grad():
        classes = ctx.model(ctx.images(1)[0].to(device)).shape[-1]
    return tuple(k for k in (1, 5) if k <= classes)


def ablation_section(ctx: ReportContext, mined: Mined) -> Section | None:
    """Accuracy with layers' outputs replaced by their data-set mean (the paper's Table 3 groups
    for a ZFNet, else each analysed layer alone)."""
    if not ctx.has_labels:
        return None
    model = ctx.model
    if all(_has_layer(model, layer) for group in PAPER_GROUPS.values() for layer in group):
        names = {name: list(group) for name, group in PAPER_GROUPS.items()}
        which = "the layer groups the paper removes in Table 3"
    else:
        names = {layer: [layer] for layer in ctx.layers}
        which = "each analysed layer"
    groups = {name: [resolve_layer(model, n)[1] for n in group] for name, group in names.items()}
    topk = _topk(ctx)
    table = ablation_study(
        model,
        ctx.loader(),
        groups,
        baselines="mean",
        topk=topk,
        batch_size=ctx.batch_size,
        show_progress=ctx.progress,
    )
    fig = plot_accuracy_table(table, title="mean ablation")
    intro = paragraph(
        f"Top-k accuracy on the {table.n_examples:,} labelled images, intact and with {which} "
        "ablated: the output replaced by its mean over the data (no retraining). In a chain "
        "network a whole ablated layer makes every later activation constant, so the prediction "
        "is one class for every image (chance); the paper's Table 3 retrains each variant instead "
        "(deconvnet_attr.ablation.accuracy_table, docs/ablation.md)."
    )
    figure = ctx.save(fig, "ablation.png", "accuracy with each layer mean-ablated")
    return Section(
        "Layer ablation", intro + record_table(table) + figure + _removal_table(ctx, topk)
    )


def _removal_table(ctx: ReportContext, topk: tuple[int, ...]) -> str:
    """Accuracy with each analysed layer removed (passes its input through), for the layers whose
    input and output shapes match; empty when none does."""
    taps = Taps(ctx.model, ctx.layers, record_inputs=True)
    device = next(ctx.model.parameters()).device
    with torch.no_grad():
        captured = taps.run(lambda: ctx.model(ctx.images(1)[0].to(device)))
    groups = {
        f"remove {layer}": [module]
        for layer, tapped, (_, module) in zip(ctx.layers, taps.names, taps.resolved, strict=True)
        if isinstance(captured.inputs.get(tapped), Tensor)
        and captured.inputs[tapped].shape == captured.outputs[tapped].shape
    }
    if not groups:
        return ""
    table = ablation_study(
        ctx.model,
        ctx.loader(),
        groups,
        baselines="identity",
        topk=topk,
        batch_size=ctx.batch_size,
        show_progress=ctx.progress,
    )
    return paragraph(
        "Removing a layer instead (it passes its input through; only layers whose input and "
        "output shapes match), again without retraining:"
    ) + record_table(table)
