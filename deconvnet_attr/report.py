"""The offline HTML report: the paper's analyses for one model and one image set, one command.

``deconvnet-attr report --out DIR`` runs every analysis on the bundled reference model and the
bundled Fashion-MNIST evaluation subset (no network) and writes ``DIR/index.html``, each figure a
PNG beside it and each table inline. The same command takes a user's own model (``--model``: a
torchvision or timm architecture name or ``module:factory``, ``--weights``: a weights file),
images (``--images``: an ImageFolder directory) and layers (``--layers``).

The report is a list of independent section builders (:data:`SECTIONS`): each takes the
:class:`ReportContext`, writes its figures and returns a :class:`Section` (or ``None`` when the
analysis does not apply, e.g. no training checkpoints for the evolution figure).
"""

from __future__ import annotations

import argparse
import html
import importlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from tqdm.auto import tqdm

from deconvnet_attr.mining import (
    TopActivations,
    project_top_activations,
    receptive_field_patches,
    top_activations_by_layer,
)

__all__ = [
    "SECTIONS",
    "ReportContext",
    "Section",
    "build_model",
    "build_report",
    "load_weights",
    "main",
    "parse_args",
    "with_input_normalization",
]


@dataclass
class Section:
    """One part of the report: a title and its HTML body (figures referenced by file name)."""

    title: str
    body: str


@dataclass
class ReportContext:
    """Everything the section builders share.

    ``data`` is a map-style dataset of ``(image, label)`` pairs, images ``(C, H, W)`` in [0, 1]
    (labels are -1 when unknown); ``layers`` are names of spatial layers of ``model`` analysed in
    the per-layer sections; ``checkpoints`` maps an epoch to a model (training snapshots);
    ``parts`` are the object parts of the correspondence analysis
    (:data:`~deconvnet_attr.analysis.correspondence.FASHION_MNIST_PARTS` for Fashion-MNIST).
    """

    model: nn.Module
    model_name: str
    data: Dataset
    data_name: str
    layers: list[str]
    out: Path
    class_names: tuple[str, ...] | None = None
    has_labels: bool = False
    checkpoints: Mapping[int, nn.Module] | None = None
    k: int = 9
    channels: int = 16
    batch_size: int = 64
    progress: bool = True
    quick: bool = False
    command: str = ""
    parts: Sequence | None = None
    mined: dict[str, TopActivations] = field(default_factory=dict)

    def loader(self) -> DataLoader:
        """The data in order, in batches of ``batch_size``."""
        return DataLoader(self.data, batch_size=self.batch_size)

    def images(self, n: int | None = None) -> tuple[Tensor, Tensor]:
        """The first ``n`` (default all) images ``(n, C, H, W)`` and labels ``(n,)``."""
        count = len(self.data) if n is None else min(n, len(self.data))  # type: ignore[arg-type]
        items = [self.data[i] for i in range(count)]
        return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])

    def save(self, fig: Figure, name: str, alt: str) -> str:
        """Write ``fig`` as ``out/name`` (PNG) and return the ``<img>`` tag that shows it."""
        fig.savefig(self.out / name, dpi=110)
        plt.close(fig)
        return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


SectionBuilder = Callable[[ReportContext], "Section | None"]


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain HTML table; cells are escaped."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


# --------------------------------------------------------------------------------------------
# section builders
# --------------------------------------------------------------------------------------------


def overview_section(ctx: ReportContext) -> Section:
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


def receptive_field_section(ctx: ReportContext) -> Section:
    """Receptive field of every convolution and pooling layer (size, stride, offset)."""
    from deconvnet_attr.geometry import receptive_field_table

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
    intro = _paragraph(
        "Exact receptive field of one output unit of each convolution and pooling layer, traced "
        "through the network. Unit (i, j) sees input rows offset[0] + i·stride[0] to that plus "
        "size[0] − 1 (before clipping to the image), likewise columns. * = analysed below."
    )
    header = ("layer", "op", "output (C×H×W)", "size (h×w)", "stride", "offset (row, col)")
    return Section("Receptive fields", intro + html_table(header, rows))


