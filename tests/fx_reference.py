"""An independent deconvnet reference: rewrite the model's torch.fx graph.

It shares no code with the library. A copy of the model is traced with ``torch.fx``; after every
node that is an activation (a module of an activation type, or a call of an activation function
or method) a node is inserted whose forward passes the activation's value on and whose backward
sends ``relu(grad_output)`` straight to the activation's input. The activation list is written out
here on its own, from the issue's table.
"""

from __future__ import annotations

import copy

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU,
    nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Softplus,
)  # fmt: skip
ACTIVATION_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.hardtanh, F.leaky_relu, F.elu, F.gelu, F.silu, F.mish,
    F.hardswish, F.softplus, F.selu, F.celu,
}  # fmt: skip
OUT_OF_PLACE = {torch.relu_: torch.relu, F.relu_: torch.relu}
ACTIVATION_METHODS = {"relu": "relu", "relu_": "relu"}


class _ActivationSite(torch.autograd.Function):
    """Forward: the activation's value. Backward: relu(grad) to the activation's input."""

    @staticmethod
    def forward(ctx, x, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0), None


def activation_site(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return _ActivationSite.apply(x, value)


class _SiteModule(nn.Module):
    """An activation module whose backward is relu(grad)."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activation_site(x, self.act(x))


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _SiteModule) or super().is_leaf_module(m, qualname)


def _swap_modules(model: nn.Module) -> None:
    for name, child in model.named_children():
        if isinstance(child, ACTIVATION_MODULES):
            setattr(model, name, _SiteModule(child))
        else:
            _swap_modules(child)


def _is_activation(node: torch.fx.Node) -> bool:
    if node.op == "call_function":
        if node.target in OUT_OF_PLACE:
            node.target = OUT_OF_PLACE[node.target]
        return node.target in ACTIVATION_FUNCTIONS
    if node.op == "call_method" and node.target in ACTIVATION_METHODS:
        node.target = ACTIVATION_METHODS[node.target]
        return True
    return False


def reference_deconvnet(model: nn.Module) -> tuple[nn.Module, bool]:
    """A copy of ``model`` whose activations all back-propagate ``relu(grad_output)``.

    Activation modules are swapped for site modules; functional and method activations are
    rewritten in the torch.fx graph. Returns (model, traced): ``traced`` is False when fx cannot
    trace the model, in which case only module activations are covered.
    """
    model = copy.deepcopy(model)
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    _swap_modules(model)
    try:
        gm = torch.fx.GraphModule(model, _Tracer().trace(model))
    except torch.fx.proxy.TraceError:
        return model, False
    for node in list(gm.graph.nodes):
        if not _is_activation(node):
            continue
        if "inplace" in node.kwargs:
            node.kwargs = {**node.kwargs, "inplace": False}
        with gm.graph.inserting_after(node):
            site = gm.graph.call_function(activation_site, (node.args[0], node))
        node.replace_all_uses_with(site, delete_user_cb=lambda user, site=site: user is not site)
    gm.graph.lint()
    gm.recompile()
    return gm, True


def reference_projection(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """Deconvnet projection of output ``target`` by the fx reference (plain autograd)."""
    ref, _ = reference_deconvnet(model)
    x = x.detach().clone().requires_grad_()
    out = ref(x)
    (grad,) = torch.autograd.grad(out[:, target].sum(), x)
    return grad


# ------------------------------------------------------------------ guided backpropagation
class _GuidedSite(torch.autograd.Function):
    """Forward: ``fn(x)``. Backward: the activation's own vector-Jacobian product at ``x``,
    rectified: ``relu(f'(x) * grad)``."""

    @staticmethod
    def forward(ctx, x, fn):
        ctx.save_for_backward(x)
        ctx.fn = fn
        return fn(x.clone())

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            (local,) = torch.autograd.grad(ctx.fn(leaf.clone()), leaf, grad)
        return local.clamp(min=0), None


_GUIDED_CALLS: dict = {}


def guided_call(target):
    """``target`` with the guided backward: a function an fx graph can call (one per target)."""
    if target not in _GUIDED_CALLS:

        def call(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            return _GuidedSite.apply(x, lambda t: target(t, *args, **kwargs))

        call.__name__ = call.__qualname__ = f"guided_{target.__name__}"
        _GUIDED_CALLS[target] = call
    return _GUIDED_CALLS[target]


class _GuidedSiteModule(nn.Module):
    """An activation module whose backward is relu(f'(x) * grad)."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GuidedSite.apply(x, self.act)


class _GuidedTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _GuidedSiteModule) or super().is_leaf_module(m, qualname)


def _swap_guided_modules(model: nn.Module) -> None:
    for name, child in model.named_children():
        if isinstance(child, ACTIVATION_MODULES):
            setattr(model, name, _GuidedSiteModule(child))
        else:
            _swap_guided_modules(child)


def reference_guided(model: nn.Module) -> tuple[nn.Module, bool]:
    """A copy of ``model`` whose activations all back-propagate ``relu(f'(x) * grad_output)``
    (guided backpropagation), as :func:`reference_deconvnet` does for the deconvnet: activation
    modules are swapped for site modules, functional and method activations are replaced in the
    torch.fx graph by :func:`guided_call`. Returns (model, traced)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    _swap_guided_modules(model)
    try:
        gm = torch.fx.GraphModule(model, _GuidedTracer().trace(model))
    except torch.fx.proxy.TraceError:
        return model, False
    for node in list(gm.graph.nodes):
        if not _is_activation(node):
            continue
        target = torch.relu if node.op == "call_method" else node.target
        kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
        args = node.args[:1] + tuple(a for a in node.args[1:] if a is not True)  # inplace=True
        with gm.graph.inserting_after(node):
            site = gm.graph.call_function(guided_call(target), args, kwargs)
        node.replace_all_uses_with(site)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm, True
