"""The atlas's statistics: per-channel activation histograms and per-image top channels.

:func:`top_activations_by_layer` keeps only each channel's top ``k`` images; the atlas also shows
how a channel responds over the *whole* data set (a histogram of every image's strongest unit) and,
for the images that get a page, which channels they excite most. Both come from each image's
strongest unit per channel: recorded during the mining pass itself into a :class:`ChannelMaxima`
(``top_activations_by_layer(..., maxima=...)``; no further pass over the data), or collected by
:func:`activation_stats` in one streaming pass for all layers. Memory is independent of the
data-set size either way.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from deconvnet_attr.taps import Taps

from .records import Histogram, TopChannels

__all__ = [
    "ActivationStats",
    "ChannelMaxima",
    "StreamingHistogram",
    "activation_stats",
    "batches",
]


class StreamingHistogram:
    """Exact histograms of ``C`` streams of values (one per channel) in ``O(C * bins)`` memory.

    Each channel's bins have a power-of-two width ``w`` and start at a multiple of it: bin ``b``
    is ``[(base + b) * w, (base + b + 1) * w)``, so the edges are exact binary fractions. The
    first values set ``w`` so they fill a quarter to half of the bins; when a value falls outside
    them, the width doubles and neighbouring bins merge, which keeps every count exact.
    """

    def __init__(self, num_channels: int, bins: int = 64) -> None:
        if not isinstance(bins, int) or bins < 4:
            raise ValueError(f"bins must be an integer >= 4, got {bins!r}")
        self.bins = bins
        self.counts = torch.zeros(num_channels, bins, dtype=torch.long)
        self.width: Tensor | None = None  # (C,) float64, powers of two
        self.base = torch.zeros(num_channels, dtype=torch.float64)  # (C,) integral

    def add(self, values: Tensor) -> None:
        """Count ``values`` ``(N, C)``: one value per image and channel."""
        v = values.detach().to("cpu", torch.float64).T  # (C, N)
        if v.shape[0] != len(self.counts):
            raise ValueError(f"values have {v.shape[0]} channels, expected {len(self.counts)}")
        if v.shape[1] == 0:
            return
        if not torch.isfinite(v).all():
            raise ValueError("activations must be finite to be counted, got NaN or infinity")
        if self.width is None:
            lo, hi = v.min(1).values, v.max(1).values
            # one distinct value: no scale yet, start fine (the width doubles as values come)
            tiny = hi.abs().clamp_min(1e-6) * 2.0**-20
            span = torch.where(hi > lo, (hi - lo) * 2 / self.bins, tiny)
            self.width = torch.exp2(torch.ceil(torch.log2(span)))
            self.base = torch.floor(lo / self.width)
        while True:
            index = torch.floor(v / self.width[:, None]) - self.base[:, None]
            outside = ((index < 0) | (index >= self.bins)).any(1)
            if not outside.any():
                break
            self._double(outside, v[outside].min(1).values, v[outside].max(1).values)
        self.counts.scatter_add_(1, index.long(), torch.ones_like(index, dtype=torch.long))

    def _double(self, rows: Tensor, low: Tensor, high: Tensor) -> None:
        """Double the bin width of channels ``rows`` (bool ``(C,)``), merging pairs of bins.

        The new range holds the old one; within that constraint it is centred on the span of the
        old range and the new values ``low``...``high`` (per row).
        """
        assert self.width is not None
        base, width = self.base[rows], self.width[rows] * 2
        lo = torch.minimum(low, base * width / 2)
        hi = torch.maximum(high, (base + self.bins) * width / 2)
        centred = torch.floor((lo + hi) / 2 / width - self.bins / 2)
        earliest = torch.ceil((base + self.bins) / 2) - self.bins  # keep the old range's top
        new_base = centred.clamp(earliest, torch.floor(base / 2))  # ... and its bottom
        absolute = base[:, None] + torch.arange(self.bins, dtype=torch.float64)
        target = (torch.floor(absolute / 2) - new_base[:, None]).long()
        merged = torch.zeros_like(self.counts[rows]).scatter_add_(1, target, self.counts[rows])
        self.counts[rows], self.base[rows], self.width[rows] = merged, new_base, width

    def histogram(self, row: int) -> Histogram:
        """Channel ``row``'s histogram, trimmed to the bins from its first to its last value."""
        counts = self.counts[row]
        filled = torch.nonzero(counts).flatten()
        if self.width is None or not len(filled):
            raise ValueError("no values were added")
        first, last = int(filled[0]), int(filled[-1])
        edges = (self.base[row] + torch.arange(first, last + 2, dtype=torch.float64)) * float(
            self.width[row]
        )
        return Histogram(counts[first : last + 1].numpy().copy(), edges.numpy())


