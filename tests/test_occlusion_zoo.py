"""The ops of the torchvision / timm zoo, one tiny model each: incremental evaluation equals full
recomputation, receptive fields equal gradient support, global ops make the rest full, the cost
model's verdict is reported, batches of images share one plan."""

import math
from dataclasses import replace

import pytest
import timm.layers
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import Occlusion as CaptumOcclusion
from test_deconv import build
from test_geometry import _positive_twin, _support
from test_incremental import _perturbed
from torch import nn

from deconvnet_attr import Occlusion
from deconvnet_attr.geometry import receptive_field, trace
from deconvnet_attr.incremental import IncrementalForward
from deconvnet_attr.incremental.cost import Estimate, estimate
from deconvnet_attr.incremental.executor import RunStats


class Block(nn.Module):
    """A stem convolution, then the op under test (``op(self, x)``), then a 3x3 convolution
    and a classifier head."""

    def __init__(self, op, channels: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.op = op
        self.gamma = nn.Parameter(torch.rand(channels) + 0.5)
        self.bn = timm.layers.BatchNormAct2d(channels)
        self.drop = timm.layers.DropPath(0.5)
        self.depth = torchvision.ops.StochasticDepth(0.5, "row")
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Linear(channels, channels)
        self.tail = nn.Conv2d(channels, 6, 3, padding=1)
        self.head = nn.Linear(6, 4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tail(self.op(self, torch.relu(self.stem(x))))
        return self.head(y.mean((2, 3)))


def _split(m, x):
    a, b = torch.split(x, 4, dim=1)
    c, d = x.chunk(2, 1)
    return torch.cat([a * b, c + d], 1)


def _shuffle(m, x):
    n, c, h, w = x.size()
    y = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
    return y + x.narrow(1, 0, 8)


def _index(m, x):
    return torch.cat([x[:, :4], x[:, 4:] * 2], dim=1)


def _channels_last(m, x):
    """ConvNeXt's block and LayerNorm2d: permute to (N, H, W, C), per-position ops, back."""
    y = m.mlp(F.gelu(m.norm(x.permute(0, 2, 3, 1))))
    y = F.layer_norm(y, (y.shape[-1],))
    return torch.permute(y, (0, 3, 1, 2)) + x


OPS = {
    "batch-norm-act": lambda m, x: m.bn(x),
    "functional-batch-norm": lambda m, x: F.batch_norm(
        x, m.bn.running_mean, m.bn.running_var, m.bn.weight, m.bn.bias, False
    ),
    "instance-norm-running": lambda m, x: F.instance_norm(
        x, m.bn.running_mean, m.bn.running_var, use_input_stats=False
    ),
    "split-chunk-cat": _split,
    "shuffle-narrow": _shuffle,
    "getitem": _index,
    "drop-path-stochastic-depth": lambda m, x: m.depth(m.drop(x)) + x,
    "layer-scale": lambda m, x: x * m.gamma.view(1, -1, 1, 1),
    "pad": lambda m, x: F.pad(x, (1, 2, 2, 1), value=0.5),
    "pad-then-conv": lambda m, x: F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, 1),
    "channel-sum": lambda m, x: torch.cat(
        [x.view(x.shape[0], 2, 4, x.shape[2], x.shape[3]).sum(1)] * 2, 1
    ),
    "ceil-pools": lambda m, x: (
        F.max_pool2d(x, 3, 2, ceil_mode=True) + F.avg_pool2d(x, 2, 2, ceil_mode=True)
    ),
    "avg-pool-without-padding": lambda m, x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
    "resample": lambda m, x: F.interpolate(x, scale_factor=2.0),
    "channels-last": _channels_last,
    "squeeze-excitation": lambda m, x: x * torch.sigmoid(x.mean((2, 3), keepdim=True)),
    "group-norm": lambda m, x: F.group_norm(x, 2),
}
#: ops after which the changed region is the whole map (everything upstream stays incremental)
GLOBAL = {"resample", "squeeze-excitation", "group-norm"}


@pytest.mark.parametrize("name", list(OPS))
def test_incremental_equals_full_recomputation(name):
    torch.manual_seed(0)
    model = Block(OPS[name]).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 24, 24, generator=gen)
    engine = IncrementalForward(model)
    with torch.no_grad():
        assert torch.allclose(engine(x), model(x), atol=1e-6)
        batch = _perturbed(x, 3, gen)
        expected = model(batch)
        got = engine(batch)
    assert engine.incremental, engine.reason
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    net = engine.net
    kinds = {n.name: net.specs[n].kind for n in net.nodes}
    assert kinds["stem"] == "window"
    tail = next(n for n in net.nodes if n.name == "tail")
    if name in GLOBAL:  # the stem is incremental, the tail convolution computed in full
        assert kinds["tail"] == "window"
        assert engine.stats.conv_macs >= engine.plan.macs[tail] * batch.shape[0]
    else:  # the op keeps the rectangle: the tail convolution is incremental too
        assert not any(
            s.kind == "opaque" for n, s in net.specs.items() if n.name in ("stem", "op", "tail")
        )
    assert 0 < engine.stats.conv_macs < engine.stats.conv_macs_full


