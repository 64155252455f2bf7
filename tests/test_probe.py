"""linear_probe on toy problems whose per-layer answer is known by construction."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
from torch import nn

from deconvnet_attr.analysis.probe import linear_probe, pooled_layer_features


def toy_problem(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well-separated Gaussian blobs in 2-D, imbalanced (50% / 30% / 20%)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    x = centres[labels] + rng.normal(scale=0.5, size=(n, 2))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(labels)


def toy_model() -> nn.Sequential:
    """keep: copies the input (separable features); blind: maps everything to a constant."""
    keep, blind = nn.Linear(2, 2), nn.Linear(2, 4)
    with torch.no_grad():
        keep.weight.copy_(torch.eye(2))
        keep.bias.zero_()
        blind.weight.zero_()
        blind.bias.fill_(1.0)
    return nn.Sequential(keep, blind, nn.Linear(4, 3))


def test_probe_separable_and_constant_layers():
    model = toy_model()
    train, test = toy_problem(600, 0), toy_problem(400, 1)
    table = linear_probe(model, {"keep": model[0], "blind": model[1]}, train, test)
    (keep, keep_f, keep_train, keep_test), (blind, blind_f, _, blind_test) = table.rows
    assert (keep, keep_f, blind, blind_f) == ("keep", 2, "blind", 4)
    assert keep_train == 100.0 and keep_test == 100.0  # separable blobs
    # constant features: the classifier can only predict the training set's majority class (0)
    majority = int(np.bincount(train[1].numpy()).argmax())
    assert majority == 0
    assert blind_test == pytest.approx(100.0 * np.mean(test[1].numpy() == majority))
    assert (table.n_train, table.n_test) == (600, 400)
    records = list(csv.reader(io.StringIO(table.to_csv())))
    assert records[0] == ["layer", "features", "train acc (%)", "test acc (%)"]
    assert records[1] == ["keep", "2", "100.00", "100.00"]
    assert table.to_markdown().splitlines()[2] == "| keep | 2 | 100.00 | 100.00 |"


def test_pooled_layer_features_pooling_matches_manual():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 3, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 2))
    x, y = torch.rand(10, 1, 6, 6), torch.arange(10) % 2
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    feats, labels = pooled_layer_features(model, [model[0], model[3]], batches, pool_size=2)
    with torch.no_grad():
        out = conv(x)
        # 6x6 -> 2x2 adaptive average pooling = mean over 3x3 blocks
        manual = out.reshape(10, 3, 2, 3, 2, 3).mean(dim=(3, 5)).flatten(1)
        torch.testing.assert_close(torch.from_numpy(feats["0"]), manual)
        torch.testing.assert_close(torch.from_numpy(feats["3"]), model(x))
    np.testing.assert_array_equal(labels, y.numpy())
    full, _ = pooled_layer_features(model, {"c": conv}, (x, y), pool_size=None, batch_size=3)
    assert full["c"].shape == (10, 3 * 36)
    assert not conv._forward_hooks


def test_probe_bad_arguments():
    model = toy_model()
    data = toy_problem(20, 0)
    with pytest.raises(ValueError, match="not a submodule"):
        linear_probe(model, [nn.Linear(2, 2)], data, data)
    with pytest.raises(ValueError, match="pool_size.*0"):
        pooled_layer_features(model, [model[0]], data, pool_size=0)
    with pytest.raises(ValueError, match="no examples"):
        pooled_layer_features(model, [model[0]], [], pool_size=2)
