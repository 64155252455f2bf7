"""Issue 12, "never silently wrong", in the gradient-rule core (DeconvProjection, Deconvolution,
NeuronDeconvolution): threads, patched forwards, every ReLU spelling, in-place first ops, targets,
NaN inputs, clear errors, dropout. References: single-threaded runs, the fx / module-swap deconvnet
of ``fx_reference``, Captum's own classes, hand computations."""

import copy
import functools
import re
import threading
import warnings

import captum.attr as ca
import pytest
import timm.layers.activations as timm_act
import torch
import torch.nn.functional as F
from fx_reference import activation_site, reference_deconvnet
from torch import nn

from deconvnet_attr.checks import GradientsDisabledError, check_target
from deconvnet_attr.deconv import Deconvolution, DeconvProjection, NeuronDeconvolution

OUR_WARNINGS = ("No activation function", "out of reach")


def _ours(records) -> list[str]:
    return [str(w.message) for w in records if any(s in str(w.message) for s in OUR_WARNINGS)]


class Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class FormNet(nn.Module):
    """conv -> ``act`` (the form under test) -> conv -> nn.ReLU -> fc."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act = act
        self.conv2 = nn.Conv2d(6, 5, 3, stride=2)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(5 * 3 * 3, 4)

    def forward(self, x):
        x = self.relu(self.conv2(self.act(self.conv1(x))))
        return self.fc(x.flatten(1))


# ---------------------------------------------------------------- 1(a) threads, 4 patched forward


class CompositeNet(nn.Module):
    """conv -> timm Swish -> conv -> timm HardSigmoid gate * features -> fc."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.swish = timm_act.Swish()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.gate = timm_act.HardSigmoid()
        self.fc = nn.Linear(6 * 6 * 6, 5)

    def forward(self, x):
        h = self.swish(self.conv1(x))
        h = h * self.gate(self.conv2(h))
        return self.fc(h.flatten(1))


def _swish_site(module: nn.Module) -> nn.Module:
    """Module-swap reference: a Swish whose backward is relu(grad) (fx_reference's site)."""
    return Lambda(lambda t: activation_site(t, t * torch.sigmoid(t)))


