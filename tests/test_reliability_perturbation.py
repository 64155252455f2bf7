"""Issue 12 ("never silently wrong"), perturbation and mining paths: items 5, 6, 8, 10, 13, 14.

Each test compares against an independent reference: Captum's own classes, a brute-force loop of
plain ``model(x)`` calls, or the model's state as it was before the call.
"""

import copy
import math

import captum.attr
import pytest
import torch
from captum.metrics import infidelity, sensitivity_max
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import deconvnet_attr
from deconvnet_attr import LayerAblation, Occlusion
from deconvnet_attr.mining import top_activations
from deconvnet_attr.occlusion import occlusion_maps
from deconvnet_attr.projection import project_top_activations
from tests.model_state import snapshot


def small_net(batchnorm: bool = False) -> nn.Sequential:
    """A CNN with a nested block (hooks on it are traced through by torch.fx)."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
    return nn.Sequential(
        block,
        nn.BatchNorm2d(4) if batchnorm else nn.Identity(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 5),
    )


def images(n: int = 3, size: int = 10) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1)) - 0.3


def assert_state(model: nn.Module, before: tuple) -> None:
    """The model's buffers, parameters, flags, grads and hooks equal the snapshot ``before``."""
    after = snapshot(model)
    assert before[0].keys() == after[0].keys()
    for key, value in before[0].items():
        assert torch.equal(value, after[0][key]), key
    assert before[1:3] == after[1:3] and before[4] == after[4]


# -- item 5: root-module hooks -------------------------------------------------------------------


def _forward_funcs(model: nn.Module) -> dict:
    def function(x):
        return model(x)

    return {
        "module": model,
        "bound-forward": model.forward,
        "function": function,
        "lambda": lambda x: model(x),
    }


@pytest.mark.parametrize("kind", ["module", "bound-forward", "function", "lambda"])
def test_occlusion_calls_forward_func_as_captum_does(kind):
    model = small_net().eval()
    model.register_forward_hook(lambda m, a, out: out * 10)  # root: skipped by model.forward
    model[0].register_forward_hook(lambda m, a, out: out + 0.5)  # nested: runs in every case
    x = images()
    forward_func = _forward_funcs(model)[kind]
    theirs = captum.attr.Occlusion(forward_func).attribute(x, (1, 3, 3), strides=2, target=1)
    ours = Occlusion(forward_func).attribute(x, (1, 3, 3), strides=2, target=1)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def _brute_force_probability(model, image, window, stride, target):
    """Map (d) of occlusion_maps with one plain ``model(x)`` call per occluder position."""
    height, width = image.shape[-2:]
    count = (math.ceil((height - window) / stride) + 1, math.ceil((width - window) / stride) + 1)
    out = torch.empty(count)
    with torch.no_grad():
        for i in range(count[0]):
            for j in range(count[1]):
                x = image.clone()[None]
                r, c = i * stride, j * stride
                x[..., r : r + window, c : c + window] = 0.0
                out[i, j] = model(x).softmax(1)[0, target]
    return out


@pytest.mark.parametrize("where", ["root", "nested"])
def test_occlusion_maps_run_the_models_hooks(where):
    model = small_net().eval()
    shift = torch.tensor([4.0, 0.0, -3.0, 0.0, 1.0])
    hooked = model if where == "root" else model[0]
    if where == "root":
        hooked.register_forward_hook(lambda m, a, out: out + shift)
    else:
        hooked.register_forward_hook(lambda m, a, out: out * 3)
    image = images(1)[0]
    got = occlusion_maps(model, image, window=4, stride=3, layer="2", target=2)
    expected = _brute_force_probability(model, image, 4, 3, 2)
    torch.testing.assert_close(got.probability, expected, rtol=1e-5, atol=1e-6)


# -- item 6: BatchNorm statistics in training mode -----------------------------------------------


def test_occlusion_train_mode_restores_batchnorm_state_unlike_captum():
    model = small_net(batchnorm=True).train()
    x = images()
    twin = copy.deepcopy(model)
    before = snapshot(model)
    ours = Occlusion(model).attribute(x, (1, 3, 3), strides=3, target=0)
    assert_state(model, before)
    theirs = captum.attr.Occlusion(twin).attribute(x, (1, 3, 3), strides=3, target=0)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    # the documented departure: Captum's Occlusion leaves the statistics updated
    assert not torch.equal(twin[1].running_mean, before[0]["1.running_mean"])


@pytest.mark.parametrize("kind", ["bound-forward", "function", "lambda"])
def test_occlusion_restores_state_also_when_it_raises(kind):
    model = small_net(batchnorm=True).train()
    calls = []
    inner = _forward_funcs(model)[kind]

    def failing(x):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("third forward pass fails")
        return inner(x)

    # a bound forward is made to fail by a target that only the first forward pass can check
    forward_func, target = (inner, 99) if kind == "bound-forward" else (failing, 0)
    before = snapshot(model)
    with pytest.raises((RuntimeError, ValueError), match="third forward|does not index"):
        Occlusion(forward_func).attribute(images(), (1, 3, 3), strides=3, target=target)
    assert_state(model, before)


