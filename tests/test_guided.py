"""Guided backpropagation and Guided Grad-CAM against independent references: closed-form
derivatives, a hand-written guided walk down, the torch.fx guided reference over the zoo, and
Captum's own classes where its nn.ReLU hooks see every activation."""

import math
import warnings

import captum.attr as ca
import pytest
import torch
import torch.nn.functional as F
from captum.metrics import infidelity, sensitivity_max
from fx_reference import reference_deconvnet, reference_guided
from model_state import snapshot
from test_deconv import CAPTUM_SEES_ALL, TIMM, TORCHVISION, build
from torch import nn
from torch.utils.data import TensorDataset

from deconvnet_attr import DeconvProjection, GuidedBackprop, GuidedGradCam, NeuronGuidedBackprop
from deconvnet_attr.data import load_eval_subset
from deconvnet_attr.intercept import apply_rule
from deconvnet_attr.models import load_reference
from deconvnet_attr.report import ReportContext
from deconvnet_attr.report.guided_section import guided_comparison_section
from deconvnet_attr.rules import GUIDED
from deconvnet_attr.taps import LayerError
from deconvnet_attr.viz.guided import (
    METHODS,
    guided_comparison_figure,
    guided_comparison_maps,
    last_conv_layer,
)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ------------------------------------------------------------------ the rule, in closed form
def _phi(x):
    return torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _big_phi(x):
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


DERIVATIVES = {  # f'(x), written out by hand
    "ReLU": (nn.ReLU(), lambda x: (x > 0).double()),
    "ReLU6": (nn.ReLU6(), lambda x: ((x > 0) & (x < 6)).double()),
    "LeakyReLU": (nn.LeakyReLU(0.1), lambda x: torch.where(x > 0, 1.0, 0.1).double()),
    "ELU": (nn.ELU(0.5), lambda x: torch.where(x > 0, 1.0, 0.5 * torch.exp(x))),
    "GELU": (nn.GELU(), lambda x: _big_phi(x) + x * _phi(x)),
    "SiLU": (nn.SiLU(), lambda x: torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x)))),
    "Hardswish": (
        nn.Hardswish(),
        lambda x: torch.where(x < -3, 0.0, torch.where(x > 3, 1.0, (2 * x + 3) / 6)),
    ),
    "Mish": (
        nn.Mish(),
        lambda x: (
            torch.tanh(F.softplus(x)) + x * (1 - torch.tanh(F.softplus(x)) ** 2) * torch.sigmoid(x)
        ),
    ),
    "Softplus": (nn.Softplus(beta=2.0), lambda x: torch.sigmoid(2 * x)),
}


@pytest.mark.parametrize("name", list(DERIVATIVES))
def test_guided_rule_is_the_rectified_true_derivative(name):
    act, derivative = DERIVATIVES[name]
    torch.manual_seed(0)
    x = (torch.randn(4000, dtype=torch.float64) * 4).requires_grad_()
    x.data[x.data.abs() < 1e-3] += 0.01  # keep off the kinks (0, and 6 for ReLU6)
    x.data[(x.data - 6).abs() < 1e-3] += 0.01
    x.data[(x.data.abs() - 3).abs() < 1e-3] += 0.01
    grad = torch.randn(4000, dtype=torch.float64)
    with apply_rule(GUIDED):
        (ours,) = torch.autograd.grad(act(x * 1), x, grad)
    expected = (derivative(x.detach()) * grad).clamp(min=0)
    torch.testing.assert_close(
        ours, expected, rtol=1e-6, atol=1e-12
    )  # torch keeps slopes in float32
    assert (expected == 0).any() and (expected > 0).any()


