"""Specs of the window ops (convolution, pooling, constant padding) from their arguments."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from deconvnet_attr.geometry.window import OpSpec, Window, pair

__all__ = ["avg_pool_spec", "conv_spec", "identity", "max_pool_spec", "pad_spec"]


def identity(region: Tensor) -> Tensor:
    return region


def conv_spec(
    weight: Tensor,
    bias: Tensor | None,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
    padding_mode: str = "zeros",
) -> OpSpec:
    """A 2-D convolution (any groups, dilation, stride, zero padding) as a window op."""
    if weight.dim() != 4:
        return OpSpec("opaque", reason=f"{weight.dim() - 2}-D convolution")
    if padding_mode != "zeros":
        return OpSpec("opaque", reason=f"convolution with padding_mode={padding_mode!r}")
    kernel = (int(weight.shape[2]), int(weight.shape[3]))
    dilation = pair(dilation, "dilation")
    if padding == "valid":
        padding = 0
    elif padding == "same":
        total = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        if any(t % 2 for t in total):
            return OpSpec("opaque", reason="padding='same' with asymmetric padding")
        padding = (total[0] // 2, total[1] // 2)
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    window = Window(kernel, stride, padding, dilation)

    def unpadded(region: Tensor) -> Tensor:
        return F.conv2d(region, weight, bias, stride, 0, dilation, groups)

    macs = int(weight.shape[1]) * kernel[0] * kernel[1]
    return OpSpec("window", window, unpadded, 0.0, macs)


def max_pool_spec(
    kernel_size: Any, stride: Any, padding: Any, dilation: Any, return_indices: bool
) -> OpSpec:
    """Max pooling as a window op whose padding stands for -inf (ceil mode included: the
    engine pads with -inf up to the cached output size)."""
    if return_indices:
        return OpSpec("opaque", reason="max pooling with return_indices=True")
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None or stride == [] else pair(stride, "stride")
    window = Window(kernel, stride, pair(padding, "padding"), pair(dilation, "dilation"))

    def unpadded(region: Tensor) -> Tensor:
        return F.max_pool2d(region, kernel, stride, 0, window.dilation)

    return OpSpec("window", window, unpadded, -math.inf)


def avg_pool_spec(
    kernel_size: Any,
    stride: Any,
    padding: Any,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
    in_shape: torch.Size | None,
    out_shape: torch.Size | None,
    structural: bool,
) -> OpSpec:
    """Average pooling as a window op, when every window divides by the kernel size (padding
    counted, no window clipped by ``ceil_mode``); otherwise opaque (the layout stays known)."""
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None or stride == [] else pair(stride, "stride")
    padding = pair(padding, "padding")
    window = Window(kernel, stride, padding)
    if structural:
        return OpSpec("window", window)
    scale = None
    if not count_include_pad and any(padding):
        if in_shape is None or divisor_override is not None:
            return OpSpec("opaque", window, reason="average pooling with count_include_pad=False")
        ones = torch.ones(1, 1, *in_shape[-2:])
        inside = F.avg_pool2d(ones, kernel, stride, padding, ceil_mode, True, 1)[0, 0]
        scale = kernel[0] * kernel[1] / inside
    if ceil_mode and in_shape is not None and out_shape is not None:
        floor_out = [
            (in_shape[-2 + d] + 2 * padding[d] - kernel[d]) // stride[d] + 1 for d in range(2)
        ]
        if list(out_shape[-2:]) != floor_out:
            return OpSpec("opaque", window, reason="average pooling whose ceil_mode clips windows")

    def unpadded(region: Tensor) -> Tensor:
        return F.avg_pool2d(region, kernel, stride, 0, False, True, divisor_override)

    return OpSpec("window", window, unpadded, 0.0, scale=scale)


def pad_spec(pad: Any, mode: str, value: float | None) -> OpSpec:
    """``F.pad`` of the last two dims with a constant: a 1x1 window shifted by the top / left
    pad, whose padding stands for ``value``. Other modes mirror or repeat the border: opaque."""
    if mode != "constant":
        return OpSpec("opaque", reason=f"padding with mode={mode!r}")
    pads = [int(p) for p in pad]
    if len(pads) not in (2, 4):
        return OpSpec("opaque", reason=f"padding of {len(pads) // 2} dims")
    top = pads[2] if len(pads) == 4 else 0
    window = Window((1, 1), (1, 1), (top, pads[0]))
    return OpSpec("window", window, identity, 0.0 if value is None else float(value))
