"""Backward rules for activation functions.

A *rule* replaces the backward pass of every activation of a forward pass (the
:attr:`~deconvnet_attr.ops.OpKind.ACTIVATION` functions and
:attr:`~deconvnet_attr.ops.OpKind.COMPOSITE_ACTIVATION` modules of :mod:`deconvnet_attr.ops`).
The paper's deconvnet rectifies the reconstruction signal at each ReLU ("relu*"): the backward of
an activation becomes ``relu(grad_output)``, independent of the forward input. Everything else
(convolutions, pooling switches, normalisation, gates) keeps its true gradient.

A rule sees the activation's forward through an :class:`ActivationForward` (its input, output and
true vector-Jacobian product) when it declares ``needs_forward=True``; only then does the
interception keep the activation's input, so a rule that ignores the forward costs no memory. Guided
backpropagation, for instance, is one line::

    GUIDED = Rule("guided", lambda grad, fwd: F.relu(fwd.gradient(grad)), needs_forward=True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ActivationForward", "DECONVNET", "GRADIENT", "GUIDED", "Rule"]


class ActivationForward:
    """One activation call, as a rule sees it: its ``input`` (detached), its ``output`` and
    ``gradient(grad_output)``, the true vector-Jacobian product ``f'(input) * grad_output``.

    Only the input is kept from the forward pass (the output may be overwritten in place by a
    later op, as in ``relu_(gelu(x))``); ``output`` and ``gradient`` recompute the activation
    from it, nothing inside ruled.
    """

    def __init__(self, input: Tensor, recompute: Callable[[Tensor], Tensor]) -> None:
        self.input = input
        self._recompute = recompute
        self._output: Tensor | None = None

    @property
    def output(self) -> Tensor:
        """The activation's output (N, ...), recomputed once from ``input``."""
        if self._output is None:
            with torch.no_grad():
                self._output = self._recompute(self.input.clone())  # in-place forms write it
        return self._output

    def gradient(self, grad_output: Tensor) -> Tensor:
        """The activation's true backward of ``grad_output`` at ``input``."""
        with torch.enable_grad():
            leaf = self.input.detach().requires_grad_()
            out = self._recompute(leaf.clone())  # clone: in-place forms write their input
            (grad,) = torch.autograd.grad(out, leaf, grad_output)
        return grad


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


def _guided(grad_output: Tensor, forward: ActivationForward | None) -> Tensor:
    assert forward is not None  # needs_forward=True
    return F.relu(forward.gradient(grad_output))


#: Guided backpropagation (Springenberg et al. 2014): the activation's true backward, rectified,
#: ``relu(f'(x) * grad_output)``. For ReLU, ``(x > 0) * relu(grad_output)``: the deconvnet's relu*
#: and the forward mask at once, exactly Captum's guided rule. See docs/guided.md for the table.
GUIDED = Rule("guided", _guided, needs_forward=True)