# ------------------------------------------------------------------ small models
class OneConv(nn.Module):
    """conv (all-ones 3x3, biases -50 and -75) → ReLU → fc (+1 on 5 units, -1 on 3) → ReLU: the
    idea of Captum's test model, with the hand-computable guided walk below."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.fc1 = nn.Linear(8, 4)
        self.relu2 = nn.ReLU(inplace=inplace)
        with torch.no_grad():
            self.conv1.weight.fill_(1.0)
            self.conv1.bias.copy_(torch.tensor([-50.0, -75.0]))
            self.fc1.weight.copy_(torch.cat([torch.ones(4, 5), -torch.ones(4, 3)], 1))
            self.fc1.bias.zero_()

    def forward(self, x, x2=None):
        if x2 is not None:
            x = x + x2
        return self.relu2(self.fc1(self.relu1(self.conv1(x)).view(-1, 8)))


def hand_guided(net: OneConv, x: torch.Tensor, seed_fc: torch.Tensor) -> torch.Tensor:
    """Guided backprop written out: at each ReLU keep the signal where the forward input was
    positive and the signal itself is positive; linear layers by their transposes."""
    with torch.no_grad():
        z1 = net.conv1(x)
        z2 = net.fc1(F.relu(z1).view(-1, 8))
        r = seed_fc * (z2 > 0) * (seed_fc > 0)
        r = (r @ net.fc1.weight).view_as(z1)
        r = r * (z1 > 0) * (r > 0)
        return F.conv_transpose2d(r, net.conv1.weight)


def test_simple_conv_and_multi_input_against_hand_walk():
    net = OneConv()
    x = torch.arange(16.0).view(1, 1, 4, 4)
    seed = torch.tensor([[1.0, 0, 0, 0]])
    expected = hand_guided(net, x, seed)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(GuidedBackprop(net).attribute(x, target=0), expected)
    neuron = NeuronGuidedBackprop(net, net.fc1).attribute(x, (0,))
    torch.testing.assert_close(neuron, expected)
    x2 = torch.ones(1, 1, 4, 4)
    both = hand_guided(net, x + x2, torch.tensor([[0, 0, 0, 1.0]]))
    for ours in (
        GuidedBackprop(net).attribute((x, x2), target=3),
        NeuronGuidedBackprop(net, "fc1").attribute((x, x2), (3,)),
    ):
        assert isinstance(ours, tuple) and len(ours) == 2
        torch.testing.assert_close(ours[0], both)
        torch.testing.assert_close(ours[1], both)


def test_guided_backprop_of_each_output_equals_neuron_of_last_relu():
    torch.manual_seed(0)
    net = OneConv()
    x = 100 * torch.randn(1, 1, 4, 4)
    assert not GuidedBackprop(net).multiplies_by_inputs
    for i in range(4):
        torch.testing.assert_close(
            GuidedBackprop(net).attribute(x, target=i),
            NeuronGuidedBackprop(net, net.relu2).attribute(x, (i,)),
        )


class ReluNet(nn.Module):
    """nn.ReLU modules only (one in place): Captum's hooks see every activation. Output
    (N, 2, 3) for tuple targets; ``scale`` is an additional forward argument."""

    def __init__(self, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3), act(), nn.MaxPool2d(2), nn.Conv2d(6, 6, 3), act()
        )
        self.body[4].inplace = act is nn.ReLU
        self.head = nn.Linear(6 * 5 * 5, 6)

    def forward(self, x, scale=1.0):
        return (self.head(self.body(x).flatten(1)) * scale).view(-1, 2, 3)


@pytest.fixture
def relu_net():
    torch.manual_seed(3)
    return ReluNet().eval()


def test_equal_to_captum_where_its_hooks_see_everything(relu_net):
    x = torch.randn(3, 3, 16, 16)
    for target, extra in (((1, 2), None), ([(0, 1), (1, 0), (1, 2)], 2.0), ((0, 0), (0.5,))):
        torch.testing.assert_close(
            GuidedBackprop(relu_net).attribute(x, target, extra),
            _quiet(ca.GuidedBackprop(relu_net).attribute, x.clone(), target, extra),
        )
    layer = relu_net.body[3]
    for selector in ((2, 1, 1), (slice(0, 3), 2, slice(1, 4)), lambda out: out[:, 1].sum((1, 2))):
        for to_input in (False, True):
            expected = _quiet(
                ca.NeuronGuidedBackprop(relu_net, layer).attribute,
                x.clone(),
                selector,
                attribute_to_neuron_input=to_input,
            )
            ours = NeuronGuidedBackprop(relu_net, "body.3").attribute(
                x, selector, attribute_to_neuron_input=to_input
            )
            torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("mode", ["nearest", "area", "bilinear", "bicubic"])
@pytest.mark.parametrize("to_input", [False, True])
def test_guided_grad_cam_equals_captum(relu_net, mode, to_input):
    x = torch.randn(3, 3, 16, 16)
    layer = relu_net.body[3]
    expected = _quiet(
        ca.GuidedGradCam(relu_net, layer).attribute,
        x.clone(),
        target=(1, 2),
        additional_forward_args=2.0,
        interpolate_mode=mode,
        attribute_to_layer_input=to_input,
    )
    ours = GuidedGradCam(relu_net, "body.3").attribute(
        x, (1, 2), 2.0, interpolate_mode=mode, attribute_to_layer_input=to_input
    )
    assert expected.abs().sum() > 0
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("dims,mode", [(1, "linear"), (3, "trilinear")])
def test_guided_grad_cam_1d_and_3d_maps_equal_captum(dims, mode):
    conv = {1: nn.Conv1d, 3: nn.Conv3d}[dims]
    torch.manual_seed(0)
    net = nn.Sequential(conv(2, 4, 3), nn.ReLU(), conv(4, 4, 3), nn.ReLU(), nn.Flatten())
    net = nn.Sequential(net, nn.LazyLinear(3))
    x = torch.randn(2, 2, *([9] * dims))
    net(x)
    expected = _quiet(ca.GuidedGradCam(net, net[0][2]).attribute, x.clone(), 1, None, mode)
    ours = GuidedGradCam(net, "0.2").attribute(x, 1, interpolate_mode=mode)
    torch.testing.assert_close(ours, expected)


def test_guided_grad_cam_improper_inputs_are_empty_with_a_warning():
    net = OneConv()
    x = torch.arange(16.0).view(1, 1, 4, 4)
    reference = _quiet(ca.GuidedGradCam(net, net.conv1).attribute, (x, torch.ones(1)), 0)
    with pytest.warns(UserWarning, match=r"input of shape \(1,\)"):
        ours = GuidedGradCam(net, net.conv1).attribute((x, torch.ones(1)), 0)
    torch.testing.assert_close(ours[0], reference[0])
    assert ours[1].numel() == 0 == reference[1].numel()
    with pytest.warns(UserWarning, match="'triilinear'"):
        ours = GuidedGradCam(net, net.conv1).attribute(
            (x, torch.ones(1)), 0, interpolate_mode="triilinear"
        )
    assert [t.numel() for t in ours] == [0, 0]


def test_guided_grad_cam_in_place_relu_layer_input():
    inplace, plain = OneConv(inplace=True), OneConv()
    x, x2 = torch.arange(16.0).view(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    expected = _quiet(
        ca.GuidedGradCam(plain, plain.relu1).attribute,
        (x, x2),
        0,
        attribute_to_layer_input=True,
    )
    ours = GuidedGradCam(inplace, inplace.relu1).attribute(
        (x, x2), 0, attribute_to_layer_input=True
    )
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------ smooth activations
@pytest.fixture
def silu_net():
    torch.manual_seed(4)
    return ReluNet(nn.SiLU).eval()


def _reference_saliency(model):
    """Guided backprop by the fx reference, as a Captum attribution (``abs=False``)."""
    return ca.Saliency(reference_guided(model)[0])


def test_smooth_activations_follow_the_rule_where_captum_does_not(silu_net):
    x = torch.randn(2, 3, 16, 16)
    expected = _reference_saliency(silu_net).attribute(x, target=(1, 1), abs=False)
    ours = GuidedBackprop(silu_net).attribute(x, target=(1, 1))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
    captum = _quiet(ca.GuidedBackprop(silu_net).attribute, x.clone(), target=(1, 1))
    plain = ca.Saliency(silu_net).attribute(x.clone(), target=(1, 1), abs=False)
    torch.testing.assert_close(captum, plain)  # Captum's hooks change nothing here
    assert (captum - ours).abs().max() > 0.1 * ours.abs().max()
    # Guided Grad-CAM: the reference guided map times Captum's rectified, upsampled Grad-CAM
    layer = silu_net.body[3]
    cam = ca.LayerGradCam(silu_net, layer).attribute(x, (1, 1), relu_attributions=True)
    expected_gc = expected * F.interpolate(cam, size=(16, 16), mode="bilinear")
    ours_gc = GuidedGradCam(silu_net, layer).attribute(x, (1, 1), interpolate_mode="bilinear")
    torch.testing.assert_close(ours_gc, expected_gc, rtol=1e-4, atol=1e-6)
    # a neuron of the layer
    below, _ = reference_guided(silu_net.body[:4])
    neuron_ref = ca.Saliency(lambda t: below(t)[:, 2, 1, 3])
    torch.testing.assert_close(
        NeuronGuidedBackprop(silu_net, layer).attribute(x, (2, 1, 3)),
        neuron_ref.attribute(x, abs=False),
        rtol=1e-4,
        atol=1e-6,
    )


def test_deconv_projection_with_guided_rule_projects_a_unit_the_guided_way():
    """DeconvProjection(model, layer, rule=GUIDED): fc1's strongest unit walked down by hand."""
    torch.manual_seed(0)
    net = OneConv()
    x = torch.randn(3, 1, 4, 4) * 30 + 40
    with torch.no_grad():
        z2 = net.fc1(F.relu(net.conv1(x)).view(-1, 8))
    unit = z2.argmax(1)
    seed = torch.zeros_like(z2)
    seed[torch.arange(3), unit] = z2[torch.arange(3), unit]
    # the layer's own output is not passed through relu2, so the walk starts below it
    with torch.no_grad():
        z1 = net.conv1(x)
        r = (seed @ net.fc1.weight).view_as(z1)
        expected = F.conv_transpose2d(r * (z1 > 0) * (r > 0), net.conv1.weight)
    ours = DeconvProjection(net, "fc1", rule=GUIDED).attribute(x)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(ours, expected)


