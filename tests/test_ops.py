"""The op table: one registration reaches every mechanism; rules that see the forward; the rule
as a parameter. References are hand-written autograd functions, hand formulas and Captum."""

import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop
from captum.attr import NeuronDeconvolution as CaptumNeuronDeconvolution
from torch import nn
from torch.overrides import handle_torch_function, has_torch_function_unary

from deconvnet_attr import DeconvProjection, NeuronDeconvolution, receptive_field
from deconvnet_attr.geometry import GeometryError
from deconvnet_attr.incremental import IncrementalForward
from deconvnet_attr.intercept import apply_rule
from deconvnet_attr.ops import OpKind, any_layout, op_kind, register_op, unregister_op
from deconvnet_attr.rules import DECONVNET, GRADIENT, Rule


def _bent(x: torch.Tensor) -> torch.Tensor:
    """A custom activation function that torch does not know (``erf`` has no geometry)."""
    if has_torch_function_unary(x):
        return handle_torch_function(_bent, (x,), x)
    return x * torch.erf(x).clamp(min=0)


class Bent(nn.Module):
    """The same activation as a module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.erf(x).clamp(min=0)


class _RectifiedBackward(torch.autograd.Function):
    """Reference: forward ``fn(x)``, backward ``relu(grad_output)`` (the deconvnet rule)."""

    @staticmethod
    def forward(ctx, x, fn):
        return fn(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0), None


class Net(nn.Module):
    """conv 3x3 (stride 1, pad 1) -> activation -> conv 3x3 (stride 2, pad 1)."""

    def __init__(self, act) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.act = act
        self.b = nn.Conv2d(4, 3, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.act(self.a(x)))


def _reference_projection(net: Net, fn, x: torch.Tensor, target: int) -> torch.Tensor:
    """Class-score projection with the activation's backward replaced by hand."""
    leaf = x.detach().requires_grad_()
    out = net.b(_RectifiedBackward.apply(net.a(leaf), fn))
    (grad,) = torch.autograd.grad(out.flatten(1)[:, target].sum(), leaf)
    return grad


class _Flat(nn.Module):
    """Net followed by a flatten, so that the projection has one score per index."""

    def __init__(self, net: Net) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


# hand formula for Net: size 1 + 2 + 2 = 5, stride 1 * 2, offset -1 - 1 = -2
EXPECTED_FIELD = ((5, 5), (2, 2), (-2, -2))


def _field(model: nn.Module) -> tuple:
    rf = receptive_field(model, "b", torch.randn(1, 2, 12, 12))
    return rf.size, rf.stride, rf.offset


@pytest.mark.parametrize(
    ("op", "kind", "act", "fn"),
    [
        (_bent, OpKind.ACTIVATION, None, _bent),
        (Bent, OpKind.COMPOSITE_ACTIVATION, Bent(), Bent()),
    ],
    ids=["function", "module"],
)
def test_registered_activation_is_ruled_and_pointwise(op, kind, act, fn):
    class Functional(nn.Module):
        def forward(self, x):
            return _bent(x)

    net = Net(act if act is not None else Functional()).eval()
    x = torch.randn(2, 2, 8, 8)
    with pytest.raises(GeometryError, match="erf|_bent"):
        _field(net)
    register_op(op, kind)
    try:
        assert op_kind(op) is kind
        assert _field(net) == EXPECTED_FIELD
        ours = DeconvProjection(_Flat(net)).attribute(x, target=5)
        torch.testing.assert_close(ours, _reference_projection(net, fn, x, 5))
        engine = IncrementalForward(net)
        engine(x)
        perturbed = x.repeat(2, 1, 1, 1)
        perturbed[:, :, 2:4, 3:5] = 0
        torch.testing.assert_close(engine(perturbed), net(perturbed))
        assert engine.incremental and engine.stats.conv_macs < engine.stats.conv_macs_full
    finally:
        unregister_op(op)
    assert op_kind(op) is None
    with pytest.raises(GeometryError, match="erf|_bent"):
        _field(net)


