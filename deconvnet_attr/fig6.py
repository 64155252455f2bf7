"""The paper's Fig. 6 experiment: AlexNet's 11x11/4 stem against ZFNet's 7x7/2, clipping on/off.

Four models (``examples/train_fig6.sh``, ``docs/fig6.md``) trained with the same recipe and budget
on Fashion-MNIST upsampled 4x to 112 px ship under ``models/weights/fig6/`` (fp16):
``alexnet_clipon``, ``alexnet_clipoff``, ``zfnet_clipon``, ``zfnet_clipoff``.
:func:`load_fig6_models` loads them; :func:`fig6_table` measures accuracy, dead conv1 filters,
the conv1 aliasing score and layer-2 shift sensitivity (:mod:`.analysis.filters`);
:func:`fig6_summary` returns the report section's figure and table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

import torch
from matplotlib.figure import Figure
from torch import Tensor

from .analysis.filters import filter_diagnostics, layer_response_std, shift_sensitivity
from .data import upsample_images
from .geometry import receptive_field
from .mining import top_activations
from .models.reference import load_model
from .models.zfnet import ZFNet
from .projection import project_top_activations, receptive_field_patches
from .tables import RecordTable
from .viz.filters import plot_filter_panels

__all__ = [
    "FIG6_UPSAMPLE",
    "FIG6_VARIANTS",
    "Fig6Table",
    "fig6_figure",
    "fig6_summary",
    "fig6_table",
    "load_fig6_models",
]

FIG6_UPSAMPLE = 4  # Fashion-MNIST 28 px -> 112 px
# name -> (stem, feature-scale clipping)
FIG6_VARIANTS = {
    "alexnet_clipon": ("AlexNet 11x11/4", True),
    "alexnet_clipoff": ("AlexNet 11x11/4", False),
    "zfnet_clipon": ("ZFNet 7x7/2", True),
    "zfnet_clipoff": ("ZFNet 7x7/2", False),
}


def load_fig6_models() -> dict[str, ZFNet]:
    """The four shipped Fig. 6 models by name (:data:`FIG6_VARIANTS`), eval mode, fp32.

    Inputs are ``(N, 1, 112, 112)`` images in [0, 1]: Fashion-MNIST through
    :func:`deconvnet_attr.data.upsample_images` with factor :data:`FIG6_UPSAMPLE`.
    """
    folder = resources.files("deconvnet_attr") / "models" / "weights" / "fig6"
    models = {}
    for name in FIG6_VARIANTS:
        with resources.as_file(folder / f"{name}.pt") as path:
            models[name] = load_model(path)
    return models


@dataclass(frozen=True)
class Fig6Row:
    """One model's Fig. 6 numbers (see :func:`fig6_table`)."""

    name: str
    stem: str
    clipping: bool
    accuracy: float
    dead: int
    filters: int
    dead2: int
    filters2: int
    aliasing: float
    noise_aliasing: float
    shift_change: float


@dataclass(frozen=True)
class Fig6Table(RecordTable):
    """Rows of :func:`fig6_table`; ``to_markdown()`` / ``to_csv()`` from :class:`RecordTable`."""

    rows: tuple[Fig6Row, ...]
    images: int

    def _records(self) -> list[list[str]]:
        header = [
            "variant",
            "stem",
            "clipping",
            f"accuracy ({self.images} images)",
            "dead conv1 filters",
            "dead conv2 filters",
            "conv1 aliasing (white noise)",
            "relu2 shift change",
        ]
        body = [
            [
                r.name,
                r.stem,
                "on" if r.clipping else "off",
                f"{r.accuracy:.4f}",
                f"{r.dead}/{r.filters}",
                f"{r.dead2}/{r.filters2}",
                f"{r.aliasing:.3f} ({r.noise_aliasing:.3f})",
                f"{r.shift_change:.4f}",
            ]
            for r in self.rows
        ]
        return [header, *body]


def _check_images(images: Tensor, labels: Tensor | None = None) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[-1] != 28:
        raise ValueError(
            f"images must be (N, 1, 28, 28) Fashion-MNIST tensors, got "
            f"{getattr(images, 'shape', type(images).__name__)}"
        )
    if labels is not None and labels.shape != (len(images),):
        raise ValueError(f"labels must be ({len(images)},), got {tuple(labels.shape)}")


