"""One context manager that puts every activation function of a forward pass under a rule.

``with apply_rule(DECONVNET, model) as seen:`` makes each activation computed inside the block
back-propagate with the rule instead of its true derivative, whatever form it takes:

* functional and method calls (``F.relu``, ``torch.relu``, ``x.relu()``, in-place ``relu_`` and
  ``inplace=True``, one ``nn.ReLU`` reused several times) are caught by a ``TorchFunctionMode``,
  which sees every torch call of the forward, not only ``nn.ReLU`` modules as Captum's hooks do;
* composite activation modules (timm's ``Swish``, ``Mish``, ...) have their ``forward`` wrapped for
  the duration of the block, so the whole composite is one activation; composite gates (timm's
  ``HardSigmoid = relu6(x + 3) / 6``) are wrapped so that nothing inside them is ruled.

The forward values are exactly those of the plain model. On exit (normal or by exception) the
mode is popped and every wrapped ``forward`` is restored: the model is left as it was found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from deconvnet_attr.rules import (
    ACTIVATION_FUNCTIONS,
    COMPOSITE_ACTIVATION_MODULES,
    COMPOSITE_GATE_MODULES,
    Rule,
)


class _RuledActivation(torch.autograd.Function):
    """Forward: the activation itself. Backward: ``rule.backward(grad_output)`` to its input."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, func: Callable, args: tuple, kwargs: dict, rule: Rule):
        version = x._version
        out = func(x, *args, **kwargs)
        if x._version != version:  # an in-place form (relu_, inplace=True) rewrote x
            ctx.mark_dirty(x)
        ctx.rule = rule
        return out

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        return ctx.rule.backward(grad_output), None, None, None, None


def _first_tensor(args: tuple, kwargs: dict) -> tuple[Tensor | None, tuple, dict]:
    """Split an activation call into (input tensor, remaining args, kwargs)."""
    if args:
        return args[0], args[1:], kwargs
    kwargs = dict(kwargs)
    for key in ("input", "self"):
        if key in kwargs:
            return kwargs.pop(key), (), kwargs
    return None, args, kwargs


class ActivationCounter:
    """How many activation calls a block put under the rule (0 means: plain gradient)."""

    def __init__(self) -> None:
        self.count = 0
        self.suspended = 0  # > 0 while a composite gate runs: its insides keep true gradients


class _RuleMode(TorchFunctionMode):
    def __init__(self, rule: Rule, counter: ActivationCounter) -> None:
        super().__init__()
        self.rule = rule
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in ACTIVATION_FUNCTIONS and torch.is_grad_enabled() and not self.counter.suspended:
            x, rest, kw = _first_tensor(args, kwargs)
            if isinstance(x, Tensor) and x.requires_grad:
                self.counter.count += 1
                return _RuledActivation.apply(x, func, rest, kw, self.rule)
        return func(*args, **kwargs)


def _rule_forward(module: nn.Module, rule: Rule, counter: ActivationCounter) -> None:
    """Make a composite activation module one ruled activation."""
    original = module.forward

    def forward(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if counter.suspended or not (
            torch.is_grad_enabled() and isinstance(x, Tensor) and x.requires_grad
        ):
            return original(x, *args, **kwargs)
        counter.count += 1
        return _RuledActivation.apply(x, original, args, kwargs, rule)

    module.forward = forward


def _suspend_forward(module: nn.Module, counter: ActivationCounter) -> None:
    """Keep true gradients inside a composite gate module."""
    original = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        counter.suspended += 1
        try:
            return original(*args, **kwargs)
        finally:
            counter.suspended -= 1

    module.forward = forward


@contextmanager
def apply_rule(rule: Rule, model: nn.Module | None = None) -> Iterator[ActivationCounter]:
    """Run the block with every activation function back-propagating by ``rule``.

    Args:
        rule: the backward rule, e.g. :data:`deconvnet_attr.rules.DECONVNET`.
        model: the model whose composite activation modules (timm ``Swish``, ...) are ruled as a
            whole. Functional, method and native-module activations are ruled without it.

    Yields:
        An :class:`ActivationCounter`; its ``count`` tells how many activations were ruled.
    """
    counter = ActivationCounter()
    wrapped = [
        m for m in (model.modules() if model is not None else ())
        if isinstance(m, COMPOSITE_ACTIVATION_MODULES + COMPOSITE_GATE_MODULES)
        and "forward" not in vars(m)
    ]  # fmt: skip
    try:
        for module in wrapped:
            if isinstance(module, COMPOSITE_GATE_MODULES):
                _suspend_forward(module, counter)
            else:
                _rule_forward(module, rule, counter)
        with _RuleMode(rule, counter):
            yield counter
    finally:
        for module in wrapped:
            vars(module).pop("forward", None)
