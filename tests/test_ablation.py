"""LayerAblation and ablation studies vs hand-written forward-hook ablations and known answers."""

from __future__ import annotations

import copy
import csv
import io

import numpy as np
import pytest
import torch
from captum.attr import LayerFeatureAblation
from model_state import snapshot
from torch import nn

from deconvnet_attr import LayerAblation
from deconvnet_attr.ablation import ablated, ablation_study
from deconvnet_attr.evaluation import accuracy_table


def tiny_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # 0: shape-changing
        nn.ReLU(inplace=True),  # 1: in-place, shape-keeping
        nn.Conv2d(4, 4, 3, padding=1),  # 2: shape-keeping
        nn.Tanh(),  # 3
        nn.AdaptiveAvgPool2d(2),  # 4
        nn.Flatten(),  # 5
        nn.Linear(16, 8),  # 6
        nn.ReLU(),  # 7
        nn.Linear(8, 5),  # 8
    )


def hook_reference(model, inputs, target, modules, replace, extra=()):
    """Intact minus ablated target output, ablating ``modules`` with a hand-written hook."""

    def select(out):
        return out[torch.arange(len(out)), target] if target is not None else out

    with torch.no_grad():
        intact = select(model(inputs, *extra))
        handles = [
            m.register_forward_hook(lambda mod, args, out: replace(args, out)) for m in modules
        ]
        try:
            ablated_out = select(model(inputs, *extra))
        finally:
            for h in handles:
                h.remove()
    return intact - ablated_out


@pytest.fixture
def setup():
    model = tiny_cnn().eval()
    torch.manual_seed(1)
    x = torch.randn(6, 1, 8, 8)
    return model, x


def model_index(model, layer):
    return next(i for i, m in enumerate(model) if m is layer)


def layers_of(model):
    return [model[0], model[2], model[3], model[6], model[8]]


@pytest.mark.parametrize("value", [0.0, 1.5, -2])
@pytest.mark.parametrize("ppe", [1, 2, 5, 7])
def test_constant_matches_hooks(setup, value, ppe):
    model, x = setup
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    got = LayerAblation(model, layers_of(model)).attribute(
        x, target=target, baselines=value, perturbations_per_eval=ppe
    )
    assert got.shape == (6, 5)
    for j, layer in enumerate(layers_of(model)):
        ref = hook_reference(model, x, target, [layer], lambda a, o: torch.full_like(o, value))
        torch.testing.assert_close(got[:, j], ref)


def test_constant_matches_captum_layer_feature_ablation(setup):
    """Captum's LayerFeatureAblation with one feature group spanning the whole layer."""
    model, x = setup
    target = torch.tensor([4, 0, 1, 2, 3, 1])
    got = LayerAblation(model, layers_of(model)).attribute(
        x, target=target, baselines=0.7, perturbations_per_eval=3
    )
    for j, layer in enumerate(layers_of(model)):
        shape = model[: model_index(model, layer) + 1](x).shape
        mask = torch.zeros((1, *shape[1:]), dtype=torch.long)
        captum = LayerFeatureAblation(model, layer).attribute(
            x, target=target, layer_baselines=0.7, layer_mask=mask
        )
        torch.testing.assert_close(got[:, j], captum.flatten(1)[:, 0])


@pytest.mark.parametrize("target", [3, [4, 3, 2, 1, 0, 1]])
def test_target_forms(setup, target):
    model, x = setup
    got = LayerAblation(model, [model[2], model[6]]).attribute(
        x, target=target, perturbations_per_eval=2
    )
    t = torch.tensor(target) if isinstance(target, list) else torch.full((6,), target)
    for j, layer in enumerate([model[2], model[6]]):
        ref = hook_reference(model, x, t, [layer], lambda a, o: torch.zeros_like(o))
        torch.testing.assert_close(got[:, j], ref)


def test_identity_equals_model_without_layer(setup):
    model, x = setup
    got = LayerAblation(model, [model[1], model[2], model[3]]).attribute(
        x, target=2, baselines="identity", perturbations_per_eval=3
    )
    with torch.no_grad():
        intact = model(x)[:, 2]
        for j, idx in enumerate([1, 2, 3]):
            removed = copy.deepcopy(model)
            removed[idx] = nn.Identity()  # the layer taken out of the network
            torch.testing.assert_close(got[:, j], intact - removed(x)[:, 2])


