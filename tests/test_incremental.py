"""IncrementalForward against plain forward passes on hand-made perturbed batches."""

import pytest
import torch
import torchvision
from torch import nn

from deconvnet_attr.incremental import IncrementalForward


class Mixed(nn.Module):
    """Conv/pool geometry of every kind the engine reasons about, then a classifier head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, (3, 5), stride=(2, 1), padding=(1, 2))
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.dil = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
        self.side = nn.AvgPool2d(3, 1, 1)
        self.lrn = nn.LocalResponseNorm(3)
        self.down = nn.Conv2d(16, 12, 3, stride=2, padding=1)
        self.head = nn.Linear(12, 5)
        with torch.no_grad():  # non-trivial running statistics
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn(self.stem(x))))
        y = torch.cat([self.dil(x) + x, self.side(x)], dim=1)
        y = nn.functional.max_pool2d(self.lrn(y), 2, ceil_mode=True)
        y = self.down(y).relu()
        return self.head(y.mean((2, 3)))


def _perturbed(x: torch.Tensor, copies: int, gen: torch.Generator) -> torch.Tensor:
    """``copies`` copies of each example with random rectangles (some empty, some at borders)."""
    n, _, h, w = x.shape
    out = x.repeat(copies, 1, 1, 1)
    for b in range(out.shape[0]):
        kind = b % 4
        if kind == 0:
            continue  # unchanged sample
        size = int(torch.randint(1, max(2, h // 2), (1,), generator=gen))
        r = int(torch.randint(0, h - size + 1, (1,), generator=gen))
        c = 0 if kind == 2 else w - size
        out[b, :, r : r + size, c : c + size] = torch.randn(1, generator=gen)
        if kind == 3:  # a second spot far away: the bounding box covers both
            out[b, 0, 0, 0] = 5.0
    return out


CASES = [
    (Mixed, 31, 0.6),
    (Mixed, 31, 1.0),
    (lambda: torchvision.models.resnet18(weights=None), 48, 0.9),
    (lambda: torchvision.models.mobilenet_v3_small(weights=None), 40, 0.9),
    (lambda: torchvision.models.squeezenet1_1(weights=None), 64, 0.9),
]


@pytest.mark.parametrize("factory,size,fraction", CASES)
def test_matches_full_forward(factory, size, fraction):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(2, 3, size, size, generator=gen)
    engine = IncrementalForward(model, full_fraction=fraction)
    with torch.no_grad():
        assert torch.allclose(engine(x), model(x), atol=1e-6)
        for copies in (1, 3):
            batch = _perturbed(x, copies, gen)
            expected = model(batch)
            got = engine(batch)
            assert engine.incremental, engine.reason
            assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert engine.stats.batches == 2
    assert 0 < engine.stats.conv_macs < engine.stats.conv_macs_full


def test_unchanged_batch_recomputes_nothing():
    model = Mixed().eval()
    x = torch.randn(1, 3, 20, 20)
    engine = IncrementalForward(model)
    with torch.no_grad():
        engine(x)
        out = engine(x.repeat(4, 1, 1, 1))
    assert torch.equal(out, model(x).repeat(4, 1))
    assert engine.stats.conv_macs == 0 < engine.stats.conv_macs_full


def test_other_shapes_and_untraceable_pass_through():
    model = Mixed().eval()
    engine = IncrementalForward(model)
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        engine(x)
        other = torch.randn(3, 3, 24, 24)  # not k copies of the reference
        assert torch.equal(engine(other), model(other))
        lam = IncrementalForward(lambda t: model(t))  # noqa: PLW0108
        assert torch.equal(lam(x), model(x))
    assert not lam.incremental and "cannot trace" in lam.reason


class Aliasing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = y.relu_()  # y itself is read again below
        return (y + z).sum((1, 2, 3))


def test_inplace_aliasing_runs_eagerly():
    model = Aliasing().eval()
    engine = IncrementalForward(model)
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        assert torch.equal(engine(x), model(x))
        batch = _perturbed(x, 4, torch.Generator().manual_seed(1))
        assert torch.equal(engine(batch), model(batch))
    assert "in place" in engine.reason


class EvalDropoutHead(nn.Module):
    """torchvision's EfficientNet head: ``Dropout(inplace=True)`` on a flattened view, plus a
    functional in-place dropout with ``training=False`` (both the identity in eval mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.drop = nn.Dropout(0.5, inplace=True)
        self.head = nn.Linear(4 * 7 * 7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.flatten(self.conv(x), 1)
        y = nn.functional.dropout(y, 0.5, training=False, inplace=True)
        return self.head(self.drop(y))


def test_eval_mode_inplace_dropout_is_not_aliasing():
    model = EvalDropoutHead().eval()
    engine = IncrementalForward(model, cost_model=False)
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        assert torch.equal(engine(x), model(x))
        batch = _perturbed(x, 4, torch.Generator().manual_seed(2))
        assert torch.allclose(engine(batch), model(batch), atol=1e-6)
    assert engine.incremental, engine.reason
    # in training mode the module may write: the engine runs the model as it is
    trained = IncrementalForward(model.train())
    assert trained(x).shape == (1, 3) and not trained.incremental
    assert "training mode" in trained.reason
