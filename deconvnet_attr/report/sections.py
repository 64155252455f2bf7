"""The report's sections on the analysed layers, and :data:`SECTIONS`, the report in order.

Each builder takes the :class:`~.context.ReportContext` and the layers' mined top activations
(:data:`~.context.Mined`), writes its figures and returns a :class:`~.context.Section`, or
``None`` when the analysis does not apply (e.g. no training checkpoints for the evolution figure).
The sections on the whole model (invariance, occlusion, correspondence, ablation) are in
:mod:`.studies`.
"""

from __future__ import annotations

import html

import torch
from torch import Tensor

from deconvnet_attr.analysis.evolution import (
    feature_evolution,
    filter_similarity,
    top_image_stability,
)
from deconvnet_attr.geometry import (
    GeometryError,
    ReceptiveField,
    receptive_field,
    receptive_field_crop,
    receptive_field_table,
)
from deconvnet_attr.mining import TopActivations
from deconvnet_attr.taps import Taps
from deconvnet_attr.viz import plot_evolution, plot_feature_grid

from .context import Mined, ReportContext, Section, SectionBuilder
from .guided_section import guided_comparison_section
from .html import html_table, paragraph
from .paper_sections import fig6_section, table3_retrained_section, transfer_section
from .studies import ablation_section, correspondence_section, invariance_section, occlusion_section

__all__ = [
    "SECTIONS",
    "evolution_section",
    "feature_grid_section",
    "field_coverage",
    "followed_channels",
    "overview_section",
    "receptive_field_section",
]


def overview_section(ctx: ReportContext, mined: Mined) -> Section:
    """The model, the data and the layers analysed."""
    example, _ = ctx.data[0]
    params = sum(p.numel() for p in ctx.model.parameters())
    rows = [
        ("model", ctx.model_name),
        ("parameters", f"{params:,}"),
        ("input", f"{tuple(example.shape)} images in [0, 1]"),
        ("data", f"{ctx.data_name}: {len(ctx.data):,} images"),  # type: ignore[arg-type]
        ("layers analysed", ", ".join(ctx.layers)),
        ("classes", ", ".join(ctx.class_names) if ctx.class_names else "unknown"),
    ]
    if ctx.checkpoints:
        rows.append(("training checkpoints", ", ".join(str(e) for e in sorted(ctx.checkpoints))))
    return Section("Overview", html_table(("", ""), rows))


def receptive_field_section(ctx: ReportContext, mined: Mined) -> Section:
    """Receptive field of every convolution and pooling layer (size, stride, offset)."""
    example = ctx.data[0][0][None]
    rows = [
        (
            row.name + (" *" if row.name in ctx.layers else ""),
            row.kind,
            "×".join(str(s) for s in row.output_shape[1:]),
            "×".join(str(s) for s in row.field.size),
            "×".join(str(s) for s in row.field.stride),
            ", ".join(str(s) for s in row.field.offset),
        )
        for row in receptive_field_table(ctx.model, example)
    ]
    intro = paragraph(
        "Exact receptive field of one output unit of each convolution and pooling layer, traced "
        "through the network. Unit (i, j) sees input rows offset[0] + i·stride[0] to that plus "
        "size[0] − 1 (before clipping to the image), likewise columns. * = analysed below."
    )
    header = ("layer", "op", "output (C×H×W)", "size (h×w)", "stride", "offset (row, col)")
    return Section("Receptive fields", intro + html_table(header, rows))


def _strongest(top: TopActivations, count: int) -> Tensor:
    """Rows of ``top`` of the ``count`` channels with the largest mean top-k activation,
    strongest first."""
    order = torch.argsort(top.values.mean(dim=1), descending=True, stable=True)
    return order[:count]


def followed_channels(mined: Mined, per_layer: int) -> dict[str, Tensor]:
    """``{layer: channels}``: the ``per_layer`` strongest channels of each mined layer (largest
    mean top-k activation first), the ones the evolution figure follows."""
    return {layer: top.channels[_strongest(top, per_layer)] for layer, top in mined.items()}


def _subset(top: TopActivations, rows: Tensor) -> TopActivations:
    return TopActivations(
        top.values[rows], top.indices[rows], top.locations[rows], top.channels[rows]
    )