#: functional max pooling's gradient picks one unit of each window (the twin cannot swap it)
NOT_POSITIVE = {"ceil-pools", "instance-norm-running"}


@pytest.mark.parametrize("name", sorted(set(OPS) - GLOBAL - NOT_POSITIVE))
def test_receptive_field_through_op_matches_gradient_support(name):
    torch.manual_seed(0)
    model = Block(OPS[name]).eval()
    twin = _positive_twin(model)
    size = 21
    x = torch.rand(1, 3, size, size)
    rf = receptive_field(model, "tail", x)
    (h, w), _ = _support(twin, "tail", x, [])
    units = sorted({(0, 0), (1, 1), (h - 1, w - 1), (h // 2, w // 3)})
    if name == "pad":
        # a corner unit of the tail reads only F.pad's border, and the field (a box, in input
        # coordinates) counts the stem's padding behind it: interior units only
        units = [(i, j) for i, j in units if 0 < i < h - 1 and 0 < j < w - 1]
    _, supports = _support(twin, "tail", x, units)
    for (i, j), (rows, cols) in zip(units, supports, strict=True):
        lo, hi = rf.rows(i)
        assert rows == (max(lo, 0), min(hi, size - 1)), (name, i, j)
        lo, hi = rf.cols(j)
        assert cols == (max(lo, 0), min(hi, size - 1)), (name, i, j)


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec,layers",
    [
        ("timm:gernet_s", ["stages.0", "stages.2"]),
        ("timm:res2net50_14w_8s", ["layer1.0"]),
        ("timm:ghostnet_100", ["blocks.1"]),
        ("tv:shufflenet_v2_x1_0", ["stage2"]),
        ("timm:repvgg_a0", ["stages.0"]),
    ],
)
def test_zoo_receptive_field_matches_gradient_support(spec, layers):
    source, name = spec.split(":")
    model = build(source, name)
    twin = _positive_twin(model)
    size = 48
    x = torch.rand(1, 3, size, size)
    for layer in layers:
        rf = receptive_field(model, layer, x)
        (h, w), _ = _support(twin, layer, x, [])
        for (i, j), (rows, cols) in zip(
            [(0, 0), (h // 2, w // 2), (h - 1, w - 1)],
            _support(twin, layer, x, [(0, 0), (h // 2, w // 2), (h - 1, w - 1)])[1],
            strict=True,
        ):
            lo, hi = rf.rows(i)
            assert rows == (max(lo, 0), min(hi, size - 1)), (layer, i, j)
            lo, hi = rf.cols(j)
            assert cols == (max(lo, 0), min(hi, size - 1)), (layer, i, j)


def test_zoo_ops_are_not_opaque_before_the_head():
    """On timm's norm+act, channel-split and drop-path models the first op without local
    geometry is the global pooling of the head (or an SE gate), never an earlier one."""
    for spec in ("timm:gernet_s", "timm:res2net50_14w_8s", "timm:ghostnet_100"):
        source, name = spec.split(":")
        net = trace(build(source, name), (torch.zeros(1, 3, 64, 64),))
        opaque = [s.reason for n, s in net.specs.items() if n in net.depends and s.kind == "opaque"]
        assert opaque and all("global" in r or "over space" in r for r in opaque[:1]), opaque


def test_cost_model_verdict_and_batches_of_images():
    """Two images share one plan; the verdict is reported and followed; results equal
    Captum's whichever path ran."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(2, 3, 96, 96)  # 16 samples of 96x96: ~5e9 MACs per batch, a verdict
    kwargs = dict(sliding_window_shapes=(3, 16, 16), strides=16, target=3, perturbations_per_eval=8)
    expected = CaptumOcclusion(model).attribute(x, **kwargs)
    occlusion = Occlusion(model)
    got = occlusion.attribute(x, **kwargs)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    run = occlusion.last_run
    assert isinstance(run.estimate, Estimate) and run.estimate.decided
    assert run.estimate.threads == torch.get_num_threads()
    if run.estimate.chosen:
        assert run.path == "incremental" and run.reason is None
    else:
        assert run.path == "full" and run.reason == str(run.estimate)
    assert run.stats.batches >= 1 and run.stats.conv_macs < run.stats.conv_macs_full


def test_estimate_arithmetic():
    """Hand-computed costs: full = MACs + output elements; incremental = efficiency * MACs +
    moves + ops + output elements, each at the thread count's constants."""
    from deconvnet_attr.incremental import cost

    stats = RunStats(conv_macs=10**9, conv_macs_full=4 * 10**9, batches=1, moved=10**6)
    stats.rect_ops, stats.elements, stats.elements_full = 100, 10**6, 10**8
    for threads in (1, 2, 4):
        c = cost.constants(threads)
        e = estimate(stats, threads)
        expected = c.efficiency * 1e9 + c.per_element * 1e6 + c.per_op * 100 + c.per_output * 1e6
        assert e.incremental == pytest.approx(expected)
        assert e.full == pytest.approx(4e9 + c.per_output_full * 1e8)
        assert e.speedup == pytest.approx(e.full / expected) and e.threads == threads
        assert e.chosen == (e.speedup >= cost.MARGIN) and not e.uncertain
    # the fitted constants at 1 and 2 threads, extrapolated linearly
    assert cost.constants(1) == cost.Constants(1.07, 13.2, 4.09e7, 54.3, 46.4)
    two, three = cost.constants(2), cost.constants(3)
    assert two.per_op == pytest.approx(5.93e7, rel=1e-3) and two.per_output == pytest.approx(69.1)
    assert two.per_output_full == pytest.approx(59.9)
    assert three.per_element - two.per_element == pytest.approx(-0.5)
    even = RunStats(conv_macs=4 * 10**9, conv_macs_full=4 * 10**9)
    slow = estimate(even, 2)
    assert not slow.chosen and "cost model" in str(slow) and "(chosen from 1.2x)" in str(slow)
    # a call of TRIAL_BATCHES batches measures an estimate within TRIAL, running the plan first
    assert estimate(even, 2, cost.TRIAL_BATCHES - 1) == slow
    close = estimate(even, 2, cost.TRIAL_BATCHES)
    assert close.uncertain and close.chosen and "measured from 0.6x to 1.6x" in str(close)
    for measured, chosen in ((0.8, False), (1.3, True)):
        settled = replace(close, measured=measured)
        assert not settled.uncertain and settled.chosen == chosen
        assert f"measured {measured:.2f}x on one batch each" in str(settled)
    hopeless = estimate(RunStats(conv_macs=8 * 10**9, conv_macs_full=4 * 10**9), 1, 100)
    assert not hopeless.uncertain and not hopeless.chosen
    tiny = estimate(RunStats(conv_macs=10**9, conv_macs_full=10**9), 1)
    assert tiny.chosen and not tiny.decided


def test_cost_model_decides_before_the_first_batch(monkeypatch):
    """A plan that goes global at the stem (GroupNorm: statistics over space) is estimated
    slower before any occluded batch runs: the executor never runs a rectangle, every batch is
    a full recomputation of the plan's graph, and the result equals Captum's up to float
    rounding. The dry count equals the executor's."""
    from deconvnet_attr.incremental import cost, executor, forward

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 8, 3),
        nn.Flatten(), nn.LazyLinear(5),
    )  # fmt: skip
    x = torch.rand(1, 3, 20, 20)
    model(x)
    model.eval()
    monkeypatch.setattr(cost, "DECIDED_FROM", 0.0)  # a verdict however small the batch
    runs = []
    real_run = executor.Executor.run
    monkeypatch.setattr(
        forward.Executor,
        "run",
        lambda self, *a: runs.append(self.full_fraction) or real_run(self, *a),
    )
    kwargs = dict(sliding_window_shapes=(3, 4, 4), strides=4, target=2, perturbations_per_eval=5)
    expected = CaptumOcclusion(model).attribute(x, **kwargs)
    occlusion = Occlusion(model)
    got = occlusion.attribute(x, **kwargs)
    run = occlusion.last_run
    assert runs == [0.0] * 5 and run.path == "full" and run.reason == str(run.estimate)
    assert not run.estimate.chosen and run.estimate.speedup < 1
    torch.testing.assert_close(got, expected)  # channels-last convolutions: float rounding
    # the dry count: the stem convolution saves, everything after the GroupNorm is full
    stem, tail = 8 * 3 * 9 * 20 * 20, 8 * 8 * 9 * 18 * 18
    assert run.stats.batches == 1 and run.stats.conv_macs_full == 5 * (stem + tail)
    assert 5 * tail < run.stats.conv_macs < 5 * (stem + tail)


@pytest.mark.parametrize("plan_seconds, path", [(5.0, "full"), (0.5, "incremental")])
def test_uncertain_estimate_is_measured(monkeypatch, plan_seconds, path):
    """An estimate within ``cost.TRIAL``: the first batch runs the plan, the second full
    recomputation, each timed (here a fake clock: the plan's batch takes ``plan_seconds``, a
    full one 1 s), and the faster runs every later batch. The result equals Captum's."""
    from deconvnet_attr.incremental import cost, forward

    monkeypatch.setattr(cost, "DECIDED_FROM", 0.0)
    monkeypatch.setattr(cost, "TRIAL", (0.0, math.inf))
    monkeypatch.setattr(cost, "TRIAL_BATCHES", 9)
    clock, calls = [0.0], []
    monkeypatch.setattr(forward.time, "perf_counter", lambda: clock[0])
    real_execute, real_recompute = (
        forward.IncrementalForward._execute,
        forward.IncrementalForward._recompute,
    )

    def execute(self, *a):
        calls.append("plan")
        clock[0] += plan_seconds
        return real_execute(self, *a)

    def recompute(self, *a):
        calls.append("full")
        clock[0] += 1.0
        return real_recompute(self, *a)

    monkeypatch.setattr(forward.IncrementalForward, "_execute", execute)
    monkeypatch.setattr(forward.IncrementalForward, "_recompute", recompute)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten()).eval()
    x = torch.rand(1, 3, 12, 12)
    kwargs = dict(sliding_window_shapes=(3, 2, 2), strides=2, target=5, perturbations_per_eval=4)
    expected = CaptumOcclusion(model).attribute(x, **kwargs)
    occlusion = Occlusion(model)
    got = occlusion.attribute(x, **kwargs)
    torch.testing.assert_close(got, expected)
    run, batches = occlusion.last_run, math.ceil(36 / 4)
    assert calls[:2] == ["plan", "full"] and calls[2:] == [
        "plan" if path == "incremental" else "full"
    ] * (batches - 2)
    assert run.path == path and run.estimate.measured == pytest.approx(1.0 / plan_seconds)
    if path == "full":
        assert run.reason == str(run.estimate) and "measured 0.20x" in run.reason
        assert run.stats.batches == 1
    else:
        assert run.reason is None and run.stats.batches == batches - 1


@pytest.mark.parametrize(
    "spec", ["tv:resnet18", "tv:googlenet", "timm:ghostnet_100", "timm:convnext_atto"]
)
def test_dry_count_equals_the_executors_count(spec):
    """The cost model's dry count of a batch is the work the executor then counts running it."""
    from deconvnet_attr.incremental.dry import dry_run

    source, name = spec.split(":")
    torch.manual_seed(0)
    engine = IncrementalForward(build(source, name), cost_model=False)
    x = torch.rand(1, 3, 64, 64)
    engine(x)
    batch = x.repeat(6, 1, 1, 1)
    for b in range(6):
        top, left = 20 * (b // 3), 24 * (b % 3) + 2
        batch[b, :, top : top + 12, left : left + 12] = 0.5
    counted = dry_run(engine.plan, (batch,), 6, engine.full_fraction)
    engine(batch)
    ran = engine.stats
    assert (counted.conv_macs, counted.conv_macs_full) == (ran.conv_macs, ran.conv_macs_full)
    assert (counted.moved, counted.rect_ops) == (ran.moved, ran.rect_ops)
    assert (counted.elements, counted.elements_full) == (ran.elements, ran.elements_full)
    assert 0 < ran.elements < ran.elements_full
    assert 0 < ran.conv_macs < ran.conv_macs_full


@pytest.mark.parametrize("spec", ["tv:convnext_tiny", "timm:convnext_atto"])
def test_convnext_stays_incremental_up_to_its_head(spec):
    """ConvNeXt's channels-last stretches (permute, LayerNorm, Linear, permute back) keep the
    rectangle: the first opaque op is the head's global pooling; incremental equals full."""
    source, name = spec.split(":")
    model = build(source, name)
    x = torch.rand(1, 3, 64, 64)
    net = trace(model, (x,))
    opaque = [s.reason for n, s in net.specs.items() if n in net.depends and s.kind == "opaque"]
    assert "global pooling" in opaque[0], opaque[:3]
    assert any(s.channels_last and s.kind == "pointwise" for s in net.specs.values())
    engine = IncrementalForward(model, cost_model=False)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        engine(x)
        batch = _perturbed(x, 4, gen)
        expected, got = model(batch), engine(batch)
    assert engine.incremental, engine.reason
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert 0 < engine.stats.conv_macs < engine.stats.conv_macs_full