def test_callable_and_groups(setup):
    model, x = setup
    target = torch.tensor([1, 1, 0, 4, 3, 2])

    def flip(out):  # depends on the order of the N examples it receives
        return out.flip(0) * 0.5 + 1.0

    entries = [model[0], [model[2], model[6]], model[8]]
    for ppe in (1, 3):
        got = LayerAblation(model, entries).attribute(
            x, target=target, baselines=flip, perturbations_per_eval=ppe
        )
        for j, modules in enumerate([[model[0]], [model[2], model[6]], [model[8]]]):
            ref = hook_reference(model, x, target, modules, lambda a, o: flip(o))
            torch.testing.assert_close(got[:, j], ref)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(3, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x, z, scale, shift=0.0):
        return self.head(torch.relu(self.a(x) + self.b(z))) * scale.unsqueeze(1) + shift


def test_tuple_inputs_and_additional_forward_args():
    model = TwoInputs()
    torch.manual_seed(4)
    x, z, scale = torch.randn(5, 4), torch.randn(5, 3), torch.rand(5) + 0.5
    for ppe in (1, 3):
        got = LayerAblation(model, [model.a, model.b, model.head]).attribute(
            (x, z),
            target=1,
            additional_forward_args=(scale, 2.0),
            baselines=0.3,
            perturbations_per_eval=ppe,
        )
        for j, layer in enumerate([model.a, model.b, model.head]):
            ref = hook_reference(
                lambda x_: model(x_, z, scale, 2.0),
                x,
                torch.full((5,), 1),
                [layer],
                lambda a, o: torch.full_like(o, 0.3),
            )
            torch.testing.assert_close(got[:, j], ref)


def test_scalar_output_without_target_and_plain_function(setup):
    model, x = setup

    def forward(inp):
        return model(inp).sum(dim=1)

    got = LayerAblation(forward, [model[2]]).attribute(x, perturbations_per_eval=4)
    ref = hook_reference(forward, x, None, [model[2]], lambda a, o: torch.zeros_like(o))
    torch.testing.assert_close(got[:, 0], ref)


def test_identity_shape_error_names_layer_and_shapes(setup):
    model, x = setup
    with pytest.raises(ValueError, match=r"'0'.*\(6, 1, 8, 8\).*\(6, 4, 8, 8\)"):
        LayerAblation(model, [model[0]]).attribute(x, target=0, baselines="identity")


def test_layer_not_in_model(setup):
    model, x = setup
    with pytest.raises(ValueError, match="not a submodule"):
        LayerAblation(model, [model[2], nn.Linear(3, 3)])
    stray = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="not called"):
        LayerAblation(lambda inp: model(inp), [stray]).attribute(x, target=0)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"baselines": "zero"}, "'zero'"),
        ({"baselines": True}, "True"),
        ({"perturbations_per_eval": 0}, "0"),
        ({"target": None}, r"\(6, 5\)"),
        ({"baselines": lambda o: o[:, :1]}, "shape"),
    ],
)
def test_bad_arguments(setup, kwargs, error):
    model, x = setup
    kwargs = {"target": 0, **kwargs}
    with pytest.raises(ValueError, match=error):
        LayerAblation(model, [model[2]]).attribute(x, **kwargs)


def assert_same_state(a, b):
    assert a[0].keys() == b[0].keys()
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k])
    assert a[1:3] == b[1:3] and a[4] == b[4]
    assert [g is None for g in a[3]] == [g is None for g in b[3]]


def test_state_restored_also_after_error(setup):
    model, x = setup
    model.train()
    model[6].weight.requires_grad_(False)
    model(x).sum().backward()
    before, reference = snapshot(model), copy.deepcopy(model)
    LayerAblation(model, layers_of(model)).attribute(x, target=1, perturbations_per_eval=2)
    assert_same_state(before, snapshot(model))

    def boom(out):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        LayerAblation(model, layers_of(model)).attribute(x, target=1, baselines=boom)
    assert_same_state(before, snapshot(model))
    with pytest.raises(ValueError):
        LayerAblation(model, [model[2], model[0]]).attribute(
            x, target=1, baselines="identity", perturbations_per_eval=2
        )
    assert_same_state(before, snapshot(model))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


# ---------------------------------------------------------------- studies with known answers


def permutation_model():
    """logits = P x + b: l1 the identity map, l2 a cyclic permutation, b a tie-breaking bias."""
    l1, l2 = nn.Linear(3, 3), nn.Linear(3, 3)
    with torch.no_grad():
        l1.weight.copy_(torch.eye(3))
        l1.bias.zero_()
        l2.weight.copy_(torch.eye(3)[[2, 0, 1]])
        l2.bias.copy_(torch.tensor([0.0, 1e-3, 2e-3]))
    return nn.Sequential(l1, l2)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    ranked = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return 100.0 * np.mean([label in row for row, label in zip(ranked, labels, strict=True)])