@dataclass
class ActivationStats:
    """What :func:`activation_stats` collected.

    ``histograms[layer]`` is a :class:`StreamingHistogram` over the layer's mined channels (row
    ``r`` is channel ``channels[layer][r]``); ``top[index][layer]`` the most active of those
    channels on each watched image; ``num_images`` how many images the pass saw.
    """

    histograms: dict[str, StreamingHistogram]
    channels: dict[str, Tensor]
    top: dict[int, dict[str, TopChannels]]
    num_images: int


def batches(data: Tensor | Iterable) -> Iterator[tuple[Tensor, Tensor]]:
    """``(inputs, data-set positions)`` of each batch of a tensor's rows or of an iterable of
    batches (tensors or ``(inputs, labels, ...)``), positions counted in the order they come."""
    seen = 0
    for batch in data:
        inputs = batch if isinstance(batch, Tensor) else batch[0] if batch else None
        if not isinstance(inputs, Tensor):
            raise TypeError(
                "each batch must be a tensor or an (inputs, labels, ...) tuple whose first element "
                f"is a tensor, got {type(batch).__name__}"
            )
        yield inputs, torch.arange(seen, seen + len(inputs))
        seen += len(inputs)


def activation_stats(
    model: nn.Module,
    channels: Mapping[str, Tensor | Sequence[int]],
    data: Tensor | DataLoader | Iterable,
    *,
    watch: Iterable[int] = (),
    per_image: int = 8,
    bins: int = 64,
    batch_size: int = 64,
    progress: bool = True,
) -> ActivationStats:
    """One pass over ``data``: histograms of each channel's per-image maximum, for all layers.

    Args:
        model: the network (run under ``torch.no_grad``; not modified).
        channels: layer name → the channels to follow (e.g. ``TopActivations.channels``).
        data: a tensor ``(N, ...)`` (split into ``batch_size`` rows) or an iterable of batches in
            data-set order (e.g. an unshuffled ``DataLoader``).
        watch: data-set positions of images whose ``per_image`` most active channels per layer
            are kept (the atlas's image pages).
        bins: histogram bins per channel (see :class:`StreamingHistogram`).
        progress: show a tqdm progress bar.

    Memory is ``O(batch + channels * bins + len(watch) * per_image)``.
    """
    names = list(channels)
    collect = _Collector(channels, watch, per_image, bins)
    taps = Taps(model, names, stop=True)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    stream = batches(data.split(batch_size) if isinstance(data, Tensor) else data)
    total = -(-len(data) // batch_size) if isinstance(data, Tensor) else _length(data)
    with torch.no_grad():
        for inputs, positions in tqdm(
            stream, total=total, desc="atlas statistics", disable=not progress
        ):
            outputs = taps(inputs.to(device))
            for name, out in zip(names, outputs.values(), strict=True):
                maxima = out.flatten(2).amax(2) if out.dim() > 2 else out
                chosen = collect.channels[name].to(maxima.device)
                collect.add(name, maxima[:, chosen].float().cpu(), positions)
            collect.seen += len(inputs)
    return collect.result()


class _Collector:
    """Accumulates :class:`ActivationStats` from batches of per-image channel maxima."""

    def __init__(
        self,
        channels: Mapping[str, Tensor | Sequence[int]],
        watch: Iterable[int],
        per_image: int,
        bins: int,
    ) -> None:
        self.channels = {n: torch.as_tensor(c, dtype=torch.long) for n, c in channels.items()}
        self.histograms = {n: StreamingHistogram(len(c), bins) for n, c in self.channels.items()}
        self.watched = torch.as_tensor(sorted(set(int(i) for i in watch)), dtype=torch.long)
        self.per_image = per_image
        self.top: dict[int, dict[str, TopChannels]] = {}
        self.seen = 0

    def add(self, name: str, maxima: Tensor, positions: Tensor) -> None:
        """Count ``maxima`` ``(B, C)`` (columns: ``channels[name]``) of the images at
        ``positions`` ``(B,)``."""
        self.histograms[name].add(maxima)
        for row in torch.nonzero(torch.isin(positions, self.watched)).flatten().tolist():
            values, order = maxima[row].sort(descending=True, stable=True)
            self.top.setdefault(int(positions[row]), {})[name] = TopChannels(
                values[: self.per_image].clone(), self.channels[name][order[: self.per_image]]
            )

    def result(self) -> ActivationStats:
        if not self.seen:
            raise ValueError("data is empty: no batches to collect statistics from")
        return ActivationStats(self.histograms, self.channels, self.top, self.seen)


class ChannelMaxima:
    """Each image's strongest unit per mined channel, recorded batch by batch during mining
    (``top_activations_by_layer(..., maxima=store)``), kept in an anonymous temporary file
    (``4 * images * channels`` bytes on disk, one batch in memory), so that :meth:`stats`
    gives the atlas's statistics without another pass over the data: exactly what
    :func:`activation_stats` computes over the same batches."""

    def __init__(self) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile()
        self._batches: dict[str, list[tuple[int, int, int]]] = {}  # offset, B, C
        self._channels: dict[str, Tensor] = {}

    def record(self, layer: str, channels: Tensor, maxima: Tensor, positions: Tensor) -> None:
        """Append one batch of ``layer``: ``maxima`` ``(B, C)`` of ``channels`` ``(C,)`` for
        the images at data-set ``positions`` ``(B,)``."""
        known = self._channels.setdefault(layer, channels.clone())
        if not torch.equal(known, channels):
            raise ValueError(f"layer {layer!r} was recorded with other channels before")
        values = maxima.detach().to("cpu", torch.float32).contiguous()
        self._file.seek(0, os.SEEK_END)
        offset = self._file.tell()
        self._file.write(values.numpy().tobytes())
        self._file.write(positions.to("cpu", torch.int64).contiguous().numpy().tobytes())
        self._batches.setdefault(layer, []).append((offset, *values.shape))

    def has(self, layer: str, channels: Tensor | Sequence[int]) -> bool:
        """Whether ``channels`` of ``layer`` were recorded."""
        known = self._channels.get(layer)
        return known is not None and bool(
            torch.isin(torch.as_tensor(channels, dtype=torch.long), known).all()
        )

    def stats(
        self,
        channels: Mapping[str, Tensor | Sequence[int]],
        *,
        watch: Iterable[int] = (),
        per_image: int = 8,
        bins: int = 64,
    ) -> ActivationStats:
        """:func:`activation_stats` (same arguments) from the recorded batches; ``channels``
        must be among those mined for each layer."""
        collect = _Collector(channels, watch, per_image, bins)
        for name, wanted in collect.channels.items():
            if name not in self._channels:
                recorded = list(self._channels)
                raise ValueError(f"layer {name!r} was not recorded (recorded: {recorded})")
            column = {int(c): i for i, c in enumerate(self._channels[name])}
            missing = [int(c) for c in wanted if int(c) not in column]
            if missing:
                raise ValueError(f"channels {missing} of layer {name!r} were not mined")
            columns = torch.tensor([column[int(c)] for c in wanted], dtype=torch.long)
            for maxima, positions in self._read(name):
                collect.add(name, maxima[:, columns], positions)
            collect.seen = sum(rows for _, rows, _ in self._batches[name])
        return collect.result()

    def _read(self, layer: str) -> Iterator[tuple[Tensor, Tensor]]:
        for offset, rows, cols in self._batches.get(layer, []):
            self._file.seek(offset)
            values = np.frombuffer(self._file.read(4 * rows * cols), np.float32)
            positions = np.frombuffer(self._file.read(8 * rows), np.int64)
            yield (
                torch.from_numpy(values.reshape(rows, cols).copy()),
                torch.from_numpy(positions.copy()),
            )

    def close(self) -> None:
        """Delete the temporary file."""
        self._file.close()


def _length(data: Iterable) -> int | None:
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None
