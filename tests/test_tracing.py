"""Tracing and state preservation leave no trace, also with several threads at once."""

from __future__ import annotations

import threading
import time

import torch
import torchvision
from torch import nn

from deconvnet_attr import Occlusion, occlusion_maps, receptive_field
from deconvnet_attr.state import preserved_state
from deconvnet_attr.tracing import symbolic_trace


class Stash(nn.Module):
    """A forward with Python side effects: a call counter and a stored feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        features = self.conv(x).relu()
        self.last_features = features
        return self.head(features.flatten(1))


def _attributes(model: nn.Module) -> dict:
    return {name: dict(vars(m)) for name, m in model.named_modules()}


def test_public_tracing_calls_leave_python_attributes_alone():
    torch.manual_seed(0)
    model = Stash().eval()
    x = torch.randn(1, 1, 8, 8)
    model(x)
    before = _attributes(model)
    Occlusion(model).attribute(x, sliding_window_shapes=(1, 3, 3), strides=2, target=0)
    receptive_field(model, "conv", x)
    occlusion_maps(model, x[0], window=3, stride=2, layer="conv", target=0)
    after = _attributes(model)
    assert after.keys() == before.keys()
    for name in before:
        assert after[name].keys() == before[name].keys(), name
        for key, value in before[name].items():
            assert after[name][key] is value, (name, key)
    assert model.calls == 1
    assert isinstance(model.last_features, torch.Tensor)


def _race(work, seconds: float = 2.0) -> list[str]:
    """Run each callable of ``work`` in its own thread, repeatedly, for ``seconds``."""
    errors: list[str] = []
    stop = time.monotonic() + seconds

    def loop(fn):
        while time.monotonic() < stop and not errors:
            try:
                fn()
            except Exception as error:  # noqa: BLE001 - reported by the assertion
                errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=loop, args=(fn,)) for fn in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_tracing_does_not_disturb_other_threads():
    """fx patches nn.Module.__call__ process-wide; another thread's inference must not notice,
    and two threads tracing at once must both succeed."""
    other = torchvision.models.resnet18().eval()
    traced = torchvision.models.resnet18().eval()
    example = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = other(example)

    def infer():
        with torch.no_grad():
            assert torch.equal(other(example), expected)

    errors = _race(
        [infer, lambda: receptive_field(traced, "layer1", example), lambda: symbolic_trace(traced)]
    )
    assert not errors, errors[:3]


def test_concurrent_occlusion_on_one_model_equals_single_threaded():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 3)
    ).eval()
    x = torch.randn(1, 1, 10, 10)
    args = dict(sliding_window_shapes=(1, 3, 3), strides=2, target=1)
    expected = Occlusion(model).attribute(x, **args)

    def occlude():
        assert torch.allclose(Occlusion(model).attribute(x, **args), expected, atol=1e-6)

    errors = _race([occlude, occlude], seconds=3.0)
    assert not errors, errors[:3]


def test_overlapping_preserved_state_restores_batchnorm_once_all_leave():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
    saved = [b.clone() for b in model.buffers()]

    def forward_in_train_mode():
        with preserved_state(model), torch.no_grad():
            model(torch.randn(4, 1, 6, 6))

    errors = _race([forward_in_train_mode, forward_in_train_mode])
    assert not errors, errors[:3]
    for buffer, before in zip(model.buffers(), saved, strict=True):
        assert torch.equal(buffer, before)
    assert model.training and model[1].training


def test_untraceable_model_reason_is_one_short_line():
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1) for _ in range(40)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.body(x).flatten(1)
            return x.flatten(1)

    model = Untraceable().eval()
    x = torch.rand(1, 1, 6, 6)
    occlusion = Occlusion(model)
    occlusion.attribute(x, sliding_window_shapes=(1, 3, 3), strides=3, target=0)
    reason = occlusion.last_run.reason
    assert occlusion.last_run.path == "full"
    assert "\n" not in reason and len(reason) < 300, reason
    assert "Untraceable" in reason


def test_parameter_and_buffer_reads_trace_as_torch_fx_does():
    """The tracer's dict lookup of parameter / buffer names gives torch.fx's own graph: the same
    get_attr nodes (first name of a tied parameter, buffers, parameters read in forward)."""
    import torch.nn.functional as F

    class Reads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.tied = self.conv  # the same parameters under a second name
            self.scale = nn.Parameter(torch.ones(4, 1, 1))
            self.register_buffer("shift", torch.zeros(4, 1, 1))
            self.bn = nn.BatchNorm2d(4).eval()

        def forward(self, x):
            y = F.conv2d(x, self.tied.weight, self.conv.bias) * self.scale + self.shift
            bn = self.bn
            return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias)

    for model in (Reads(), torchvision.models.resnet18().eval()):
        ours, theirs = symbolic_trace(model), torch.fx.symbolic_trace(model)
        assert str(ours.graph) == str(theirs.graph)
        x = torch.rand(1, 3, 32, 32)
        torch.testing.assert_close(ours(x), theirs(x))
