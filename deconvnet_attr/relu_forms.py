"""ReLUs spelled as other ops: ``threshold(x, 0, 0)``, ``clamp(x, min=0)``, ``clamp_min(x, 0)``,
``maximum(x, 0)``, ``torch.where(x > 0, x, 0)``.

Whether such a call is a ReLU depends on its arguments (``clamp(x, min=-1)`` is not), so they are
not entries of the op table (:mod:`deconvnet_attr.ops`); the rule interception
(:mod:`deconvnet_attr.intercept`) asks :func:`relu_form` about each call of these functions and
rules the call as an activation when it is one:

* ``threshold`` (``F.threshold``, ``nn.Threshold``, ``torch.threshold``, aten, in-place forms) with
  ``threshold == 0`` and ``value == 0``: exactly ``relu``;
* ``clamp`` / ``clip`` with ``min == 0`` and no ``max`` (``relu``) or a positive ``max``
  (``clamp(x, 0, 6)`` is ``relu6``, ``clamp(x, 0, m)`` is ``hardtanh(x, 0, m)``: activations of
  the table, so ruled alike); ``clamp_min(x, 0)``;
* ``maximum`` / ``max`` / ``fmax`` of the tensor and an all-zero tensor that needs no gradient
  (either order), whose broadcast leaves the tensor's shape;
* ``torch.where(cond, x, 0)`` / ``x.where(cond, 0)`` whose other branch is 0 (a number or an
  all-zero tensor) and whose mask equals ``x > 0`` (checked by value, so the mask may come from
  anywhere; ``where(x >= 0, x, 0)`` has the same values and is ruled too).

``threshold`` with any other threshold or value is rectifying but not a ReLU: it is left with its
true gradient and :func:`unruled_form` names it, so that the projection warns.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["relu_form", "unruled_form"]

#: (input, function to call as ``function(input, *rest, **kwargs)``, rest, kwargs)
Form = tuple[Tensor, Callable[..., Tensor], tuple, dict]


def _aten(*names: str) -> list[Any]:
    """The aten op packets of these names and their ``default`` overloads."""
    ops = [getattr(torch.ops.aten, name) for name in names]
    return ops + [op.default for op in ops if "default" in op.overloads()]


def _is_zero(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and value == 0


def _is_zero_tensor_like(value: Any, x: Tensor) -> bool:
    """A number 0, or a tensor of zeros needing no gradient whose broadcast against ``x`` keeps
    ``x``'s shape."""
    if _is_zero(value):
        return True
    return (
        isinstance(value, Tensor)
        and not value.requires_grad
        and value.dtype.is_floating_point == x.dtype.is_floating_point
        and torch.broadcast_shapes(value.shape, x.shape) == x.shape
        and not bool(value.any())
    )


def _arg(args: tuple, kwargs: dict, position: int, name: str, default: Any = None) -> Any:
    return args[position] if len(args) > position else kwargs.get(name, default)


def _grad_input(args: tuple, kwargs: dict) -> Tensor | None:
    x = args[0] if args else kwargs.get("input", kwargs.get("self"))
    return x if isinstance(x, Tensor) and x.requires_grad else None


