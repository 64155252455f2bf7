"""deconvnet_attr.Occlusion against captum.attr.Occlusion across its interface."""

import logging
import re

import captum.attr
import pytest
import torch
import torchvision
from torch import nn

from deconvnet_attr import Occlusion
from deconvnet_attr.occlusion import occlusion_maps
from deconvnet_attr.viz import plot_occlusion_maps


class SmallCNN(nn.Module):
    """Conv, BN (eval, non-trivial statistics), dilation, groups, residual add, concat, pooling."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool1 = nn.MaxPool2d(2)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.branch = nn.Conv2d(8, 4, 1)
        self.conv2 = nn.Conv2d(12, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, classes)
        with torch.no_grad():
            self.bn1.running_mean.uniform_(-0.5, 0.5)
            self.bn1.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(torch.relu(self.bn1(self.conv1(x))))
        x = torch.cat([torch.relu(self.dilated(x)) + x, self.branch(x)], dim=1)
        x = torch.relu(self.conv2(x))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(1, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = nn.functional.max_pool2d(torch.relu(self.a(x) + self.b(y)), 4)
        return self.fc(z.flatten(1))


class ExtraArgs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = SmallCNN()

    def forward(self, x: torch.Tensor, offset: torch.Tensor, scale: float) -> torch.Tensor:
        return self.body(x) * scale + offset


class ScalarOut(SmallCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).sum(1)


def _assert_close(ours, theirs):
    ours = ours if isinstance(ours, tuple) else (ours,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert (a - b).abs().max() <= 1e-4 * b.abs().max() + 1e-7


def _case(name):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 16, generator=g)
    if name == "single":
        return SmallCNN(), x, dict(sliding_window_shapes=(3, 4, 4), strides=2, target=1)
    if name == "channelwise":
        return (
            SmallCNN(),
            x,
            dict(
                sliding_window_shapes=(1, 5, 5),
                strides=(1, 3, 2),
                baselines=0.5,
                target=[0, 3],
                perturbations_per_eval=7,
            ),
        )
    if name == "tensor-baseline":
        base = torch.rand(1, 3, 16, 16, generator=g)
        return (
            SmallCNN(),
            x,
            dict(
                sliding_window_shapes=(3, 6, 3),
                strides=(3, 3, 2),
                baselines=base,
                target=torch.tensor([4, 2]),
                perturbations_per_eval=64,
            ),
        )
    if name == "two-inputs":
        y = torch.rand(2, 1, 16, 16, generator=g)
        return (
            TwoInputs(),
            (x, y),
            dict(
                sliding_window_shapes=((3, 4, 4), (1, 3, 3)),
                strides=(2, (1, 2, 3)),
                baselines=(0.0, torch.rand(2, 1, 16, 16, generator=g)),
                target=2,
                perturbations_per_eval=5,
            ),
        )
    if name == "extra-args":
        offset = torch.rand(2, 5, generator=g)
        return (
            ExtraArgs(),
            x,
            dict(
                sliding_window_shapes=(3, 4, 4),
                strides=4,
                target=0,
                additional_forward_args=(offset, 2.0),
                perturbations_per_eval=4,
            ),
        )
    if name == "scalar-output":
        return (
            ScalarOut(),
            x,
            dict(sliding_window_shapes=(3, 5, 5), strides=3, perturbations_per_eval=3),
        )
    if name == "resnet18":
        model = torchvision.models.resnet18(weights=None)
        return (
            model,
            torch.rand(1, 3, 32, 32, generator=g),
            dict(sliding_window_shapes=(3, 8, 8), strides=6, target=7, perturbations_per_eval=16),
        )
    if name == "squeezenet":
        model = torchvision.models.squeezenet1_1(weights=None)
        return (
            model,
            torch.rand(1, 3, 48, 48, generator=g),
            dict(sliding_window_shapes=(3, 8, 8), strides=8, target=3, perturbations_per_eval=8),
        )
    if name == "alexnet":
        model = torchvision.models.alexnet(weights=None)
        return (
            model,
            torch.rand(1, 3, 80, 80, generator=g),
            dict(
                sliding_window_shapes=(3, 12, 12), strides=8, target=11, perturbations_per_eval=32
            ),
        )
    raise KeyError(name)


@pytest.mark.parametrize(
    "name",
    [
        "single",
        "channelwise",
        "tensor-baseline",
        "two-inputs",
        "extra-args",
        "scalar-output",
        "resnet18",
        "squeezenet",
        "alexnet",
    ],
)
def test_matches_captum(name):
    model, inputs, kwargs = _case(name)
    model.eval()
    expected = captum.attr.Occlusion(model).attribute(inputs, **kwargs)
    occlusion = Occlusion(model)
    got = occlusion.attribute(inputs, **kwargs)
    _assert_close(got, expected)
    assert occlusion.last_run.path == "incremental", occlusion.last_run.reason
    assert occlusion.last_run.stats.conv_macs < occlusion.last_run.stats.conv_macs_full


class DataDependent(SmallCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # control flow on values: not traceable
            x = x * 2
        return super().forward(x)


@pytest.mark.parametrize("kind", ["lambda", "control-flow", "training"])
def test_fallback_equals_captum(kind, caplog):
    torch.manual_seed(0)
    model = (DataDependent() if kind == "control-flow" else SmallCNN()).eval()
    # a model in training mode without BatchNorm/dropout statistics is still deterministic
    model = (
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 3)).train()
        if kind == "training"
        else model
    )
    forward = (lambda t: model(t)) if kind == "lambda" else model  # noqa: PLW0108
    x = torch.rand(2, 3, 16, 16)
    kwargs = dict(sliding_window_shapes=(3, 4, 4), strides=3, target=1, perturbations_per_eval=6)
    expected = captum.attr.Occlusion(forward).attribute(x, **kwargs)
    occlusion = Occlusion(forward)
    with caplog.at_level(logging.DEBUG, logger="deconvnet_attr.occlusion"):
        got = occlusion.attribute(x, **kwargs)
    # the same occluded batches (test_sweep.py); sums accumulated in another order
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert occlusion.last_run.path == "full"
    reason = {
        "lambda": "cannot trace",
        "control-flow": "cannot trace",
        "training": "training mode",
    }[kind]
    assert reason in occlusion.last_run.reason
    assert any("full recomputation" in r.message and reason in r.message for r in caplog.records)


def test_log_and_bound_forward(caplog):
    model = SmallCNN().eval()
    occlusion = Occlusion(model.forward)
    x = torch.rand(1, 3, 16, 16)
    with caplog.at_level(logging.DEBUG, logger="deconvnet_attr.occlusion"):
        got = occlusion.attribute(x, (3, 4, 4), strides=4, target=2)
    assert occlusion.last_run.path == "incremental"
    assert any("incremental" in r.message for r in caplog.records)
    _assert_close(got, captum.attr.Occlusion(model).attribute(x, (3, 4, 4), strides=4, target=2))
    assert isinstance(occlusion, captum.attr.Occlusion)


BAD = [
    dict(sliding_window_shapes=(3, 20, 4)),  # window larger than the input
    dict(sliding_window_shapes=(3, 4, 4), strides=5),  # stride larger than the window
    dict(sliding_window_shapes=(4, 4)),  # wrong number of window dimensions
    dict(sliding_window_shapes=(3, 4, 4), strides=(1, 2)),  # wrong number of strides
    dict(sliding_window_shapes=(3, 4, 4), perturbations_per_eval=0),
    dict(sliding_window_shapes=(3, 4, 4), baselines=torch.zeros(3, 3, 16, 16)),
    dict(sliding_window_shapes=(3, 4, 4), target=9),  # target out of range
    dict(sliding_window_shapes=(3, 4, 4), target=[1, 2, 3]),  # one target per example
]


@pytest.mark.parametrize("kwargs", BAD)
def test_argument_errors_name_the_argument(kwargs):
    # issue 12 item 14: every argument Captum rejects (with an AssertionError, IndexError or
    # RuntimeError from deep inside its loop) is rejected here too, as a ValueError naming it
    model = SmallCNN().eval()
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises((AssertionError, IndexError, RuntimeError)):
        captum.attr.Occlusion(model).attribute(x, **kwargs)
    with pytest.raises(ValueError) as ours:
        Occlusion(model).attribute(x, **kwargs)
    name, value = list(kwargs.items())[-1]
    shown = str(tuple(value.shape)) if isinstance(value, torch.Tensor) else repr(value)
    assert name in str(ours.value) and shown in str(ours.value)


def test_show_progress(capsys):
    model = SmallCNN().eval()
    x = torch.rand(1, 3, 16, 16)
    kwargs = dict(sliding_window_shapes=(3, 4, 4), strides=4, perturbations_per_eval=4, target=0)
    expected = captum.attr.Occlusion(model).attribute(x, show_progress=True, **kwargs)
    theirs = capsys.readouterr().err
    got = Occlusion(model).attribute(x, show_progress=True, **kwargs)
    ours = capsys.readouterr().err
    _assert_close(got, expected)
    # the same title and steps done (the unoccluded pass and 16 windows / 4 = 4 batches);
    # Captum 0.9's total counts the input's elements instead of the batches (5/193)
    assert "Occlusion attribution" in theirs and "Occlusion attribution" in ours
    done_theirs = re.findall(r"(\d+)/(\d+)", theirs)[-1][0]
    assert re.findall(r"(\d+)/(\d+)", ours)[-1] == (done_theirs, "5") == ("5", "5")


def test_model_untouched():
    model = torchvision.models.resnet18(weights=None).eval()
    model.layer1[0].conv1.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    occlusion = Occlusion(model)
    occlusion.attribute(
        torch.rand(1, 3, 32, 32), (3, 8, 8), strides=8, target=0, perturbations_per_eval=8
    )
    assert occlusion.last_run.path == "incremental"
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("layer", ["layer2", "layer2.0.conv1"])
def test_hooks_see_real_forward_passes(layer):
    """A hooked model runs in full: hooks must not see rectangles or tracer proxies."""
    model = torchvision.models.resnet18(weights=None).eval()
    shapes = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda m, a, o: shapes.append(tuple(o.shape))
    )
    occlusion = Occlusion(model)
    x = torch.rand(1, 3, 32, 32)
    got = occlusion.attribute(x, (3, 8, 8), strides=8, target=0, perturbations_per_eval=8)
    assert occlusion.last_run.path == "full" and "hooks" in occlusion.last_run.reason
    assert {s[0] for s in shapes} == {1, 8} and len({s[1:] for s in shapes}) == 1
    assert len(model.get_submodule(layer)._forward_hooks) == 1
    handle.remove()
    _assert_close(
        got,
        captum.attr.Occlusion(model).attribute(
            x, (3, 8, 8), strides=8, target=0, perturbations_per_eval=8
        ),
    )


def _brute_force_maps(model, layer, image, window, stride, target, baseline):
    """One forward pass per occluder position, the layer read by a forward hook."""
    seen = {}
    model.get_submodule(layer).register_forward_hook(lambda m, a, o: seen.update(o=o))
    with torch.no_grad():
        model(image[None])
        channel = int(seen["o"][0].flatten(1).amax(1).argmax())
        h, w = image.shape[-2:]
        rows = list(range(0, h - window + stride, stride))[: -(-(h - window) // stride) + 1]
        cols = list(range(0, w - window + stride, stride))[: -(-(w - window) // stride) + 1]
        feature = torch.empty(len(rows), len(cols))
        probability, label = torch.empty_like(feature), torch.empty_like(feature).long()
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                x = image.clone()
                x[:, r : r + window, c : c + window] = baseline
                p = model(x[None]).softmax(1)[0]
                feature[i, j] = seen["o"][0, channel].sum()
                probability[i, j], label[i, j] = p[target], p.argmax()
    return channel, rows, cols, feature, probability, label


@pytest.mark.parametrize("traceable", [True, False])
def test_occlusion_maps_match_brute_force(traceable):
    torch.manual_seed(0)
    model = (SmallCNN() if traceable else DataDependent()).eval()
    image = torch.rand(3, 18, 18)
    maps = occlusion_maps(
        model,
        image,
        window=5,
        stride=3,
        layer="conv2",
        target=2,
        baseline=0.25,
        perturbations_per_eval=7,
    )
    channel, rows, cols, feature, probability, label = _brute_force_maps(
        model, "conv2", image, 5, 3, 2, 0.25
    )
    assert maps.channel == channel and maps.layer == "conv2" and maps.target == 2
    assert maps.rows.tolist() == rows and maps.cols.tolist() == cols
    assert torch.allclose(maps.feature, feature, rtol=1e-4, atol=1e-5)
    assert torch.allclose(maps.probability, probability, rtol=1e-4, atol=1e-6)
    assert torch.equal(maps.label, label)
    with torch.no_grad():
        clean = model(image[None]).softmax(1)[0]
    assert maps.clean_label == int(clean.argmax())
    assert maps.clean_probability == pytest.approx(float(clean[2]), rel=1e-5)


def test_occlusion_maps_defaults_errors_and_figure():
    model = SmallCNN().eval()
    image = torch.rand(1, 3, 16, 16)
    maps = occlusion_maps(model, image, (4, 6), (4, 5), model.dilated)
    with torch.no_grad():
        assert maps.target == int(model(image).argmax())
    assert maps.feature.shape == (4, 3) and maps.window == (4, 6)
    with pytest.raises(ValueError, match="window"):
        occlusion_maps(model, image, 20, 4, "conv2")
    with pytest.raises(ValueError, match="stride"):
        occlusion_maps(model, image, 4, 0, "conv2")
    with pytest.raises(ValueError, match="target 9"):
        occlusion_maps(model, image, 4, 4, "conv2", target=9)
    with pytest.raises(ValueError, match="nope"):
        occlusion_maps(model, image, 4, 4, "nope")
    fig = plot_occlusion_maps(
        image[0], maps, class_names=list("abcde"), projection=torch.randn(3, 16, 16)
    )
    assert len(fig.axes) == 5 + 2  # five panels and two colour bars
    assert fig.axes[3].get_title() == "(d) p(" + "abcde"[maps.target] + ")"