def test_occlusion_maps_train_mode_restores_batchnorm_state():
    model = small_net(batchnorm=True).train()
    before = snapshot(model)
    maps = occlusion_maps(model, images(1)[0], window=4, stride=3, layer="2", target=1)
    assert_state(model, before)
    assert torch.isfinite(maps.probability).all()


def test_top_activations_train_mode_restores_batchnorm_state():
    model = small_net(batchnorm=True).train()
    before = snapshot(model)
    top_activations(model, "2", images(7), k=2, batch_size=3, progress=False)
    assert_state(model, before)


def test_layer_ablation_of_a_lambda_restores_batchnorm_state():
    model = small_net(batchnorm=True).train()
    before = snapshot(model)
    LayerAblation(lambda t: model(t), [model[2]]).attribute(images(), target=0)
    assert_state(model, before)


# -- item 8: projecting other images than the mined ones -----------------------------------------


def test_projecting_a_top_mined_on_a_shuffled_loader_raises():
    model = small_net().eval()
    data = TensorDataset(images(12), torch.zeros(12))
    torch.manual_seed(3)
    shuffled = DataLoader(data, batch_size=4, shuffle=True)
    top = top_activations(model, "2", shuffled, k=3, progress=False)
    with pytest.raises(ValueError, match="not the data that was mined"):
        project_top_activations(model, "2", shuffled, top, progress=False)
    # the same data unshuffled reproduces every mined value and projects
    in_order = DataLoader(data, batch_size=4)
    top = top_activations(model, "2", in_order, k=3, progress=False)
    assert project_top_activations(model, "2", in_order, top, progress=False).shape[:2] == (6, 3)


# -- item 10: NaN inputs in mining ---------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_top_activations_rejects_nan_naming_positions(bad):
    x = images(9)
    x[4, 0, 2, 3] = bad
    x[7, 0, 0, 0] = bad
    loader = DataLoader(TensorDataset(x, torch.zeros(9)), batch_size=4)
    for data in (x, loader):
        with pytest.raises(ValueError, match=r"positions \[4, 7\]"):
            top_activations(small_net().eval(), "2", data, k=2, batch_size=4, progress=False)


# -- item 13: Captum wrappers over every class ---------------------------------------------------


def _relu_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 5 * 5, 5),
    ).eval()


def _pairs(model: nn.Module) -> dict:
    """name -> (our attribution, Captum's counterpart, kwargs, how to compare the outputs)."""
    whole = torch.zeros(1, 4, 10, 10, dtype=torch.long)  # one group: the whole layer output
    pairs = {
        "Deconvolution": (
            deconvnet_attr.Deconvolution(model),
            captum.attr.Deconvolution(model),
            dict(target=2),
            {},
            same,
        ),
        "NeuronDeconvolution": (
            deconvnet_attr.NeuronDeconvolution(model, model[3]),
            captum.attr.NeuronDeconvolution(model, model[3]),
            dict(neuron_selector=(1, 2, 3)),
            {},
            same,
        ),
        "DeconvProjection": (
            deconvnet_attr.DeconvProjection(model, model[3]),
            captum.attr.NeuronDeconvolution(model, model[3]),
            dict(target=1, neuron="all"),
            # the whole channel map, seeded with its own values: d(sum(a * a.detach()))/da = a
            dict(neuron_selector=lambda out: (out[:, 1] * out[:, 1].detach()).flatten(1).sum(1)),
            same,
        ),
        "Occlusion": (
            Occlusion(model),
            captum.attr.Occlusion(model),
            dict(sliding_window_shapes=(1, 3, 3), strides=2, target=2),
            {},
            same,
        ),
        "LayerAblation": (
            LayerAblation(model, [model[1]]),
            captum.attr.LayerFeatureAblation(model, model[1]),
            dict(target=2),
            dict(target=2, layer_mask=whole),
            lambda a: a.flatten(1)[:, :1],  # every element of the one group holds the drop
        ),
    }
    for name in ("GuidedBackprop", "NeuronGuidedBackprop", "GuidedGradCam"):
        if hasattr(deconvnet_attr, name):  # added in parallel: compared once they exist
            layer_args = () if name == "GuidedBackprop" else (model[3],)
            kwargs = dict(neuron_selector=(1, 2, 3)) if name.startswith("Neuron") else {}
            kwargs = kwargs or dict(target=2)
            pairs[name] = (
                getattr(deconvnet_attr, name)(model, *layer_args),
                getattr(captum.attr, name)(model, *layer_args),
                kwargs,
                {},
                same,
            )
    return pairs


