"""The rule interception: every activation form gets relu(grad), gates keep their gradient, and the
context leaves nothing behind."""

import pytest
import timm.layers.activations as timm_act
import timm.layers.activations_me as timm_act_me
import torch
import torch.nn.functional as F
from torch import nn

from deconvnet_attr.intercept import apply_rule
from deconvnet_attr.rules import DECONVNET, Rule

GRAD = torch.tensor([1.0, -1.0, 2.0, -2.0, 3.0, -0.5])


def _inplace_module(module):
    return lambda t: module(t * 1)


ACTIVATION_FORMS = {
    "F.relu": F.relu,
    "torch.relu": torch.relu,
    "Tensor.relu": lambda t: t.relu(),
    "Tensor.relu_": lambda t: (t * 1).relu_(),
    "torch.relu_": lambda t: torch.relu_(t * 1),
    "F.relu(inplace=True)": lambda t: F.relu(t * 1, inplace=True),
    "F.relu(input=)": lambda t: F.relu(input=t),
    "nn.ReLU(inplace=True)": _inplace_module(nn.ReLU(inplace=True)),
    "nn.ReLU6": nn.ReLU6(),
    "F.relu6": F.relu6,
    "nn.Hardtanh": nn.Hardtanh(),
    "nn.LeakyReLU": nn.LeakyReLU(0.1),
    "nn.LeakyReLU(inplace)": _inplace_module(nn.LeakyReLU(0.1, inplace=True)),
    "nn.PReLU": nn.PReLU(),
    "nn.ELU": nn.ELU(),
    "nn.ELU(inplace)": _inplace_module(nn.ELU(inplace=True)),
    "nn.CELU": nn.CELU(),
    "nn.SELU": nn.SELU(),
    "nn.GELU": nn.GELU(),
    "nn.GELU(tanh)": nn.GELU(approximate="tanh"),
    "nn.SiLU": nn.SiLU(),
    "nn.SiLU(inplace)": _inplace_module(nn.SiLU(inplace=True)),
    "nn.Mish": nn.Mish(),
    "nn.Hardswish": nn.Hardswish(),
    "nn.Softplus": nn.Softplus(),
    "timm.Swish": timm_act.Swish(),
    "timm.Mish": timm_act.Mish(),
    "timm.HardSwish": timm_act.HardSwish(),
    "timm.QuickGELU": timm_act.QuickGELU(),
    "timm.SwishMe": timm_act_me.SwishMe(),
}

GATES = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softmax": lambda t: F.softmax(t, dim=0),
    "hardsigmoid": F.hardsigmoid,
    "timm.HardSigmoid": timm_act.HardSigmoid(),
}


def _run(fn, x, model=None):
    with apply_rule(DECONVNET, model if isinstance(model, nn.Module) else None) as seen:
        y = fn(x)
    (grad,) = torch.autograd.grad(y, x, GRAD)
    return y, grad, seen.count


@pytest.mark.parametrize("name", list(ACTIVATION_FORMS))
def test_every_activation_form_backpropagates_relu_of_grad(name):
    fn = ACTIVATION_FORMS[name]
    x = torch.randn(6, requires_grad=True)
    y, grad, count = _run(fn, x, fn)
    torch.testing.assert_close(y, fn(x.detach().clone()), rtol=0, atol=0)
    torch.testing.assert_close(grad, GRAD.clamp(min=0))
    assert count == 1


@pytest.mark.parametrize("name", list(ACTIVATION_FORMS))
def test_a_rule_that_needs_the_forward_sees_it_in_every_form(name):
    """In-place forms included: the rule gets the input before it was overwritten."""
    fn = ACTIVATION_FORMS[name]
    seen = []

    def backward(grad, forward):
        seen.append((forward.input.clone(), forward.output))
        return forward.gradient(grad)

    x = torch.randn(6, requires_grad=True)
    with apply_rule(
        Rule("true", backward, needs_forward=True), fn if isinstance(fn, nn.Module) else None
    ):
        y = fn(x)
    (grad,) = torch.autograd.grad(y, x, GRAD)
    (true,) = torch.autograd.grad(fn(x), x, GRAD)  # reference: torch's own derivative
    torch.testing.assert_close(grad, true)
    ((input, output),) = seen
    torch.testing.assert_close(input, x.detach(), rtol=0, atol=0)
    torch.testing.assert_close(output, y.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(GATES))
def test_gates_keep_their_true_gradient(name):
    fn = GATES[name]
    x = torch.randn(6, requires_grad=True)
    y, grad, count = _run(fn, x, fn)
    (true,) = torch.autograd.grad(fn(x), x, GRAD)
    torch.testing.assert_close(grad, true)
    assert count == 0


def test_reused_module_is_ruled_at_every_call():
    relu = nn.ReLU()
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, relu, lin, relu, lin, relu)
    x = torch.randn(3, 4, requires_grad=True)
    with apply_rule(DECONVNET, model) as seen:
        y = model(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    # hand-written deconvnet: transpose of each linear, relu of the signal at each activation
    g = torch.ones(3, 4)
    for _ in range(3):
        g = g.clamp(min=0) @ lin.weight
    torch.testing.assert_close(grad, g)
    assert seen.count == 3


def test_inplace_activation_on_a_view():
    x = torch.randn(2, 6, requires_grad=True)
    with apply_rule(DECONVNET):
        y = x * 1
        y[0].relu_()
    (grad,) = torch.autograd.grad(y, x, torch.stack([GRAD, GRAD]))
    torch.testing.assert_close(grad, torch.stack([GRAD.clamp(min=0), GRAD]))


def test_no_grad_and_non_grad_tensors_pass_through():
    x = torch.randn(6)
    with apply_rule(DECONVNET) as seen:
        with torch.no_grad():
            F.relu(torch.randn(6, requires_grad=True))
        F.relu(x)
    assert seen.count == 0


def test_context_leaves_nothing_behind_even_on_error():
    swish = timm_act.Swish()
    model = nn.Sequential(nn.Linear(3, 3), swish)
    before = torch._C._len_torch_function_stack()
    with pytest.raises(RuntimeError, match="boom"):
        with apply_rule(DECONVNET, model):
            assert torch._C._len_torch_function_stack() == before + 1
            # the composite is ruled by thread-guarded hooks, not by replacing its forward
            assert len(swish._forward_pre_hooks) == len(swish._forward_hooks) == 1
            assert "forward" not in vars(swish)
            raise RuntimeError("boom")
    assert torch._C._len_torch_function_stack() == before
    assert "forward" not in vars(swish)
    assert not swish._forward_pre_hooks and not swish._forward_hooks
    x = torch.randn(6, requires_grad=True)
    (grad,) = torch.autograd.grad(F.relu(x), x, GRAD)
    torch.testing.assert_close(grad, GRAD * (x > 0))
