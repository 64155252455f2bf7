"""Backward rules for activation functions.

A *rule* replaces the backward pass of every activation of a forward pass (the
:attr:`~deconvnet_attr.ops.OpKind.ACTIVATION` functions and
:attr:`~deconvnet_attr.ops.OpKind.COMPOSITE_ACTIVATION` modules of :mod:`deconvnet_attr.ops`).
The paper's deconvnet rectifies the reconstruction signal at each ReLU ("relu*"): the backward of
an activation becomes ``relu(grad_output)``, independent of the forward input. Everything else
(convolutions, pooling switches, normalisation, gates) keeps its true gradient.

A rule sees the activation's forward through an :class:`ActivationForward` (its input, output and
true vector-Jacobian product) when it declares ``needs_forward=True``; only then does the
interception keep those tensors, so a rule that ignores the forward costs no memory. Guided
backpropagation, for instance, is one line::

    GUIDED = Rule("guided", lambda grad, fwd: F.relu(fwd.gradient(grad)), needs_forward=True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

__all__ = ["ActivationForward", "DECONVNET", "GRADIENT", "Rule"]


class ActivationForward:
    """What one activation call computed: ``input`` and ``output`` (same shape, detached) and
    ``gradient(grad_output)``, the true vector-Jacobian product ``f'(input) * grad_output``."""

    def __init__(self, input: Tensor, output: Tensor, gradient: Callable[[Tensor], Tensor]) -> None:
        self.input = input
        self.output = output
        self._gradient = gradient

    def gradient(self, grad_output: Tensor) -> Tensor:
        """The activation's true backward of ``grad_output`` (recomputed from ``input``)."""
        return self._gradient(grad_output)


@dataclass(frozen=True)
class Rule:
    """A backward rule for every activation: ``backward(grad_output, forward) -> grad_input``.

    ``grad_output`` and the returned ``grad_input`` have the activation's shape. ``forward`` is an
    :class:`ActivationForward` when ``needs_forward`` is true, else ``None``.
    """

    name: str
    backward: Callable[[Tensor, ActivationForward | None], Tensor]
    needs_forward: bool = False


def _rectify_signal(grad_output: Tensor, forward: ActivationForward | None) -> Tensor:
    return F.relu(grad_output)


def _true_gradient(grad_output: Tensor, forward: ActivationForward | None) -> Tensor:
    assert forward is not None  # needs_forward=True
    return forward.gradient(grad_output)


#: The Zeiler & Fergus deconvnet rule (relu*): pass on only the positive part of the signal.
DECONVNET = Rule("deconvnet", _rectify_signal)

#: The activation's own derivative: under this rule a projection is the plain gradient.
GRADIENT = Rule("gradient", _true_gradient, needs_forward=True)