def _strongest_channels(top: TopActivations, count: int) -> Tensor:
    """The ``count`` channels with the largest mean top-k activation, strongest first."""
    order = torch.argsort(top.values.mean(dim=1), descending=True, stable=True)
    return order[:count]


def _subset(top: TopActivations, rows: Tensor) -> TopActivations:
    return TopActivations(
        top.values[rows], top.indices[rows], top.locations[rows], top.channels[rows]
    )


def _field(ctx: ReportContext, layer: str):
    """The layer's receptive field, or ``None`` when it has none (e.g. after a linear layer)."""
    from deconvnet_attr.geometry import GeometryError, receptive_field

    try:
        return receptive_field(ctx.model, layer, ctx.data[0][0][None])
    except GeometryError:
        return None


def feature_grid_section(ctx: ReportContext) -> Section:
    """Fig. 2: per layer, top-k deconvnet projections beside their receptive-field patches."""
    from deconvnet_attr.viz import plot_feature_grid

    body = [
        _paragraph(
            f"For each layer, the {ctx.channels} channels with the strongest top-{ctx.k} "
            f"activations over the {len(ctx.data):,} images. Each block: left, the top-{ctx.k} "  # type: ignore[arg-type]
            "activations projected to pixel space by the deconvnet (each contrast-stretched, grey "
            "= 0); right, the image patches inside the receptive field of the projected unit "
            "(blue: the part of the field outside the image). "
            "Strongest first, row by row."
        )
    ]
    ctx.mined = top_activations_by_layer(
        ctx.model,
        ctx.layers,
        ctx.loader(),
        k=ctx.k,
        batch_size=ctx.batch_size,
        progress=ctx.progress,
    )
    for layer, top in ctx.mined.items():
        shown = _subset(top, _strongest_channels(top, ctx.channels))
        projections = project_top_activations(
            ctx.model, layer, ctx.data, shown, batch_size=ctx.batch_size, progress=ctx.progress
        )
        rf = _field(ctx, layer)
        proj_sets, patch_sets = [], []
        for c in range(len(shown.channels)):
            images = torch.stack([ctx.data[int(i)][0] for i in shown.indices[c]])
            if rf is None or shown.locations.shape[2] != 2:
                proj_sets.append(projections[c])
                patch_sets.append(images)
            else:
                for source, sets in ((projections[c], proj_sets), (images, patch_sets)):
                    sets.append(
                        receptive_field_patches(source, shown.locations[c], rf, fill=float("nan"))
                    )
        fig = plot_feature_grid(
            proj_sets,
            patch_sets,
            labels=[f"ch {int(c)}" for c in shown.channels],
            title=f"{layer}: top-{ctx.k} projections | receptive-field patches",
        )
        body.append(f"<h3>{html.escape(layer)}</h3>")
        body.append(ctx.save(fig, f"fig2-{layer}.png", f"feature grid of {layer}"))
    return Section("Top activations and their projections (Fig. 2)", "\n".join(body))


