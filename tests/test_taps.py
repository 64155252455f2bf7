"""Layer taps against hand-registered hooks and model slices; every entry point that takes a layer
accepts it by module and by name and rejects a layer that is not in the model the same way."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch
from torch import nn
from torch.fx import symbolic_trace

from deconvnet_attr import (
    DeconvProjection,
    LayerAblation,
    correspondence,
    correspondence_table,
    invariance_curves,
    occlusion_maps,
    project_top_activations,
    receptive_field,
    top_activations,
)
from deconvnet_attr.ablation import ablated, ablation_study
from deconvnet_attr.analysis.correspondence import Part
from deconvnet_attr.analysis.evolution import feature_evolution
from deconvnet_attr.analysis.features import flat_layer_outputs
from deconvnet_attr.analysis.probe import linear_probe, pooled_layer_features
from deconvnet_attr.geometry import layer_node
from deconvnet_attr.mining import top_activations_by_layer
from deconvnet_attr.taps import LayerCallError, LayerError, Taps, forward_hooks, resolve_layer


class Counting(nn.Module):
    """Identity that counts its calls (a forward that ran, seen without any hook)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def small_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.conv1 = nn.Conv2d(1, 4, 3)
    model.relu1 = nn.ReLU()
    model.pool = nn.MaxPool2d(2)
    model.conv2 = nn.Conv2d(4, 6, 3)
    model.relu2 = nn.ReLU()
    model.flatten = nn.Flatten()
    model.fc = nn.Linear(6 * 3 * 3, 5)
    return model.eval()


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ------------------------------------------------------------------ (a) taps themselves
def test_several_layers_in_one_forward_match_model_slices():
    model, x = small_cnn(), torch.randn(3, 1, 12, 12)
    captured = Taps(model, ["conv1", model.conv2, "fc"]).run(lambda: model(x))
    with torch.no_grad():
        torch.testing.assert_close(captured.outputs["conv1"], model[:1](x))
        torch.testing.assert_close(captured.outputs["conv2"], model[:4](x))
        torch.testing.assert_close(captured.outputs["fc"], model(x))
        torch.testing.assert_close(captured.result, model(x))
    assert list(captured.outputs) == ["conv1", "conv2", "fc"]
    assert no_hooks(model)


def test_stop_after_the_last_layer_skips_later_layers():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), Counting(), nn.ReLU(), Counting(), Counting())
    x = torch.randn(2, 1, 8, 8)
    captured = Taps(model, ["2", "0"], stop=True).run(lambda: model(x))
    assert captured.result is None
    assert [model[1].calls, model[3].calls, model[4].calls] == [1, 0, 0]
    with torch.no_grad():
        torch.testing.assert_close(captured.outputs["2"], torch.relu(model[0](x)))


def test_reused_module_first_call_last_call_or_rejected():
    relu = nn.ReLU()
    conv1, conv2 = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3)
    model = nn.Sequential(conv1, relu, conv2, relu)  # relu runs twice
    x = torch.randn(2, 1, 9, 9)
    with torch.no_grad():
        first, second = torch.relu(conv1(x)), torch.relu(conv2(torch.relu(conv1(x))))
        torch.testing.assert_close(Taps(model, [relu])(x)["1"], first)
        torch.testing.assert_close(Taps(model, [relu], stop=True)(x)["1"], first)
        torch.testing.assert_close(Taps(model, [relu], call="last")(x)["1"], second)
        with pytest.raises(LayerCallError, match="'1' ran more than once") as error:
            Taps(model, [relu], once=True)(x)
    assert isinstance(error.value, RuntimeError) and isinstance(error.value, ValueError)
    assert no_hooks(model)


def test_in_place_op_after_the_layer_does_not_alter_the_capture():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True), nn.Conv2d(3, 2, 1))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        reference = model[0](x)
        captured = Taps(model, ["0", "2"])(x)
    assert (reference < 0).any()  # the in-place ReLU would have changed it
    torch.testing.assert_close(captured["0"], reference)


