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
from deconvnet_attr.analysis.invariance import (
    FASHION_MNIST_FIG5_CLASSES,
    default_transforms,
    first_of_classes,
    invariance_curves,
)
from deconvnet_attr.data import FASHION_MNIST_CLASSES
from deconvnet_attr.deconv import DeconvProjection
from deconvnet_attr.mining import TopActivations, top_activations
from deconvnet_attr.occlusion import OcclusionMaps, occlusion_maps
from deconvnet_attr.taps import LayerError, Taps, resolve_layer
from deconvnet_attr.viz import (
    plot_accuracy_table,
    plot_correspondence,
    plot_invariance,
    plot_occlusion_maps,
)

from .context import Mined, ReportContext, Section
from .html import paragraph, record_table

__all__ = [
    "ablation_section",
    "correspondence_section",
    "invariance_section",
    "occlusion_examples",
    "occlusion_section",
]


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


def examples_of_classes(ctx: ReportContext, count: int) -> tuple[Tensor, Tensor]:
    """Up to ``count`` images of different classes (the first of each): on Fashion-MNIST those of
    :data:`FASHION_MNIST_FIG5_CLASSES` (the docs' images), else the first ``count`` classes met
    while streaming the data, with their labels. Without known labels: the first ``count``
    images, labelled with the model's prediction. Memory: ``count`` images and one batch, except
    on the (small) Fashion-MNIST data, which is held whole to pick the docs' classes."""
    if ctx.has_labels:
        if tuple(ctx.class_names or ()) == FASHION_MNIST_CLASSES:
            images, labels = ctx.images()
            picks = first_of_classes(labels, FASHION_MNIST_FIG5_CLASSES, count)
            return images[picks[:count]], labels[picks[:count]]
        return ctx.first_per_class(count)
    images, _ = ctx.images(count)
    device = next(ctx.model.parameters()).device
    with torch.no_grad():
        predicted = ctx.model(images.to(device)).argmax(1).cpu()
    return images, predicted


FIG5_MAX_SHIFTS = 41
"""Fig. 5's most vertical shifts: the default grid (every pixel of ±27 % of the height) is
thinned to every ``n``-th pixel beyond this many (e.g. every 3rd of ±60 px at 224), each shift
costing a forward pass per image."""