def evolution_section(ctx: ReportContext) -> Section | None:
    """Fig. 4: the strongest projection of a few channels per layer across checkpoints."""
    if not ctx.checkpoints or len(ctx.checkpoints) < 2:
        return None
    from deconvnet_attr.analysis.evolution import feature_evolution
    from deconvnet_attr.viz import plot_evolution

    body = [
        _paragraph(
            "The strongest activation of each channel over the data set, projected to pixel "
            "space, at each training checkpoint (columns). Channels are the strongest ones of the "
            "final model. Lower layers settle within a few epochs, upper layers later."
        )
    ]
    per_layer = max(1, min(ctx.channels // 2, 6))
    if not ctx.mined:
        ctx.mined = top_activations_by_layer(
            ctx.model,
            ctx.layers,
            ctx.loader(),
            k=1,
            batch_size=ctx.batch_size,
            progress=ctx.progress,
        )
    followed = {
        layer: top.channels[_strongest_channels(top, per_layer)] for layer, top in ctx.mined.items()
    }
    results = feature_evolution(
        ctx.checkpoints, followed, ctx.data, batch_size=ctx.batch_size, progress=ctx.progress
    )
    for layer, result in results.items():
        rf = _field(ctx, layer)
        projections = result.projections
        if rf is not None and result.locations.shape[2] == 2:
            flat = projections.flatten(0, 1)
            cropped = receptive_field_patches(
                flat, result.locations.flatten(0, 1), rf, fill=float("nan")
            )
            projections = cropped.reshape(*projections.shape[:2], *cropped.shape[1:])
        fig = plot_evolution(
            projections,
            result.epochs.tolist(),
            labels=[f"ch {int(c)}" for c in result.channels],
            title=f"{layer}: strongest projection per epoch",
        )
        body.append(f"<h3>{html.escape(layer)}</h3>")
        body.append(ctx.save(fig, f"fig4-{layer}.png", f"feature evolution of {layer}"))
    return Section("Feature evolution during training (Fig. 4)", "\n".join(body))


def ablation_section(ctx: ReportContext) -> Section | None:
    """Accuracy with layers' outputs replaced by their data-set mean (the paper's Table 3 groups
    for a ZFNet, else each analysed layer alone)."""
    if not ctx.has_labels:
        return None
    from deconvnet_attr.ablation import PAPER_GROUPS, ablation_study
    from deconvnet_attr.viz import plot_accuracy_table

    modules = dict(ctx.model.named_modules())
    if all(layer in modules for group in PAPER_GROUPS.values() for layer in group):
        groups = {name: [modules[layer] for layer in group] for name, group in PAPER_GROUPS.items()}
        which = "the layer groups the paper removes in Table 3"
    else:
        groups = {layer: [modules[layer]] for layer in ctx.layers}
        which = "each analysed layer"
    table = ablation_study(
        ctx.model,
        ctx.loader(),
        groups,
        baselines="mean",
        batch_size=ctx.batch_size,
        show_progress=ctx.progress,
    )
    header, *rows = [line.split(",") for line in table.to_csv().strip().splitlines()]
    fig = plot_accuracy_table(table, title="mean ablation")
    intro = _paragraph(
        f"Top-k accuracy on the {table.n_examples:,} labelled images, intact and with {which} "
        "ablated: the output replaced by its mean over the data (no retraining). In a chain "
        "network a whole ablated layer makes every later activation constant, so the prediction "
        "is one class for every image (chance); the paper's Table 3 retrains each variant instead "
        "(deconvnet_attr.ablation.accuracy_table, docs/ablation.md)."
    )
    figure = ctx.save(fig, "ablation.png", "accuracy with each layer mean-ablated")
    return Section(
        "Layer ablation", intro + html_table(header, rows) + figure + _removal_table(ctx, modules)
    )


def _removal_table(ctx: ReportContext, modules: dict) -> str:
    """Accuracy with each analysed layer removed (passes its input through), for the layers whose
    input and output shapes match; empty when none does."""
    from deconvnet_attr.ablation import ablation_study

    shapes: dict[str, bool] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple, out: object) -> None:
            same = bool(args) and isinstance(out, Tensor) and args[0].shape == out.shape
            shapes.setdefault(name, same)

        return hook

    hooks = [modules[name].register_forward_hook(record(name)) for name in ctx.layers]
    try:
        with torch.no_grad():
            ctx.model(ctx.images(1)[0])
    finally:
        for hook in hooks:
            hook.remove()
    groups = {f"remove {name}": [modules[name]] for name in ctx.layers if shapes.get(name)}
    if not groups:
        return ""
    table = ablation_study(
        ctx.model,
        ctx.loader(),
        groups,
        baselines="identity",
        batch_size=ctx.batch_size,
        show_progress=ctx.progress,
    )
    header, *rows = [line.split(",") for line in table.to_csv().strip().splitlines()]
    return _paragraph(
        "Removing a layer instead (it passes its input through; only layers whose input and "
        "output shapes match), again without retraining:"
    ) + html_table(header, rows)


def _low_high_layers(ctx: ReportContext, low: str, high: str) -> list[str]:
    """The paper's pair of layers when the model has them, else the first and last analysed."""
    modules = dict(ctx.model.named_modules())
    if low in modules and high in modules:
        return [low, high]
    return list(dict.fromkeys([ctx.layers[0], ctx.layers[-1]]))


def _one_per_class(ctx: ReportContext, count: int) -> tuple[Tensor, Tensor]:
    """Up to ``count`` images of different classes (the first of each), with their labels.

    Without known labels: the first ``count`` images, labelled with the model's prediction.
    """
    images, labels = ctx.images()
    if ctx.has_labels:
        firsts = [int((labels == c).nonzero()[0]) for c in labels.unique().tolist()][:count]
        return images[firsts], labels[firsts]
    images = images[:count]
    device = next(ctx.model.parameters()).device
    with torch.no_grad():
        predicted = ctx.model(images.to(device)).argmax(1).cpu()
    return images, predicted


def invariance_section(ctx: ReportContext) -> Section:
    """Fig. 5: feature distance and true-class probability under translation, scale, rotation."""
    from deconvnet_attr.analysis.invariance import (
        default_transforms,
        invariance_curves,
    )
    from deconvnet_attr.viz import plot_invariance

    images, labels = _one_per_class(ctx, 2 if ctx.quick else 5)
    layers = _low_high_layers(ctx, "conv1", "fc7")
    steps = default_transforms(images.shape[-2])
    if ctx.quick:
        steps = {name: values[::4] for name, values in steps.items()}
    result = invariance_curves(
        ctx.model, images, labels, layers, transforms=steps, batch_size=ctx.batch_size
    )
    fig = plot_invariance(result, images, ctx.class_names if ctx.has_labels else None)
    intro = _paragraph(
        f"{len(images)} images, each shifted vertically, scaled and rotated step by step. Rows: "
        f"the Euclidean distance between the {' and '.join(layers)} feature vectors of the "
        "original and the transformed image, then the probability of the "
        + ("true class." if ctx.has_labels else "class predicted for the original image.")
        + " Small distances at the upper layer mean an invariant representation."
    )
    return Section(
        "Invariance (Fig. 5)", intro + ctx.save(fig, "fig5-invariance.png", "invariance curves")
    )


def occlusion_section(ctx: ReportContext) -> Section:
    """Fig. 7: a grey square slid over three images; feature, probability and label maps."""
    from deconvnet_attr.deconv import DeconvProjection
    from deconvnet_attr.occlusion import occlusion_maps
    from deconvnet_attr.viz import plot_occlusion_maps

    images, labels = _one_per_class(ctx, 1 if ctx.quick else 3)
    modules = dict(ctx.model.named_modules())
    layer = "relu5" if "relu5" in modules else ctx.layers[-1]  # ZFNet: rectified layer-5 maps
    height = images.shape[-2]
    window, stride = max(1, height // 4), max(1, height // 14)
    grey = float(images.mean())  # the data's mean intensity, as the paper's grey square
    device = next(ctx.model.parameters()).device
    body = [
        _paragraph(
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
            DeconvProjection(ctx.model, ctx.model.get_submodule(layer))
            .attribute(image[None].to(device), target=maps.channel, neuron="max")[0]
            .detach()
            .cpu()
        )
        fig = plot_occlusion_maps(image, maps, ctx.class_names, projection=projection)
        body.append(ctx.save(fig, f"fig7-occlusion-{i}.png", "occlusion maps"))
    return Section("Occlusion sensitivity (Fig. 7)", "\n".join(body))


def correspondence_section(ctx: ReportContext) -> Section | None:
    """Sec. 5.3 / Table 1: Δ for the same part occluded in several images vs random boxes."""
    if not ctx.parts or not ctx.has_labels:
        return None
    from deconvnet_attr.analysis.correspondence import (
        correspondence_markdown,
        correspondence_table,
        part_images,
    )
    from deconvnet_attr.viz import plot_correspondence

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
        return Section(title, _paragraph(note))
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
    header, _, *rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in correspondence_markdown(table).strip().splitlines()
    ]
    fig = plot_correspondence(table, images, labels)
    intro = _paragraph(
        f"For each part, the same box is occluded in {table.n_images} images of its class and "
        "Δ = mean pairwise normalised Hamming distance between the signs of the feature changes "
        f"at {' and '.join(layers)} is computed (lower = more consistent change, i.e. the layer "
        "establishes a correspondence between the parts); controls: a random box of the same "
        "size per image, and one shared random box. Mean ± std over random image sets."
    )
    body = intro + html_table(header, rows) + ctx.save(fig, "correspondence.png", "Δ per part")
    return Section(title, body + (_paragraph(note) if note else ""))


SECTIONS: list[SectionBuilder] = [
    overview_section,
    receptive_field_section,
    feature_grid_section,
    evolution_section,
    invariance_section,
    occlusion_section,
    correspondence_section,
    ablation_section,
]
"""The report's sections, in order; each builder is independent of the others' success."""


# --------------------------------------------------------------------------------------------
# assembling the page
# --------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
footer { color: #666; font-size: 0.85em; margin-top: 3em; }
"""


def build_report(ctx: ReportContext, sections: Sequence[SectionBuilder] = SECTIONS) -> Path:
    """Run every section builder and write ``ctx.out/index.html``; returns its path."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    built: list[tuple[Section, float]] = []
    bar = tqdm(sections, desc="report", unit="section", disable=not ctx.progress)
    for builder in bar:
        bar.set_postfix_str(builder.__name__.removesuffix("_section"))
        t0 = time.perf_counter()
        section = builder(ctx)
        if section is not None:
            built.append((section, time.perf_counter() - t0))
    total = time.perf_counter() - start
    toc = "".join(
        f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, (s, _) in enumerate(built)
    )
    parts = [
        f'<section id="s{i}"><h2>{html.escape(s.title)}</h2>\n{s.body}\n'
        f'<p class="timing">({seconds:.1f} s)</p></section>'
        for i, (s, seconds) in enumerate(built)
    ]
    title = f"deconvnet-attr report: {ctx.model_name}"
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1><ol>{toc}</ol>\n"
        + "\n".join(parts)
        + f"\n<footer>Built in {total:.1f} s by <code>{html.escape(ctx.command)}</code> "
        f"(deconvnet-attr, Zeiler &amp; Fergus 2013).</footer></body></html>\n"
    )
    index = ctx.out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Arguments of ``deconvnet-attr report``."""
    p = argparse.ArgumentParser(
        prog="deconvnet-attr report",
        description="Build the offline HTML report of the paper's analyses (figures + tables).",
    )
    p.add_argument("--out", required=True, type=Path, help="output directory (index.html, PNGs)")
    p.add_argument(
        "--model",
        default=None,
        help="torchvision/timm architecture name or module:factory (default: the bundled "
        "Fashion-MNIST reference model)",
    )
    p.add_argument("--weights", type=Path, help="weights file (a state dict or a checkpoint dict)")
    p.add_argument("--num-classes", type=int, help="classes of --model (default: its default)")
    p.add_argument("--images", type=Path, help="ImageFolder directory (default: bundled subset)")
    p.add_argument(
        "--folder-labels",
        action="store_true",
        help="the ImageFolder's sorted class folders are the model's classes 0..K-1",
    )
    p.add_argument("--input-size", type=int, default=224, help="image side for --images")
    p.add_argument("--mean", help="comma-separated per-channel mean the model expects")
    p.add_argument("--std", help="comma-separated per-channel std the model expects")
    p.add_argument(
        "--layers",
        help="comma-separated layer names (default: reference conv1..conv5; for "
        "other models up to 5 convolutions spread through the network)",
    )
    p.add_argument(
        "--checkpoints",
        nargs="+",
        type=Path,
        metavar="EPOCH=FILE",
        help="training snapshots for the evolution figure, as EPOCH=weights-file",
    )
    p.add_argument("--max-images", type=int, default=1000, help="images used (default 1000)")
    p.add_argument("--k", type=int, default=9, help="top activations per channel (default 9)")
    p.add_argument("--channels", type=int, default=16, help="channels shown per layer")
    p.add_argument(
        "--batch-size",
        type=int,
        help="images per forward pass and seeds per projection pass (default: 256 for "
        "the bundled data, 32 for --images)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a small smoke-test report: 64 images, 4 channels, top-4, 2 layers, "
        "2 checkpoints, fewer images and steps in the other analyses",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 32 if args.images else 256
    if args.quick:
        args.max_images, args.channels, args.k = min(args.max_images, 64), 4, 4
    for name in ("max_images", "k", "channels", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    return args


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated numbers, got {text!r}") from None


def build_model(name: str, num_classes: int | None = None) -> nn.Module:
    """An untrained model by torchvision name, timm name or ``module:factory`` (no download)."""
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if ":" in name:
        module_name, _, factory = name.partition(":")
        try:
            factory_fn = getattr(importlib.import_module(module_name), factory)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import model factory {name!r}: {err}") from err
        return factory_fn(**kwargs)
    import torchvision

    if name in torchvision.models.list_models():
        return torchvision.models.get_model(name, weights=None, **kwargs)
    import timm

    if timm.is_model(name):
        return timm.create_model(name, pretrained=False, **kwargs)
    raise ValueError(
        f"unknown model {name!r}: not a torchvision or timm architecture, nor module:factory"
    )


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state dict, or the ``model``/``state_dict`` entry of a checkpoint dict, strictly."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model.load_state_dict(state)


def with_input_normalization(
    model: nn.Module, mean: Sequence[float], std: Sequence[float]
) -> nn.Module:
    """``model`` made to take images ``(N, C, H, W)`` in [0, 1]: it first applies
    ``(x - mean) / std`` per channel.

    The model's class is replaced by a subclass whose ``forward(x)`` normalises (mean and std
    become buffers ``input_mean``/``input_std``), so module names are unchanged and ``torch.fx``
    tracing (receptive fields, incremental occlusion) sees the normalisation — a forward
    pre-hook on the root would be skipped by tracing. Returns the same (modified) object.
    """
    base = type(model)

    def forward(self, x: Tensor) -> Tensor:
        return base.forward(self, (x - self.input_mean) / self.input_std)

    model.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
    model.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))
    model.__class__ = type(f"Normalized{base.__name__}", (base,), {"forward": forward})
    return model


def _default_layers(model: nn.Module, count: int = 5) -> list[str]:
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if len(convs) <= count:
        return convs
    picks = torch.linspace(0, len(convs) - 1, count).round().long().tolist()
    return [convs[i] for i in dict.fromkeys(picks)]


def _evenly(dataset: Dataset, count: int) -> Dataset:
    total = len(dataset)  # type: ignore[arg-type]
    if count >= total:
        return dataset
    return Subset(dataset, torch.linspace(0, total - 1, count).round().long().tolist())


class _WithLabels(Dataset):
    """``(image, -1)`` pairs from an ImageFolder whose class folders are not the model's."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.dataset[index][0], -1


def context_from_args(args: argparse.Namespace, command: str = "") -> ReportContext:
    """Load the model, images and checkpoints named by the command-line arguments."""
    from deconvnet_attr import data as data_module
    from deconvnet_attr import models

    if bool(args.mean) != bool(args.std):
        raise ValueError("--mean and --std go together")

    def prepared(net: nn.Module) -> nn.Module:
        if args.mean:
            net = with_input_normalization(
                net, _floats(args.mean, "mean"), _floats(args.std, "std")
            )
        return net.to(args.device).eval()

    def load(weights: Path | None) -> nn.Module:
        if args.model is None:  # a deconvnet-attr model file
            return models.load_model(weights)
        net = build_model(args.model, args.num_classes)
        if weights is not None:
            load_weights(net, weights)
        return net

    checkpoints: dict[int, nn.Module] | None = None
    parts = None
    if args.model is None and args.weights is None:
        model: nn.Module = models.load_reference()
        name = "ZFNet (Fashion-MNIST reference)"
        checkpoints = dict(models.load_checkpoints())
    else:
        model = load(args.weights)
        name = args.model or "deconvnet-attr model"
        name += f" ({args.weights.name})" if args.weights else " (untrained)"
    if args.checkpoints:
        checkpoints = {}
        for spec in args.checkpoints:
            epoch, sep, path = str(spec).partition("=")
            if not sep or not epoch.isdigit():
                raise ValueError(f"--checkpoints entries must be EPOCH=FILE, got {str(spec)!r}")
            checkpoints[int(epoch)] = load(Path(path))
    model = prepared(model)
    if checkpoints:
        checkpoints = {epoch: prepared(net) for epoch, net in checkpoints.items()}

    class_names = getattr(model, "class_names", None)
    if args.images is None:
        images, labels = data_module.load_eval_subset()
        dataset: Dataset = _evenly(TensorDataset(images, labels), args.max_images)
        data_name, has_labels = "bundled Fashion-MNIST evaluation subset", True
        class_names = class_names or data_module.FASHION_MNIST_CLASSES
        from deconvnet_attr.analysis.correspondence import FASHION_MNIST_PARTS

        parts = FASHION_MNIST_PARTS
    else:
        in_channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
        transform = data_module.image_folder_transform(args.input_size, in_channels, train=False)
        folder = data_module.image_folder(args.images, transform=transform)
        has_labels = args.folder_labels
        dataset = _evenly(folder if has_labels else _WithLabels(folder), args.max_images)
        data_name = f"image folder {args.images}"
        if has_labels and class_names is None:
            class_names = tuple(folder.classes)
    if args.layers:
        layers = [layer.strip() for layer in args.layers.split(",") if layer.strip()]
    elif args.model is None:
        layers = [f"conv{i}" for i in range(1, 6) if hasattr(model, f"conv{i}")]
    else:
        layers = _default_layers(model)
    names = dict(model.named_modules())
    unknown = [layer for layer in layers if layer not in names]
    if unknown or not layers:
        raise ValueError(f"unknown layers {unknown or layers}; the model's modules: {list(names)}")
    if args.quick:
        layers = layers[:2]
        if checkpoints:
            epochs = sorted(checkpoints)
            checkpoints = {e: checkpoints[e] for e in (epochs[0], epochs[-1])}
    return ReportContext(
        model=model,
        model_name=name,
        data=dataset,
        data_name=data_name,
        layers=layers,
        out=args.out,
        class_names=class_names,
        has_labels=has_labels,
        checkpoints=checkpoints,
        k=args.k,
        channels=args.channels,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        quick=args.quick,
        command=command,
        parts=parts,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``deconvnet-attr report``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    matplotlib.use("Agg")
    start = time.perf_counter()
    ctx = context_from_args(args, command="deconvnet-attr report " + " ".join(argv))
    index = build_report(ctx)
    print(f"report written to {index} in {time.perf_counter() - start:.1f} s")
    return 0