def test_capture_keeps_the_autograd_graph():
    model, x = small_cnn(), torch.randn(2, 1, 12, 12, requires_grad=True)
    out = Taps(model, ["conv2"], stop=True)(x)["conv2"]
    (grad,) = torch.autograd.grad(out.sum(), x)
    x2 = x.detach().requires_grad_()
    (expected,) = torch.autograd.grad(model[:4](x2).sum(), x2)
    torch.testing.assert_close(grad, expected)


def test_hooks_removed_after_an_exception():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = nn.Sequential(nn.Linear(3, 3), Boom())
    with pytest.raises(RuntimeError, match="boom"):
        Taps(model, ["0"]).run(lambda: model(torch.randn(2, 3)))
    assert no_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with forward_hooks([model[0]], lambda m, a, o: None, lambda m, a: None):
            model(torch.randn(2, 3))
    assert no_hooks(model)


def test_not_called_and_non_tensor_and_low_rank_outputs():
    model = small_cnn()
    stray_branch = nn.Sequential(model, nn.Linear(5, 5))
    with pytest.raises(LayerCallError, match=r"\['1'\] were not called"):
        Taps(stray_branch, ["1"]).run(lambda: model(torch.randn(1, 1, 12, 12)))
    with pytest.raises(LayerCallError, match="'fc' output is of shape \\(2, 5\\), not a tensor"):
        Taps(model, ["fc"], min_dim=3)(torch.randn(2, 1, 12, 12))
    assert no_hooks(model) and no_hooks(stray_branch)


def test_hook_replacing_the_output():
    model, x = small_cnn(), torch.randn(2, 1, 12, 12)
    with torch.no_grad(), forward_hooks([model.conv2], lambda m, a, o: torch.zeros_like(o)):
        out = model(x)
    torch.testing.assert_close(out, model.fc.bias.detach().expand(2, 5))
    assert no_hooks(model)


def test_hook_does_not_fire_for_another_threads_forward():
    model, x = small_cnn(), torch.randn(1, 1, 12, 12)
    calls: list[str] = []
    inside, done = threading.Event(), threading.Event()

    def tapped() -> None:
        with forward_hooks([model.conv1], lambda m, a, o: calls.append("tapped")):
            inside.set()
            done.wait(10)
            model(x)

    worker = threading.Thread(target=tapped)
    worker.start()
    assert inside.wait(10)
    with torch.no_grad():
        model(x)  # another thread, hooks registered: must not fire
    done.set()
    worker.join(10)
    assert calls == ["tapped"] and no_hooks(model)


def test_resolve_layer_by_module_and_name():
    model = small_cnn()
    assert resolve_layer(model, "conv2") == ("conv2", model.conv2)
    assert resolve_layer(model, model.conv2) == ("conv2", model.conv2)
    assert resolve_layer(model, "") == ("", model)
    with pytest.raises(TypeError, match="int 3"):
        resolve_layer(model, 3)
    with pytest.raises(LayerError, match="more than once"):
        Taps(model, ["conv2", model.conv2])


# ------------------------------------------------------------------ (b) every entry point
def _images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 12, 12, generator=torch.Generator().manual_seed(seed)) + 0.1


def _labels(n: int = 4) -> torch.Tensor:
    return torch.arange(n) % 5


def _splice_output(model, layer):
    with torch.no_grad(), ablated(model, layer, 0.0):
        return model(_images())


def _evolution(model, layer):
    later = small_cnn(seed=3)
    checkpoints = {0: model, 1: later}
    if isinstance(layer, nn.Module) and layer is model.conv2:
        layer = later.conv2  # a module of any checkpoint names the layer
    return feature_evolution(checkpoints, {layer: [0, 1]}, _images(), batch_size=2, progress=False)


def _layer_node(model, layer):
    name, node = layer_node(symbolic_trace(model), model, layer)
    return name, node.name