def test_ablation_study_known_answer():
    model = permutation_model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)) * np.array([1.0, 2.0, 3.0]) + np.array([0.0, 0.5, 1.0])
    labels = np.argmax(x[:, [2, 0, 1]], axis=1)  # the intact model is always right
    labels[:20] = rng.integers(0, 3, 20)  # ... except where the labels are noisy
    data = (torch.tensor(x, dtype=torch.float32), torch.tensor(labels))
    table = ablation_study(
        model, data, {"no l2": model[1]}, baselines="identity", topk=(1, 2), batch_size=64
    )
    names = [name for name, _ in table.rows]
    assert names == ["intact", "no l2"] and table.n_examples == 200
    intact, no_l2 = (acc for _, acc in table.rows)
    logits = x[:, [2, 0, 1]] + np.array([0.0, 1e-3, 2e-3])
    for k in (1, 2):
        assert intact[k] == pytest.approx(topk_accuracy(logits, labels, k))
        assert no_l2[k] == pytest.approx(topk_accuracy(x, labels, k))
    # zeroing l1 leaves the bias: class 2 first, then 1 — constant predictions
    zero = ablation_study(model, data, {"l1=0": [model[0]]}, topk=(1, 2))
    assert zero.rows[1][1][1] == pytest.approx(100 * np.mean(labels == 2))
    assert zero.rows[1][1][2] == pytest.approx(100 * np.mean(labels >= 1))
    # mean ablation of l1: logits = P mean(x) + b for every example
    mean = ablation_study(model, data, {"l1=mean": model[0]}, baselines="mean", topk=(1,))
    const = x.mean(axis=0)[[2, 0, 1]] + np.array([0.0, 1e-3, 2e-3])
    assert mean.rows[1][1][1] == pytest.approx(100 * np.mean(labels == np.argmax(const)))


def test_tables_and_accuracy_table():
    model = permutation_model()
    other = permutation_model()
    with torch.no_grad():
        other[1].weight.copy_(torch.eye(3))
    x = torch.tensor([[3.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 3.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([1, 2, 0, 2])  # argmax of P x: 1, 2, 0, 0
    table = accuracy_table(
        {"intact": model, "other": other}, [(x[:2], y[:2]), (x[2:], y[2:])], topk=(1,)
    )
    assert table.rows == [("intact", {1: 75.0}), ("other", {1: 25.0})]
    records = list(csv.reader(io.StringIO(table.to_csv())))
    assert records == [
        ["configuration", "top-1 acc (%)", "top-1 drop (pp)"],
        ["intact", "75.00", "0.00"],
        ["other", "25.00", "50.00"],
    ]
    markdown = table.to_markdown().splitlines()
    assert markdown[0] == "| configuration | top-1 acc (%) | top-1 drop (pp) |"
    assert markdown[3] == "| other | 25.00 | 50.00 |"


def test_ablated_context_and_bar_chart():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from deconvnet_attr.viz import plot_accuracy_table

    model = permutation_model()
    x = torch.randn(4, 3)
    with ablated(model, [model[1]], 0.5):
        torch.testing.assert_close(model(x), torch.full((4, 3), 0.5))
    assert not model[1]._forward_hooks
    table = accuracy_table({"a": model, "b": model}, (x, torch.tensor([0, 1, 2, 0])), topk=(1, 2))
    fig = plot_accuracy_table(table, title="t")
    heights = sorted(round(p.get_height(), 6) for p in fig.axes[0].patches)
    expected = sorted(round(acc[k], 6) for _, acc in table.rows for k in (1, 2))
    assert heights == expected


def test_batchnorm_buffers_kept_in_train_mode():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).train()
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    before = snapshot(model)
    LayerAblation(model, [model[0], model[3]]).attribute(x, target=y, perturbations_per_eval=2)
    assert_same_state(before, snapshot(model))
    ablation_study(model, (x, y), {"l0": model[0]}, baselines="mean", topk=(1,))
    assert_same_state(before, snapshot(model))


def test_reference_ablation_on_bundled_subset():
    from deconvnet_attr.ablation import PAPER_GROUPS, reference_ablation
    from deconvnet_attr.data import load_eval_subset
    from deconvnet_attr.models.reference import load_reference

    x, y = load_eval_subset()
    model = load_reference()
    table = reference_ablation(0.0, groups={"fc7": ("fc7",)})  # default data: the subset
    with torch.no_grad():
        logits = model(x).numpy()
        # fc7 zeroed: relu7(0) = 0, so the logits are fc8's bias for every image
        constant = np.broadcast_to(model.fc8.bias.numpy(), logits.shape)
    (name, intact), (_, no_fc7) = table.rows
    assert table.n_examples == len(y)
    for k in (1, 5):
        assert intact[k] == pytest.approx(topk_accuracy(logits, y.numpy(), k))
        assert no_fc7[k] == pytest.approx(topk_accuracy(constant, y.numpy(), k))
    default = reference_ablation(data=(x[:100], y[:100]))
    assert [n for n, _ in default.rows] == ["intact", *PAPER_GROUPS]
