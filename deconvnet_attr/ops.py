"""The one table of operations: which torch callables and modules are activations, gates,
pointwise ops, normalisations, pooling, convolutions, linear layers, ...

Three mechanisms read it and nothing else: the rule interception (``intercept.py`` rules every
:attr:`OpKind.ACTIVATION` call and every :attr:`OpKind.COMPOSITE_ACTIVATION` module), the traced
geometry (``geometry.py`` describes each node by its kind: window, pointwise, merge or opaque) and
the incremental engine (``incremental/``, which computes pointwise and window ops on rectangles).
A user who adds an activation registers it once, with :func:`register_op`, for all three.

Keys are callables (compared by identity: ``F.relu``, ``torch.relu``, ``Tensor.relu``,
``torch._C._nn`` kernels, in-place ``relu_`` forms are separate entries) and module types (looked
up along the class hierarchy, so a subclass of ``nn.ReLU`` is an activation too). A traced
``x.relu()`` (an fx ``call_method`` node) is looked up as ``Tensor.relu``.
"""

from __future__ import annotations

import operator
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "OpKind",
    "op_kind",
    "register_op",
    "registered_module",
    "unregister_op",
    "writes_input",
]


class OpKind(Enum):
    """What an operation does, as far as the rules and the geometry care."""

    #: Rectifying activation (relu, elu, gelu, silu, ...): back-propagates by the rule; pointwise.
    ACTIVATION = "activation"
    #: Module whose whole forward is one activation (timm ``Swish`` = ``x * sigmoid(x)``): ruled
    #: as one unit at the module boundary; pointwise.
    COMPOSITE_ACTIVATION = "composite activation"
    #: Per-unit squashing or gating (sigmoid, hardsigmoid, tanh): true gradient; pointwise.
    GATE = "gate"
    #: Gate module built from activations (timm ``HardSigmoid`` = ``relu6(x + 3) / 6``): nothing
    #: inside it is ruled; pointwise.
    COMPOSITE_GATE = "composite gate"
    #: Other per-position op (clamp, abs, exp, clone, identity, local response normalisation).
    POINTWISE = "pointwise"
    #: Returns its input's values, possibly the same storage (contiguous, detach): pointwise.
    ALIAS = "alias"
    #: Changes the layout, possibly as a view (view, reshape, permute, indexing): no geometry.
    LAYOUT = "layout"
    #: Elementwise binary op of same-sized maps (add, sub, mul, div): a merge.
    MERGE = "merge"
    #: Concatenation (``torch.cat``): a merge when it joins 4-D maps along channels.
    CONCAT = "concat"
    #: Batch normalisation: pointwise in eval mode with running statistics.
    BATCH_NORM = "batch norm"
    #: Dropout: the identity in eval mode, random in training mode.
    DROPOUT = "dropout"
    #: 2-D convolution: a sliding window.
    CONV = "conv"
    #: 2-D max pooling: a sliding window (padding stands for -inf).
    MAX_POOL = "max pool"
    #: 2-D average pooling: a sliding window.
    AVG_POOL = "avg pool"
    #: Adaptive pooling: the identity when it keeps the map size, otherwise global.
    ADAPTIVE_POOL = "adaptive pool"
    #: Fully connected layer: mixes every position.
    LINEAR = "linear"
    #: Mixes positions along a dimension (softmax, flatten): true gradient, no local geometry.
    GLOBAL = "global"
    #: Reads a tensor's metadata (``size``, ``dim``): a value about the layout, not the data.
    META = "meta"
    #: Constant padding (``F.pad``): shifts the map and fills the border; other modes are global.
    PAD = "pad"
    #: Resampling (``interpolate``, ``Upsample``): nearest / bilinear windows of a rescaled map.
    RESAMPLE = "resample"
    #: Reduction (sum, mean, amax): pointwise when it reduces channel dims only, else global.
    REDUCE = "reduce"
    #: Instance normalisation: pointwise with running statistics, else global over space.
    INSTANCE_NORM = "instance norm"
    #: Group / layer normalisation: statistics over space, so global.
    SPATIAL_NORM = "spatial norm"

    @property
    def ruled(self) -> bool:
        """True for the kinds whose backward the rule replaces."""
        return self in (OpKind.ACTIVATION, OpKind.COMPOSITE_ACTIVATION)

    @property
    def pointwise(self) -> bool:
        """True for the kinds whose output unit (i, j) depends on input unit (i, j) only, in
        every mode (batch norm and dropout are pointwise in eval mode only)."""
        return self in _POINTWISE_KINDS


_POINTWISE_KINDS = frozenset(
    {
        OpKind.ACTIVATION,
        OpKind.COMPOSITE_ACTIVATION,
        OpKind.GATE,
        OpKind.COMPOSITE_GATE,
        OpKind.POINTWISE,
        OpKind.ALIAS,
    }
)

