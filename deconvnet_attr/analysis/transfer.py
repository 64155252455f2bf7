"""Generalisation to a new data set (Zeiler & Fergus 2013, Sec. 5, Tables 4-7, Fig. 9).

The paper freezes its ImageNet network's layers 1..k, fits a softmax or a linear SVM on layer
k's features of n images per class of another data set (Caltech-101/256, PASCAL), and compares
with the same architecture trained from scratch on those images. :func:`transfer` does the same
for any model: the features of every chosen layer are collected once over the new data
(:func:`~.probe.pooled_layer_features`), then for each n a standardised softmax (multinomial
logistic regression) and a linear SVM (``LinearSVC``) are fitted per layer on ``repeats``
random draws of n training images per class and scored on the fixed test split; a fresh copy of
the architecture (``scratch``: a factory) is trained on the same draws as the from-scratch row.
:func:`digits_data` gives scikit-learn's bundled 8x8 digits (no download) at the model's input
size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from torch import Tensor, nn

from deconvnet_attr.analysis.probe import LayerChoice, pooled_layer_features
from deconvnet_attr.tables import RecordTable

__all__ = ["CLASSIFIERS", "TransferResult", "digits_data", "train_from_scratch", "transfer"]

CLASSIFIERS = ("softmax", "svm")
"""The two linear classifiers of the paper's Tables 4-7: softmax (logistic regression) and SVM."""


def digits_data(
    shape: Sequence[int] = (1, 28, 28), test_fraction: float = 0.5, seed: int = 0
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """scikit-learn's 1,797 handwritten digits (8x8, 10 classes, bundled) as ``(train, test)``
    pairs of images ``(N, C, H, W)`` in [0, 1] and labels ``(N,)``.

    ``shape`` is the model's ``(C, H, W)`` input: the 0..16 grey levels are scaled to [0, 1],
    resized bilinearly to ``H x W`` and repeated over ``C`` channels. The split is stratified:
    per class, a ``seed``-fixed random ``test_fraction`` of the images is the test set.
    """
    channels, height, width = (int(v) for v in shape)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
    images = images.clamp(0, 1).expand(-1, channels, -1, -1).contiguous()
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    test = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        test[members[: round(test_fraction * len(members))]] = True
    return (images[~test], labels[~test]), (images[test], labels[test])


def _classifier(kind: str, C: float):
    if kind == "softmax":
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))
    if kind == "svm":
        return make_pipeline(StandardScaler(), LinearSVC(C=C, max_iter=5000))
    raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {kind!r}")


