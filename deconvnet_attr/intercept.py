"""One context manager that puts every activation function of a forward pass under a rule.

``with apply_rule(DECONVNET, model) as seen:`` makes each activation computed inside the block
back-propagate with the rule instead of its true derivative, whatever form it takes (which
callables and modules are activations is :mod:`deconvnet_attr.ops`' table):

* functional and method calls (``F.relu``, ``torch.relu``, ``x.relu()``, in-place ``relu_`` and
  ``inplace=True``, one ``nn.ReLU`` reused several times) are caught by a ``TorchFunctionMode``,
  which sees every torch call of the forward, not only ``nn.ReLU`` modules as Captum's hooks do;
* composite activation modules (timm's ``Swish``, ``Mish``, ...) have their ``forward`` wrapped for
  the duration of the block, so the whole composite is one activation; composite gates (timm's
  ``HardSigmoid = relu6(x + 3) / 6``) are wrapped so that nothing inside them is ruled.

A rule with ``needs_forward`` also receives each activation's input, output and true gradient
(:class:`deconvnet_attr.rules.ActivationForward`); other rules keep no tensors. The forward values
are exactly those of the plain model. On exit (normal or by exception) the
mode is popped and every wrapped ``forward`` is restored: the model is left as it was found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from deconvnet_attr.ops import OpKind, op_kind, writes_input
from deconvnet_attr.rules import ActivationForward, Rule


class ActivationCounter:
    """How many activation calls a block put under the rule (0 means: plain gradient)."""

    def __init__(self) -> None:
        self.count = 0
        self.suspended = 0  # > 0 while a composite gate runs: its insides keep true gradients


def _may_write_input(func: Callable, args: tuple, kwargs: dict) -> bool:
    """Whether an activation call may overwrite its input (``relu_``, ``inplace=True`` given by
    keyword or position, a module built with ``inplace=True``): then a rule that needs the
    forward gets a copy of the input taken before the call."""
    return (
        writes_input(func)
        or any(value is True for value in (*args, *kwargs.values()))
        or getattr(getattr(func, "__self__", None), "inplace", False) is True
    )


def _recompute(
    func: Callable, args: tuple, kwargs: dict, counter: ActivationCounter
) -> Callable[[Tensor], Tensor]:
    """The activation applied to a new input, with nothing inside it ruled."""

    def recompute(x: Tensor) -> Tensor:
        counter.suspended += 1
        try:
            return func(x, *args, **kwargs)
        finally:
            counter.suspended -= 1

    return recompute


class _RuledActivation(torch.autograd.Function):
    """Forward: the activation itself. Backward: ``rule.backward(grad_output, forward)``.

    Only a rule with ``needs_forward`` keeps a tensor: the input (copied first when the call may
    overwrite it).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        func: Callable,
        args: tuple,
        kwargs: dict,
        rule: Rule,
        counter: ActivationCounter,
    ):
        version = x._version
        copy = (
            x.detach().clone()
            if rule.needs_forward and _may_write_input(func, args, kwargs)
            else None
        )
        out = func(x, *args, **kwargs)
        if x._version != version:  # an in-place form (relu_, inplace=True) rewrote x
            ctx.mark_dirty(x)
            if rule.needs_forward and copy is None:
                raise RuntimeError(
                    f"{getattr(func, '__name__', func)!r} overwrote its input unannounced; "
                    f"rule {rule.name!r} needs it"
                )
        ctx.rule = rule
        if rule.needs_forward:
            ctx.save_for_backward(x if copy is None else copy)
            ctx.call = (func, args, kwargs, counter)
        return out

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        forward = None
        if ctx.rule.needs_forward:
            (x,) = ctx.saved_tensors
            forward = ActivationForward(x, _recompute(*ctx.call))
        return ctx.rule.backward(grad_output, forward), None, None, None, None, None


def _first_tensor(args: tuple, kwargs: dict) -> tuple[Tensor | None, tuple, dict]:
    """Split an activation call into (input tensor, remaining args, kwargs)."""
    if args:
        return args[0], args[1:], kwargs
    kwargs = dict(kwargs)
    for key in ("input", "self"):
        if key in kwargs:
            return kwargs.pop(key), (), kwargs
    return None, args, kwargs


class _RuleMode(TorchFunctionMode):
    def __init__(self, rule: Rule, counter: ActivationCounter) -> None:
        super().__init__()
        self.rule = rule
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (
            torch.is_grad_enabled()
            and not self.counter.suspended
            and op_kind(func) is OpKind.ACTIVATION
        ):
            x, rest, kw = _first_tensor(args, kwargs)
            if isinstance(x, Tensor) and x.requires_grad:
                self.counter.count += 1
                return _RuledActivation.apply(x, func, rest, kw, self.rule, self.counter)
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
        return _RuledActivation.apply(x, original, args, kwargs, rule, counter)

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
    if not isinstance(rule, Rule):
        raise TypeError(f"rule {rule!r} is not a deconvnet_attr.rules.Rule")
    counter = ActivationCounter()
    composite = (OpKind.COMPOSITE_ACTIVATION, OpKind.COMPOSITE_GATE)
    wrapped = [
        m for m in (model.modules() if model is not None else ())
        if op_kind(m) in composite and "forward" not in vars(m)
    ]  # fmt: skip
    try:
        for module in wrapped:
            if op_kind(module) is OpKind.COMPOSITE_GATE:
                _suspend_forward(module, counter)
            else:
                _rule_forward(module, rule, counter)
        with _RuleMode(rule, counter):
            yield counter
    finally:
        for module in wrapped:
            vars(module).pop("forward", None)
