"""One context manager that puts every activation function of a forward pass under a rule.

``with apply_rule(DECONVNET, model) as seen:`` makes each activation computed inside the block
back-propagate with the rule instead of its true derivative, whatever form it takes (which
callables and modules are activations is :mod:`deconvnet_attr.ops`' table):

* functional and method calls (``F.relu``, ``torch.relu``, ``x.relu()``, ``torch.ops.aten.relu``,
  in-place ``relu_`` and ``inplace=True``, one ``nn.ReLU`` reused several times) are caught by a
  ``TorchFunctionMode``, which sees every torch call of the forward, not only ``nn.ReLU`` modules
  as Captum's hooks do; so are ReLUs spelled as other ops (``clamp(x, min=0)``,
  ``threshold(x, 0, 0)``, ``maximum(x, 0)``, ``where(x > 0, x, 0)``, see
  :mod:`deconvnet_attr.relu_forms`);
* composite activation modules (timm's ``Swish``, ``Mish``, ...) are ruled as one activation, and
  nothing inside composite gates (timm's ``HardSigmoid = relu6(x + 3) / 6``) is ruled, by forward
  pre-/forward hooks that fire only in the calling thread: no module is changed, so another
  thread's plain inference or attribution on the same model is undisturbed, and a ``forward``
  patched on the instance (accelerate-style hooks) is ruled like the class's own.

A rule with ``needs_forward`` also receives each activation's input, output and true gradient
(:class:`deconvnet_attr.rules.ActivationForward`); other rules keep no tensors. The forward values
are exactly those of the plain model. On exit (normal or by exception) the mode is popped and the
hooks are removed: the model is left as it was found. TorchScript modules run their activations
where no Python interception reaches; the counter lists them in ``unruled``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from deconvnet_attr.ops import OpKind, op_kind, writes_input
from deconvnet_attr.relu_forms import relu_form, unruled_form
from deconvnet_attr.rules import ActivationForward, Rule
from deconvnet_attr.taps import display_name, forward_hooks


class ActivationCounter:
    """What a block met: ``count`` activation calls put under the rule (0 means: plain gradient),
    ``weighted`` convolution / linear calls on tensors that need gradients, and ``unruled``, a
    description of each rectifying call or module the rule cannot reach (``threshold`` with a
    non-zero threshold, TorchScript modules, whose insides no Python interception sees)."""

    def __init__(self) -> None:
        self.count = 0
        self.weighted = 0
        self.unruled: list[str] = []
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
        if not torch.is_grad_enabled() or self.counter.suspended:
            return func(*args, **kwargs)
        kind = op_kind(func)
        if kind is OpKind.ACTIVATION:
            x, rest, kw = _first_tensor(args, kwargs)
            if isinstance(x, Tensor) and x.requires_grad:
                return self._ruled(x, func, rest, kw)
        elif kind in (OpKind.CONV, OpKind.LINEAR):
            x, _, _ = _first_tensor(args, kwargs)
            self.counter.weighted += isinstance(x, Tensor) and x.requires_grad
        form = relu_form(func, args, kwargs)
        if form is not None:
            return self._ruled(*form)
        unruled = unruled_form(func, args, kwargs)
        if unruled is not None and unruled not in self.counter.unruled:
            self.counter.unruled.append(unruled)
        return func(*args, **kwargs)

    def _ruled(self, x: Tensor, func: Callable, rest: tuple, kwargs: dict) -> Tensor:
        self.counter.count += 1
        return _RuledActivation.apply(x, func, rest, kwargs, self.rule, self.counter)


class _RuledModule(torch.autograd.Function):
    """A composite activation module's output as one ruled activation of its input ``x``.

    Forward: ``value``, the module's output computed from a detached ``x`` (so no autograd graph
    was built inside). Backward: ``rule.backward(grad_output, forward)`` sent to ``x``.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, value: Tensor, saved: Tensor | None, recompute: Callable, rule: Rule
    ):
        ctx.rule = rule
        if rule.needs_forward:
            ctx.save_for_backward(saved)
            ctx.recompute = recompute
        return value.clone()  # a new tensor: value is x itself after an in-place composite

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        forward = None
        if ctx.rule.needs_forward:
            (saved,) = ctx.saved_tensors
            forward = ActivationForward(saved, ctx.recompute)
        return ctx.rule.backward(grad_output, forward), None, None, None, None


def _module_recompute(
    module: nn.Module, rest: tuple, counter: ActivationCounter
) -> Callable[[Tensor], Tensor]:
    """The composite's own ``forward`` (an instance-patched one included) on a new input, nothing
    inside ruled and no hook run."""

    def recompute(x: Tensor) -> Tensor:
        counter.suspended += 1
        try:
            return module.forward(x, *rest)
        finally:
            counter.suspended -= 1

    return recompute


@contextmanager
def _composites_ruled(
    model: nn.Module | None, rule: Rule, counter: ActivationCounter
) -> Iterator[None]:
    """Rule composite activation modules as one activation and keep true gradients inside
    composite gates, through thread-guarded forward pre-/forward hooks
    (:func:`deconvnet_attr.taps.forward_hooks`): no shared object is changed in a way another
    thread could see, and an instance-patched ``forward`` (accelerate-style) is ruled too.

    The pre-hook hands the composite a detached input (nothing inside is ruled, no graph is
    built); the forward hook returns the output as one :class:`_RuledModule` of the real input.
    """
    composites = [
        m
        for m in (model.modules() if model is not None else ())
        if op_kind(m) in (OpKind.COMPOSITE_ACTIVATION, OpKind.COMPOSITE_GATE)
    ]
    kinds = {id(m): op_kind(m) for m in composites}
    if not kinds:
        yield
        return
    calls: list[tuple[Tensor, Tensor | None] | None] = []  # one entry per composite call running

    def pre_hook(module: nn.Module, args: tuple) -> tuple | None:
        if kinds[id(module)] is OpKind.COMPOSITE_GATE:
            counter.suspended += 1
            calls.append(None)
            return None
        x = args[0] if args else None
        if counter.suspended or not (
            torch.is_grad_enabled() and isinstance(x, Tensor) and x.requires_grad
        ):
            calls.append(None)
            return None
        saved = None
        if rule.needs_forward:
            inplace = getattr(module, "inplace", False) is True
            saved = x.detach().clone() if inplace else x.detach()
        calls.append((x, saved))
        return (x.detach(), *args[1:])

    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        call = calls.pop()
        if kinds[id(module)] is OpKind.COMPOSITE_GATE:
            counter.suspended -= 1
            return None
        if call is None or not isinstance(output, Tensor):
            return None
        x, saved = call
        counter.count += 1
        recompute = _module_recompute(module, args[1:], counter)
        return _RuledModule.apply(x, output, saved, recompute, rule)

    with forward_hooks(composites, hook, pre_hook):
        yield


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
    if model is not None:
        counter.unruled.extend(
            f"TorchScript module {display_name(model, name)!r}"
            for name, m in model.named_modules()
            if isinstance(m, torch.jit.ScriptModule)
        )
    with _composites_ruled(model, rule, counter), _RuleMode(rule, counter):
        yield counter
