"""Captum-compatible ``Occlusion`` that runs the incremental engine where it can.

``Occlusion`` is ``captum.attr.Occlusion`` with two changes. The perturbation loop is
:mod:`~deconvnet_attr.sweep` (Captum's arithmetic with windows as slices instead of full-size
masks); and when ``forward_func`` is an ``nn.Module`` (or its bound ``forward``, or a function)
that ``torch.fx`` can trace, the loop calls
:class:`~deconvnet_attr.incremental.IncrementalForward` instead of the model, which recomputes
only what each occluding window changes. Argument formatting, target and argument expansion and
the result's shape are Captum's; the numbers equal Captum's up to float rounding. Inputs whose
occlusion Captum computes with dtype promotion (integer inputs, baselines of another dtype) run
Captum's own loop. The ``deconvnet_attr.occlusion`` logger says at DEBUG level which path ran
and why.
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from captum.attr import Occlusion as CaptumOcclusion
from captum.log import log_usage
from torch import Tensor, nn
from torch.fx import GraphModule
from tqdm.auto import tqdm

from deconvnet_attr.captum_compat import (
    BaselineType,
    TargetType,
    TensorOrTupleOfTensorsGeneric,
    _format_input_baseline,
    _format_output,
    _is_tuple,
)
from deconvnet_attr.checks import check_target
from deconvnet_attr.geometry import layer_node
from deconvnet_attr.incremental import IncrementalForward, RunStats
from deconvnet_attr.incremental.cost import Estimate
from deconvnet_attr.occlusion_args import TargetChecked, check_baselines, check_windows
from deconvnet_attr.state import preserved_forward_state, preserved_state
from deconvnet_attr.sweep import fast_reason, occlusion_windows, sweep
from deconvnet_attr.taps import LayerSpec, Taps, resolve_layer
from deconvnet_attr.tracing import symbolic_trace

__all__ = ["Occlusion", "OcclusionMaps", "OcclusionRun", "occlusion_maps"]

logger = logging.getLogger("deconvnet_attr.occlusion")


@dataclass(frozen=True)
class OcclusionRun:
    """How the last ``attribute`` call ran: ``path`` is ``"incremental"`` or ``"full"``,
    ``reason`` why it was full (``None`` otherwise), ``stats`` the convolution work,
    ``estimate`` the cost model's verdict (``None`` when it gave none)."""

    path: str
    reason: str | None
    stats: RunStats
    estimate: Estimate | None = None


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _global_hooks() -> bool:
    """Whether module hooks registered for every module (``register_module_forward_hook``) exist."""
    return any(getattr(nn.modules.module, f"_global{hooks}", None) for hooks in _HOOK_DICTS)


def _hooked(module: nn.Module) -> bool:
    """Whether calling ``module`` runs hooks that its ``forward`` alone does not."""
    return _global_hooks() or any(getattr(module, hooks, None) for hooks in _HOOK_DICTS)


def _bound_owner(forward_func: Callable[..., Any]) -> nn.Module | None:
    """The module whose own ``forward`` ``forward_func`` is (``model.forward``), else None."""
    owner = getattr(forward_func, "__self__", None)
    if (
        isinstance(owner, nn.Module)
        and inspect.ismethod(forward_func)
        and forward_func.__func__ is type(owner).forward
    ):
        return owner
    return None


def _engine_target(forward_func: Callable[..., Any]) -> tuple[Callable[..., Any] | None, str]:
    """What the incremental engine may stand in for, or ``None`` and why it may not.

    The engine traces and (when it must fall back) calls a module, which runs the module's own
    hooks. Captum calls ``forward_func`` as given: a module with its hooks, a bound ``forward``
    without the root module's hooks (its submodules' hooks still run). So a bound ``forward`` is
    replaced by its module only when the module has no hooks of its own (nor global ones).
    """
    owner = _bound_owner(forward_func)
    if owner is None:
        return forward_func, ""
    if _hooked(owner):
        return None, (
            f"forward_func is the bound forward of {type(owner).__name__}, whose own hooks "
            "Captum's call skips: called as given"
        )
    return owner, ""