def _draw(labels: np.ndarray, per_class: int, gen: np.random.Generator) -> np.ndarray:
    """Indices of ``per_class`` random examples of each class (all of a class if it has fewer)."""
    picks = [gen.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def train_from_scratch(
    factory: Callable[[], nn.Module],
    images: Tensor,
    labels: Tensor,
    steps: int = 150,
    lr: float = 1e-3,
    seed: int = 0,
) -> nn.Module:
    """A fresh ``factory()`` model trained on ``images`` ``(N, C, H, W)`` / ``labels`` ``(N,)``:
    ``steps`` full-batch Adam steps of cross-entropy (the paper's from-scratch baseline, sized
    for a few hundred images); returned in eval mode."""
    torch.manual_seed(seed)
    model = factory()
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimiser.step()
    return model.eval()


@dataclass(frozen=True)
class TransferResult(RecordTable):
    """Accuracies (%) of :func:`transfer`.

    ``accuracy[classifier][layer]`` is ``(len(per_class), repeats)`` test accuracy with that
    classifier on that frozen layer's features; ``scratch`` the same shape for the from-scratch
    model (``None`` without ``scratch``). ``records()`` / ``to_markdown()`` give Table 7: one row
    per classifier, one column per layer, mean ± std over the draws at the largest n.
    """

    per_class: tuple[int, ...]
    layers: tuple[str, ...]
    accuracy: dict[str, dict[str, np.ndarray]]
    scratch: np.ndarray | None
    n_test: int
    features: dict[str, int]

    def _records(self) -> list[list[str]]:
        n = self.per_class[-1]
        header = [f"classifier (n = {n} per class)", *self.layers]
        rows = [
            [kind, *(_mean_std(self.accuracy[kind][layer][-1]) for layer in self.layers)]
            for kind in self.accuracy
        ]
        if self.scratch is not None:
            rows.append(
                ["from scratch", _mean_std(self.scratch[-1]), *[""] * (len(self.layers) - 1)]
            )
        return [header, *rows]


def _mean_std(values: np.ndarray) -> str:
    return f"{values.mean():.1f} ± {values.std():.1f}"


def transfer(
    model: nn.Module,
    layers: LayerChoice,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    per_class: Sequence[int] = (1, 2, 5, 10, 20, 50),
    classifiers: Sequence[str] = CLASSIFIERS,
    repeats: int = 3,
    pool_size: int | None = 2,
    C: float = 1.0,
    scratch: Callable[[], nn.Module] | None = None,
    scratch_steps: int = 150,
    seed: int = 0,
    batch_size: int = 256,
) -> TransferResult:
    """Frozen features of ``model`` on a new task: a linear classifier per layer and n.

    Args:
        model: the frozen network (run as it is: call ``model.eval()``); not changed.
        layers: modules or dotted names, or a name -> module dict (e.g. ``{"layer 1": "norm1"}``);
            "freeze layers 1..k" = features of the k-th entry.
        train, test: ``(images (N, C, H, W), labels (N,))`` of the new data set, e.g.
            :func:`digits_data`; the test split is used whole.
        per_class: the training images per class, n (Fig. 9's x axis), increasing.
        classifiers: a subset of :data:`CLASSIFIERS`.
        repeats: random draws of the n images per class (the paper: 5 splits).
        pool_size: average pooling of conv features (:func:`~.probe.pooled_layer_features`);
            ``None`` keeps them unpooled.
        C: inverse regularisation strength of both classifiers.
        scratch: a factory of the untrained architecture, trained on each draw with
            :func:`train_from_scratch` (``scratch_steps`` steps); ``None`` skips it.
        seed: seeds the draws (numpy) and the from-scratch training.
        batch_size: images per forward pass of the feature collection.
    """
    counts = [int(n) for n in per_class]
    if not counts or any(n < 1 for n in counts) or counts != sorted(counts):
        raise ValueError(f"per_class must be increasing positive ints, got {per_class!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    for kind in classifiers:
        _classifier(kind, C)  # ValueError naming an unknown classifier
    train_x, train_y = pooled_layer_features(model, layers, train, pool_size, batch_size)
    test_x, test_y = pooled_layer_features(model, layers, test, pool_size, batch_size)
    gen = np.random.default_rng(seed)
    draws = [[_draw(train_y, n, gen) for _ in range(repeats)] for n in counts]
    accuracy = {
        kind: {name: np.zeros((len(counts), repeats)) for name in train_x} for kind in classifiers
    }
    scratch_acc = None if scratch is None else np.zeros((len(counts), repeats))
    for i, row in enumerate(draws):
        for r, picked in enumerate(row):
            for kind in classifiers:
                for name, features in train_x.items():
                    fitted = _classifier(kind, C).fit(features[picked], train_y[picked])
                    accuracy[kind][name][i, r] = 100.0 * fitted.score(test_x[name], test_y)
            if scratch is not None and scratch_acc is not None:
                index = torch.as_tensor(picked)
                net = train_from_scratch(
                    scratch, train[0][index], train[1][index], scratch_steps, seed=seed + r
                )
                with torch.no_grad():
                    predicted = net(test[0]).argmax(1)
                scratch_acc[i, r] = 100.0 * float((predicted == test[1]).double().mean())
    return TransferResult(
        per_class=tuple(counts),
        layers=tuple(train_x),
        accuracy=accuracy,
        scratch=scratch_acc,
        n_test=len(test_y),
        features={name: int(f.shape[1]) for name, f in train_x.items()},
    )
