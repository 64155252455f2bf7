"""Filter diagnostics for the paper's Fig. 6: per-filter RMS, dead filters, aliasing.

Zeiler & Fergus (Sec. 4.1, Fig. 6) chose ZFNet's 7x7 stride-2 first layer because visualising
AlexNet's 11x11 stride-4 one showed *dead* filters (no structure, a mix of very high and very low
frequencies with little in between) and *aliasing* in layer 2. This module measures both:

* **RMS** of each filter (one output channel's weights), the quantity feature-scale clipping caps.
* **Dead filters.** A filter is dead when it carries no pattern: the RMS of its weights after
  removing each input channel's spatial mean (its *structure*: what is left once the response to
  flat brightness is removed) is at most ``dead_ratio`` (default 0.1, i.e. 20 dB) times the
  layer's median structure. A constant filter and an all-zero one are therefore dead. Over data
  (``activations``), a filter is also dead when its response barely varies: its standard
  deviation over images and positions is at most ``dead_ratio`` times the layer's median (a
  ReLU unit that never fires has 0). The threshold is relative because weight scales differ
  between layers and training recipes. In the shipped Fig. 6 models, conv1 structure lies within
  0.77-1.31x of the median and response std within 0.37-3.1x, while the near-silent conv2 units
  fall to 0.001-0.08x: 0.1 (20 dB) is far below the living spread and far above float noise
  (``docs/fig6.md`` lists the borderline cases). It assumes at least half the filters are alive.
* **Aliasing score.** A stride-``s`` convolution samples its output every ``s`` pixels, so any
  frequency of the filter above the sampling lattice's Nyquist frequency ``1/(2s)`` cycles/pixel
  (in either axis) folds back onto a lower one. The score is the fraction of the filter's
  spectral energy ``|W(f)|^2`` (zero-padded DFT, summed over input channels) outside the square
  ``max(|fx|, |fy|) <= 1/(2s)``; it is 0 for stride 1, and a white-noise filter scores about
  ``1 - 1/s^2`` (0.75 for stride 2, 0.94 for stride 4). It is a property of the weights alone,
  so it compares architectures without data; what it cannot see is the input's spectrum (an
  input with no energy above ``1/(2s)`` never aliases), hence the data-driven complement
  :func:`shift_sensitivity`: how much a layer's spatially averaged response changes when the
  input moves by one pixel (an alias-free stack is nearly shift-invariant after averaging).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..taps import Taps

__all__ = [
    "FilterDiagnostics",
    "aliasing_score",
    "filter_diagnostics",
    "filter_rms",
    "filter_structure",
    "layer_activations",
    "layer_response_std",
    "shift_sensitivity",
]


@dataclass(frozen=True)
class FilterDiagnostics:
    """Per-filter diagnostics of one conv layer (``F`` filters).

    ``rms``, ``structure``, ``aliasing`` are float ``(F,)`` (``aliasing`` is NaN for an all-zero
    filter); ``response_std`` is ``(F,)`` or ``None`` without activations; ``dead`` is bool
    ``(F,)`` (dead by weights or, when given, by responses); ``stride`` the layer's stride;
    ``noise_aliasing`` the white-noise filter's expected score ``1 - 1/stride^2``.
    """

    name: str
    stride: int
    rms: Tensor
    structure: Tensor
    aliasing: Tensor
    response_std: Tensor | None
    dead: Tensor
    dead_ratio: float
    noise_aliasing: float

    @property
    def dead_count(self) -> int:
        return int(self.dead.sum())

    @property
    def mean_aliasing(self) -> float:
        """Mean aliasing score of the living filters (NaN if none lives)."""
        alive = self.aliasing[~self.dead]
        return float(alive.mean()) if len(alive) else float("nan")

    def to_markdown(self) -> str:
        """A per-filter markdown table (filter, RMS, structure, response std, aliasing, dead)."""
        rows = [
            "| filter | RMS | structure | response std | aliasing | dead |",
            "|---:|---:|---:|---:|---:|:---:|",
        ]
        for i in range(len(self.rms)):
            std = "—" if self.response_std is None else f"{float(self.response_std[i]):.4g}"
            rows.append(
                f"| {i} | {float(self.rms[i]):.4g} | {float(self.structure[i]):.4g} | {std} "
                f"| {float(self.aliasing[i]):.3f} | {'yes' if self.dead[i] else ''} |"
            )
        rows.append(
            f"\n{self.name}: stride {self.stride}, {self.dead_count}/{len(self.rms)} dead "
            f"(ratio {self.dead_ratio}), mean aliasing of living filters "
            f"{self.mean_aliasing:.3f} (white noise: {self.noise_aliasing:.3f})"
        )
        return "\n".join(rows)


def _weight_and_stride(layer_or_weight: nn.Conv2d | Tensor, stride: int | None) -> tuple:
    if isinstance(layer_or_weight, nn.Conv2d):
        sh, sw = layer_or_weight.stride
        if sh != sw:
            raise ValueError(f"only square strides are supported, got {layer_or_weight.stride}")
        if stride is not None and stride != sh:
            raise ValueError(f"stride={stride!r} contradicts the layer's stride {sh}")
        return layer_or_weight.weight.detach(), sh
    if not isinstance(layer_or_weight, Tensor):
        raise TypeError(
            f"layer_or_weight must be an nn.Conv2d or a weight tensor, got "
            f"{type(layer_or_weight).__name__}"
        )
    if layer_or_weight.dim() != 4:
        raise ValueError(f"weight must be (F, C, kh, kw), got shape {tuple(layer_or_weight.shape)}")
    stride = 1 if stride is None else stride
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    return layer_or_weight.detach(), stride


def filter_rms(weight: Tensor) -> Tensor:
    """RMS of each filter of ``weight`` ``(F, ...)``: ``sqrt(mean(w**2))`` over all but dim 0."""
    return weight.detach().double().flatten(1).pow(2).mean(1).sqrt()


def filter_structure(weight: Tensor) -> Tensor:
    """RMS of each filter ``(F, C, kh, kw)`` after removing each input channel's spatial mean."""
    w = weight.detach().double()
    return (w - w.mean(dim=(2, 3), keepdim=True)).flatten(1).pow(2).mean(1).sqrt()