class FunctionalAct(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


DRIFTED = {
    "F.celu": F.celu,
    "F.prelu": lambda t: F.prelu(t, torch.tensor([0.25])),
    "F.rrelu": F.rrelu,
    "torch.selu_": lambda t: torch.selu_(t * 1),
    "torch._C._nn.elu": torch._C._nn.elu,
}


@pytest.mark.parametrize("name", list(DRIFTED))
def test_geometry_and_rules_agree_on_functional_activations(name):
    fn = DRIFTED[name]
    net = Net(FunctionalAct(fn))
    assert _field(net) == EXPECTED_FIELD
    x = torch.randn(2, 2, 8, 8)
    ours = DeconvProjection(_Flat(net)).attribute(x, target=3)
    torch.testing.assert_close(ours, _reference_projection(net, fn, x, 3))


def test_register_op_rejects_bad_input():
    with pytest.raises(TypeError, match="'relu'"):
        register_op("relu", OpKind.ACTIVATION)
    with pytest.raises(TypeError, match="module instance"):
        register_op(Bent(), OpKind.COMPOSITE_ACTIVATION)
    with pytest.raises(TypeError, match="'activation'"):
        register_op(Bent, "activation")
    with pytest.raises(ValueError, match="built into the table"):
        register_op(F.relu, OpKind.GATE)
    with pytest.raises(ValueError, match="not registered"):
        unregister_op(Bent)
    with pytest.raises(ValueError, match="not registered"):
        unregister_op(nn.ReLU)


class Small(nn.Module):
    """Activations in every form the rules must handle: module, in-place module, in-place
    function, a timm composite (recomputed in the gradient), a gate."""

    def __init__(self) -> None:
        super().__init__()
        import timm.layers.activations as timm_act

        torch.manual_seed(1)
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.r1 = nn.ReLU(inplace=True)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.mish = timm_act.Mish()
        self.c3 = nn.Conv2d(6, 6, 3, stride=2)
        self.fc = nn.Linear(6 * 3 * 3, 5)

    def forward(self, x):
        x = self.r1(self.c1(x))
        x = torch.sigmoid(x) * self.mish(self.c2(x))
        x = F.relu_(F.gelu(self.c3(x)))
        return self.fc(x.flatten(1))


def test_gradient_rule_is_the_plain_gradient():
    model = Small().eval()
    x = torch.randn(2, 3, 8, 8)
    ours = DeconvProjection(model, rule=GRADIENT).attribute(x, target=[1, 4])
    leaf = x.clone().requires_grad_()
    (plain,) = torch.autograd.grad(model(leaf)[[0, 1], [1, 4]].sum(), leaf)
    torch.testing.assert_close(ours, plain)
    assert not torch.allclose(DeconvProjection(model).attribute(x, target=[1, 4]), plain)


class ReluNet(nn.Module):
    """Only nn.ReLU modules (one in place), so Captum's hooks see every activation."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def test_guided_backprop_is_a_few_lines_and_matches_captum():
    guided = Rule("guided", lambda grad, fwd: F.relu(fwd.gradient(grad)), needs_forward=True)
    model = ReluNet().eval()
    x = torch.randn(3, 3, 8, 8)
    ours = DeconvProjection(model, rule=guided).attribute(x, target=2)
    theirs = GuidedBackprop(model).attribute(x.clone(), target=2)
    torch.testing.assert_close(ours, theirs)


def test_only_rules_that_need_the_forward_keep_tensors():
    x = torch.randn(6, requires_grad=True)
    with apply_rule(DECONVNET):
        cheap = F.relu(x * 1)
    with apply_rule(GRADIENT):
        kept = F.relu(x * 1)
    assert cheap.grad_fn.saved_tensors == ()
    assert len(kept.grad_fn.saved_tensors) == 1


def test_rule_parameter_is_validated():
    with pytest.raises(TypeError, match="'guided'"):
        DeconvProjection(ReluNet(), rule="guided")
    with pytest.raises(TypeError, match="'guided'"):
        with apply_rule("guided"):
            pass


def test_neuron_deconvolution_changes_no_shared_state():
    model = ReluNet().eval()
    layer = model.features[3]
    x = torch.randn(2, 3, 8, 8)
    ours = NeuronDeconvolution(model, layer)
    before = dict(vars(ours))
    for selector in [(1, 2, 2), (5, 0, 3), (1, 2, 2)]:
        expected = CaptumNeuronDeconvolution(model, layer).attribute(x.clone(), selector)
        torch.testing.assert_close(ours.attribute(x, selector), expected)
    assert vars(ours).keys() == before.keys()
    assert all(vars(ours)[k] is v for k, v in before.items())


def test_any_layout_names_the_ops_that_take_channels_last_maps():
    """torch's own ops and the table's built-ins compute the same on any memory layout, views
    that need contiguous memory and anything of the user's (registered or not) may not --
    checked on the ops themselves."""
    x = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    for op in (F.relu, torch.Tensor.reshape, torch.flatten, nn.Conv2d(4, 4, 1), torch.cat):
        assert any_layout(op)
    with pytest.raises(RuntimeError):
        x.view(2, -1)  # what view needs
    assert not any_layout(torch.Tensor.view) and not any_layout(torch.Tensor.view_as)

    def user_op(t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], -1)

    assert not any_layout(user_op)
    register_op(user_op, OpKind.LAYOUT)
    try:
        assert not any_layout(user_op)
    finally:
        unregister_op(user_op)