def _rest(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if args:
        return args[1:], kwargs
    return (), {k: v for k, v in kwargs.items() if k not in ("input", "self")}


def _threshold(func: Callable, args: tuple, kwargs: dict) -> Form | None:
    x = _grad_input(args, kwargs)
    threshold, value = _arg(args, kwargs, 1, "threshold"), _arg(args, kwargs, 2, "value")
    if x is None or not (_is_zero(threshold) and _is_zero(value)):
        return None
    return (x, func, *_rest(args, kwargs))


def _clamp(func: Callable, args: tuple, kwargs: dict) -> Form | None:
    x = _grad_input(args, kwargs)
    low, high = _arg(args, kwargs, 1, "min"), _arg(args, kwargs, 2, "max")
    if x is None or not _is_zero(low):
        return None
    if high is not None and not (isinstance(high, int | float) and high > 0):
        return None
    return (x, func, *_rest(args, kwargs))


def _clamp_min(func: Callable, args: tuple, kwargs: dict) -> Form | None:
    x = _grad_input(args, kwargs)
    if x is None or not _is_zero(_arg(args, kwargs, 1, "min")):
        return None
    return (x, func, *_rest(args, kwargs))


def _maximum(func: Callable, args: tuple, kwargs: dict) -> Form | None:
    a = args[0] if args else kwargs.get("input", kwargs.get("self"))
    b = _arg(args, kwargs, 1, "other")
    if len(args) > 2 or set(kwargs) - {"input", "self", "other"}:
        return None
    for x, other in ((a, b), (b, a)):
        if (
            isinstance(x, Tensor)
            and x.requires_grad
            and isinstance(other, Tensor)
            and _is_zero_tensor_like(other, x)
        ):
            return (x, func, (other,), {})
    return None


def _where_relu(x: Tensor, condition: Tensor, other: Any) -> Tensor:
    """``torch.where(condition, x, other)``, input first (the form the interception calls)."""
    return torch.where(condition, x, other)


def _where(condition: Any, x: Any, other: Any) -> Form | None:
    if not (
        isinstance(condition, Tensor)
        and condition.dtype == torch.bool
        and isinstance(x, Tensor)
        and x.requires_grad
        and condition.shape == x.shape
        and _is_zero_tensor_like(other, x)
        and torch.equal(condition, x > 0)
    ):
        return None
    return (x, _where_relu, (condition, other), {})


def _torch_where(func: Callable, args: tuple, kwargs: dict) -> Form | None:
    if len(args) + len(kwargs) != 3:
        return None
    names = ("condition", "input", "other")
    values = [_arg(args, kwargs, i, name) for i, name in enumerate(names)]
    return _where(*values)


def _tensor_where(func: Callable, args: tuple, kwargs: dict) -> Form | None:
    if len(args) + len(kwargs) != 3:
        return None
    names = ("self", "condition", "other")
    x, condition, other = (_arg(args, kwargs, i, name) for i, name in enumerate(names))
    return _where(condition, x, other)


_RECOGNISERS: dict[Any, Callable[[Callable, tuple, dict], Form | None]] = {
    **dict.fromkeys(
        [F.threshold, vars(F)["threshold_"], torch.threshold, torch.threshold_]
        + _aten("threshold", "threshold_"),
        _threshold,
    ),
    **dict.fromkeys(
        [torch.clamp, torch.clamp_, Tensor.clamp, Tensor.clamp_]
        + [torch.clip, torch.clip_, Tensor.clip, Tensor.clip_]
        + _aten("clamp", "clamp_", "clip", "clip_"),
        _clamp,
    ),
    **dict.fromkeys(
        [torch.clamp_min, torch.clamp_min_, Tensor.clamp_min, Tensor.clamp_min_]
        + _aten("clamp_min", "clamp_min_"),
        _clamp_min,
    ),
    **dict.fromkeys(
        [torch.maximum, Tensor.maximum, torch.max, Tensor.max, torch.fmax, Tensor.fmax]
        + _aten("maximum", "fmax"),
        _maximum,
    ),
    torch.where: _torch_where,
    Tensor.where: _tensor_where,
}


def relu_form(func: Callable, args: tuple, kwargs: dict) -> Form | None:
    """``(x, function, rest, kwargs)`` when ``func(*args, **kwargs)`` computes a ReLU of ``x``
    (a tensor that requires grad) spelled as another op, so that
    ``function(x, *rest, **kwargs)`` is the same call; None otherwise."""
    try:
        recognise = _RECOGNISERS.get(func)
    except TypeError:  # an unhashable callable is never one of them
        return None
    return None if recognise is None else recognise(func, args, kwargs)


def unruled_form(func: Callable, args: tuple, kwargs: dict) -> str | None:
    """A description of a rectifying call that is deliberately not ruled (``threshold`` with a
    non-zero threshold or value, on a tensor that requires grad); None for any other call."""
    try:
        recognise = _RECOGNISERS.get(func)
    except TypeError:
        return None
    if recognise is not _threshold or _grad_input(args, kwargs) is None:
        return None
    threshold, value = _arg(args, kwargs, 1, "threshold"), _arg(args, kwargs, 2, "value")
    if _is_zero(threshold) and _is_zero(value):
        return None
    return f"threshold(threshold={threshold!r}, value={value!r})"