def aliasing_score(weight: Tensor, stride: int, size: int = 64) -> Tensor:
    """Fraction of each filter's spectral energy that a stride-``stride`` sampling folds back.

    ``weight`` ``(F, C, kh, kw)`` is zero-padded to ``size x size`` (at least the kernel) and
    transformed; returns float64 ``(F,)``: energy at ``max(|fx|, |fy|) > 1/(2 stride)`` over the
    total (NaN for an all-zero filter). ``size`` should be a multiple of ``2 * stride`` so the
    band edge falls on the frequency grid.
    """
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    kh, kw = weight.shape[-2:]
    if not isinstance(size, int) or size < max(kh, kw):
        raise ValueError(f"size must be an int >= the kernel size {max(kh, kw)}, got {size!r}")
    spectrum = torch.fft.fft2(weight.detach().double(), s=(size, size)).abs().pow(2).sum(1)
    freq = torch.fft.fftfreq(size, dtype=torch.float64).abs()
    outside = torch.maximum(freq.view(-1, 1), freq.view(1, -1)) > 1 / (2 * stride) + 1e-12
    total = spectrum.flatten(1).sum(1)
    folded = spectrum[:, outside].sum(1)
    return torch.where(total > 0, folded / total.clamp_min(1e-300), torch.nan)