def invariance_section(ctx: ReportContext, mined: Mined) -> Section:
    """Fig. 5: feature distance and true-class probability under translation, scale, rotation."""
    images, labels = examples_of_classes(ctx, 2 if ctx.quick else 5)
    layers = _low_high_layers(ctx, "conv1", "fc7")
    steps = default_transforms(images.shape[-2])
    if ctx.quick:
        steps = {name: values[::4] for name, values in steps.items()}
    shifts = steps["translation"]
    every = -(-len(shifts) // FIG5_MAX_SHIFTS)  # e.g. every 3rd pixel of ±60 at 224 px
    steps["translation"] = shifts[shifts % every == 0]
    result = invariance_curves(
        ctx.model, images, labels, layers, transforms=steps, batch_size=ctx.pass_size
    )
    fig = plot_invariance(
        result, images, ctx.class_names if ctx.has_labels else None, all_strips=True
    )
    intro = paragraph(
        f"{len(images)} images of different classes, each shifted vertically ("
        + ("every pixel" if every == 1 else f"every {every} px")
        + "), scaled and rotated step by step; the top rows show five steps of each transform "
        "for every image. Then: "
        f"the Euclidean distance between the {' and '.join(layers)} feature vectors of the "
        "original and the transformed image, then the probability of the "
        + ("true class." if ctx.has_labels else "class predicted for the original image.")
        + " Small distances at the upper layer mean an invariant representation."
    )
    return Section(
        "Invariance (Fig. 5)", intro + ctx.save(fig, "fig5-invariance.png", "invariance curves")
    )


OCCLUSION_PIXELS = 100 * 28 * 28
"""Fig. 7's sample budget in image pixels: 100 images at 28×28 (the bundled data); larger images
get proportionally fewer (at least :data:`OCCLUSION_MIN_SAMPLE`), since each costs one forward
pass per position of the square."""

OCCLUSION_MIN_SAMPLE = 8


def occlusion_sample_size(size: int, height: int, width: int) -> int:
    """How many of ``size`` images of ``height``×``width`` Fig. 7 sweeps: the budget
    :data:`OCCLUSION_PIXELS` in images, at least :data:`OCCLUSION_MIN_SAMPLE`, at most ``size``."""
    return min(size, max(OCCLUSION_MIN_SAMPLE, OCCLUSION_PIXELS // (height * width)))


def _occlusion_sample(ctx: ReportContext, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """The data-set indices of ``size`` images evenly spaced through the data, the images and
    their targets (true labels, or the model's predictions without labels); only those images
    are read."""
    count = len(ctx.data)  # type: ignore[arg-type]
    picked = torch.linspace(0, count - 1, min(size, count)).round().long()
    items = [ctx.data[int(i)] for i in picked]
    images = torch.stack([x for x, _ in items])
    labels = torch.as_tensor([int(y) for _, y in items])
    if not ctx.has_labels:
        device = next(ctx.model.parameters()).device
        with torch.no_grad():
            labels = torch.cat(
                [
                    ctx.model(part.to(device)).argmax(1).cpu()
                    for part in images.split(ctx.batch_size)
                ]
            )
    return picked, images, labels


def occlusion_examples(
    maps: list[OcclusionMaps], targets: Tensor, count: int
) -> tuple[list[int], Tensor]:
    """Which occlusion sweeps to show: up to ``count`` indices into ``maps`` of different
    targets, among the sweeps whose unoccluded image is classified as its target and whose most
    probable class changes at some occluder position (none if no sweep qualifies), those where
    it changes at the largest fraction of positions first; and that fraction per sweep
    ``(len(maps),)``."""
    changed = torch.stack([(m.label != m.clean_label).double().mean() for m in maps])
    chosen: list[int] = []
    for i in torch.argsort(changed, descending=True, stable=True).tolist():
        right = maps[i].clean_label == int(targets[i])
        if right and changed[i] > 0 and len(chosen) < count and targets[i] not in targets[chosen]:
            chosen.append(i)
    return chosen, changed


def _strongest_images(
    ctx: ReportContext, mined: Mined, layer: str, channels: list[int]
) -> dict[int, TopActivations]:
    """``{channel: TopActivations of that one channel}``: the top-``ctx.k`` images of each of
    ``channels`` of ``layer``, from ``mined`` when the layer was mined, else mined for all of
    them in one pass over the data."""
    if layer in mined:
        top = mined[layer]
        rows = {int(c): row for row, c in enumerate(top.channels.tolist())}
        if all(c in rows for c in channels):
            return {c: _rows(top, [rows[c]]) for c in channels}
    top = top_activations(
        ctx.model,
        layer,
        ctx.loader(),
        k=ctx.k,
        channels=sorted(set(channels)),
        batch_size=ctx.batch_size,
        progress=False,
    )
    return {int(c): _rows(top, [row]) for row, c in enumerate(top.channels.tolist())}


def _rows(top: TopActivations, rows: list[int]) -> TopActivations:
    return TopActivations(
        top.values[rows], top.indices[rows], top.locations[rows], top.channels[rows]
    )


def occlusion_section(ctx: ReportContext, mined: Mined) -> Section:
    """Fig. 7: a grey square slid over sampled images; the examples shown are those whose most
    probable class changes under occlusion; feature, projection, probability and label maps."""
    example = ctx.data[0][0]
    count = 1 if ctx.quick else 3
    sample = 16 if ctx.quick else occlusion_sample_size(len(ctx.data), *example.shape[-2:])  # type: ignore[arg-type]
    indices, images, targets = _occlusion_sample(ctx, sample)
    # ZFNet: the rectified layer-5 maps
    layer = "relu5" if _has_layer(ctx.model, "relu5") else ctx.layers[-1]
    height = images.shape[-2]
    window, stride = max(1, height // 4), max(1, height // 14)
    grey = float(images.mean())  # the sample's mean intensity, as the paper's grey square
    device = next(ctx.model.parameters()).device
    sweeps = [
        occlusion_maps(
            ctx.model,
            image.to(device),
            window,
            stride,
            layer,
            target=int(target),
            baseline=grey,
            perturbations_per_eval=ctx.batch_size,
        )
        for image, target in zip(images, targets, strict=True)
    ]
    chosen, changed = occlusion_examples(sweeps, targets, count)
    which = "true" if ctx.has_labels else "predicted"
    body = [
        paragraph(
            f"A {window}×{window} square of the sampled images' mean grey ({grey:.2f}) slides "
            f"over each image (stride {stride}). Over {len(sweeps)} images evenly spaced "
            "through the data, "
            f"the most probable class changes at some position of the square for "
            f"{int((changed > 0).sum())} (mean fraction of positions {float(changed.mean()):.3f}"
            "); shown: "
            + (
                f"the {len(chosen)} correctly classified ones of different classes where it "
                "changes most"
                if chosen
                else f"none changes, so the first {count}"
            )
            + f". (b) total activation of the {layer} feature map that is strongest on the "
            "unoccluded image, (c) that map's strongest activation projected by the deconvnet, "
            f"then its projections from the {ctx.k - 1} images where the map is strongest over "
            f"the data, (d) probability of the {which} class (scale fixed to [0, 1]), (e) most "
            "probable class — (b), (d), (e) as a function of the square's position."
        )
    ]
    shown = chosen or list(range(min(count, len(sweeps))))
    strongest = _strongest_images(ctx, mined, layer, [sweeps[pick].channel for pick in shown])
    module = resolve_layer(ctx.model, layer)[1]
    for i, pick in enumerate(shown):
        maps, image = sweeps[pick], images[pick]
        own = (
            DeconvProjection(ctx.model, module)
            .attribute(image[None].to(device), target=maps.channel, neuron="max")
            .detach()
            .cpu()
        )
        others = ctx.project(layer, strongest[maps.channel], keep=False)[0]
        others_at = strongest[maps.channel].indices[0].tolist()  # -1: fewer images than k
        keep = [j for j, at in enumerate(others_at) if at not in (-1, int(indices[pick]))]
        projection = torch.cat([own, others[keep[: ctx.k - 1]]])
        fig = plot_occlusion_maps(image, maps, ctx.class_names, projection=projection)
        changed_at = float(changed[pick])
        body.append(paragraph(f"Label changes at {changed_at:.0%} of the square's positions."))
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
    # the paper's rectified layer-5 and layer-7 features, when the model has them
    layers = _low_high_layers(ctx, "relu5", "relu7")
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
