"""ZFNet (Zeiler & Fergus 2013, Figure 3) and its small Fashion-MNIST variant.

Both networks are :class:`ZFNet` instances: an ``nn.Sequential`` whose children carry the paper's
layer names, so ``model.conv5`` or ``model.fc6`` reach a layer directly and the forward pass is
plain module composition (easy to trace, hook and ablate). Children, in order::

    normalize                       per-channel (x - mean) / std; inputs are images in [0, 1]
    conv1 relu1 pool1 norm1         layer 1: conv, ReLU, 3x3/2 max-pool, contrast normalisation
    conv2 relu2 pool2 norm2         layer 2: same pattern
    conv3 relu3                     layer 3: 3x3 conv
    conv4 relu4                     layer 4: 3x3 conv
    conv5 relu5 pool5               layer 5: 3x3 conv, 3x3/2 max-pool
    flatten
    fc6 relu6 drop6                 layer 6: fully connected, dropout 0.5
    fc7 relu7 drop7                 layer 7: fully connected, dropout 0.5
    fc8                             layer 8: class logits

Contrast normalisation is Krizhevsky et al.'s across-channel normalisation (which the paper
reuses), ``b_c = a_c / (k + alpha * sum_{c' within 2 of c} a_c'^2)^beta`` with ``k = 2``,
``beta = 0.75`` and, for :func:`zfnet`, his ``alpha = 1e-4``. PyTorch's ``nn.LocalResponseNorm``
divides its ``alpha`` by the window ``size`` (5), so the module gets ``alpha = 5 * lrn_alpha``
(:attr:`ZFNetConfig.lrn_alpha`). The small Fashion-MNIST models keep the ``lrn_alpha = 2e-5``
they were trained with (module alpha 1e-4): with their activation scale the sum term is tiny and
the layer is, in effect, a constant ``2 ** -0.75 = 0.5946`` (see ``docs/fig6.md``).
ReLUs are not in-place, so activation hooks see every intermediate tensor.

Removing layers (``remove=``) builds the architecture variant of the paper's Table 3 ablations:
``conv3``, ``conv4``, ``conv5``, ``fc6`` and ``fc7`` may be removed, each together with its ReLU
(and, for fc layers, its dropout). The conv3..conv5 block keeps the spatial size, so a removed conv
layer is bridged by giving the next remaining conv layer (or, if none remains, pool5) the channel
count of the previous remaining one; ``pool5`` always stays. A removed fc layer is bridged the same
way: the next remaining fc layer takes the previous one's output width (``fc7`` takes the flattened
pool5 features when ``fc6`` is gone; ``fc8`` takes them when both are gone). ``conv1``, ``conv2``
and ``fc8`` cannot be removed (they fix the input stem and the output).

Changing widths (``width=``, e.g. ``{"fc6": 192, "fc7": 192}``) builds the paper's Table 3
"adjust layers" rows: it sets the output channels of ``conv3``..``conv5`` or the units of
``fc6``/``fc7`` (:data:`WIDENABLE_LAYERS`); the built model's ``config`` records the new widths,
so its model file rebuilds the same shapes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

__all__ = [
    "REMOVABLE_LAYERS",
    "WIDENABLE_LAYERS",
    "ZFNet",
    "ZFNetConfig",
    "Normalize",
    "FIG6_ALEXNET_STEM",
    "FIG6_ZFNET_STEM",
    "build_zfnet",
    "with_widths",
    "fig6_alexnet_stem",
    "fig6_zfnet_stem",
    "zfnet",
    "zfnet_fashion",
]

REMOVABLE_LAYERS = ("conv3", "conv4", "conv5", "fc6", "fc7")
WIDENABLE_LAYERS = REMOVABLE_LAYERS  # the layers whose width ``width=`` may set
LRN_SIZE = 5  # channels in the contrast-normalisation window

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` for inputs of shape ``(N, C, H, W)`` in [0, 1]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


@dataclass(frozen=True)
class ZFNetConfig:
    """Everything that differs between the ImageNet network and its small variant.

    ``conv1``/``conv2`` are ``(channels, kernel, stride, padding)``; ``pool_padding`` is the padding
    of (pool1, pool2, pool5), all 3x3 windows with stride 2; ``convs`` are the channel counts of
    conv3..conv5 (3x3, stride 1, padding 1); ``fc`` the widths of fc6 and fc7. ``pool5_size`` is the
    side of the pool5 map for an ``input_size`` input; ``init`` is ``"paper"`` (N(0, 0.01)) or
    ``"kaiming"`` (He normal, fan-in). ``lrn_alpha`` is Krizhevsky's contrast-normalisation
    ``alpha`` (the coefficient of the sum of squares; ``nn.LocalResponseNorm`` gets 5x it). Its
    default, 2e-5, is what model files written before the field existed were built with.
    """

    in_channels: int
    input_size: int
    conv1: tuple[int, int, int, int]
    conv2: tuple[int, int, int, int]
    convs: tuple[int, int, int]
    pool_padding: tuple[int, int, int]
    pool5_size: int
    fc: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    init: str
    lrn_alpha: float = 2e-5


# 224 -> conv1 110 -> pool1 55 -> conv2 26 -> pool2 13 -> conv3..5 13 -> pool5 6; fc6 9216 inputs.
ZFNET_IMAGENET = ZFNetConfig(
    in_channels=3,
    input_size=224,
    conv1=(96, 7, 2, 1),
    conv2=(256, 5, 2, 0),
    convs=(384, 384, 256),
    pool_padding=(1, 1, 0),
    pool5_size=6,
    fc=(4096, 4096),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    init="paper",
    lrn_alpha=1e-4,
)

# 28 -> conv1 28 -> pool1 14 -> conv2 14 -> pool2 7 -> conv3..5 7 -> pool5 3; fc6 has 32*9 inputs.
ZFNET_FASHION = ZFNetConfig(
    in_channels=1,
    input_size=28,
    conv1=(16, 7, 1, 3),
    conv2=(32, 5, 1, 2),
    convs=(48, 48, 32),
    pool_padding=(1, 1, 0),
    pool5_size=3,
    fc=(384, 384),
    mean=FASHION_MNIST_MEAN,
    std=FASHION_MNIST_STD,
    init="kaiming",
)


# Fig. 6 stems on Fashion-MNIST upsampled 4x (112 px = half of 224): the paper's kernels and
# strides, everything after conv2 as ZFNET_FASHION, so both end in the same 7x7 map at conv3.
# AlexNet stem: 112 -> conv1 11x11/4 27 -> pool1 14 -> conv2 5x5/1 14 -> pool2 7 -> pool5 3.
FIG6_ALEXNET_STEM = ZFNetConfig(
    in_channels=1,
    input_size=112,
    conv1=(16, 11, 4, 2),
    conv2=(32, 5, 1, 2),
    convs=(48, 48, 32),
    pool_padding=(1, 1, 0),
    pool5_size=3,
    fc=(384, 384),
    mean=FASHION_MNIST_MEAN,
    std=FASHION_MNIST_STD,
    init="kaiming",
)

# ZFNet stem: 112 -> conv1 7x7/2 54 -> pool1 27 -> conv2 5x5/2 14 -> pool2 7 -> pool5 3.
FIG6_ZFNET_STEM = ZFNetConfig(
    in_channels=1,
    input_size=112,
    conv1=(16, 7, 2, 1),
    conv2=(32, 5, 2, 2),
    convs=(48, 48, 32),
    pool_padding=(1, 1, 0),
    pool5_size=3,
    fc=(384, 384),
    mean=FASHION_MNIST_MEAN,
    std=FASHION_MNIST_STD,
    init="kaiming",
)


class ZFNet(nn.Sequential):
    """A ZFNet-topology network; see the module docstring for the child names.

    Input ``(N, in_channels, input_size, input_size)`` images in [0, 1]; output ``(N, num_classes)``
    logits. ``class_names`` is ``None`` or a tuple of ``num_classes`` strings; ``removed`` lists
    the layers left out (:data:`REMOVABLE_LAYERS`).
    """

    # the children every variant has (removable ones are reached by name, e.g. ``model.fc6``)
    normalize: Normalize
    conv1: nn.Conv2d
    conv2: nn.Conv2d
    fc8: nn.Linear
    epoch: int | None  # set by load_model: the training epoch of a model file

    def __init__(
        self,
        layers: OrderedDict[str, nn.Module],
        *,
        config: ZFNetConfig,
        num_classes: int,
        removed: tuple[str, ...],
    ) -> None:
        super().__init__(layers)
        self.config = config
        self.num_classes = num_classes
        self.removed = removed
        self.in_channels = config.in_channels
        self.input_size = config.input_size
        self.class_names: tuple[str, ...] | None = None


def _check_remove(remove: Sequence[str]) -> tuple[str, ...]:
    if isinstance(remove, str):
        raise TypeError(f"remove must be a sequence of layer names, not the string {remove!r}")
    for name in remove:
        if name not in REMOVABLE_LAYERS:
            raise ValueError(
                f"cannot remove layer {name!r}; removable layers are {', '.join(REMOVABLE_LAYERS)}"
            )
    return tuple(n for n in REMOVABLE_LAYERS if n in set(remove))


def with_widths(config: ZFNetConfig, width: Mapping[str, int]) -> ZFNetConfig:
    """``config`` with the widths of ``width`` (layer name -> channels or units) replaced.

    Raises:
        TypeError: ``width`` is not a mapping, or a width is not an int.
        ValueError: a layer not in :data:`WIDENABLE_LAYERS`, or a width < 1.
    """
    if not isinstance(width, Mapping):
        raise TypeError(f"width must be a mapping of layer name to width, got {width!r}")
    for name, value in width.items():
        if name not in WIDENABLE_LAYERS:
            raise ValueError(
                f"cannot set the width of layer {name!r}; widenable layers are "
                f"{', '.join(WIDENABLE_LAYERS)}"
            )
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"width of {name} must be an int, got {value!r}")
        if value < 1:
            raise ValueError(f"width of {name} must be >= 1, got {value}")
    c3, c4, c5 = config.convs
    f6, f7 = config.fc
    convs = (width.get("conv3", c3), width.get("conv4", c4), width.get("conv5", c5))
    return replace(config, convs=convs, fc=(width.get("fc6", f6), width.get("fc7", f7)))


def build_zfnet(
    config: ZFNetConfig,
    num_classes: int,
    remove: Sequence[str] = (),
    width: Mapping[str, int] | None = None,
) -> ZFNet:
    """Build a :class:`ZFNet` from ``config`` with ``num_classes`` outputs, minus ``remove``,
    with the layer widths of ``width`` (see :func:`with_widths`) if given."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    removed = _check_remove(remove)
    if width:
        config = with_widths(config, width)
    p1, p2, p5 = config.pool_padding
    c1, k1, s1, pad1 = config.conv1
    c2, k2, s2, pad2 = config.conv2
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["normalize"] = Normalize(config.mean, config.std)
    layers["conv1"] = nn.Conv2d(config.in_channels, c1, k1, stride=s1, padding=pad1)
    layers["relu1"] = nn.ReLU()
    layers["pool1"] = nn.MaxPool2d(3, stride=2, padding=p1)
    layers["norm1"] = nn.LocalResponseNorm(
        LRN_SIZE, alpha=LRN_SIZE * config.lrn_alpha, beta=0.75, k=2.0
    )
    layers["conv2"] = nn.Conv2d(c1, c2, k2, stride=s2, padding=pad2)
    layers["relu2"] = nn.ReLU()
    layers["pool2"] = nn.MaxPool2d(3, stride=2, padding=p2)
    layers["norm2"] = nn.LocalResponseNorm(
        LRN_SIZE, alpha=LRN_SIZE * config.lrn_alpha, beta=0.75, k=2.0
    )
    channels = c2
    for i, maps in zip((3, 4, 5), config.convs, strict=True):
        if f"conv{i}" in removed:
            continue
        layers[f"conv{i}"] = nn.Conv2d(channels, maps, 3, padding=1)
        layers[f"relu{i}"] = nn.ReLU()
        channels = maps
    layers["pool5"] = nn.MaxPool2d(3, stride=2, padding=p5)
    layers["flatten"] = nn.Flatten(1)
    features = channels * config.pool5_size**2
    for i, units in zip((6, 7), config.fc, strict=True):
        if f"fc{i}" in removed:
            continue
        layers[f"fc{i}"] = nn.Linear(features, units)
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"drop{i}"] = nn.Dropout(0.5)
        features = units
    layers["fc8"] = nn.Linear(features, num_classes)
    model = ZFNet(layers, config=config, num_classes=num_classes, removed=removed)
    _init_weights(model, config.init)
    return model


