"""Up-front checks of ``Occlusion.attribute``'s arguments, with messages that name the argument.

Captum validates these with ``assert`` statements deep inside its loop (``AssertionError:
Sliding window dimensions ...``), fails on an out-of-range target with an ``IndexError`` after
the first forward pass, and silently returns NaN for a zero or negative stride. The checks here
run before the sweep (the target's, on the first, unoccluded, evaluation) and raise
``ValueError`` / ``TypeError`` naming the offending value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from deconvnet_attr.captum_compat import BaselineType, TargetType, TensorOrTupleOfTensorsGeneric

__all__ = ["TargetChecked", "check_baselines", "check_windows"]


def _check_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _per_input(value: object, inputs: tuple[Tensor, ...], name: str, wrap: bool) -> tuple:
    """``value`` as one entry per input: Captum wraps a single input's entry when ``wrap``."""
    per_input = (value,) if wrap else value
    if not isinstance(per_input, tuple) or len(per_input) != len(inputs):
        raise ValueError(
            f"{name} must hold one entry per input tensor ({len(inputs)}), got {value!r}"
        )
    return per_input


def check_windows(
    inputs: TensorOrTupleOfTensorsGeneric,
    sliding_window_shapes: object,
    strides: object,
    perturbations_per_eval: object,
) -> None:
    """Validate ``Occlusion.attribute``'s geometry up front, with messages naming the argument.

    Captum asserts some of these deep in its loop and silently returns NaN for a zero or
    negative stride.
    """
    tensors = inputs if isinstance(inputs, tuple) else (inputs,)
    if not tensors or not all(isinstance(t, Tensor) for t in tensors):
        raise TypeError(f"inputs must be a tensor or a tuple of tensors, got {type(inputs)}")
    _check_int(perturbations_per_eval, "perturbations_per_eval")
    if not isinstance(sliding_window_shapes, tuple) or not sliding_window_shapes:
        raise ValueError(
            f"sliding_window_shapes must be a tuple of ints (or one tuple per input), "
            f"got {sliding_window_shapes!r}"
        )
    # Captum's rules: a window given as ints is the one input's; strides are one input's unless
    # they are a 1-tuple (for a single input) or one entry per input
    shapes = _per_input(
        sliding_window_shapes,
        tensors,
        "sliding_window_shapes",
        isinstance(sliding_window_shapes[0], int),
    )
    stride_list = (
        (None,) * len(tensors)
        if strides is None
        else _per_input(
            strides,
            tensors,
            "strides",
            len(tensors) == 1 and not (isinstance(strides, tuple) and len(strides) == 1),
        )
    )
    for i, (x, shape, stride) in enumerate(zip(tensors, shapes, stride_list, strict=True)):
        where = f" for input {i}" if len(tensors) > 1 else ""
        dims = tuple(x.shape[1:])
        if not isinstance(shape, tuple) or len(shape) != len(dims):
            raise ValueError(
                f"sliding_window_shapes{where} must be a tuple of {len(dims)} ints (the input "
                f"{tuple(x.shape)} without its batch dimension), got {shape!r}"
            )
        for size in shape:
            _check_int(size, f"each sliding_window_shapes entry{where}")
        if any(s > d for s, d in zip(shape, dims, strict=True)):
            raise ValueError(
                f"sliding_window_shapes{where} {shape} exceeds the input's dimensions {dims}"
            )
        if stride is None:
            continue
        steps = (stride,) * len(dims) if isinstance(stride, int) else stride
        if not isinstance(steps, tuple) or len(steps) != len(dims):
            raise ValueError(
                f"strides{where} must be an int or a tuple of {len(dims)} ints, got {stride!r}"
            )
        if any(isinstance(step, bool) or not isinstance(step, int) or step < 1 for step in steps):
            raise ValueError(f"strides{where} must be positive ints, got strides={strides!r}")
        # as Captum: where the window does not span the whole dimension, stride <= window
        if any(st > sz and sz < d for st, sz, d in zip(steps, shape, dims, strict=True)):
            raise ValueError(
                f"strides{where} {stride!r} exceed the sliding window {shape} along a "
                f"dimension the window does not span: some elements would never be occluded"
            )


def check_baselines(inputs: TensorOrTupleOfTensorsGeneric, baselines: BaselineType) -> None:
    """A baseline tensor must broadcast to its input (Captum fails with a RuntimeError)."""
    tensors = inputs if isinstance(inputs, tuple) else (inputs,)
    per_input = baselines if isinstance(baselines, tuple) else (baselines,)
    if len(per_input) != len(tensors):
        raise ValueError(
            f"baselines must hold one entry per input tensor ({len(tensors)}), got {baselines!r}"
        )
    for i, (x, baseline) in enumerate(zip(tensors, per_input, strict=True)):
        if not isinstance(baseline, Tensor):
            continue
        try:
            fits = torch.broadcast_shapes(baseline.shape, x.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            where = f" for input {i}" if len(tensors) > 1 else ""
            raise ValueError(
                f"baselines{where} of shape {tuple(baseline.shape)} does not broadcast to the "
                f"input's shape {tuple(x.shape)}"
            )


def _check_target(target: TargetType, shape: tuple[int, ...]) -> None:
    """Raise ``ValueError`` naming ``target`` if it does not index an output of ``shape``.

    Captum's convention: an int or tuple for every example, or a list / 1-D tensor with one
    int or tuple per example, indexing the dimensions after the batch dimension. (Whether the
    entries are integers at all is checked elsewhere.)
    """
    if target is None:
        return
    if isinstance(target, Tensor):
        target = target.item() if target.numel() == 1 else target.tolist()
    scalar = not isinstance(target, list)
    if not scalar and len(target) != shape[0]:
        raise ValueError(
            f"target holds {len(target)} entries but the forward_func output of shape {shape} "
            f"has {shape[0]} examples: give one target per example, got {target!r}"
        )
    for entry in [target] if scalar else target:
        index = entry if isinstance(entry, tuple) else (entry,)
        sizes = shape[1:]
        bad = len(index) > len(sizes) or any(
            isinstance(i, int | float) and not (-size if scalar else 0) <= i < size
            for i, size in zip(index, sizes, strict=False)
        )
        if bad:
            raise ValueError(
                f"target {target!r} does not index the forward_func output of shape {shape} "
                f"(entry {entry!r} is out of range)"
            )


class TargetChecked:
    """``fn`` whose first output (Captum's unoccluded evaluation) is checked against ``target``,
    so an out-of-range target is a ValueError naming it instead of Captum's IndexError."""

    def __init__(self, fn: Callable[..., Any], target: TargetType) -> None:
        self.fn, self.target, self.checked = fn, target, False

    def __call__(self, *args: Any) -> Any:
        output = self.fn(*args)
        if not self.checked and isinstance(output, Tensor):
            _check_target(self.target, tuple(output.shape))
        self.checked = True
        return output
