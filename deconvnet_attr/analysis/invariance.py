"""Invariance of features and of the prediction to translation, scale and rotation (paper Fig. 5).

Zeiler & Fergus transform a few images step by step (vertical translation, scaling, rotation) and
plot, against the transform parameter, the Euclidean distance between the feature vector of the
original and of the transformed image at a low and a high layer, and the probability of the true
class. Small distances at high layers mean the representation is invariant to the transform.

The feature capture (:func:`~deconvnet_attr.analysis.features.flat_layer_outputs`) is shared with
the correspondence analysis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from deconvnet_attr.analysis.features import _describe, flat_layer_outputs
from deconvnet_attr.taps import LayerSpec, display_name, resolve_layers

__all__ = [
    "FASHION_MNIST_FIG5_CLASSES",
    "InvarianceCurve",
    "InvarianceResult",
    "default_transforms",
    "first_of_classes",
    "invariance_curves",
    "transform_images",
]

TRANSFORMS = ("translation", "scale", "rotation")
"""Built-in transforms: vertical translation in pixels (positive = down), scale factor about the
image centre (> 1 zooms in), rotation in degrees (counter-clockwise)."""


FASHION_MNIST_FIG5_CLASSES = (0, 1, 7, 8, 9)
"""The Fashion-MNIST classes of the Fig. 5 images (report, docs and ``examples/invariance.py``):
T-shirt/top, trouser, sneaker, bag, ankle boot -- five different shapes, as the paper's five
images are five different objects (classes 0-4 would be four upper-body garments)."""


def first_of_classes(
    labels: Tensor, classes: Sequence[int] | None = None, count: int = 5
) -> Tensor:
    """Indices ``(n,)`` into ``labels`` ``(N,)`` of the first image of each of ``classes``
    (those present, in the given order), or, with ``classes=None``, of ``count`` classes spread
    evenly over the sorted classes present (the first and last included)."""
    if not isinstance(labels, Tensor) or labels.dim() != 1:
        raise ValueError(f"labels must be an (N,) tensor, got {_describe(labels)}")
    present = labels.unique().tolist()
    if classes is None:
        if count < 1:
            raise ValueError(f"count must be positive, got {count!r}")
        spread = torch.linspace(0, len(present) - 1, min(count, len(present))).round().long()
        classes = [present[i] for i in spread.tolist()]
    return torch.tensor(
        [int((labels == c).nonzero()[0]) for c in classes if c in present], dtype=torch.long
    )


def default_transforms(height: int) -> dict[str, Tensor]:
    """The parameter grids used by default for images of ``height`` pixels.

    Vertical translation: every integer shift in ±27 % of the height (the paper's ±60 px of 224;
    ±8 px for 28×28). Scale: 0.5 … 1.5 in steps of 0.05. Rotation: 0 … 360° in steps of 10°.
    """
    shift = round(0.27 * height)
    return {
        "translation": torch.arange(-shift, shift + 1, dtype=torch.float32),
        "scale": torch.linspace(0.5, 1.5, 21),
        "rotation": torch.arange(0, 361, 10, dtype=torch.float32),
    }


def transform_images(images: Tensor, transform: str, value: float, fill: Sequence[float]) -> Tensor:
    """Apply one built-in transform to ``images`` (N, C, H, W) with bilinear interpolation.

    ``fill`` (one value per channel) paints the pixels uncovered by the transform — the baseline
    colour, e.g. the black background of Fashion-MNIST. The identity parameters (translation 0,
    scale 1, rotation a multiple of 360°) return an exact copy, so the distance curves start at 0.
    """
    fill = [float(f) for f in fill]
    bilinear = InterpolationMode.BILINEAR
    if transform == "translation":
        if value == 0:
            return images.clone()
        return TF.affine(
            images,
            angle=0.0,
            translate=[0.0, float(value)],
            scale=1.0,
            shear=[0.0, 0.0],
            interpolation=bilinear,
            fill=fill,
        )
    if transform == "scale":
        if not value > 0:
            raise ValueError(f"scale factor must be > 0, got {value}")
        if value == 1:
            return images.clone()
        return TF.affine(
            images,
            angle=0.0,
            translate=[0.0, 0.0],
            scale=float(value),
            shear=[0.0, 0.0],
            interpolation=bilinear,
            fill=fill,
        )
    if transform == "rotation":
        if float(value) % 360 == 0:
            return images.clone()
        return TF.rotate(images, float(value), interpolation=bilinear, fill=fill)
    raise ValueError(f"unknown transform {transform!r}; built-in transforms are {TRANSFORMS}")


@dataclass(frozen=True)
class InvarianceCurve:
    """One transform's curves for N images and the requested layers.

    ``values`` (T,) are the transform parameters; ``distances[layer]`` (N, T) is the Euclidean
    distance ‖x^l − x^l(T_v)‖₂ between the flattened layer outputs of the original and
    transformed image (in the layer's units); ``probability`` (N, T) is the softmax probability of
    the true class.
    """

    transform: str
    values: Tensor
    distances: dict[str, Tensor]
    probability: Tensor


@dataclass(frozen=True)
class InvarianceResult:
    """The curves per transform (keyed by transform name) plus what is needed to draw them."""

    curves: dict[str, InvarianceCurve]
    layers: tuple[str, ...]
    labels: Tensor
    fill: tuple[float, ...]


def invariance_curves(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    layers: Sequence[LayerSpec],
    transforms: Mapping[str, Sequence[float] | Tensor] | None = None,
    fill: float | Sequence[float] = 0.0,
    batch_size: int = 256,
) -> InvarianceResult:
    """Feature distances and true-class probability under translation, scale and rotation.

    Args:
        model: a classifier returning logits (N, K); pass it in eval mode (dropout would make the
            curves random). It is left unchanged (hooks removed, flags and buffers restored).
        images: (N, C, H, W) images in the model's input space.
        labels: (N,) true classes, int64.
        layers: modules of ``model`` (or their dotted names) whose outputs are compared, e.g. the
            paper's layer 1 and layer 7: ``[model.conv1, model.fc7]``.
        transforms: transform name → parameter values, from ``"translation"`` (vertical, pixels,
            positive = down), ``"scale"`` (factor about the centre) and ``"rotation"`` (degrees,
            counter-clockwise). Default: :func:`default_transforms` for the image height.
        fill: baseline colour painted where the transform uncovers the image (a float or one value
            per channel).
        batch_size: images per forward pass; also how many transformed copies are held at a
            time, so memory is bounded by it, not by the number of transform steps.

    Returns:
        :class:`InvarianceResult` with one :class:`InvarianceCurve` per transform.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) tensor, got {_describe(images)}")
    n, channels, height, _ = images.shape
    if not isinstance(labels, Tensor) or labels.shape != (n,) or labels.dtype != torch.int64:
        raise ValueError(f"labels must be an int64 tensor of shape ({n},), got {_describe(labels)}")
    labels = labels.cpu()
    fills = _fill_values(fill, channels)
    grids = default_transforms(height) if transforms is None else dict(transforms)
    if not grids:
        raise ValueError("transforms must name at least one transform")
    for name, values in grids.items():
        if name not in TRANSFORMS:
            raise ValueError(f"unknown transform {name!r}; built-in transforms are {TRANSFORMS}")
        if len(values) == 0:
            raise ValueError(f"transform {name!r} has no parameter values")
    names = [display_name(model, n) for n, _ in resolve_layers(model, layers)]

    reference, _ = flat_layer_outputs(model, images, layers, batch_size)
    curves = {}
    for name, values in grids.items():
        values = torch.as_tensor(values, dtype=torch.float32).flatten()
        dist, prob = _transformed_curves(
            model, images, labels, layers, names, reference, name, values, fills, batch_size
        )
        curves[name] = InvarianceCurve(name, values, dist, prob)
    return InvarianceResult(curves, tuple(names), labels.clone(), tuple(fills))


