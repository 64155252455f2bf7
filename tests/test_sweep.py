"""The occlusion loop (deconvnet_attr/sweep.py) against Captum's own: windows, batches, results."""

import captum.attr
import pytest
import torch
import torchvision
from torch import nn

from deconvnet_attr import Occlusion
from deconvnet_attr.incremental import IncrementalForward, plan
from deconvnet_attr.incremental.executor import Executor
from deconvnet_attr.incremental.patches import Patch, gather, paste
from deconvnet_attr.sweep import occlusion_windows


class Recorder:
    """An untraceable forward (value-dependent branch) that records every batch it is given."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.batches = model, []

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if float(inputs[0].sum()) > 1e30:
            raise AssertionError
        self.batches.append(tuple(t.clone() if torch.is_tensor(t) else t for t in inputs))
        return self.model(*inputs)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 + 5, 3)

    def forward(self, image: torch.Tensor, vector: torch.Tensor, scale: float = 1.0):
        return self.fc(torch.cat([self.conv(image).mean((2, 3)), vector], 1)) * scale


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 4, 3),
        nn.Flatten(), nn.Linear(4 * 7 * 7, 5),
    ).eval()  # fmt: skip


@pytest.mark.parametrize(
    ("shape", "window", "strides"),
    [((3, 20, 20), (3, 4, 4), 3), ((2, 9, 7), (1, 4, 3), (1, 3, 2)), ((5, 8), (2, 3), None)],
)
def test_windows_are_captums_masks_in_captums_order(shape, window, strides):
    x = torch.zeros(1, *shape)
    ours = occlusion_windows((x,), window, strides)
    captum_occ = captum.attr.Occlusion(lambda t: t)
    steps = strides if strides is not None else 1
    steps = (steps,) * len(shape) if isinstance(steps, int) else steps
    counts = [-(-(d - w) // s) + 1 for d, w, s in zip(shape, window, steps, strict=True)]
    assert len(ours) == torch.tensor(counts).prod()
    for feature, found in enumerate(ours):
        mask = captum_occ._occlusion_mask(
            x, feature, torch.ones(window), steps, tuple(counts), is_expanded_input=False
        )[0]
        mine = torch.zeros(shape)
        mine[found.slices] = 1
        assert torch.equal(mine, mask), feature


@pytest.mark.parametrize("baseline", [None, 0.5, "tensor"])
def test_occluded_batches_equal_captums(baseline):
    model = _small_cnn()
    x = torch.rand(2, 3, 18, 18)
    if baseline == "tensor":
        baseline = torch.rand(3, 18, 18)
    kwargs = dict(
        sliding_window_shapes=(3, 5, 5), strides=(3, 4, 3), baselines=baseline, target=[1, 3],
        perturbations_per_eval=7,
    )  # fmt: skip
    theirs, ours = Recorder(model), Recorder(model)
    expected = captum.attr.Occlusion(theirs).attribute(x, **kwargs)
    got = Occlusion(ours).attribute(x, **kwargs)
    assert len(ours.batches) == len(theirs.batches)
    for mine, their in zip(ours.batches, theirs.batches, strict=True):
        assert torch.equal(mine[0], their[0])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_tuple_inputs_and_additional_args_as_captum():
    torch.manual_seed(1)
    model = TwoInputs().eval()
    inputs = (torch.rand(3, 3, 10, 10), torch.rand(3, 5))
    kwargs = dict(
        sliding_window_shapes=((3, 4, 4), (2,)), strides=((3, 3, 3), 1),
        baselines=(0.0, torch.zeros(5)), target=2, additional_forward_args=(2.0,),
        perturbations_per_eval=5,
    )  # fmt: skip
    theirs, ours = Recorder(model), Recorder(model)
    expected = captum.attr.Occlusion(theirs).attribute(inputs, **kwargs)
    got = Occlusion(ours).attribute(inputs, **kwargs)
    for mine, their in zip(ours.batches, theirs.batches, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(mine[:2], their[:2], strict=True))
        assert mine[2:] == their[2:] == (2.0,)
    assert isinstance(got, tuple) and len(got) == 2
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
    # the traced model (the engine) gives the same numbers
    traced = Occlusion(model).attribute(inputs, **kwargs)
    for g, e in zip(traced, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_output_without_target_has_captums_shape():
    model = _small_cnn()
    x = torch.rand(2, 3, 18, 18)
    kwargs = dict(sliding_window_shapes=(3, 6, 6), strides=6, perturbations_per_eval=4)
    expected = captum.attr.Occlusion(model).attribute(x, **kwargs)
    got = Occlusion(model).attribute(x, **kwargs)
    assert got.shape == expected.shape == (10, 3, 18, 18)  # (N * classes, ...), as Captum
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_integer_inputs_and_other_dtype_baselines_run_captums_loop():
    model = lambda t: t.float().flatten(1).sum(1, keepdim=True)  # noqa: E731
    x = torch.randint(0, 9, (1, 2, 6, 6))
    kwargs = dict(sliding_window_shapes=(1, 3, 3), strides=(1, 2, 2), target=0, baselines=1)
    expected = captum.attr.Occlusion(model).attribute(x, **kwargs)
    assert torch.equal(Occlusion(model).attribute(x, **kwargs), expected)
    y = torch.rand(1, 2, 6, 6)
    kwargs["baselines"] = torch.ones(2, 6, 6, dtype=torch.float64)
    expected = captum.attr.Occlusion(model).attribute(y, **kwargs)
    assert torch.equal(Occlusion(model).attribute(y, **kwargs), expected)


def test_aggregated_output_with_several_perturbations_per_eval_is_a_value_error():
    model = lambda t: t.sum()  # noqa: E731
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        Occlusion(model).attribute(x, (3, 4, 4), strides=4, perturbations_per_eval=2)
    # one perturbation per evaluation: Captum's agg mode, same numbers
    expected = captum.attr.Occlusion(model).attribute(x, (3, 4, 4), strides=4)
    torch.testing.assert_close(Occlusion(model).attribute(x, (3, 4, 4), strides=4), expected)


def test_gather_pastes_patches_at_mixed_offsets_like_brute_force():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 3, 12, 10, generator=gen)
    batch = 6
    top = torch.tensor([0, 4, 4, 8, 2, 4])
    left = torch.tensor([0, 3, 3, 6, 6, 3])  # patches lie inside the map
    patch = Patch(torch.randn(batch, 3, 4, 4, generator=gen), top, left)
    whole = paste(ref, patch, batch // 2)
    # regions at a common offset for most samples, other offsets, and partly off the map
    rtop = torch.tensor([-1, 3, 3, 7, 1, 3])
    rleft = torch.tensor([-2, 2, 2, 5, 6, 2])
    got = gather(ref, patch, rtop, rleft, 7, 6, -9.0)
    padded = torch.nn.functional.pad(whole, (3, 3, 3, 3), value=-9.0)
    for b in range(batch):
        r, c = int(rtop[b]) + 3, int(rleft[b]) + 3
        assert torch.equal(got[b], padded[b, :, r : r + 7, c : c + 6]), b


def test_full_recomputation_in_smaller_calls_equals_one_call(monkeypatch):
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()  # SE: global early
    x = torch.rand(1, 3, 64, 64)
    kwargs = dict(sliding_window_shapes=(3, 12, 12), strides=12, target=3, perturbations_per_eval=8)
    expected = captum.attr.Occlusion(model).attribute(x, **kwargs)
    # a hooked model is called as given: Captum's batches (36 windows, 8 a call)
    sizes = []
    handle = model.features[0].register_forward_pre_hook(lambda m, a: sizes.append(len(a[0])))
    hooked = Occlusion(model)
    torch.testing.assert_close(hooked.attribute(x, **kwargs), expected, rtol=1e-4, atol=1e-6)
    assert sizes == [1, 8, 8, 8, 8, 4] and "hooks" in hooked.last_run.reason
    handle.remove()
    # an eligible model: whole batches split so that no activation exceeds CALL_BYTES
    engine = IncrementalForward(model, cost_model=False)
    with torch.no_grad():
        engine(x)
    monkeypatch.setattr(plan, "CALL_BYTES", 3 * engine.plan.peak_bytes[0])
    monkeypatch.setattr(plan, "SPLIT_FROM", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # the sizes are per thread
    assert engine.plan.copies_per_call(8) == 3
    calls = []
    engine.fn = lambda t: calls.append(len(t)) or model(t)
    batch = x.repeat(8, 1, 1, 1)
    batch[::2, :, :12, :12] = 0
    engine.reason = "forced"  # full recomputation through the planned model
    with torch.no_grad():
        torch.testing.assert_close(engine(batch), model(batch), rtol=1e-5, atol=1e-6)
    assert calls == [3, 3, 2]


def test_batches_under_the_split_size_are_one_call():
    model = torchvision.models.alexnet(weights=None).eval()
    engine = IncrementalForward(model, cost_model=False)
    with torch.no_grad():
        engine(torch.rand(1, 3, 224, 224))
    per_copy = engine.plan.peak_bytes[0]  # conv1's output: 64 x 55 x 55 floats
    assert per_copy == 64 * 55 * 55 * 4
    threads = torch.get_num_threads()
    fits = plan.SPLIT_FROM * threads // per_copy
    assert engine.plan.copies_per_call(fits) == fits
    assert engine.plan.copies_per_call(fits + 1) == plan.CALL_BYTES * threads // per_copy


def test_incremental_tail_in_smaller_calls_equals_the_model(monkeypatch):
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    x = torch.rand(2, 3, 64, 64)
    batch = x.repeat(6, 1, 1, 1)
    batch[:, :, 20:30, 5:15] = 0.0
    whole = IncrementalForward(model, cost_model=False)
    with torch.no_grad():
        whole(x)
        expected = whole(batch)
    monkeypatch.setattr(plan, "CALL_BYTES", 1)  # one copy (two examples) a call
    monkeypatch.setattr(plan, "SPLIT_FROM", 0)
    tails = []
    original = Executor._tail
    monkeypatch.setattr(
        Executor, "_tail", lambda self, *a: tails.append(a[-1]) or original(self, *a)
    )
    split = IncrementalForward(model, cost_model=False)
    with torch.no_grad():
        split(x)
        got = split(batch)
        torch.testing.assert_close(got, model(batch), rtol=1e-5, atol=1e-6)
    assert tails == [1] and split.incremental
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert split.stats.conv_macs == whole.stats.conv_macs  # the same work, counted once
    assert split.stats.elements == whole.stats.elements


class _ShapeChecked(nn.Module):
    """A stem whose output a shape query reads (timm's norm layers ``_assert(x.ndim == 4)``),
    optionally again in the head (``view(n, -1)`` with ``n = y.size(0)``)."""

    def __init__(self, size_in_head: bool) -> None:
        super().__init__()
        self.size_in_head = size_in_head
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        torch._assert(y.ndim == 4, "4-D")
        n = y.size(0) if self.size_in_head else -1
        z = torch.relu(self.body(torch.relu(y)))
        return self.head(z.mean((2, 3)).view(n, 8))


@pytest.mark.parametrize("size_in_head", [False, True])
def test_tail_splits_after_shape_queries(monkeypatch, size_in_head):
    """A map read by a shape query is released after the query's last reader, so the tail
    still runs in parts (it was kept to the end: no split); a query the head reads keeps its
    map alive until then, and the split starts after it. Either way the result is the model's."""
    torch.manual_seed(0)
    model = _ShapeChecked(size_in_head).eval()
    x = torch.rand(1, 3, 24, 24)
    batch = x.repeat(4, 1, 1, 1)
    batch[:, :, 2:6, 3:7] = 0.0
    monkeypatch.setattr(plan, "CALL_BYTES", 1)  # one copy a call
    monkeypatch.setattr(plan, "SPLIT_FROM", 0)
    tails = []
    original = Executor._tail
    monkeypatch.setattr(
        Executor, "_tail", lambda self, *a: tails.append(a[::3]) or original(self, *a)
    )
    engine = IncrementalForward(model, cost_model=False, full_fraction=0.99)
    with torch.no_grad():
        engine(x)
        got = engine(batch)
        torch.testing.assert_close(got, model(batch), rtol=1e-5, atol=1e-6)
    assert engine.incremental and engine.stats.conv_macs < engine.stats.conv_macs_full
    view = next(i for i, n in enumerate(engine.net.nodes) if n.target == "view")
    assert len(tails) == 1 and tails[0][1] == 1  # (start, copies per call)
    assert (tails[0][0] > view) == size_in_head