def _field(ctx: ReportContext, layer: str) -> ReceptiveField | str:
    """The layer's receptive field, or why it is unknown (e.g. after a linear layer)."""
    try:
        return receptive_field(ctx.model, layer, ctx.data[0][0][None])
    except GeometryError as error:
        return error.reason


def _crop(field: ReceptiveField | str | None, images: Tensor, locations: Tensor) -> Tensor:
    """``images`` ``(M, C, H, W)`` cut to the receptive field of the unit at each of
    ``locations`` ``(M, S)`` (NaN outside the image); unchanged when the layer has no receptive
    field (``field`` is why, or None) or no 2-d map (``S != 2``)."""
    if not isinstance(field, ReceptiveField) or locations.shape[-1] != 2:
        return images
    return receptive_field_crop(field, images, locations, fill=float("nan"))


OUTSIDE_COLOUR = "#e8a33d"
"""Fig. 2's colour for receptive-field pixels outside the image (the layers' zero padding):
amber, unlike the light-blue gaps between tiles, black, grey (0 in a projection) and white."""

FIG2_PERCENTILE = 98.0
"""Fig. 2 contrast: each projection scaled by one factor on both sides of 0 so that ±(this
percentile of its |values|) reach black and white (:func:`~deconvnet_attr.viz.contrast_stretch`);
lower than the default 99.5 because a few extreme pixels otherwise leave the rest faint grey."""


FIG2_TILE = 112
"""Fig. 2's largest tile side in pixels: larger receptive-field crops (e.g. a deep ResNet layer's,
wider than the image) are shrunk to it by area averaging, so the figure's memory and size are
bounded by channels × k, not by the layer's receptive field."""


def _tiles(crops: Tensor) -> Tensor:
    """``crops`` ``(k, C, h, w)`` shrunk by area averaging to at most :data:`FIG2_TILE` pixels a
    side (NaN, outside the image, spreads to the tiles it touches); unchanged when small."""
    scale = FIG2_TILE / max(crops.shape[-2:])
    if scale >= 1:
        return crops
    size = [max(1, round(side * scale)) for side in crops.shape[-2:]]
    return torch.nn.functional.interpolate(crops, size=size, mode="area")


def field_coverage(ctx: ReportContext, layer: str, field: ReceptiveField | str | None) -> str:
    """A caption sentence on how much of the image the ``layer``'s units see: whether its
    receptive field is larger than the image and how many units see all of it ("" when the
    layer has no receptive field or no 2-d map); where the field is unknown (``field`` says why),
    that whole images are shown."""
    example = ctx.data[0][0][None]
    if isinstance(field, str):
        return f"Receptive field unknown for {layer} ({field}): whole images shown."
    if field is None:
        return ""
    with torch.no_grad():
        output = Taps(ctx.model, [layer])(example.to(next(ctx.model.parameters()).device))
    shape = next(iter(output.values())).shape
    if len(shape) != 4:
        return ""
    height, width = example.shape[-2:]
    rows = sum(field.rows(i)[0] <= 0 and field.rows(i)[1] >= height - 1 for i in range(shape[2]))
    cols = sum(field.cols(j)[0] <= 0 and field.cols(j)[1] >= width - 1 for j in range(shape[3]))
    size = "×".join(str(v) for v in field.size)
    if rows * cols == shape[2] * shape[3]:
        return f"Every unit's {size} receptive field covers the whole {height}×{width} image."
    if rows * cols:
        return (
            f"The {size} receptive field is larger than the {height}×{width} image: "
            f"{rows * cols} of the {shape[2] * shape[3]} units see the whole image."
        )
    larger = field.size[0] >= height and field.size[1] >= width
    return f"Receptive field {size} on the {height}×{width} image" + (
        ": larger than the image, but no unit's field covers all of it." if larger else "."
    )