def _transformed_curves(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    layers: Sequence[LayerSpec],
    names: Sequence[str],
    reference: Mapping[str, Tensor],
    transform: str,
    values: Tensor,
    fills: Sequence[float],
    batch_size: int,
) -> tuple[dict[str, Tensor], Tensor]:
    """Distances ``{layer: (N, T)}`` to ``reference`` ``{layer: (N, D)}`` and true-class
    probabilities ``(N, T)`` of ``images`` under ``transform`` at each of ``values`` ``(T,)``.

    The ``T * N`` transformed copies are made, run and reduced ``batch_size`` at a time (pairs in
    value-major order), so memory holds one batch of copies and their features, not all of them.
    """
    n, t = len(images), len(values)
    dist = {layer: torch.empty(t * n) for layer in names}
    prob = torch.empty(t * n)
    for start in range(0, t * n, batch_size):
        pairs = torch.arange(start, min(start + batch_size, t * n))
        steps, rows = pairs // n, pairs % n
        moved = torch.cat(
            [
                transform_images(images[rows[steps == s]], transform, float(values[s]), fills)
                for s in steps.unique().tolist()
            ]
        )
        feats, logits = flat_layer_outputs(model, moved, layers, batch_size)
        if logits.dim() != 2 or int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0:
            raise ValueError(
                f"model output {tuple(logits.shape)} is not (N, K) logits covering labels "
                f"{int(labels.min())}..{int(labels.max())}"
            )
        prob[pairs] = logits.float().softmax(1)[torch.arange(len(pairs)), labels[rows]]
        for layer in names:
            dist[layer][pairs] = (feats[layer] - reference[layer][rows]).norm(dim=1)
    return {layer: d.view(t, n).T.contiguous() for layer, d in dist.items()}, prob.view(
        t, n
    ).T.contiguous()


def _fill_values(fill: float | Sequence[float], channels: int) -> list[float]:
    """``fill`` as one float per channel; raises ``ValueError`` on a length mismatch."""
    if isinstance(fill, (int, float)):
        return [float(fill)] * channels
    values = [float(f) for f in fill]
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise ValueError(f"fill has {len(values)} values for {channels} channels: {fill!r}")
    return values