def _init_weights(model: nn.Module, scheme: str) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            if scheme == "paper":
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
            else:
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def zfnet(
    num_classes: int = 1000, remove: Sequence[str] = (), width: Mapping[str, int] | None = None
) -> ZFNet:
    """The paper's ImageNet net (Figure 3): ``(N, 3, 224, 224)`` in [0, 1] → ``(N, num_classes)``.

    62,357,608 parameters for 1000 classes; ImageNet mean/std normalisation is the first child.
    Weights are initialised as in the paper: N(0, 0.01), biases 0.
    """
    return build_zfnet(ZFNET_IMAGENET, num_classes, remove, width)


def zfnet_fashion(
    num_classes: int = 10, remove: Sequence[str] = (), width: Mapping[str, int] | None = None
) -> ZFNet:
    """The small variant for ``(N, 1, 28, 28)`` grayscale images in [0, 1] → ``(N, num_classes)``.

    Same topology as :func:`zfnet` (7x7 conv1, two pooled and contrast-normalised stages, three
    3x3 convs, pool5, two dropout fc layers) with stride-1 conv1/conv2 (the input is 8x smaller)
    and narrow layers (16-32-48-48-32 channels, fc 384-384; 324,810 parameters for 10 classes) so
    that it trains on 2 CPU cores. Map sizes 28 → 28 → 14 → 14 → 7 → 7 → 7 → 7 → 3, 288 inputs
    to fc6.

    Deviation from the paper: He (Kaiming) normal initialisation instead of N(0, 0.01). With these
    narrow fan-ins, N(0, 0.01) shrinks the activation scale about 8x per layer (fc8 outputs have a
    standard deviation of ~5e-8 at initialisation on Fashion-MNIST), so gradients vanish.
    """
    return build_zfnet(ZFNET_FASHION, num_classes, remove, width)