class Occlusion(CaptumOcclusion):
    r"""Drop-in for :class:`captum.attr.Occlusion`, several times faster on CNNs.

    Same constructor, ``attribute`` signature, argument meanings and return values as Captum's
    class (see its documentation, reproduced by ``help(captum.attr.Occlusion)``); ``forward_func``
    is called exactly as Captum calls it (a module with its hooks, a bound ``model.forward``
    without the root module's hooks). For a traceable ``forward_func`` the occluded batches are
    evaluated by exact incremental inference (``deconvnet_attr.incremental``); otherwise -- an
    untraceable callable such as a lambda that calls a model, a model with hooks or in training
    mode, in-place aliasing -- by full recomputation, exactly as Captum does. ``last_run``
    records which path the last call took.

    Departures from Captum, all checks or state kept: invalid ``sliding_window_shapes``,
    ``strides`` (zero or negative: Captum returns NaN) or ``target`` raise ``ValueError`` naming
    the argument before the sweep; the model's buffers (BatchNorm running statistics in training
    mode), training flags and ``requires_grad`` flags are restored afterwards, also on error
    (Captum leaves the statistics updated by every occluded batch). For a plain function or
    lambda the models restored are those :func:`~deconvnet_attr.state.modules_behind` finds in
    its closure and globals. Dropout in training mode stays active, as in Captum.
    """

    def __init__(self, forward_func: Callable[..., Tensor]) -> None:
        super().__init__(forward_func)
        self.last_run: OcclusionRun | None = None

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        sliding_window_shapes: tuple[int, ...] | tuple[tuple[int, ...], ...],
        strides: None | int | tuple[int, ...] | tuple[int | tuple[int, ...], ...] = None,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: object | None = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> TensorOrTupleOfTensorsGeneric:
        """Occlusion attributions, exactly as ``captum.attr.Occlusion.attribute`` computes them.

        Returns a tensor (or tuple of tensors) of the inputs' shapes: for each input element,
        the mean over the windows covering it of ``output(input) - output(occluded input)``
        for ``target``.
        """
        check_target(target)
        check_windows(inputs, sliding_window_shapes, strides, perturbations_per_eval)
        if baselines is not None:
            check_baselines(inputs, baselines)
        fn, why_not = _engine_target(self.forward_func)
        is_tuple = _is_tuple(inputs)
        formatted, formatted_baselines = _format_input_baseline(inputs, baselines)
        captum_loop = fast_reason(formatted, formatted_baselines)
        windows = (
            occlusion_windows(formatted, sliding_window_shapes, strides)
            if captum_loop is None
            else []
        )
        batches = -(-len(windows) // perturbations_per_eval) if windows else None
        engine = IncrementalForward(fn, batches=batches) if fn is not None else None
        forward = self.forward_func if engine is None else engine
        with preserved_forward_state(self.forward_func):
            if captum_loop is None:
                result = _format_output(
                    is_tuple,
                    sweep(
                        forward,
                        formatted,
                        windows,
                        formatted_baselines,
                        target,
                        additional_forward_args,
                        perturbations_per_eval,
                        show_progress,
                    ),
                )
            else:  # Captum's own loop (its dtype promotion), the engine standing in for the model
                logger.debug("Captum's perturbation loop: %s", captum_loop)
                result = CaptumOcclusion(TargetChecked(forward, target)).attribute(
                    inputs,
                    sliding_window_shapes,
                    strides=strides,
                    baselines=baselines,
                    target=target,
                    additional_forward_args=additional_forward_args,
                    perturbations_per_eval=perturbations_per_eval,
                    show_progress=show_progress,
                )
        if engine is None:
            self.last_run = OcclusionRun("full", why_not, RunStats())
        else:
            path = "incremental" if engine.incremental else "full"
            self.last_run = OcclusionRun(path, engine.reason, engine.stats, engine.estimate)
        if self.last_run.path == "incremental":
            logger.debug(
                "incremental inference: %d batches, theoretical conv speedup %.2fx",
                self.last_run.stats.batches,
                self.last_run.stats.theoretical_speedup,
            )
        else:
            logger.debug("full recomputation: %s", self.last_run.reason)
        return result


@dataclass(frozen=True)
class OcclusionMaps:
    """The paper's Fig. 7 maps (b), (d), (e) from one sweep of an occluder over one image.

    Each map has shape ``(len(rows), len(cols))``; entry (i, j) is the value with the occluder's
    top-left corner at pixel ``(rows[i], cols[j])`` (the occluder is clipped at the image border,
    as in Captum's ``Occlusion``). ``clean_*`` are the values without occluder.
    """

    feature: Tensor
    probability: Tensor
    label: Tensor
    layer: str
    channel: int
    target: int
    rows: Tensor
    cols: Tensor
    window: tuple[int, int]
    clean_feature: float
    clean_probability: float
    clean_label: int


def _two(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return pair


def _probe(model: nn.Module, layer: LayerSpec) -> tuple[Callable[..., Any], str]:
    """A callable returning ``(model output, layer output)`` and the layer's dotted name.

    A traceable model gets a graph with both outputs, which the incremental engine evaluates;
    otherwise a tap reads the layer output of plain forward passes. Either way the layer's last
    call in the forward pass is the one read.
    """
    name, module = resolve_layer(model, layer)
    traced = None
    # hooks (a trace bakes those of traced-through modules into the graph, runs them on proxies
    # and never runs the root's) and training mode
    # need the model's own forward pass
    if not _global_hooks() and not any(m.training or _hooked(m) for m in model.modules()):
        try:
            traced = symbolic_trace(model)
        except Exception:  # untraceable: taps on the real forward pass
            traced = None
    if traced is not None:
        name, node = layer_node(traced, model, module)
        output = next(n for n in traced.graph.nodes if n.op == "output")
        output.args = ((output.args[0], node),)
        return GraphModule(traced, traced.graph), name
    taps = Taps(model, [module], call="last")

    def probe(x: Tensor) -> tuple[Any, Tensor]:
        captured = taps.run(lambda: model(x))
        return captured.result, captured.outputs[taps.names[0]]

    return probe, name


def occlusion_maps(
    model: nn.Module,
    image: Tensor,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    layer: LayerSpec,
    target: int | None = None,
    baseline: float | Tensor = 0.0,
    perturbations_per_eval: int = 32,
    show_progress: bool = False,
) -> OcclusionMaps:
    """Slide an occluding square over ``image`` and record the paper's three maps (Fig. 7).

    ``image`` is ``(C, H, W)`` or ``(1, C, H, W)``; ``model`` maps it to class logits
    ``(1, classes)``. ``baseline`` fills the occluder (a scalar, or a tensor broadcastable to
    ``(C, H, W)``); the default 0 is black for models taking images in [0, 1] (the bundled ones),
    grey only for inputs normalised to zero mean: for the paper's grey square on [0, 1] images
    pass the data's mean intensity, as the report does. ``layer`` (a module or its name)
    is the layer whose strongest feature map -- the channel with the largest activation on the
    unoccluded image -- is summed for map (b). ``target`` (default: the predicted class of the
    unoccluded image) is the class whose softmax probability gives map (d); map (e) is the most
    probable class. One sweep, ``perturbations_per_eval`` positions per forward pass, evaluated
    by the incremental engine when the model is traceable and has no hooks and no module in
    training mode; otherwise by the model's own forward passes (``model(x)``: every hook runs).
    The model is not changed: buffers (BatchNorm running statistics in training mode), training
    and ``requires_grad`` flags are restored, also on error. Dropout in training mode stays
    active.
    """
    window, stride = _two(window, "window"), _two(stride, "stride")
    x = image.unsqueeze(0) if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"image must be (C, H, W) or (1, C, H, W), got {tuple(image.shape)}")
    height, width = x.shape[-2:]
    if window[0] > height or window[1] > width:
        raise ValueError(f"window {window} is larger than the image ({height}, {width})")
    if not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1:
        raise ValueError(
            f"perturbations_per_eval must be a positive int, got {perturbations_per_eval!r}"
        )
    if target is not None:
        if isinstance(target, bool) or not isinstance(target, numbers.Integral):
            raise TypeError(f"target must be an int class index or None, got {target!r}")
        target = int(target)
    fill = _fill(baseline, x)
    with preserved_state(model):
        return _sweep(
            model, x, window, stride, layer, target, fill, perturbations_per_eval, show_progress
        )


def _fill(baseline: float | Tensor, x: Tensor) -> Tensor:
    """The occluder's content ``(C, H, W)``: ``baseline`` (a number or tensor) broadcast."""
    try:
        if isinstance(baseline, bool | str):
            raise TypeError
        value = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"baseline must be a number or a tensor, got {baseline!r}") from None
    try:
        return value.expand(x.shape[1:])
    except RuntimeError:
        raise ValueError(
            f"baseline of shape {tuple(value.shape)} does not broadcast to the image's "
            f"(C, H, W) = {tuple(x.shape[1:])}"
        ) from None