def _occlusion_untraceable(model, layer):
    class Untraceable(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if float(x.sum()) > -1e9:  # data-dependent control flow: fx cannot trace it
                return self.inner(x)
            return self.inner(x)

    wrapper = Untraceable(model)
    inner = layer if isinstance(layer, nn.Module) else f"inner.{layer}"
    return occlusion_maps(wrapper, _images(1)[0], 4, 4, inner)


ENTRY_POINTS = {
    "Taps": lambda m, layer: Taps(m, [layer])(_images()),
    "DeconvProjection": lambda m, layer: DeconvProjection(m, layer).attribute(_images(), target=1),
    "LayerAblation": lambda m, layer: LayerAblation(m, [layer]).attribute(_images(), target=0),
    "LayerAblation group": lambda m, layer: LayerAblation(m, [[layer, "conv1"]]).attribute(
        _images(), target=0
    ),
    "ablated": _splice_output,
    "ablation_study": lambda m, layer: ablation_study(
        m, (_images(), _labels()), {"g": [layer]}, baselines="mean"
    ),
    "linear_probe": lambda m, layer: linear_probe(
        m, [layer], (_images(8), _labels(8)), (_images(4, 2), _labels(4)), max_iter=50
    ),
    "pooled_layer_features": lambda m, layer: pooled_layer_features(
        m, {"f": layer}, (_images(), _labels())
    ),
    "flat_layer_outputs": lambda m, layer: flat_layer_outputs(m, _images(), [layer]),
    "invariance_curves": lambda m, layer: invariance_curves(
        m, _images(), _labels(), [layer], transforms={"rotation": [0, 90]}
    ),
    "correspondence": lambda m, layer: correspondence(
        m,
        _images(3),
        (2, 2, 6, 6),
        [layer],
        n_random=2,
        generator=torch.Generator().manual_seed(0),
    ),
    "correspondence_table": lambda m, layer: correspondence_table(
        m,
        _images(8),
        torch.zeros(8, dtype=torch.long),
        [layer],
        parts=[Part("corner", 0, (0.1, 0.1, 0.5, 0.5))],
        n_images=2,
        n_sets=1,
        n_random=2,
    ),
    "top_activations": lambda m, layer: top_activations(m, layer, _images(), k=2, progress=False),
    "top_activations_by_layer": lambda m, layer: top_activations_by_layer(
        m, {layer: [0, 2]}, _images(), k=2, progress=False
    ),
    "project_top_activations": lambda m, layer: project_top_activations(
        m,
        layer,
        _images(),
        top_activations(m, "conv2", _images(), k=2, progress=False),
        progress=False,
    ),
    "receptive_field": lambda m, layer: receptive_field(m, layer, _images(1)),
    "layer_node": _layer_node,
    "occlusion_maps": lambda m, layer: occlusion_maps(m, _images(1)[0], 4, 4, layer),
    "occlusion_maps untraceable": _occlusion_untraceable,
    "feature_evolution": _evolution,
}


def _assert_same(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            _assert_same(getattr(a, f.name), getattr(b, f.name))
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_entry_point_takes_a_layer_by_name_or_module(entry):
    run = ENTRY_POINTS[entry]
    model = small_cnn()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    by_name = run(model, "conv2")
    by_module = run(model, model.conv2)
    _assert_same(by_name, by_module)
    assert no_hooks(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_entry_point_rejects_a_layer_not_in_the_model(entry):
    run = ENTRY_POINTS[entry]
    model = small_cnn()
    with pytest.raises(LayerError, match=r"conv2x' is not a submodule.*closest names: .*conv2'"):
        run(model, "conv2x")
    foreign = nn.Conv2d(4, 6, 3)
    with pytest.raises(
        LayerError, match=r"layer Conv2d \(Conv2d\(4, 6.*is not a submodule.*closest names"
    ):
        run(model, foreign)
    assert no_hooks(model)