# ------------------------------------------------------------------ Captum's wrappers and metrics
def _perturb(inputs):
    noise = torch.randn_like(inputs) * 0.05
    return noise, inputs - noise


def test_noise_tunnel_infidelity_and_sensitivity_equal_captum_on_relu_models(relu_net):
    x = torch.randn(2, 3, 16, 16)
    layer = relu_net.body[3]
    pairs = [
        (GuidedBackprop(relu_net), ca.GuidedBackprop(relu_net), {"target": (1, 0)}),
        (
            NeuronGuidedBackprop(relu_net, layer),
            ca.NeuronGuidedBackprop(relu_net, layer),
            {"neuron_selector": (1, 2, 2)},
        ),
        (GuidedGradCam(relu_net, layer), ca.GuidedGradCam(relu_net, layer), {"target": (1, 0)}),
    ]
    for ours, theirs, kwargs in pairs:
        results = []
        for method in (ours, theirs):
            torch.manual_seed(7)
            smooth = _quiet(
                ca.NoiseTunnel(method).attribute,
                x,
                nt_type="smoothgrad",
                nt_samples=3,
                stdevs=0.1,
                **kwargs,
            )
            torch.manual_seed(8)
            sens = _quiet(sensitivity_max, method.attribute, x, n_perturb_samples=2, **kwargs)
            results.append((smooth, sens))
        torch.testing.assert_close(results[0][0], results[1][0])
        torch.testing.assert_close(results[0][1], results[1][1])
        if "target" in kwargs:
            attributions = ours.attribute(x, **kwargs)
            scores = []
            for attr in (attributions, _quiet(theirs.attribute, x.clone(), **kwargs)):
                torch.manual_seed(9)
                scores.append(infidelity(relu_net, _perturb, x, attr, target=kwargs["target"]))
            torch.testing.assert_close(scores[0], scores[1])