def test_threads_give_single_threaded_results_and_leave_plain_inference_alone():
    model = CompositeNet().eval()
    xs = [torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    expected = [DeconvProjection(model).attribute(x, target=i % 5) for i, x in enumerate(xs)]
    plain_x = torch.randn(2, 3, 6, 6)

    def plain_gradient():
        leaf = plain_x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(model(leaf).sum(), leaf)
        return grad

    plain_expected = plain_gradient()
    barrier = threading.Barrier(len(xs) + 1)
    failures: list[str] = []

    def attribute(i: int) -> None:
        barrier.wait()
        for _ in range(15):
            got = DeconvProjection(model).attribute(xs[i], target=i % 5)
            if not torch.allclose(got, expected[i], rtol=1e-5, atol=1e-6):
                failures.append(f"thread {i}: wrong projection")

    def plain() -> None:
        barrier.wait()
        for _ in range(40):
            if not torch.allclose(plain_gradient(), plain_expected, rtol=1e-5, atol=1e-6):
                failures.append("plain inference disturbed")

    threads = [threading.Thread(target=attribute, args=(i,)) for i in range(len(xs))]
    threads.append(threading.Thread(target=plain))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _accelerate_patch(module: nn.Module) -> None:
    """What accelerate's ``add_hook_to_module`` does: an instance-level ``forward`` that calls the
    original through ``functools.partial``."""
    module._old_forward = module.forward

    def new_forward(self, *args, **kwargs):
        return self._old_forward(*args, **kwargs)

    module.forward = functools.update_wrapper(
        functools.partial(new_forward, module), module._old_forward
    )


def test_instance_patched_composite_forward_is_ruled():
    model = CompositeNet().eval()
    reference = copy.deepcopy(model)
    reference.swish = _swish_site(reference.swish)  # gate: true gradient in both
    _accelerate_patch(model.swish)
    _accelerate_patch(model.gate)
    x = torch.randn(3, 3, 6, 6)
    leaf = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(reference(leaf)[:, 2].sum(), leaf)
    torch.testing.assert_close(DeconvProjection(model).attribute(x, target=2), want)
    torch.testing.assert_close(Deconvolution(model).attribute(x.clone(), target=2), want)
    assert "forward" in vars(model.swish)  # the user's patch is left in place


# ---------------------------------------------------------------- 3 ReLUs spelled as other ops

RELU_FORMS = {
    "aten.relu": lambda t: torch.ops.aten.relu(t),
    "aten.relu.default": lambda t: torch.ops.aten.relu.default(t),
    "aten.relu_.default": lambda t: torch.ops.aten.relu_.default(t),
    "F.threshold(0, 0)": lambda t: F.threshold(t, 0.0, 0.0),
    "nn.Threshold(0, 0)": nn.Threshold(0.0, 0.0),
    "nn.Threshold(0, 0, inplace)": nn.Threshold(0, 0, inplace=True),
    "clamp(min=0)": lambda t: t.clamp(min=0),
    "torch.clamp(t, 0)": lambda t: torch.clamp(t, 0),
    "clamp_(min=0)": lambda t: t.clamp_(min=0),
    "clamp_min(0)": lambda t: t.clamp_min(0),
    "where(t > 0, t, 0)": lambda t: torch.where(t > 0, t, 0),
    "where(t > 0, t, zeros)": lambda t: torch.where(t > 0, t, torch.zeros_like(t)),
    "maximum(t, 0)": lambda t: torch.maximum(t, torch.zeros(())),
    "maximum(0, t)": lambda t: torch.maximum(torch.zeros_like(t), t),
    "max(t, zeros)": lambda t: torch.max(t, torch.zeros_like(t)),
}
RELU6_FORMS = {
    "clamp(0, 6)": lambda t: t.clamp(0, 6),
    "clamp(min=0, max=6)": lambda t: torch.clamp(t, min=0, max=6),
}


@pytest.mark.parametrize("name", list(RELU_FORMS) + list(RELU6_FORMS))
def test_every_relu_spelling_is_ruled_like_nn_relu(name):
    form = RELU_FORMS.get(name) or RELU6_FORMS[name]
    model = FormNet(form if isinstance(form, nn.Module) else Lambda(form)).eval()
    swapped = copy.deepcopy(model)
    swapped.act = nn.ReLU() if name in RELU_FORMS else nn.ReLU6()
    reference, traced = reference_deconvnet(swapped)
    assert traced
    x = 4 * torch.randn(3, 3, 8, 8)  # large enough for clamp(0, 6) to saturate
    leaf = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(reference(leaf)[:, 1].sum(), leaf)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        got = DeconvProjection(model).attribute(x, target=1)
        dropin = Deconvolution(model).attribute(x.clone(), target=1)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(dropin, want)
    assert not _ours(records)


def test_a_masking_where_and_a_shifted_clamp_keep_their_true_gradient():
    """Not ReLUs: ``where`` with another mask and ``clamp(min=-1)``; only the nn.ReLU is ruled."""
    for form in (lambda t: torch.where(t > 0.5, t, 0), lambda t: t.clamp(min=-1)):
        model = FormNet(Lambda(form)).eval()
        reference, _ = reference_deconvnet(model)  # the fx reference rules only the nn.ReLU
        x = torch.randn(2, 3, 8, 8)
        leaf = x.clone().requires_grad_()
        (want,) = torch.autograd.grad(reference(leaf)[:, 0].sum(), leaf)
        torch.testing.assert_close(DeconvProjection(model).attribute(x, target=0), want)


def test_unrecognised_rectifier_warns_naming_it_also_for_layer_projections():
    model = FormNet(nn.Threshold(0.1, 0.0)).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"threshold\(threshold=0.1, value=0.0\)"):
        DeconvProjection(model).attribute(x, target=0)
    with pytest.warns(UserWarning, match=r"threshold\(threshold=0.1"):
        DeconvProjection(model, layer="conv2").attribute(x, target=0)