_NAMESPACES = (torch, F, torch._C._nn, Tensor)


def _functions(*names: str, namespaces: tuple = _NAMESPACES) -> list[Any]:
    """Every callable called ``name`` in the torch namespaces (functional, method, in-place)."""
    return [
        getattr(namespace, name)
        for name in names
        for namespace in namespaces
        if callable(getattr(namespace, name, None))
    ]


def _aten(*names: str) -> list[Any]:
    """The ``torch.ops.aten`` packets of these names and their ``default`` overloads (a call like
    ``torch.ops.aten.relu.default(x)`` reaches ``__torch_function__`` as the overload)."""
    packets = [getattr(torch.ops.aten, name) for name in names if hasattr(torch.ops.aten, name)]
    return packets + [p.default for p in packets if "default" in p.overloads()]


_ACTIVATION_NAMES = (
    "relu", "relu_", "relu6", "relu6_", "hardtanh", "hardtanh_",
    "leaky_relu", "leaky_relu_", "prelu", "_prelu_kernel", "rrelu", "rrelu_",
    "elu", "elu_", "celu", "celu_", "selu", "selu_",
    "gelu", "gelu_", "silu", "silu_", "mish", "mish_", "hardswish", "hardswish_", "softplus",
)  # fmt: skip


def _optional(module: str, *names: str) -> list[Any]:
    """The attributes ``names`` of ``module`` (torchvision, timm), if it is installed."""
    try:
        imported = __import__(module, fromlist=list(names))
    except ImportError:
        return []
    return [getattr(imported, name) for name in names if hasattr(imported, name)]


def _timm_modules(*names: str) -> list[type]:
    """timm's pure-Python and memory-efficient activation classes of these names."""
    try:
        from timm.layers import activations, activations_me
    except ImportError:  # timm is a dependency, but the table must not require it
        return []
    return [
        getattr(module, name)
        for module in (activations, activations_me)
        for name in names
        if hasattr(module, name)
    ]


_BUILTIN: dict[OpKind, list[Any]] = {
    OpKind.ACTIVATION: _functions(*_ACTIVATION_NAMES) + _aten(*_ACTIVATION_NAMES) + [
        nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU,
        nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Softplus,
    ],
    OpKind.COMPOSITE_ACTIVATION: _timm_modules(
        "Swish", "Mish", "HardSwish", "HardMish", "QuickGELU",
        "SwishMe", "MishMe", "HardSwishMe", "HardMishMe",
    ),
    OpKind.GATE: _functions(
        "sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "tanh", "tanh_"
    ) + [nn.Sigmoid, nn.Hardsigmoid, nn.Tanh],
    OpKind.COMPOSITE_GATE: _timm_modules("HardSigmoid", "HardSigmoidMe"),
    OpKind.POINTWISE: _functions(
        "clamp", "clamp_", "clamp_min", "clamp_min_", "abs", "exp", "neg", "float", "clone",
        "local_response_norm", namespaces=(torch, F, Tensor),
    ) + [operator.neg, nn.Identity, nn.LocalResponseNorm],
    OpKind.ALIAS: [Tensor.contiguous, Tensor.detach],
    OpKind.LAYOUT: _functions(
        "view", "reshape", "flatten", "unflatten", "transpose", "permute", "narrow", "select",
        "split", "chunk", "squeeze", "unsqueeze", "expand", "expand_as", "t", "as_strided",
        "view_as", "unbind", namespaces=(Tensor,),
    ) + _functions(
        "reshape", "flatten", "transpose", "permute", "narrow", "select", "split", "chunk",
        "squeeze", "unsqueeze", "unbind", namespaces=(torch,),
    ) + [operator.getitem],
    OpKind.MERGE: [
        operator.add, operator.iadd, operator.sub, operator.isub,
        operator.mul, operator.imul, operator.truediv, operator.itruediv,
        torch.add, torch.sub, torch.mul, torch.div,
    ] + _functions("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_",
                   namespaces=(Tensor,)),
    OpKind.CONCAT: [torch.cat],
    OpKind.BATCH_NORM: [nn.modules.batchnorm._BatchNorm, F.batch_norm, torch.batch_norm],
    OpKind.DROPOUT: [
        F.dropout, F.dropout2d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
        nn.AlphaDropout, nn.FeatureAlphaDropout,
    ] + _optional("torchvision.ops", "stochastic_depth", "StochasticDepth")
      + _optional("timm.layers", "DropPath", "drop_path"),
    OpKind.CONV: [F.conv2d, nn.Conv2d],
    OpKind.MAX_POOL: [F.max_pool2d, torch.max_pool2d, nn.MaxPool2d],
    OpKind.AVG_POOL: [F.avg_pool2d, nn.AvgPool2d],
    OpKind.ADAPTIVE_POOL: [nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d],
    OpKind.LINEAR: [F.linear, nn.Linear],
    OpKind.GLOBAL: _functions("softmax", "log_softmax") + [nn.Softmax, nn.LogSoftmax, nn.Flatten],
    OpKind.META: [Tensor.size, Tensor.dim],
    OpKind.PAD: [F.pad, nn.ZeroPad2d, nn.ConstantPad2d],
    OpKind.RESAMPLE: [F.interpolate, F.upsample, nn.Upsample, nn.UpsamplingNearest2d,
                      nn.UpsamplingBilinear2d],
    OpKind.REDUCE: _functions("sum", "mean", "amax", "amin", namespaces=(torch, Tensor)),
    OpKind.INSTANCE_NORM: [F.instance_norm, nn.modules.instancenorm._InstanceNorm],
    OpKind.SPATIAL_NORM: [F.group_norm, F.layer_norm, nn.GroupNorm, nn.LayerNorm],
}  # fmt: skip

