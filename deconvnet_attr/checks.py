"""Argument checks shared by every attribution class: one place, one wording.

* :func:`check_target` -- a Captum ``target`` holds integers only (no ``"3"``, ``2.7``, ``True``,
  float or bool tensors), checked before anything runs; classes then index with it unchanged;
* :func:`check_finite` -- no NaN / Inf in the inputs: the error names the examples;
* :func:`check_batch` -- at least one example;
* :func:`check_grad_enabled` -- gradients can be taken (not under ``torch.inference_mode()``).

Each raises ``TypeError`` (wrong kind of value) or ``ValueError`` (wrong value) with a message
that names the argument and the offending value.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "GradientsDisabledError",
    "check_batch",
    "check_finite",
    "check_grad_enabled",
    "check_target",
]


class GradientsDisabledError(RuntimeError, ValueError):
    """An attribution that needs gradients was called where none can be taken."""


def _is_int(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.dim() == 0 and _integer_dtype(value)
    return isinstance(value, Integral) and not isinstance(value, bool)


def _integer_dtype(tensor: Tensor) -> bool:
    return (
        not tensor.dtype.is_floating_point
        and not tensor.dtype.is_complex
        and (tensor.dtype != torch.bool)
    )


def _bad(name: str, value: Any, why: str) -> TypeError:
    return TypeError(f"{name}={value!r}: {why}")


def check_target(target: Any, name: str = "target") -> Any:
    """Raise unless ``target`` is a Captum ``TargetType`` made of integers; return it unchanged.

    Accepted: ``None``; an int (Python or NumPy integer, not ``bool``); a tuple of ints (one index
    per output dim); an integer tensor with 0 or 1 dims; a list of ints, of tuples of ints or of
    0-dim integer tensors (one entry per example). Raises TypeError naming the value otherwise
    (``"3"``, ``2.7``, ``True``, ``tensor([1.5, 2.5])``, a bool tensor).
    """
    if target is None or _is_int(target):
        return target
    if isinstance(target, Tensor):
        if not _integer_dtype(target):
            raise _bad(name, target, f"a target tensor needs an integer dtype, not {target.dtype}")
        if target.dim() > 1:
            raise ValueError(
                f"{name} tensor has shape {tuple(target.shape)}; expected a scalar or (N,)"
            )
        return target
    if isinstance(target, tuple):
        for entry in target:
            if not _is_int(entry):
                raise _bad(name, target, f"index {entry!r} of a target tuple is not an int")
        return target
    if isinstance(target, list):
        for entry in target:
            entries = entry if isinstance(entry, tuple) else (entry,)
            if not entries or not all(_is_int(e) for e in entries):
                raise _bad(name, target, f"entry {entry!r} is not an int (or a tuple of ints)")
        return target
    raise _bad(name, target, "expected an int, a tuple of ints, a list or an integer tensor")


def check_finite(inputs: Sequence[Tensor], name: str = "inputs") -> None:
    """Raise ValueError naming the examples (indices along dim 0) of each input tensor that hold
    NaN or infinite values: an attribution of them would be meaningless, or silently finite."""
    for position, x in enumerate(inputs):
        if not isinstance(x, Tensor) or not (x.dtype.is_floating_point or x.dtype.is_complex):
            continue
        bad = ~torch.isfinite(x)
        if x.dim() > 1:
            bad = bad.flatten(1).any(1)
        elif x.dim() == 0:
            bad = bad.reshape(1)
        if bool(bad.any()):
            examples = bad.nonzero().flatten().tolist()
            label = f"{name}[{position}]" if len(inputs) > 1 else name
            shown = ", ".join(map(str, examples[:10])) + (", ..." if len(examples) > 10 else "")
            raise ValueError(
                f"{label} holds NaN or infinite values in example(s) {shown} (of "
                f"{x.shape[0] if x.dim() else 1}); remove or repair them before attributing"
            )


def check_batch(inputs: Sequence[Tensor], name: str = "inputs") -> None:
    """Raise ValueError when the first input tensor holds no example (batch size 0)."""
    if inputs and isinstance(inputs[0], Tensor) and inputs[0].dim() and inputs[0].shape[0] == 0:
        raise ValueError(
            f"{name} has shape {tuple(inputs[0].shape)}: batch size 0, nothing to attribute"
        )


def check_grad_enabled(inputs: Sequence[Tensor] = (), name: str = "inputs") -> None:
    """Raise :class:`GradientsDisabledError` under ``torch.inference_mode()``, or for inputs
    that are inference tensors (made under it): a gradient-based attribution needs autograd,
    which inference mode switches off. (``torch.no_grad()`` is fine: gradients are re-enabled
    inside the attribution.)"""
    if torch.is_inference_mode_enabled():
        raise GradientsDisabledError(
            "called under torch.inference_mode(): this attribution back-propagates through the "
            "model and needs gradients; call it outside inference mode (torch.no_grad() is fine)"
        )
    for position, x in enumerate(inputs):
        if isinstance(x, Tensor) and x.is_inference():
            label = f"{name}[{position}]" if len(inputs) > 1 else name
            raise GradientsDisabledError(
                f"{label} is an inference tensor (made under torch.inference_mode()), which "
                "autograd cannot record; pass x.clone() made outside inference mode"
            )