@torch.no_grad()
def fig6_table(
    models: Mapping[str, ZFNet], images: Tensor, labels: Tensor, shift_images: int = 200
) -> Fig6Table:
    """Measure each model on 28 px ``images`` ``(N, 1, 28, 28)`` / ``labels`` ``(N,)``.

    Per model: top-1 accuracy on the upsampled images; conv1 and conv2 filters dead by weights or
    by their relu1/relu2 responses over the images (:func:`~.analysis.filters.filter_diagnostics`,
    ratio 0.1);
    the mean conv1 aliasing score of the living filters; and :func:`shift_sensitivity` of relu2
    for 1..8 px shifts (8 = the stride of conv2's map in both stems) on the first
    ``shift_images`` images. Model names missing from :data:`FIG6_VARIANTS` get stem "?".
    """
    _check_images(images, labels)
    big = upsample_images(images, FIG6_UPSAMPLE)
    rows = []
    for name, model in models.items():
        stem, clipping = FIG6_VARIANTS.get(name, ("?", False))
        logits = torch.cat([model(big[i : i + 64]) for i in range(0, len(big), 64)])
        diag = filter_diagnostics(model.conv1, response_std=layer_response_std(model, "relu1", big))
        diag2 = filter_diagnostics(
            model.conv2, response_std=layer_response_std(model, "relu2", big)
        )
        rows.append(
            Fig6Row(
                name=name,
                stem=stem,
                clipping=clipping,
                accuracy=float((logits.argmax(1) == labels).double().mean()),
                dead=diag.dead_count,
                filters=len(diag.dead),
                dead2=diag2.dead_count,
                filters2=len(diag2.dead),
                aliasing=diag.mean_aliasing,
                noise_aliasing=diag.noise_aliasing,
                shift_change=shift_sensitivity(model, "relu2", big[:shift_images], shifts=8),
            )
        )
    return Fig6Table(tuple(rows), len(images))


def _conv2_projections(model: ZFNet, big: Tensor) -> Tensor:
    """Each conv2 channel's strongest unit over ``big``, projected and cut to its field."""
    top = top_activations(model, "conv2", big, k=1, progress=False)
    projections = project_top_activations(model, "conv2", big, top, progress=False)[:, 0]
    field = receptive_field(model, "conv2", big[:1])
    return receptive_field_patches(projections, top.locations[:, 0], field)


def fig6_figure(models: Mapping[str, ZFNet], images: Tensor, table: Fig6Table) -> Figure:
    """conv1 tiles (dead ones framed red) and conv2 top projections over ``images``, per model."""
    _check_images(images)
    big = upsample_images(images, FIG6_UPSAMPLE)
    rows = {r.name: r for r in table.rows}
    conv1 = {name: m.conv1.weight.detach() for name, m in models.items()}
    dead = {
        name: filter_diagnostics(
            m.conv1, response_std=layer_response_std(m, "relu1", big)
        ).dead.tolist()
        for name, m in models.items()
    }
    captions = {
        name: f"acc {rows[name].accuracy:.3f}, dead conv1 {rows[name].dead}/{rows[name].filters}, "
        f"conv2 {rows[name].dead2}/{rows[name].filters2}, aliasing {rows[name].aliasing:.2f}"
        for name in models
        if name in rows
    }
    return plot_filter_panels(
        conv1,
        {name: _conv2_projections(m, big) for name, m in models.items()},
        dead=dead,
        captions=captions if len(captions) == len(models) else None,
        title="Fig. 6: first-layer filters and second-layer features, AlexNet vs ZFNet stem",
    )


def fig6_summary(
    models: Mapping[str, ZFNet], images: Tensor, labels: Tensor
) -> tuple[Figure, Fig6Table]:
    """The report's Fig. 6 section: ``(figure, table)`` for 28 px Fashion-MNIST ``images``.

    ``models`` as from :func:`load_fig6_models`; the table is :func:`fig6_table` on all the
    images, the figure :func:`fig6_figure` (conv2 projections mined on the same images).
    """
    table = fig6_table(models, images, labels)
    return fig6_figure(models, images, table), table