NAMES = [
    "Deconvolution",
    "NeuronDeconvolution",
    "DeconvProjection",
    "Occlusion",
    "LayerAblation",
    *[
        n
        for n in ("GuidedBackprop", "NeuronGuidedBackprop", "GuidedGradCam")
        if hasattr(deconvnet_attr, n)
    ],
]


def same(result):
    return result


def _unpack(name: str):
    model = _relu_net()
    ours, theirs, kwargs, their_kwargs, view = _pairs(model)[name]
    return model, ours, theirs, kwargs, their_kwargs or kwargs, view


@pytest.mark.parametrize("name", NAMES)
def test_noise_tunnel_over_each_class_matches_captum(name):
    model, ours, theirs, kwargs, their_kwargs, view = _unpack(name)
    x = images(2)
    results = []
    for method, kw in ((ours, kwargs), (theirs, their_kwargs)):
        torch.manual_seed(5)
        tunnel = captum.attr.NoiseTunnel(method)
        results.append(tunnel.attribute(x, nt_type="smoothgrad", nt_samples=3, stdevs=0.1, **kw))
    torch.testing.assert_close(results[0], view(results[1]), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_sensitivity_max_over_each_class_matches_captum(name):
    model, ours, theirs, kwargs, their_kwargs, view = _unpack(name)
    x = images(2)
    scores = []
    for method, kw, shown in ((ours, kwargs, same), (theirs, their_kwargs, view)):
        torch.manual_seed(6)

        def explain(inputs, method=method, shown=shown, **k):
            # sensitivity_max iterates the explanation of a tuple input as a tuple (Captum's
            # classes return one); LayerAblation's (N, layers) tensor is wrapped likewise
            result = shown(method.attribute(inputs, **k))
            return (result,) if isinstance(result, torch.Tensor) else result

        scores.append(sensitivity_max(explain, x, n_perturb_samples=3, **kw))
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-4, atol=1e-6)


# infidelity needs attributions shaped like the inputs; LayerAblation's are one per layer
INPUT_SHAPED = [n for n in NAMES if n != "LayerAblation"]


@pytest.mark.parametrize("name", INPUT_SHAPED)
def test_infidelity_over_each_class_matches_captum(name):
    model, ours, theirs, kwargs, their_kwargs, view = _unpack(name)
    x = images(2)

    def perturb(inputs):
        noise = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(7)) * 0.05
        return noise, inputs - noise

    values = []
    for method, kw in ((ours, kwargs), (theirs, their_kwargs)):
        attributions = method.attribute(x, **kw)
        values.append(infidelity(model, perturb, x, attributions, target=2, n_perturb_samples=4))
    torch.testing.assert_close(values[0], values[1], rtol=1e-4, atol=1e-7)


# -- item 14: clear errors -----------------------------------------------------------------------


@pytest.mark.parametrize("strides", [0, -1, (1, 0, 2), (1, -2, 1)])
def test_occlusion_rejects_non_positive_strides(strides):
    model = small_net().eval()
    x = images()
    nan = captum.attr.Occlusion(model).attribute(x, (1, 3, 3), strides=strides, target=0)
    assert torch.isnan(nan).any()  # Captum's silent result
    with pytest.raises(
        ValueError, match=rf"strides.*{strides!r}".replace("(", r"\(").replace(")", r"\)")
    ):
        Occlusion(model).attribute(x, (1, 3, 3), strides=strides, target=0)


@pytest.mark.parametrize(
    "kwargs, inherited, named",
    [
        (dict(sliding_window_shapes=(1, 30, 3), target=0), AssertionError, "sliding_window_shapes"),
        (dict(sliding_window_shapes=(3, 3), target=0), AssertionError, "sliding_window_shapes"),
        (dict(sliding_window_shapes=(1, 3, 3), target=10), IndexError, "target 10"),
    ],
)
def test_occlusion_inherited_errors_become_value_errors(kwargs, inherited, named):
    model = small_net().eval()
    with pytest.raises(inherited):
        captum.attr.Occlusion(model).attribute(images(), **kwargs)
    with pytest.raises(ValueError, match=named):
        Occlusion(model).attribute(images(), **kwargs)


def test_occlusion_maps_reject_float_target_and_misshaped_baseline():
    model, image = small_net().eval(), images(1)[0]
    with pytest.raises(TypeError, match="target.*2.0"):
        occlusion_maps(model, image, window=4, stride=3, layer="2", target=2.0)
    with pytest.raises(ValueError, match=r"baseline of shape \(3, 10, 10\)"):
        occlusion_maps(model, image, window=4, stride=3, layer="2", baseline=torch.zeros(3, 10, 10))
    # a broadcastable baseline still works and equals the brute force with that fill
    maps = occlusion_maps(model, image, 4, 3, "2", target=1, baseline=torch.zeros(1, 1, 10))
    torch.testing.assert_close(
        maps.probability, _brute_force_probability(model, image, 4, 3, 1), rtol=1e-5, atol=1e-6
    )