def feature_grid_section(ctx: ReportContext, mined: Mined) -> Section:
    """Fig. 2: per layer, top-k deconvnet projections beside their receptive-field patches."""
    body = [
        paragraph(
            f"For each layer, the {ctx.channels} channels with the strongest top-{ctx.k} "
            f"activations over the {len(ctx.data):,} images. Each block: left, the top-{ctx.k} "  # type: ignore[arg-type]
            "activations projected to pixel space by the deconvnet, each stretched symmetrically "
            f"around 0 (grey = 0; ±{FIG2_PERCENTILE:g}th percentile of its |values| = black / "
            "white); right, the image patches inside the receptive field of the projected unit. "
            "Amber: the part of the field outside the image (the layers' zero padding); light "
            f"blue: gaps between tiles. Strongest first, row by row. Tiles wider than {FIG2_TILE} "
            "px are shrunk to it (area average)."
        )
    ]
    for layer, top in mined.items():
        shown = _subset(top, _strongest(top, ctx.channels))
        projections = ctx.project(layer, shown, keep=ctx.atlas)  # the atlas reuses them
        field = _field(ctx, layer)
        proj_sets, patch_sets = [], []
        for c in range(len(shown.channels)):
            images = torch.stack([ctx.data[int(i)][0] for i in shown.indices[c]])
            proj_sets.append(_tiles(_crop(field, projections[c], shown.locations[c])))
            patch_sets.append(_tiles(_crop(field, images, shown.locations[c])))
        fig = plot_feature_grid(
            proj_sets,
            patch_sets,
            labels=[f"ch {int(c)}" for c in shown.channels],
            title=f"{layer}: top-{ctx.k} projections | "
            + ("receptive-field patches" if isinstance(field, ReceptiveField) else "whole images"),
            percentile=FIG2_PERCENTILE,
            outside=OUTSIDE_COLOUR,
        )
        body.append(f"<h3>{html.escape(layer)}</h3>")
        coverage = field_coverage(ctx, layer, field)
        if coverage:
            body.append(paragraph(coverage))
        body.append(ctx.save(fig, f"fig2-{layer}.png", f"feature grid of {layer}"))
    return Section("Top activations and their projections (Fig. 2)", "\n".join(body))


def evolution_section(ctx: ReportContext, mined: Mined) -> Section | None:
    """Fig. 4: the strongest projection of a few channels per layer across checkpoints."""
    if not ctx.checkpoints or len(ctx.checkpoints) < 2:
        return None
    body = [
        paragraph(
            "The strongest activation of each channel over the data set, projected to pixel "
            "space, at each training checkpoint (columns). Channels are the strongest ones of the "
            "final model. How fast each layer settles is measured in the table below: the mean "
            "cosine similarity of the layer's filters at each checkpoint to the final ones, and "
            "the fraction of the followed channels whose strongest image is the same as at the "
            "previous checkpoint."
        )
    ]
    followed = followed_channels(mined, per_layer=max(1, min(ctx.channels // 2, 6)))
    results = feature_evolution(
        ctx.checkpoints, followed, ctx.data, batch_size=ctx.batch_size, progress=ctx.progress
    )
    epochs = sorted(ctx.checkpoints)
    rows = []
    for layer, result in results.items():
        try:
            cosine = filter_similarity(ctx.checkpoints, layer).tolist()
        except ValueError:  # a layer without weights (e.g. a ReLU): no filter cosine
            cosine = [float("nan")] * len(epochs)
        same = ["-", *(f"{v:.2f}" for v in top_image_stability(result).tolist())]
        rows.append([layer, *(f"{c:.3f} / {s}" for c, s in zip(cosine, same, strict=True))])
    body.append(
        html_table(["layer", *(f"epoch {e}: cosine / same top image" for e in epochs)], rows)
    )
    for layer, result in results.items():
        projections = result.projections
        cropped = _crop(
            _field(ctx, layer), projections.flatten(0, 1), result.locations.flatten(0, 1)
        )
        projections = cropped.reshape(*projections.shape[:2], *cropped.shape[1:])
        fig = plot_evolution(
            projections,
            result.epochs.tolist(),
            labels=[f"ch {int(c)}" for c in result.channels],
            title=f"{layer}: strongest projection per epoch",
        )
        channels = ", ".join(str(int(c)) for c in result.channels)
        body.append(f"<h3>{html.escape(layer)}</h3>")
        body.append(paragraph(f"channels followed: {channels}"))
        body.append(ctx.save(fig, f"fig4-{layer}.png", f"feature evolution of {layer}"))
    return Section("Feature evolution during training (Fig. 4)", "\n".join(body))


SECTIONS: list[SectionBuilder] = [
    overview_section,
    receptive_field_section,
    feature_grid_section,
    evolution_section,
    invariance_section,
    fig6_section,
    occlusion_section,
    correspondence_section,
    ablation_section,
    table3_retrained_section,
    transfer_section,
    guided_comparison_section,
]
"""The report's sections, in order; each builder is independent of the others."""
