"""Invariance of features and of the prediction to translation, scale and rotation (paper Fig. 5).

Zeiler & Fergus transform a few images step by step (vertical translation, scaling, rotation) and
plot, against the transform parameter, the Euclidean distance between the feature vector of the
original and of the transformed image at a low and a high layer, and the probability of the true
class. Small distances at high layers mean the representation is invariant to the transform.

The feature capture used here (:func:`layer_features`) is shared with the correspondence analysis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from deconvnet_attr.state import preserved_state

__all__ = [
    "InvarianceCurve",
    "InvarianceResult",
    "default_transforms",
    "invariance_curves",
    "layer_features",
    "resolve_layers",
    "transform_images",
]

TRANSFORMS = ("translation", "scale", "rotation")
"""Built-in transforms: vertical translation in pixels (positive = down), scale factor about the
image centre (> 1 zooms in), rotation in degrees (counter-clockwise)."""

LayerSpec = nn.Module | str


def resolve_layers(model: nn.Module, layers: Sequence[LayerSpec]) -> list[tuple[str, nn.Module]]:
    """Name and module of each requested layer, given as a module of ``model`` or its dotted name.

    Raises ``ValueError`` for an empty list, a module that is not part of ``model``, an unknown name
    or a layer given twice.
    """
    if isinstance(layers, (nn.Module, str)) or len(layers) == 0:
        raise ValueError(f"layers must be a non-empty sequence of modules or names, got {layers!r}")
    names = {id(m): n for n, m in model.named_modules()}
    resolved: list[tuple[str, nn.Module]] = []
    for layer in layers:
        if isinstance(layer, str):
            try:
                module = model.get_submodule(layer)
            except AttributeError:
                raise ValueError(f"layer {layer!r} is not a submodule of the model") from None
            resolved.append((layer or type(model).__name__, module))
        elif isinstance(layer, nn.Module):
            if id(layer) not in names:
                raise ValueError(f"layer {type(layer).__name__} {layer!r} is not part of the model")
            resolved.append((names[id(layer)] or type(model).__name__, layer))
        else:
            raise ValueError(f"layer must be an nn.Module or a name, got {type(layer).__name__}")
    seen = [n for n, _ in resolved]
    dupes = sorted({n for n in seen if seen.count(n) > 1})
    if dupes:
        raise ValueError(f"layers given more than once: {dupes}")
    return resolved


def layer_features(
    model: nn.Module,
    inputs: Tensor,
    layers: Sequence[LayerSpec],
    batch_size: int = 256,
) -> tuple[dict[str, Tensor], Tensor]:
    """Flattened outputs of ``layers`` and the model output for ``inputs`` (N, ...).

    Returns ``(features, outputs)``: ``features[name]`` is (N, D_layer) — the layer's output tensor
    flattened per example — keyed by the layer's name in ``model``; ``outputs`` is the model output
    (N, ...); both on the CPU. Runs under ``torch.no_grad()`` in batches of ``batch_size``; the
    forward hooks are removed and buffers / training flags restored also when the forward raises.
    A layer must return one tensor and run once per forward pass (a reused module is ambiguous and
    rejected).
    """
    resolved = resolve_layers(model, layers)
    if not isinstance(inputs, Tensor) or inputs.dim() < 1 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must be a non-empty tensor (N, ...), got {_describe(inputs)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    captured: dict[str, Tensor] = {}

    def hook_for(name: str) -> Callable[[nn.Module, tuple, object], None]:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if not isinstance(output, Tensor):
                raise TypeError(f"layer {name!r} returned {type(output).__name__}, not a tensor")
            if name in captured:
                raise RuntimeError(f"layer {name!r} ran more than once in one forward pass")
            captured[name] = output.detach().flatten(1).float().cpu()

        return hook

    feats: dict[str, list[Tensor]] = {name: [] for name, _ in resolved}
    outs: list[Tensor] = []
    handles = [m.register_forward_hook(hook_for(n)) for n, m in resolved]
    try:
        with torch.no_grad(), preserved_state(model):
            for batch in inputs.split(batch_size):
                captured.clear()
                outs.append(model(batch).detach().cpu())
                for name in feats:
                    if name not in captured:
                        raise RuntimeError(f"layer {name!r} did not run in the forward pass")
                    feats[name].append(captured[name])
    finally:
        for handle in handles:
            handle.remove()
    return {n: torch.cat(v) for n, v in feats.items()}, torch.cat(outs)


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
        batch_size: images per forward pass.

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
    names = [n for n, _ in resolve_layers(model, layers)]

    reference, _ = layer_features(model, images, layers, batch_size)
    curves = {}
    for name, values in grids.items():
        values = torch.as_tensor(values, dtype=torch.float32).flatten()
        moved = torch.cat([transform_images(images, name, float(v), fills) for v in values])
        feats, logits = layer_features(model, moved, layers, batch_size)
        if logits.dim() != 2 or int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0:
            raise ValueError(
                f"model output {tuple(logits.shape)} is not (N, K) logits covering labels "
                f"{int(labels.min())}..{int(labels.max())}"
            )
        t = len(values)
        prob = logits.float().softmax(1).view(t, n, -1)[:, torch.arange(n), labels].T
        dist = {
            layer: (feats[layer].view(t, n, -1) - reference[layer]).norm(dim=2).T for layer in names
        }
        curves[name] = InvarianceCurve(name, values, dist, prob.contiguous())
    return InvarianceResult(curves, tuple(names), labels.clone(), tuple(fills))


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


def _describe(x: object) -> str:
    """Short description of a bad argument for error messages."""
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__
