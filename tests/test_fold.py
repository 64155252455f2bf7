"""Batch norms folded into the convolutions before them (incremental/fold.py), against the model
itself: which pairs fold, the same outputs on perturbed batches (rectangles and whole-batch
recomputation), an untouched model."""

import pytest
import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, StdConv2d
from torch import nn

from deconvnet_attr.incremental import IncrementalForward
from deconvnet_attr.incremental.executor import Executor, RunStats


def _randomise(bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)


class Norms(nn.Module):
    """Every pairing the fold must take or leave."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, stride=2, padding=1), BatchNormAct2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)  # conv3 also read by +
        self.std, self.bn4 = StdConv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)  # a subclass
        self.shared, self.bn5, self.bn6 = (
            nn.Conv2d(8, 8, 3, padding=1),
            *(nn.BatchNorm2d(8) for _ in "ab"),
        )
        self.bn7 = nn.BatchNorm2d(8)  # after an addition
        self.head = nn.Linear(8, 4)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                _randomise(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        y = self.conv3(x)
        x = self.bn3(y) + y
        x = self.bn4(self.std(x))
        x = self.bn5(self.shared(x)) + self.bn6(self.shared(x))
        x = self.bn7(x + 1.0)
        return self.head(x.mean((2, 3)))


def _perturbed(x: torch.Tensor, copies: int) -> torch.Tensor:
    out = x.repeat(copies, 1, 1, 1)
    for b in range(copies):
        out[b, :, 2 * b : 2 * b + 4, 3 * b : 3 * b + 4] = 0.0
    return out


def test_folds_exactly_the_conv_norm_pairs():
    torch.manual_seed(0)
    model = Norms().eval()
    x = torch.randn(1, 3, 24, 24)
    engine = IncrementalForward(model, cost_model=False)
    with torch.no_grad():
        engine(x)
    plan = engine.plan
    assert {n.target for n in plan.folded} == {"conv1", "conv2"}
    norms = {
        n.name
        for n in plan.net.nodes
        if n in plan.net.depends  # not StdConv2d's F.batch_norm of its weight
        and (
            n.target is F.batch_norm
            or (n.op == "call_module" and isinstance(plan.modules[str(n.target)], nn.BatchNorm2d))
        )
    }
    # bn3: its conv is read twice; bn4: after a conv subclass; bn5, bn6: a shared conv module
    assert norms == {"bn3", "bn4", "bn5", "bn6", "bn7"}


@pytest.mark.parametrize("factory", [Norms, lambda: __import__("torchvision").models.resnet18()])
def test_folded_plan_matches_the_model(factory):
    """Rectangles and whole-batch recomputation through the folded graph give the model's
    outputs; the model's parameters, buffers and flags are untouched."""
    torch.manual_seed(0)
    model = factory().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            _randomise(m)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {k: (p, p.requires_grad) for k, p in model.named_parameters()}
    x = torch.randn(1, 3, 32, 32)
    batch = _perturbed(x, 6)
    engine = IncrementalForward(model, cost_model=False)
    with torch.no_grad():
        expected = model(batch)
        engine(x)
        assert engine.plan.folded
        for fraction in (0.9, 0.0):  # the plan's rectangles; full recomputation
            got = Executor(engine.plan, RunStats(), fraction).run((batch,), 6)
            assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {k: (p, p.requires_grad) for k, p in model.named_parameters()} == params
    assert all(p.grad is None for p in model.parameters()) and not model.training


class Shuffle(nn.Module):
    """A channel shuffle (``view`` of a multi-position map) in the middle, a user's function
    near the end, and a ``view`` of 1x1 maps before the head."""

    def __init__(self, user_op: bool) -> None:
        super().__init__()
        self.user_op = user_op
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.c, self.head = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x).relu()
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = self.c(self.b(x).relu())
        if self.user_op:
            x = _user_scale(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.head(x.view(x.shape[0], -1))


@torch.fx.wrap
def _user_scale(x: torch.Tensor) -> torch.Tensor:
    return x * 2.0  # a user's function: it might need contiguous memory


def _spy(plan, targets: str, layouts: dict) -> dict:
    """Wrap the plan's modules ``targets`` to record whether their input is channels-last;
    returns the originals."""
    real = {t: plan.modules[t] for t in targets}

    def wrapped(v: torch.Tensor, t: str) -> torch.Tensor:
        layouts[t] = v.is_contiguous(memory_format=torch.channels_last)
        return real[t](v)

    for t in targets:
        plan.modules[t] = lambda v, t=t: wrapped(v, t)
    return real


@pytest.mark.parametrize("user_op", [False, True])
def test_whole_maps_run_channels_last_where_every_op_allows(user_op):
    """From the last op that needs contiguous memory on, whole maps run channels-last: the
    convolutions after the shuffle see channels-last inputs (none before a user's function),
    the output is contiguous and equals the model's."""
    torch.manual_seed(0)
    model = Shuffle(user_op).eval()
    x = torch.randn(1, 3, 16, 16)
    engine = IncrementalForward(model, cost_model=False)
    with torch.no_grad():
        engine(x)
    plan = engine.plan
    blocker = plan.net.nodes[plan.channels_last_from - 1]
    if user_op:  # right after the user's function
        assert blocker.target is _user_scale
    else:  # right after the shuffle's multi-position view; the 1x1 view does not count
        assert blocker.target == "view" and blocker.args[0].target == "relu"
    batch = _perturbed(x, 3)
    with torch.no_grad():
        for fraction in (0.9, 0.0):  # rectangles first; whole maps throughout
            layouts: dict[str, bool] = {}
            real = _spy(plan, "bc", layouts)
            got = Executor(plan, RunStats(), fraction).run((batch,), 3)
            plan.modules.update(real)
            assert got.is_contiguous()
            torch.testing.assert_close(got, model(batch))
            if fraction == 0.0:
                assert layouts == {"b": not user_op, "c": not user_op}