def test_noise_tunnel_and_metrics_follow_the_reference_on_smooth_models(silu_net):
    x = torch.randn(2, 3, 16, 16)
    ours, ref = GuidedBackprop(silu_net), _reference_saliency(silu_net)
    outs = []
    for method, extra in ((ours, {}), (ref, {"abs": False})):
        torch.manual_seed(5)
        smooth = ca.NoiseTunnel(method).attribute(
            x, nt_type="smoothgrad_sq", nt_samples=3, stdevs=0.1, target=(0, 2), **extra
        )
        torch.manual_seed(6)
        sens = sensitivity_max(method.attribute, x, target=(0, 2), n_perturb_samples=2, **extra)
        outs.append((smooth, sens))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-6)
    attributions = ours.attribute(x, target=(0, 2))
    torch.manual_seed(9)
    score = infidelity(silu_net, _perturb, x, attributions, target=(0, 2))
    assert score.shape == (2,) and torch.isfinite(score).all()


# ------------------------------------------------------------------ the model zoo
@pytest.mark.slow
@pytest.mark.parametrize(
    "source,name", [("tv", n) for n in TORCHVISION] + [("timm", n) for n in TIMM]
)
def test_zoo_matches_independent_guided_reference(source, name):
    model = build(source, name)
    side = 80 if name == "inception_v3" else 64
    x = torch.randn(2, 3, side, side)
    ours = GuidedBackprop(model).attribute(x, target=[1, 7])
    ref_model, _ = reference_guided(model)
    leaf = x.clone().requires_grad_()
    out = ref_model(leaf)
    (ref,) = torch.autograd.grad(out[:, 1][0] + out[:, 7][1], leaf)
    scale = ref.abs().max()
    assert scale > 0
    assert (ours - ref).abs().max() <= 1e-4 * scale
    captum = _quiet(ca.GuidedBackprop(model).attribute, x.clone(), target=[1, 7])
    if f"{source}:{name}" in CAPTUM_SEES_ALL:
        assert (captum - ours).abs().max() <= 1e-5 * scale
    else:  # the gap we close: Captum misses activations here
        assert (captum - ours).abs().max() > 1e-2 * scale


