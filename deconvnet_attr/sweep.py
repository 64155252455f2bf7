"""Occlusion's perturbation loop: Captum's ``Occlusion`` arithmetic without its per-window masks.

Captum builds each occluded batch as ``x * (1 - mask) + baseline * mask`` from one full-size mask
per window and accumulates ``diff * mask`` over the batch: several passes over ``B`` full-size
inputs per batch, 25-40 % of a mobile network's whole sweep at 224 px (docs/performance.md).
Here a window is a slice: a batch is the input repeated with the baseline copied into each
window, the accumulation one slice-add per window, and the coverage counts are computed once.
When an incremental engine evaluates a single 4-D input, the batch is not even built: the engine
receives each sample's changed rectangle as a :class:`~deconvnet_attr.incremental.patches.Patch`.

Everything else is Captum's: the window order (dimension 0 varies fastest, input after input),
windows clipped at the border, target and ``additional_forward_args`` expansion, the result
``sum of diffs / coverage`` as float32 of shape ``(n_outputs, *input.shape[1:])``. Results equal
Captum's up to float rounding (the order of summation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from deconvnet_attr.captum_compat import (
    TargetType,
    _expand_additional_forward_args,
    _expand_target,
    _format_additional_forward_args,
    _format_and_verify_sliding_window_shapes,
    _format_and_verify_strides,
    _run_forward,
)
from deconvnet_attr.incremental import IncrementalForward
from deconvnet_attr.incremental.patches import Patch, gather
from deconvnet_attr.occlusion_args import TargetChecked

__all__ = ["Window", "fast_reason", "occlusion_windows", "sweep"]


@dataclass(frozen=True)
class Window:
    """One occluding window: input ``index`` and the ``slices`` of its non-batch dimensions
    (clipped at the input's border, as Captum's mask is)."""

    index: int
    slices: tuple[slice, ...]


def occlusion_windows(
    inputs: tuple[Tensor, ...],
    sliding_window_shapes: Any,
    strides: Any,
) -> list[Window]:
    """Every window of ``Occlusion.attribute``, in Captum's feature order.

    Per input, ``ceil((size - window) / stride) + 1`` positions along each non-batch dimension,
    the first dimension varying fastest (Captum's ``_occlusion_mask``).
    """
    shapes = _format_and_verify_sliding_window_shapes(sliding_window_shapes, inputs)
    steps = _format_and_verify_strides(strides, inputs)
    found = []
    for index, (x, shape, step) in enumerate(zip(inputs, shapes, steps, strict=True)):
        dims = tuple(x.shape[1:])
        step = (step,) * len(dims) if isinstance(step, int) else tuple(step)
        counts = [math.ceil((d - s) / st) + 1 for d, s, st in zip(dims, shape, step, strict=True)]
        for feature in range(math.prod(counts)):
            slices = []
            for count, st, size, dim in zip(counts, step, shape, dims, strict=True):
                start = (feature % count) * st
                feature //= count
                slices.append(slice(start, min(start + size, dim)))
            found.append(Window(index, tuple(slices)))
    return found


def fast_reason(inputs: tuple[Tensor, ...], baselines: tuple[Any, ...]) -> str | None:
    """Why the loop here would not reproduce Captum's numbers, or None when it does.

    Captum's blend ``x * (1 - mask) + baseline * mask`` promotes dtypes; a slice assignment
    casts to the input's. The two agree for floating-point inputs whose tensor baselines have
    the input's dtype (and for any number as baseline).
    """
    for i, (x, baseline) in enumerate(zip(inputs, baselines, strict=True)):
        if not x.is_floating_point():
            return f"input {i} is not floating point ({x.dtype})"
        if x.numel() == 0:
            return f"input {i} is empty"
        if isinstance(baseline, Tensor) and (
            baseline.dtype != x.dtype or baseline.device != x.device
        ):
            return f"baseline {i} ({baseline.dtype}, {baseline.device}) differs from its input"
    return None


def _fill(x: Tensor, baseline: Any) -> Tensor | float | int:
    """The occluder's values for input ``x`` (N, ...): a number, or ``baseline`` broadcast."""
    return baseline.expand(x.shape) if isinstance(baseline, Tensor) else baseline


def _occluder(fill: Tensor | float | int, slices: tuple[slice, ...]) -> Tensor | float | int:
    """What a window at ``slices`` (non-batch dims) is filled with: the baseline's values there,
    or the baseline number."""
    return fill[(slice(None),) + slices] if isinstance(fill, Tensor) else fill


def _as_tensor(output: object) -> Tensor:
    """The forward output as a tensor (numbers as Captum's ``_parse_forward_out`` makes them)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, bool) or not isinstance(output, int | float):
        raise TypeError(
            f"forward_func must return a tensor, int or float, got {type(output).__name__}"
        )
    return torch.tensor(output, dtype=torch.int64 if isinstance(output, int) else torch.float64)


class _Batches:
    """Builds the occluded inputs of one batch of windows (``copies`` copies of the N examples,
    Captum's layout: sample ``j * N + n`` is example ``n`` under window ``j``)."""

    def __init__(self, inputs: tuple[Tensor, ...], fills: Sequence[Any]) -> None:
        self.inputs, self.fills = inputs, fills

    def whole(self, chunk: list[Window]) -> tuple[Tensor, ...]:
        """Each input repeated ``len(chunk)`` times, every window filled with its baseline."""
        out = tuple(x.repeat(len(chunk), *([1] * (x.dim() - 1))) for x in self.inputs)
        for j, window in enumerate(chunk):
            x = self.inputs[window.index]
            n = x.shape[0]
            fill = self.fills[window.index]
            where = (slice(j * n, (j + 1) * n),) + window.slices
            out[window.index][where] = _occluder(fill, window.slices)
        return out

    def patch(self, chunk: list[Window], full_fraction: float) -> Patch | None:
        """The one 4-D input's changed rectangles as a patch (a common size, each placed
        inward at the border), or None when they cover ``full_fraction`` of the map."""
        x, fill = self.inputs[0], self.fills[0]
        n, height, width = x.shape[0], x.shape[-2], x.shape[-1]
        h = max(w.slices[1].stop - w.slices[1].start for w in chunk)
        w = max(w.slices[2].stop - w.slices[2].start for w in chunk)
        if h * w >= full_fraction * height * width:
            return None
        tops = [min(win.slices[1].start, height - h) for win in chunk]
        lefts = [min(win.slices[2].start, width - w) for win in chunk]
        top = torch.tensor(tops, device=x.device).repeat_interleave(n)
        left = torch.tensor(lefts, device=x.device).repeat_interleave(n)
        data = gather(x, None, top, left, h, w, 0.0)
        for j, (win, t, lft) in enumerate(zip(chunk, tops, lefts, strict=True)):
            rows, cols = win.slices[1], win.slices[2]
            inside = (
                slice(j * n, (j + 1) * n),
                win.slices[0],
                slice(rows.start - t, rows.stop - t),
                slice(cols.start - lft, cols.stop - lft),
            )
            data[inside] = _occluder(fill, win.slices)
        return Patch(data, top, left)


def sweep(
    forward: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    windows: list[Window],
    baselines: tuple[Any, ...],
    target: TargetType,
    additional_forward_args: Any,
    perturbations_per_eval: int,
    show_progress: bool,
) -> tuple[Tensor, ...]:
    """Occlusion attributions of ``inputs`` (a tuple), one per input, as Captum computes them.

    ``forward`` is the model or an :class:`IncrementalForward` standing in for it; while the
    engine runs incrementally and there is one 4-D input, it receives patches, not batches.
    Each result has shape ``(n_outputs, *input.shape[1:])``, ``n_outputs`` the number of
    elements of the unoccluded, target-selected output (N for one scalar per example).
    """
    extra = _format_additional_forward_args(additional_forward_args)
    batches = _Batches(inputs, [_fill(x, b) for x, b in zip(inputs, baselines, strict=True)])
    engine = forward if isinstance(forward, IncrementalForward) else None
    patches = engine is not None and len(inputs) == 1 and inputs[0].dim() == 4
    n = inputs[0].shape[0]
    chunks = [
        windows[i : i + perturbations_per_eval]
        for i in range(0, len(windows), perturbations_per_eval)
    ]
    progress = tqdm(total=len(chunks) + 1, disable=not show_progress, desc="Occlusion attribution")
    with torch.no_grad(), progress:
        checked = TargetChecked(forward, target)  # a ValueError naming a bad target
        initial = _as_tensor(_run_forward(checked, inputs, target, extra))
        progress.update()
        n_outputs = initial.numel()
        flat_initial = initial.reshape(1, -1)
        totals = [
            torch.zeros((n_outputs, *x.shape[1:]), dtype=flat_initial.dtype, device=x.device)
            for x in inputs
        ]
        coverage = [torch.zeros((1, *x.shape[1:]), device=x.device) for x in inputs]
        for window in windows:
            coverage[window.index][(slice(None),) + window.slices] += 1
        for chunk in chunks:
            k = len(chunk)
            args = _expand_additional_forward_args(extra, k) if extra is not None else None
            occluded: tuple[Any, ...] | None = None
            if patches and engine is not None and engine.incremental:
                patch = batches.patch(chunk, engine.full_fraction)
                occluded = (patch,) if patch is not None else None
            if occluded is None:
                occluded = batches.whole(chunk)
            modified = _as_tensor(_run_forward(forward, occluded, _expand_target(target, k), args))
            if perturbations_per_eval > 1 and (
                not modified.shape or not initial.shape or modified.shape[0] != k * initial.shape[0]
            ):
                raise ValueError(
                    "with perturbations_per_eval > 1, forward_func's output must grow with the "
                    f"batch: for {n} example(s) it is {tuple(initial.shape)}, for {k * n} it is "
                    f"{tuple(modified.shape)}"
                )
            diff = flat_initial - modified.reshape(-1, n_outputs)
            for j, window in enumerate(chunk):
                total = totals[window.index]
                total[(slice(None),) + window.slices] += (
                    diff[j].to(total.device).view(-1, *([1] * (total.dim() - 1)))
                )
            progress.update()
    return tuple(total.float() / count for total, count in zip(totals, coverage, strict=True))