def fig6_alexnet_stem(
    num_classes: int = 10, remove: Sequence[str] = (), width: Mapping[str, int] | None = None
) -> ZFNet:
    """Fig. 6's AlexNet-stem net: ``(N, 1, 112, 112)`` in [0, 1] → ``(N, num_classes)``.

    conv1 is AlexNet's 11x11 stride 4 (padding 2), conv2 5x5 stride 1; the rest is
    :func:`zfnet_fashion`'s. For Fashion-MNIST upsampled 4x
    (:func:`deconvnet_attr.data.upsample_images`); see ``docs/fig6.md``.
    """
    return build_zfnet(FIG6_ALEXNET_STEM, num_classes, remove, width)


def fig6_zfnet_stem(
    num_classes: int = 10, remove: Sequence[str] = (), width: Mapping[str, int] | None = None
) -> ZFNet:
    """Fig. 6's ZFNet-stem net: ``(N, 1, 112, 112)`` in [0, 1] → ``(N, num_classes)``.

    conv1 is ZFNet's 7x7 stride 2 (padding 1), conv2 5x5 stride 2 (padding 2, so both Fig. 6
    stems reach the same 14x14 conv2 map); the rest is :func:`zfnet_fashion`'s.
    """
    return build_zfnet(FIG6_ZFNET_STEM, num_classes, remove, width)
