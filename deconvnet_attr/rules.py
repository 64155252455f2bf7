"""Backward rules for activation functions, and the table of what counts as one.

A *rule* replaces the backward pass of every activation function of a forward pass. The paper's
deconvnet rectifies the reconstruction signal at each ReLU ("relu*"): the backward pass of an
activation becomes ``relu(grad_output)``, independent of the forward input. Everything else
(convolutions, pooling switches, normalisation, gates) keeps its true gradient.

Which functions are activations is decided here, in one table, so that every method (deconvnet
projection, the Captum drop-ins) treats the same functions the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Rule:
    """A backward rule: ``backward(grad_output) -> grad_input`` for every activation function."""

    name: str
    backward: Callable[[Tensor], Tensor]


#: The Zeiler & Fergus deconvnet rule (relu*): pass on only the positive part of the signal.
DECONVNET = Rule("deconvnet", F.relu)


def _functions(*names: str, namespaces: tuple = (torch, F, torch._C._nn, Tensor)) -> frozenset:
    """Every callable called ``name`` in the torch namespaces (functional, method, in-place)."""
    found = set()
    for name in names:
        for namespace in namespaces:
            func = getattr(namespace, name, None)
            if func is not None:
                found.add(func)
    return frozenset(found)


_ACTIVATION_NAMES = (
    "relu", "relu_", "relu6", "relu6_", "hardtanh", "hardtanh_",
    "leaky_relu", "leaky_relu_", "prelu", "_prelu_kernel", "rrelu", "rrelu_",
    "elu", "elu_", "celu", "celu_", "selu", "selu_",
    "gelu", "silu", "silu_", "mish", "mish_", "hardswish", "hardswish_", "softplus",
)  # fmt: skip

#: Activation functions in every callable form torch offers: ``F.relu``, ``torch.relu``,
#: ``Tensor.relu``, in-place ``relu_`` and the ``torch._C._nn`` kernels the modules call.
#: Gates and squashing functions (sigmoid, hardsigmoid, tanh, softmax) are deliberately absent:
#: they keep their true gradient.
ACTIVATION_FUNCTIONS: frozenset = _functions(*_ACTIVATION_NAMES)


def _timm_modules(*names: str) -> tuple[type, ...]:
    """timm's pure-Python and memory-efficient activation classes of these names."""
    try:
        from timm.layers import activations, activations_me
    except ImportError:  # timm is a dependency, but the rule table must not require it
        return ()
    return tuple(
        getattr(module, name)
        for module in (activations, activations_me)
        for name in names
        if hasattr(module, name)
    )


#: Activation modules whose forward is a composite (``x * sigmoid(x)``): ruled as one unit.
COMPOSITE_ACTIVATION_MODULES: tuple[type, ...] = _timm_modules(
    "Swish", "Mish", "HardSwish", "HardMish", "QuickGELU",
    "SwishMe", "MishMe", "HardSwishMe", "HardMishMe",
)  # fmt: skip

#: Gate modules built from activation functions (timm's ``HardSigmoid`` is ``relu6(x + 3) / 6``):
#: everything inside them keeps its true gradient.
COMPOSITE_GATE_MODULES: tuple[type, ...] = _timm_modules("HardSigmoid", "HardSigmoidMe")
