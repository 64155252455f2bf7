"""Top-k accuracy of models, or of one model in several configurations, over a data set.

The measurements behind the paper's Table 3 (and the linear probes' data handling):
:func:`accuracy_table` compares separately (re)trained models; :func:`accuracies` runs any set of
(model, context) configurations over the data in one pass, which is how
:func:`~deconvnet_attr.ablation.ablation_study` measures ablated layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from deconvnet_attr.state import preserved_state
from deconvnet_attr.tables import RecordTable

__all__ = ["AccuracyTable", "accuracies", "accuracy_table", "iterate_batches"]

Data = tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]]
Configuration = tuple[nn.Module, Callable[[], AbstractContextManager]]


@dataclass(frozen=True)
class AccuracyTable(RecordTable):
    """Top-k accuracies (in %) of several configurations on one data set.

    ``rows`` is a list of ``(configuration, {k: accuracy_percent})``; the first row is the
    reference (the intact model) that the "drop" columns are measured against.
    """

    rows: list[tuple[str, dict[int, float]]]
    n_examples: int

    @property
    def topk(self) -> tuple[int, ...]:
        return tuple(self.rows[0][1])

    def _records(self) -> list[list[str]]:
        reference = self.rows[0][1]
        header = ["configuration"]
        header += [f"top-{k} acc (%)" for k in self.topk]
        header += [f"top-{k} drop (pp)" for k in self.topk]
        body = [
            [name]
            + [f"{acc[k]:.2f}" for k in self.topk]
            + [f"{reference[k] - acc[k]:.2f}" for k in self.topk]
            for name, acc in self.rows
        ]
        return [header, *body]


def iterate_batches(data: Data, batch_size: int = 256) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(inputs, labels)`` batches from a ``(X, y)`` tensor pair or any batch iterable
    (e.g. a ``DataLoader``)."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = cast(tuple[Tensor, Tensor], data)
        if len(x) != len(y):
            raise ValueError(f"inputs and labels differ in length: {len(x)} vs {len(y)}")
        for start in range(0, len(x), batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
    else:
        yield from cast(Iterable[tuple[Tensor, Tensor]], data)


def _topk_hits(logits: Tensor, labels: Tensor, topk: Sequence[int]) -> dict[int, int]:
    if max(topk) > logits.shape[1]:
        raise ValueError(f"topk {tuple(topk)} exceeds the number of classes {logits.shape[1]}")
    ranked = logits.topk(max(topk), dim=1).indices
    hit = ranked == labels.to(ranked.device).unsqueeze(1)
    return {k: int(hit[:, :k].any(dim=1).sum()) for k in topk}


def accuracy_table(
    models: Mapping[str, nn.Module],
    data: Data,
    topk: Sequence[int] = (1, 5),
    batch_size: int = 256,
    show_progress: bool = False,
) -> AccuracyTable:
    """Top-k accuracy of several models (e.g. intact and retrained variants) on one data set.

    The first model is the reference for the "drop" columns. ``data``: ``(inputs, labels)``
    tensors or an iterable of such batches; ``batch_size`` is used for a tensor pair.
    """
    if not models:
        raise ValueError("models is empty")
    configurations = {name: (m, nullcontext) for name, m in models.items()}
    return accuracies(configurations, data, topk, batch_size, show_progress)


def accuracies(
    configurations: Mapping[str, Configuration],
    data: Data,
    topk: Sequence[int],
    batch_size: int,
    show_progress: bool,
) -> AccuracyTable:
    """Top-k accuracies of each named (model, context factory) configuration, in one pass over
    ``data``: each batch goes through every model under its context (e.g. layers ablated)."""
    hits = {name: dict.fromkeys(topk, 0) for name in configurations}
    count = 0
    batches = tqdm(iterate_batches(data, batch_size), desc="accuracy", disable=not show_progress)
    with torch.no_grad(), ExitStack() as stack:
        for model in {id(m): m for m, _ in configurations.values()}.values():
            stack.enter_context(preserved_state(model))
        for x, y in batches:
            count += len(x)
            for name, (model, context) in configurations.items():
                device = next(model.parameters()).device
                with context():
                    logits = model(x.to(device))
                for k, h in _topk_hits(logits, y, topk).items():
                    hits[name][k] += h
    if count == 0:
        raise ValueError("data yielded no examples")
    rows = [(name, {k: 100.0 * h / count for k, h in hk.items()}) for name, hk in hits.items()]
    return AccuracyTable(rows, count)