def filter_diagnostics(
    layer_or_weight: nn.Conv2d | Tensor,
    activations: Tensor | None = None,
    *,
    response_std: Tensor | None = None,
    stride: int | None = None,
    dead_ratio: float = 0.1,
    name: str = "conv",
) -> FilterDiagnostics:
    """Diagnose a conv layer's filters (see the module docstring for the definitions).

    Args:
        layer_or_weight: an ``nn.Conv2d`` (its stride is used) or a weight ``(F, C, kh, kw)``.
        activations: optional responses of the layer over data, ``(N, F, H, W)`` (e.g. the
            output of its ReLU, :func:`layer_activations`); adds the response-based dead test.
        response_std: instead of ``activations``, each filter's response standard deviation
            ``(F,)`` over them (:func:`layer_response_std`, streamed: no ``(N, F, H, W)`` held).
        stride: the stride for a bare weight (default 1); must agree with a layer's.
        dead_ratio: a filter is dead at or below this fraction of the layer's median.
        name: label for :meth:`FilterDiagnostics.to_markdown`.
    """
    weight, stride = _weight_and_stride(layer_or_weight, stride)
    if (
        not isinstance(dead_ratio, int | float)
        or isinstance(dead_ratio, bool)
        or not (0 <= dead_ratio < 1)
    ):
        raise ValueError(f"dead_ratio must be in [0, 1), got {dead_ratio!r}")
    structure = filter_structure(weight)
    dead = structure <= dead_ratio * structure.median()
    if activations is not None and response_std is not None:
        raise ValueError("pass activations or response_std, not both")
    if response_std is not None:
        if not isinstance(response_std, Tensor) or response_std.shape != weight.shape[:1]:
            raise ValueError(
                f"response_std must be ({weight.shape[0]},), got "
                f"{getattr(response_std, 'shape', type(response_std).__name__)}"
            )
        response_std = response_std.detach().double()
        dead = dead | (response_std <= dead_ratio * response_std.median())
    if activations is not None:
        if not isinstance(activations, Tensor) or activations.dim() != 4:
            raise ValueError(
                f"activations must be (N, F, H, W), got {getattr(activations, 'shape', None)}"
            )
        if activations.shape[1] != weight.shape[0]:
            raise ValueError(
                f"activations have {activations.shape[1]} channels, the layer {weight.shape[0]}"
            )
        acts = activations.detach()
        response_std = torch.stack([acts[:, f].double().std() for f in range(acts.shape[1])])
        dead = dead | (response_std <= dead_ratio * response_std.median())
    size = max(64, 2 * stride * -(-max(weight.shape[-2:]) // (2 * stride)))
    return FilterDiagnostics(
        name=name,
        stride=stride,
        rms=filter_rms(weight),
        structure=structure,
        aliasing=aliasing_score(weight, stride, size),
        response_std=response_std,
        dead=dead,
        dead_ratio=float(dead_ratio),
        noise_aliasing=1 - 1 / stride**2,
    )


@torch.no_grad()
def layer_activations(
    model: nn.Module, layer: nn.Module | str, images: Tensor, batch_size: int = 64
) -> Tensor:
    """Outputs of ``layer`` for ``images`` ``(N, ...)``, in batches → ``(N, ...)`` on the CPU.

    The model is run as given (call ``model.eval()`` first); nothing about it is changed.
    """
    taps = Taps(model, layer, stop=True)
    (name,) = taps.names
    device = next(model.parameters()).device
    out = [
        taps(images[i : i + batch_size].to(device))[name].cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


@torch.no_grad()
def layer_response_std(
    model: nn.Module, layer: nn.Module | str, images: Tensor, batch_size: int = 64
) -> Tensor:
    """Each channel's standard deviation ``(F,)`` (float64, Bessel-corrected) of ``layer``'s
    output ``(N, F, H, W)`` over ``images``, as ``filter_diagnostics`` computes from the whole
    output, but streamed: each batch's channel means and squared deviations are merged into the
    running ones (Chan, Golub & LeVeque's pairwise update), so one batch's output is held, not
    all ``N``."""
    taps = Taps(model, layer, stop=True)
    (name,) = taps.names
    device = next(model.parameters()).device
    count, mean, squares = 0, torch.zeros(()), torch.zeros(())
    for i in range(0, len(images), batch_size):
        out = taps(images[i : i + batch_size].to(device))[name].double().cpu()
        dims = [0, *range(2, out.dim())]  # all but the channel dim, without a transposed copy
        size, batch_mean = out.numel() // out.shape[1], out.mean(dims)
        out -= batch_mean.view(1, -1, *[1] * (out.dim() - 2))
        batch_squares = out.square_().sum(dims)
        delta, total = batch_mean - mean, count + size
        mean = mean + delta * size / total
        squares = squares + batch_squares + delta**2 * count * size / total
        count = total
    if count < 2:
        raise ValueError(f"need at least 2 response values per channel, got {count}")
    return (squares / (count - 1)).sqrt()


def _translate(x: Tensor, dx: int) -> Tensor:
    """Shift ``(N, C, H, W)`` right by ``dx`` pixels (left if negative), zero fill."""
    out = torch.zeros_like(x)
    if dx >= 0:
        out[..., dx:] = x[..., : x.shape[-1] - dx]
    else:
        out[..., :dx] = x[..., -dx:]
    return out


@torch.no_grad()
def shift_sensitivity(
    model: nn.Module, layer: nn.Module | str, images: Tensor, shifts: int = 8, batch_size: int = 64
) -> float:
    """Mean relative change of ``layer``'s spatially averaged response under 1..``shifts`` px moves.

    For each image and each horizontal shift ``d`` in ``1..shifts``, the per-channel spatial mean
    ``g`` of the layer's output is compared: ``||g(shift_d x) - g(x)|| / ||g(x)||``, averaged over
    images and shifts. An alias-free network is (nearly) shift-invariant after averaging, so the
    change comes from aliasing (and from content pushed across the border, which the zero
    background of Fashion-MNIST keeps small). ``images`` ``(N, C, H, W)``; returns a float.
    """
    if not isinstance(shifts, int) or isinstance(shifts, bool) or shifts < 1:
        raise ValueError(f"shifts must be a positive int, got {shifts!r}")
    base = layer_activations(model, layer, images, batch_size).double().flatten(2).mean(2)
    changes = []
    for d in range(1, shifts + 1):
        moved = layer_activations(model, layer, _translate(images, d), batch_size).double()
        diff = (moved.flatten(2).mean(2) - base).norm(dim=1) / base.norm(dim=1).clamp_min(1e-12)
        changes.append(diff)
    return float(torch.stack(changes).mean())
