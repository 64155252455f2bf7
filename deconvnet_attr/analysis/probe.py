"""Linear probes: how well each layer's features alone classify (Zeiler & Fergus 2013, Table 7).

The paper trains a linear SVM / softmax on the features of each layer of its ImageNet network
and finds that higher layers generalise better. :func:`linear_probe` does the same for any
model: one forward pass over each data set collects every probed layer's output (average-pooled
to a small grid), then a standardised multinomial logistic regression is fitted per layer on the
training features and scored on the test features.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn
from tqdm.auto import tqdm

from deconvnet_attr.evaluation import iterate_batches
from deconvnet_attr.tables import RecordTable
from deconvnet_attr.taps import LayerSpec, Taps

__all__ = ["ProbeTable", "fit_linear_probe", "linear_probe", "pooled_layer_features"]

Data = tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]]
LayerChoice = Mapping[str, LayerSpec] | Sequence[LayerSpec]


def _pool(output: Tensor, pool_size: int | None) -> Tensor:
    """(N, C, H, W) / (N, C, L) -> average-pooled to pool_size per spatial dim; -> (N, features)."""
    if pool_size is not None and output.dim() == 4:
        output = F.adaptive_avg_pool2d(output, pool_size)
    elif pool_size is not None and output.dim() == 3:
        output = F.adaptive_avg_pool1d(output, pool_size)
    return output.flatten(1)


def _tap(model: nn.Module, layers: LayerChoice) -> tuple[Taps, list[str]]:
    """Taps on ``layers`` (stopping after the last) and the feature name of each layer."""
    if isinstance(layers, Mapping):
        labels: list[str] | None = [str(name) for name in layers]
        specs = list(layers.values())
    elif isinstance(layers, Sequence) and not isinstance(layers, str):
        labels, specs = None, list(layers)
    else:
        raise TypeError(
            f"layers must be a list of modules / names or a name -> module dict; got {layers!r}"
        )
    if not specs:
        raise ValueError("layers is empty")
    taps = Taps(model, specs, stop=True, min_dim=2)
    return taps, labels or taps.names


def pooled_layer_features(
    model: nn.Module,
    layers: LayerChoice,
    data: Data,
    pool_size: int | None = 2,
    batch_size: int = 256,
    show_progress: bool = False,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pooled outputs of ``layers`` over ``data``, collected in one pass.

    Args:
        model: the network, run as it is (call ``model.eval()`` first); each forward stops after
            the last of the layers (its first call is the one read).
        layers: modules of ``model`` or their dotted names (features named by the module path),
            or a feature name -> module (or dotted name) dict.
        data: ``(inputs, labels)`` tensors or an iterable of such batches.
        pool_size: 4-D outputs (N, C, H, W) are average-pooled to (N, C, pool_size, pool_size),
            3-D ones to (N, C, pool_size); None keeps the full output. Then flattened.
        batch_size: used when ``data`` is a tensor pair.
        show_progress: a tqdm bar over the batches.

    Returns:
        ``(features, labels)``: name -> float32 array (examples, features), and (examples,) labels.
    """
    if pool_size is not None and (not isinstance(pool_size, int) or pool_size < 1):
        raise ValueError(f"pool_size must be a positive int or None; got {pool_size!r}")
    taps, labels_of = _tap(model, layers)
    device = next(model.parameters()).device
    collected: dict[str, list[np.ndarray]] = {name: [] for name in labels_of}
    labels: list[np.ndarray] = []
    with torch.no_grad():
        batches = iterate_batches(data, batch_size)
        for x, y in tqdm(batches, desc="features", disable=not show_progress):
            outputs = taps(x.to(device))
            for label, name in zip(labels_of, taps.names, strict=True):
                collected[label].append(_pool(outputs[name], pool_size).float().cpu().numpy())
            labels.append(np.asarray(y.cpu()))
    if not labels:
        raise ValueError("data yielded no examples")
    features = {name: np.concatenate(parts) for name, parts in collected.items()}
    return features, np.concatenate(labels)


def fit_linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    C: float = 1.0,
    max_iter: int = 1000,
) -> tuple[float, float]:
    """Fit standardisation + multinomial logistic regression; return (train, test) accuracy in %.

    Features are arrays (examples, features); labels (examples,) integer classes.
    """
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    probe.fit(train_features, train_labels)
    train = 100.0 * probe.score(train_features, train_labels)
    return train, 100.0 * probe.score(test_features, test_labels)


@dataclass(frozen=True)
class ProbeTable(RecordTable):
    """Per-layer probe results: ``rows`` of (layer, feature count, train %, test %)."""

    rows: list[tuple[str, int, float, float]]
    n_train: int
    n_test: int

    def _records(self) -> list[list[str]]:
        header = ["layer", "features", "train acc (%)", "test acc (%)"]
        body = [[n, str(f), f"{tr:.2f}", f"{te:.2f}"] for n, f, tr, te in self.rows]
        return [header, *body]


def linear_probe(
    model: nn.Module,
    layers: LayerChoice,
    train_data: Data,
    test_data: Data,
    pool_size: int | None = 2,
    C: float = 1.0,
    max_iter: int = 1000,
    batch_size: int = 256,
    show_progress: bool = False,
) -> ProbeTable:
    """Test accuracy of a linear classifier on each layer's pooled features (paper Table 7).

    Args:
        model: the (frozen) network whose layers are probed; run as it is (``model.eval()``).
        layers: modules of ``model`` or their dotted names, or a name -> module (or dotted
            name) dict; one table row each, in order.
        train_data, test_data: ``(inputs, labels)`` tensors or iterables of such batches; the
            labels may be a different task from the one the model was trained on.
        pool_size: spatial average pooling of conv outputs, see :func:`pooled_layer_features`.
        C: inverse L2 regularisation strength of the logistic regression.
        max_iter: iteration limit of the lbfgs solver.
        batch_size: used when the data are tensor pairs.
        show_progress: tqdm bars over the feature passes.

    Returns:
        :class:`ProbeTable` with the feature count and train/test accuracy (%) per layer.
    """
    train_x, train_y = pooled_layer_features(
        model, layers, train_data, pool_size, batch_size, show_progress
    )
    test_x, test_y = pooled_layer_features(
        model, layers, test_data, pool_size, batch_size, show_progress
    )
    rows = []
    for name in train_x:
        train_acc, test_acc = fit_linear_probe(
            train_x[name], train_y, test_x[name], test_y, C=C, max_iter=max_iter
        )
        rows.append((name, train_x[name].shape[1], train_acc, test_acc))
    return ProbeTable(rows, len(train_y), len(test_y))
