"""What the report's section builders share: the :class:`ReportContext` and the :class:`Section`
each returns."""

from __future__ import annotations

import html
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from deconvnet_attr.atlas.stats import ChannelMaxima
from deconvnet_attr.mining import TopActivations
from deconvnet_attr.projection import project_top_activations

__all__ = ["PASS_PIXELS", "Mined", "ReportContext", "Section", "SectionBuilder"]

PASS_PIXELS = 4 * 224 * 224
"""Input pixels per pass of the report's large-image work (:attr:`ReportContext.pass_size`):
at most ``batch_size`` images or seeds a pass, fewer for large images (4 at 224×224, where each
seed's forward/backward through a ResNet-18 holds about 60 MB and a forward pass of 4 images
about 20 MB per retained map; with 8, Fig. 2 of a ResNet-18 peaked at 2.04 GB), so each
section's peak memory is bounded whatever the image size."""


@dataclass
class Section:
    """One part of the report: a title and its HTML body (figures referenced by file name)."""

    title: str
    body: str


@dataclass
class ReportContext:
    """Everything the section builders share.

    ``data`` is a map-style dataset of ``(image, label)`` pairs, images ``(C, H, W)`` in [0, 1]
    (labels are -1 when unknown); ``layers`` are names of spatial layers of ``model`` analysed in
    the per-layer sections; ``checkpoints`` maps an epoch to a model (training snapshots);
    ``parts`` are the object parts of the correspondence analysis
    (:data:`~deconvnet_attr.analysis.correspondence.FASHION_MNIST_PARTS` for Fashion-MNIST);
    ``atlas`` writes the unit atlas into ``out/atlas/`` (``atlas_channels``: the strongest that
    many channels per layer, ``None`` all); ``workers``: DataLoader processes reading the data.
    """

    model: nn.Module
    model_name: str
    data: Dataset
    data_name: str
    layers: list[str]
    out: Path
    class_names: tuple[str, ...] | None = None
    has_labels: bool = False
    checkpoints: Mapping[int, nn.Module] | None = None
    k: int = 9
    channels: int = 16
    batch_size: int = 64
    progress: bool = True
    quick: bool = False
    command: str = ""
    parts: Sequence | None = None
    atlas: bool = False
    atlas_channels: int | None = None
    workers: int = 0
    draws: bool = True
    """False on the ranks other than 0 under torchrun: they compute what rank 0 needs from them
    (their shares of the mining and the projections) but render no figure and no atlas page."""
    _per_class: tuple[Tensor, Tensor, int] | None = field(default=None, repr=False, compare=False)
    maxima: ChannelMaxima | None = field(default=None, repr=False, compare=False)
    """Each image's strongest unit per mined channel, recorded by
    :func:`~deconvnet_attr.report.mine_layers` for the atlas's statistics (``None``: not
    recorded, e.g. under torchrun or for a caller's own ``mined``; the atlas then makes one
    statistics pass over the data)."""
    _projected: dict[tuple[str, int], tuple[Tensor, Tensor, IO[bytes]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def loader(self) -> DataLoader:
        """The data in order, in batches of ``batch_size``, read by ``workers`` processes (0: in
        this one), so images stream from disk and only a batch is held at a time."""
        return DataLoader(
            self.data,
            batch_size=self.batch_size,
            num_workers=self.workers,
        )

    def images(self, n: int | None = None) -> tuple[Tensor, Tensor]:
        """The first ``n`` (default all) images ``(n, C, H, W)`` and labels ``(n,)``; with the
        default, memory grows with the data set (only the bundled Fashion-MNIST correspondence
        analysis asks for all)."""
        count = len(self.data) if n is None else min(n, len(self.data))  # type: ignore[arg-type]
        items = [self.data[i] for i in range(count)]
        return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])

    def first_per_class(self, count: int) -> tuple[Tensor, Tensor]:
        """The first image of each of the ``count`` smallest labels in the data, in label order:
        images ``(n, C, H, W)`` and labels ``(n,)``, ``n <= count``.

        One streaming pass over :meth:`loader`, holding at most ``count`` images besides a batch;
        the result of the largest ``count`` asked is kept, so a smaller one needs no pass (the
        first of the ``count`` smallest labels are a prefix of those of more).
        """
        cached = self._per_class
        if cached is not None and (len(cached[1]) >= count or cached[2] >= count):
            return cached[0][:count], cached[1][:count]
        firsts: dict[int, Tensor] = {}
        for inputs, labels in self.loader():
            for image, label in zip(inputs, labels.tolist(), strict=True):
                if label in firsts or (len(firsts) >= count and label > max(firsts)):
                    continue
                firsts[label] = image.clone()
                if len(firsts) > count:
                    del firsts[max(firsts)]
        order = sorted(firsts)
        images, labels = torch.stack([firsts[c] for c in order]), torch.as_tensor(order)
        self._per_class = (images, labels, count)
        return images, labels

    @property
    def pass_size(self) -> int:
        """Images (or projection seeds) per pass: ``batch_size``, fewer for large images so that
        a pass holds at most :data:`PASS_PIXELS` input pixels."""
        pixels = self.data[0][0][0].numel()  # H * W of one image
        return max(1, min(self.batch_size, PASS_PIXELS // pixels))

    def project(
        self, layer: str, top: TopActivations, *, keep: bool = True, take: bool = False
    ) -> Tensor:
        """The deconvnet projections ``(C, k, *input_shape)`` of the seeds of ``top`` (rows of
        ``mined[layer]``) on :attr:`data`, by
        :func:`~deconvnet_attr.projection.project_top_activations`, ``batch_size`` seeds a pass
        or fewer for large images (:attr:`pass_size`).

        Memoised per ``(layer, channel)``, so Fig. 2 and the unit atlas project the same mined
        seeds once: a channel whose seeds (images, locations) were projected and kept before is
        not projected again. ``keep`` keeps the projections made by this call for a later one
        (Fig. 2); ``take`` removes those it reuses from the memo (the atlas, which visits each
        channel once, so the memo never holds more than Fig. 2's channels). Kept projections
        wait in anonymous temporary files, not in memory, so the memo adds nothing to the peak
        memory between the calls.
        """
        channels = [int(c) for c in top.channels]
        stored = [self._projected.get((layer, c)) for c in channels]
        reuse = [
            entry is not None
            and torch.equal(entry[0], top.indices[row])
            and torch.equal(entry[1], top.locations[row])
            for row, entry in enumerate(stored)
        ]
        missing = torch.tensor([row for row, hit in enumerate(reuse) if not hit], dtype=torch.long)
        fresh = None
        seeds = self.pass_size
        if len(missing):
            fresh = project_top_activations(
                self.model,
                layer,
                self.data,
                TopActivations(
                    top.values[missing],
                    top.indices[missing],
                    top.locations[missing],
                    top.channels[missing],
                ),
                batch_size=seeds,
                progress=self.progress and not take,
            )
        rows: list[Tensor] = []
        fresh_rows = iter(range(len(missing)))
        for row, (channel, hit) in enumerate(zip(channels, reuse, strict=True)):
            if hit:
                entry = self._projected[(layer, channel)]
                entry[2].seek(0)
                rows.append(torch.load(entry[2], weights_only=True))
                if take:
                    entry[2].close()
                    del self._projected[(layer, channel)]
                continue
            assert fresh is not None
            rows.append(fresh[next(fresh_rows)])
            if keep:
                spool = tempfile.TemporaryFile()
                torch.save(rows[-1].clone(), spool)
                self._projected[(layer, channel)] = (
                    top.indices[row].clone(),
                    top.locations[row].clone(),
                    spool,
                )
        return torch.stack(rows)

    def save(self, fig: Figure, name: str, alt: str) -> str:
        """Write ``fig`` as ``out/name`` (PNG; not where :attr:`draws` is False) and return the
        ``<img>`` tag that shows it."""
        if self.draws:
            fig.savefig(self.out / name, dpi=110)
        plt.close(fig)
        return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


Mined = Mapping[str, TopActivations]
"""The top-``k`` activations of each analysed layer (``ctx.layers``, in order), mined once per
report by :func:`~deconvnet_attr.report.build.mine_layers` and handed to every section."""

SectionBuilder = Callable[[ReportContext, Mined], "Section | None"]
"""A section builder: ``builder(ctx, mined)`` writes its figures into ``ctx.out`` and returns its
:class:`Section`, or ``None`` when the analysis does not apply."""