def _sweep(
    model: nn.Module,
    x: Tensor,
    window: tuple[int, int],
    stride: tuple[int, int],
    layer: LayerSpec,
    target: int | None,
    fill: Tensor,
    perturbations_per_eval: int,
    show_progress: bool,
) -> OcclusionMaps:
    """:func:`occlusion_maps` on the validated ``(1, C, H, W)`` image ``x``."""
    height, width = x.shape[-2:]
    probe, name = _probe(model, layer)
    engine = IncrementalForward(probe)
    rows = torch.arange(math.ceil((height - window[0]) / stride[0]) + 1) * stride[0]
    cols = torch.arange(math.ceil((width - window[1]) / stride[1]) + 1) * stride[1]
    corners = [(int(r), int(c)) for r in rows for c in cols]
    with torch.no_grad():
        logits, activation = engine(x)
        if logits.dim() != 2 or logits.shape[0] != 1:
            raise ValueError(f"model output must be (1, classes), got {tuple(logits.shape)}")
        if activation.dim() != 4:
            raise ValueError(
                f"layer {name!r} output must be (1, C, h, w), got {tuple(activation.shape)}"
            )
        channel = int(activation[0].flatten(1).amax(1).argmax())
        probabilities = logits.softmax(1)[0]
        target = int(probabilities.argmax()) if target is None else target
        if not 0 <= target < logits.shape[1]:
            raise ValueError(
                f"target {target} is not a class index of the {logits.shape[1]} model outputs"
            )
        feature, probability, label = [], [], []
        for start in tqdm(
            range(0, len(corners), perturbations_per_eval),
            disable=not show_progress,
            desc="occlusion maps",
        ):
            chunk = corners[start : start + perturbations_per_eval]
            batch = x.repeat(len(chunk), 1, 1, 1)
            for b, (r, c) in enumerate(chunk):
                batch[b, :, r : r + window[0], c : c + window[1]] = fill[
                    :, r : r + window[0], c : c + window[1]
                ]
            out, act = engine(batch)
            p = out.softmax(1)
            feature.append(act[:, channel].sum((1, 2)))
            probability.append(p[:, target])
            label.append(p.argmax(1))
    shape = (len(rows), len(cols))
    logger.debug(
        "occlusion_maps: %s",
        "incremental" if engine.incremental else f"full recomputation: {engine.reason}",
    )
    return OcclusionMaps(
        feature=torch.cat(feature).view(shape).cpu(),
        probability=torch.cat(probability).view(shape).cpu(),
        label=torch.cat(label).view(shape).cpu(),
        layer=name,
        channel=channel,
        target=target,
        rows=rows,
        cols=cols,
        window=window,
        clean_feature=float(activation[0, channel].sum()),
        clean_probability=float(probabilities[target]),
        clean_label=int(probabilities.argmax()),
    )
