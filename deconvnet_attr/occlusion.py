"""Captum-compatible ``Occlusion`` that runs the incremental engine where it can.

``Occlusion`` is ``captum.attr.Occlusion`` with one change: when ``forward_func`` is an
``nn.Module`` (or its bound ``forward``, or a function) that ``torch.fx`` can trace, Captum's own
perturbation loop calls :class:`~deconvnet_attr.incremental.IncrementalForward` instead of the
model, which recomputes only what each occluding window changes. Argument handling, errors,
batching, progress bars and the accumulation of attributions are Captum's, unchanged; so the
numbers equal Captum's up to float rounding. Everything else runs Captum's full recomputation;
the ``deconvnet_attr.occlusion`` logger says at DEBUG level which path ran and why.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from captum._utils.typing import BaselineType, TargetType, TensorOrTupleOfTensorsGeneric
from captum.attr import Occlusion as CaptumOcclusion
from torch import Tensor, nn

from deconvnet_attr.incremental import IncrementalForward, RunStats

__all__ = ["Occlusion", "OcclusionRun"]

logger = logging.getLogger("deconvnet_attr.occlusion")


@dataclass(frozen=True)
class OcclusionRun:
    """How the last ``attribute`` call ran: ``path`` is ``"incremental"`` or ``"full"``,
    ``reason`` why it was full (``None`` otherwise), ``stats`` the convolution work."""

    path: str
    reason: str | None
    stats: RunStats


def _traceable(forward_func: Callable[..., Any]) -> Callable[..., Any]:
    """The object to trace: the module behind a bound ``forward``, else ``forward_func``."""
    owner = getattr(forward_func, "__self__", None)
    if isinstance(owner, nn.Module) and inspect.ismethod(forward_func) \
            and forward_func.__func__ is type(owner).forward:
        return owner
    return forward_func


class Occlusion(CaptumOcclusion):
    r"""Drop-in for :class:`captum.attr.Occlusion`, several times faster on CNNs.

    Same constructor, ``attribute`` signature, argument meanings, errors and return values as
    Captum's class (see its documentation, reproduced by ``help(captum.attr.Occlusion)``).
    For a traceable ``forward_func`` the occluded batches are evaluated by exact incremental
    inference (``deconvnet_attr.incremental``); otherwise -- an untraceable callable such as a
    lambda that calls a model, a model with hooks or in training mode, in-place aliasing -- by
    full recomputation, exactly as Captum does. ``last_run`` records which path the last call
    took.
    """

    def __init__(self, forward_func: Callable[..., Tensor]) -> None:
        super().__init__(forward_func)
        self.last_run: OcclusionRun | None = None

    def attribute(  # type: ignore[override]
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
        engine = IncrementalForward(_traceable(self.forward_func))
        result = CaptumOcclusion(engine).attribute(
            inputs, sliding_window_shapes, strides=strides, baselines=baselines, target=target,
            additional_forward_args=additional_forward_args,
            perturbations_per_eval=perturbations_per_eval, show_progress=show_progress)
        path = "incremental" if engine.incremental else "full"
        self.last_run = OcclusionRun(path, engine.reason, engine.stats)
        if self.last_run.path == "incremental":
            logger.debug("incremental inference: %d batches, theoretical conv speedup %.2fx",
                         self.last_run.stats.batches, self.last_run.stats.theoretical_speedup)
        else:
            logger.debug("full recomputation: %s", self.last_run.reason)
        return result