# ------------------------------------------------------------------ never a trace, clear errors
def test_model_and_inputs_untouched(relu_net):
    relu_net.train()
    relu_net.head.weight.grad = torch.ones_like(relu_net.head.weight)
    x = torch.randn(2, 3, 16, 16)
    x_before, before = x.clone(), snapshot(relu_net)
    for run in (
        lambda: GuidedBackprop(relu_net).attribute(x, target=(0, 1)),
        lambda: NeuronGuidedBackprop(relu_net, "body.3").attribute(x, (0, 1, 1)),
        lambda: GuidedGradCam(relu_net, "body.3").attribute(x, target=(0, 1)),
    ):
        run()
        after = snapshot(relu_net)
        assert all(torch.equal(after[0][k], v) for k, v in before[0].items())
        assert after[1:3] == before[1:3] and after[4] == before[4]
        for ga, gb in zip(after[3], before[3], strict=True):
            assert (ga is None and gb is None) or torch.equal(ga, gb)
        assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None
    assert torch._C._len_torch_function_stack() == 0


def test_errors_are_those_of_captum(relu_net):
    x = torch.randn(2, 3, 16, 16)
    for ours, theirs, kwargs in (
        (GuidedBackprop(relu_net), ca.GuidedBackprop(relu_net), {"target": (5, 0)}),
        (
            NeuronGuidedBackprop(relu_net, relu_net.body[3]),
            ca.NeuronGuidedBackprop(relu_net, relu_net.body[3]),
            {"neuron_selector": (9, 0, 0)},
        ),
        (
            GuidedGradCam(relu_net, relu_net.body[3]),
            ca.GuidedGradCam(relu_net, relu_net.body[3]),
            {"target": (5, 0)},
        ),
    ):
        with pytest.raises(Exception) as expected:
            _quiet(theirs.attribute, x.clone(), **kwargs)
        with pytest.raises(expected.type):
            ours.attribute(x.clone(), **kwargs)
    with pytest.raises(AssertionError):
        GuidedBackprop(lambda t: t)
    with pytest.raises(LayerError, match="'body.9'"):
        GuidedGradCam(relu_net, "body.9")
    with pytest.raises(LayerError, match="'bodyy'"):
        NeuronGuidedBackprop(relu_net, "bodyy")


# ------------------------------------------------------------------ the comparison figure
def test_comparison_maps_on_the_reference_model_match_the_references():
    model = load_reference()
    images, labels = load_eval_subset()
    images, labels = images[[0, 500]], labels[[0, 500]]
    assert last_conv_layer(model) == "conv5"
    before = snapshot(model)
    maps = guided_comparison_maps(model, images, "conv5", labels)
    assert list(maps) == list(METHODS)
    assert all(
        torch.equal(a, b)
        for a, b in zip(snapshot(model)[0].values(), before[0].values(), strict=True)
    )

    def saliency(net):
        leaf = images.clone().requires_grad_()
        (grad,) = torch.autograd.grad(net(leaf)[torch.arange(2), labels].sum(), leaf)
        return grad

    guided = saliency(reference_guided(model)[0])
    cam = ca.LayerGradCam(model, model.conv5).attribute(images, labels, relu_attributions=True)
    expected = {
        "gradient": saliency(model),
        "deconvnet": saliency(reference_deconvnet(model)[0]),
        "guided backprop": guided,
        "guided Grad-CAM": guided * F.interpolate(cam, size=(28, 28), mode="bilinear"),
    }
    for name in METHODS:
        torch.testing.assert_close(maps[name], expected[name], rtol=1e-4, atol=1e-7)
    fig = guided_comparison_figure(model, images, class_names=model.class_names)
    assert len(fig.axes) == 2 * (1 + len(METHODS))
    assert fig.axes[0].get_ylabel() == model.class_names[int(model(images[:1]).argmax())]


def test_report_section_writes_the_figure(tmp_path):
    images, labels = load_eval_subset()
    picked = torch.tensor([0, 100, 200, 300])
    ctx = ReportContext(
        model=load_reference(),
        model_name="reference",
        data=TensorDataset(images[picked], labels[picked]),
        data_name="four images",
        layers=["conv1"],
        out=tmp_path,
        has_labels=True,
        quick=True,
        progress=False,
    )
    section = guided_comparison_section(ctx, {})
    assert section is not None and 'src="guided-comparison.png"' in section.body
    assert "conv5" in section.body
    assert (tmp_path / "guided-comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ctx.model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    assert guided_comparison_section(ctx, {}) is None
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        last_conv_layer(ctx.model)