_TABLE: dict[Any, OpKind] = {op: kind for kind, ops in _BUILTIN.items() for op in ops}
_BUILTIN_OPS = frozenset(_TABLE)

#: Python's augmented-assignment operators, which write their left operand.
_INPLACE_OPERATORS = frozenset({operator.iadd, operator.isub, operator.imul, operator.itruediv})


def _check_op(op: Any) -> None:
    if not callable(op):
        raise TypeError(f"op {op!r} is neither a callable nor an nn.Module type")
    if isinstance(op, nn.Module):
        raise TypeError(f"op {op!r} is a module instance; register its type, {type(op).__name__}")


def register_op(op: Any, kind: OpKind) -> None:
    """Declare what ``op`` is, for the rules, the geometry and the incremental engine at once.

    Args:
        op: a torch callable (reached through ``__torch_function__``: a function of ``torch``,
            ``torch.nn.functional``, a ``Tensor`` method, or your own function that calls
            ``torch.overrides.handle_torch_function``), or an ``nn.Module`` subclass.
        kind: an :class:`OpKind`. A custom activation module is usually
            :attr:`OpKind.COMPOSITE_ACTIVATION` (its forward is ruled as one unit and is
            pointwise for receptive fields and occlusion); a custom activation function
            :attr:`OpKind.ACTIVATION`.

    A module type registered here is a leaf of the geometry's trace (not traced through). Raises
    TypeError for an ``op`` that is neither callable nor a module type, or a ``kind`` that is not
    an :class:`OpKind`; ValueError when ``op`` is one of the built-in entries.
    """
    _check_op(op)
    if not isinstance(kind, OpKind):
        raise TypeError(f"kind {kind!r} is not an OpKind")
    if op in _BUILTIN_OPS:
        raise ValueError(f"op {op!r} is built into the table as {_TABLE[op].name}")
    _TABLE[op] = kind


def unregister_op(op: Any) -> None:
    """Undo :func:`register_op` for ``op``. Raises ValueError if ``op`` was not registered by
    :func:`register_op` (built-in entries cannot be removed)."""
    _check_op(op)
    if op in _BUILTIN_OPS or op not in _TABLE:
        raise ValueError(f"op {op!r} was not registered with register_op")
    del _TABLE[op]


def op_kind(op: Any) -> OpKind | None:
    """The kind of a callable, a module type or a module instance; None when unknown.

    Module types are looked up along their class hierarchy (``type(op).__mro__``).
    """
    if isinstance(op, nn.Module):
        op = type(op)
    if isinstance(op, type):
        return next((_TABLE[cls] for cls in op.__mro__ if cls in _TABLE), None)
    try:
        return _TABLE.get(op)
    except TypeError:  # an unhashable callable is never in the table
        return None


def registered_module(module: nn.Module) -> bool:
    """True when ``type(module)`` itself (not a base class) is in the table: the geometry's
    trace keeps such a module as one node."""
    return type(module) in _TABLE


def any_layout(op: Any) -> bool:
    """True for ops that compute the same values on tensors of any memory layout (channels-last
    maps included): the table's built-in entries and torch's own functions, methods and modules,
    except the views that need contiguous memory (``view``, ``view_as``, ``as_strided``). A
    user's op or module may assume contiguous memory, so it is not."""
    if isinstance(op, nn.Module):
        op = type(op)
    if getattr(op, "__name__", "") in ("view", "view_as", "as_strided"):
        return False
    try:
        if op in _BUILTIN_OPS:
            return True
    except TypeError:  # unhashable
        return False
    owner = getattr(op, "__module__", None) or getattr(op, "__objclass__", type(None)).__module__
    return owner.split(".")[0] in ("torch", "_operator", "operator")


def writes_input(op: Any) -> bool:
    """True for callables that write their first argument (``relu_``, ``x += y``, ...)."""
    if op in _INPLACE_OPERATORS:
        return True
    name = getattr(op, "__name__", "").split(".")[0]  # aten overloads: "relu_.default"
    return name.endswith("_") and not name.endswith("__")