def test_layer_projection_warns_when_no_activation_sits_between_weighted_layers():
    """Two convolutions and no activation up to the layer: warned; conv1 or its pooling (one
    weighted op below the layer): not warned. Checked against the plain gradient by hand."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3), nn.ReLU())
    x = torch.randn(2, 3, 10, 10)
    with pytest.warns(UserWarning, match="No activation function was found .* up to the layer"):
        got = DeconvProjection(model, layer="2").attribute(x, target=1, neuron="all")
    leaf = x.clone().requires_grad_()
    act = model[2](model[1](model[0](leaf)))
    (want,) = torch.autograd.grad(act[:, 1].detach().mul(act[:, 1]).sum(), leaf)
    torch.testing.assert_close(got, want)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        DeconvProjection(model, layer="0").attribute(x, target=1)
        DeconvProjection(model, layer="1").attribute(x, target=1)
    assert not _ours(records)


# ---------------------------------------------------------------- 7 in-place first op


def test_inplace_relu_first_succeeds_like_captum_and_leaves_inputs_alone():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.ReLU(inplace=True), nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 8, 8)
    before = x.clone()
    want = ca.Deconvolution(model).attribute(x.clone(), target=2)
    torch.testing.assert_close(DeconvProjection(model).attribute(x, target=2), want)
    assert torch.equal(x, before)
    torch.testing.assert_close(Deconvolution(model).attribute(x, target=2), want)
    assert torch.equal(x, before) and not x.requires_grad
    selector = (1, 2, 2)
    neuron_want = ca.NeuronDeconvolution(model, model[2]).attribute(x.clone(), selector)
    torch.testing.assert_close(
        NeuronDeconvolution(model, model[2]).attribute(x, selector), neuron_want
    )
    assert torch.equal(x, before)


def test_called_under_no_grad_like_noise_tunnel_gives_the_same_projection():
    """Captum's NoiseTunnel calls attribute under torch.no_grad(): the copies the model runs on
    must still be connected to the gradient leaves."""
    model = FormNet(nn.ReLU(inplace=True)).eval()
    x = torch.randn(2, 3, 8, 8)
    for dp, kwargs in ((DeconvProjection(model), {"target": 1}),
                       (DeconvProjection(model, layer="conv2"), {"neuron": "all"})):  # fmt: skip
        want = dp.attribute(x, **kwargs)
        with torch.no_grad():
            torch.testing.assert_close(dp.attribute(x, **kwargs), want)
        with torch.no_grad():
            torch.testing.assert_close(Deconvolution(model).attribute(x, target=1),
                                       Deconvolution(model).attribute(x, target=1))  # fmt: skip


# ---------------------------------------------------------------- 9 targets

BAD_TARGETS = ["3", 2.7, torch.tensor([1.5, 2.5]), True, torch.tensor([True, False]), [1, 2.5]]


@pytest.mark.parametrize("target", BAD_TARGETS, ids=repr)
def test_non_integer_targets_are_rejected_naming_the_value(target):
    model = FormNet(nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    shown = repr(target).split("(")[0] if isinstance(target, torch.Tensor) else repr(target)
    for attribute in (
        DeconvProjection(model).attribute,
        DeconvProjection(model, layer="conv2").attribute,
        Deconvolution(model).attribute,
    ):
        with pytest.raises((TypeError, ValueError), match=re.escape(f"target={shown}")):
            attribute(x, target=target)


def test_integer_targets_of_every_captum_form_are_accepted():
    for target in (None, 3, (1, 2), torch.tensor(2), torch.tensor([1, 0]), [1, 2], [(0, 1)]):
        assert check_target(target) is target
    import numpy as np

    assert check_target(np.int64(2)) == 2


def test_bool_neuron_tensor_is_rejected():
    model = FormNet(nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="dtype torch.bool"):
        DeconvProjection(model, layer="conv2").attribute(
            x, target=0, neuron=torch.ones(2, 2, dtype=torch.bool)
        )


# ---------------------------------------------------------------- 10 NaN / Inf


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_raise_naming_the_examples(bad):
    model = FormNet(nn.ReLU()).eval()
    x = torch.randn(4, 3, 8, 8)
    x[1, 0, 2, 2] = bad
    x[3, 2, 0, 0] = bad
    for attribute in (
        lambda t: DeconvProjection(model).attribute(t, target=0),
        lambda t: DeconvProjection(model, layer="conv2").attribute(t),
        lambda t: Deconvolution(model).attribute(t, target=0),
        lambda t: NeuronDeconvolution(model, model.conv2).attribute(t, (0, 1, 1)),
    ):
        with pytest.raises(ValueError, match=r"example\(s\) 1, 3 \(of 4\)"):
            attribute(x.clone())


# ---------------------------------------------------------------- 14 clear errors


def test_empty_batch_raises_value_error():
    model = FormNet(nn.ReLU()).eval()
    empty = torch.randn(0, 3, 8, 8)
    for attribute in (
        lambda t: DeconvProjection(model, layer="conv2").attribute(t),
        lambda t: DeconvProjection(model).attribute(t, target=0),
        lambda t: Deconvolution(model).attribute(t, target=0),
    ):
        with pytest.raises(ValueError, match=r"shape \(0, 3, 8, 8\): batch size 0"):
            attribute(empty)


def test_inference_mode_raises_explaining_gradients_are_needed():
    model = FormNet(nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        for attribute in (
            lambda: DeconvProjection(model).attribute(x, target=0),
            lambda: Deconvolution(model).attribute(x, target=0),
            lambda: NeuronDeconvolution(model, model.conv2).attribute(x, (0, 1, 1)),
        ):
            with pytest.raises(GradientsDisabledError, match="inference_mode.*needs gradients"):
                attribute()
        made_inside = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="inference tensor"):
        DeconvProjection(model).attribute(made_inside, target=0)


def test_layer_projection_of_a_torchscript_model_says_torchscript_hides_layers():
    model = FormNet(nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x)
    for scripted in (traced, torch.jit.script(model)):
        with pytest.raises(ValueError, match="TorchScript hides its layers"):
            DeconvProjection(scripted, layer="conv2")
        with pytest.warns(UserWarning, match="TorchScript module"):
            DeconvProjection(scripted).attribute(x, target=0)


def test_linear_layer_projection_by_hand():
    """A unit of an (N, F) layer is a feature: seed its value, W2 transposed, relu*, W1
    transposed."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4), nn.ReLU()).eval()
    x = torch.randn(3, 5)
    w1, w2, b1, b2 = model[0].weight, model[2].weight, model[0].bias, model[2].bias
    with torch.no_grad():
        act = F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)  # (3, 4), layer "2"
    for target in (2, [0, 3, 1], None):
        got = DeconvProjection(model, layer="2").attribute(x, target=target)
        features = act.argmax(1) if target is None else torch.tensor(target).expand(3)
        want = torch.stack(
            [F.relu(act[i, f] * w2[f]) @ w1 for i, f in enumerate(features.tolist())]
        )
        torch.testing.assert_close(got, want)
        all_units = DeconvProjection(model, layer="2").attribute(x, target=target, neuron="all")
        torch.testing.assert_close(all_units, want)
    with pytest.raises(ValueError, match=r"\(N, F\), with no locations.*neuron='max'"):
        DeconvProjection(model, layer="2").attribute(x, target=1, neuron=torch.zeros(3, 0))


# ---------------------------------------------------------------- 16 dropout


def test_train_mode_dropout_stays_active_like_captum_and_is_documented():
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    ).train()
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(5)
    want = ca.Deconvolution(model).attribute(x.clone(), target=1)
    torch.manual_seed(5)
    got = Deconvolution(model).attribute(x, target=1)
    torch.testing.assert_close(got, want)
    torch.manual_seed(6)
    other = Deconvolution(model).attribute(x, target=1)
    assert not torch.equal(got, other)  # another mask: dropout was active
    assert all(m.training for m in model.modules())
    for cls in (DeconvProjection, Deconvolution, NeuronDeconvolution):
        assert "Dropout in training mode stays active" in cls.__doc__, cls
