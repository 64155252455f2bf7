"""Training state that survives an interruption: ``last.pt`` and ``metrics.csv``.

A checkpoint holds the model, optimiser and scheduler, the step, the position inside the epoch
(``batches_done``, with the epoch's running sums in ``partial``) and the metrics rows of the
completed epochs. With :class:`EpochSampler` (the epoch's order from any batch on), :class:`Keyed`
(per-image seeds for random transforms) and per-batch seeds (:func:`seed_of`), a run resumed from
any step is bit-identical to an uninterrupted one. Files are written atomically and fsync'd
(file and directory), the checkpoint before the metrics rows it holds.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from .models.reference import model_record
from .models.zfnet import ZFNet

__all__ = [
    "EpochSampler",
    "Keyed",
    "load_checkpoint",
    "resume_point",
    "save_checkpoint",
    "seed_of",
    "write_atomic",
    "write_metrics",
]

METRIC_FIELDS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "epoch_seconds",
    "clipped_filters",
)


class EpochSampler(Sampler):
    """One epoch's training order from batch ``skip`` on, as ``(epoch, position, index)`` keys.

    The order is ``base``'s (a ``RandomSampler`` re-seeded with ``seed + epoch``, or a
    ``DistributedSampler`` given the epoch), so a resumed epoch skips exactly the batches done.
    :meth:`start` sets the epoch and the batches to skip before each epoch.
    """

    def __init__(self, base: Sampler, seed: int, batch_size: int) -> None:
        self.base, self.seed, self.batch_size = base, seed, batch_size
        self.epoch = self.skip = 0

    def start(self, epoch: int, skip: int) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        if isinstance(self.base, DistributedSampler):
            self.base.set_epoch(self.epoch)
        else:
            self.base.generator.manual_seed(self.seed + self.epoch)
        first = self.skip * self.batch_size
        order = itertools.islice(iter(self.base), first, None)
        for position, index in enumerate(order, first):
            yield self.epoch, position, index

    def __len__(self) -> int:
        return len(self.base) - self.skip * self.batch_size  # type: ignore[arg-type]


class Keyed(Dataset):
    """``dataset[index]`` for an ``(epoch, position, index)`` key; with ``reseed``, torch's RNG
    is first seeded from (seed, epoch, position, rank), so random transforms (crops, flips) do
    not depend on which worker or run loads the image."""

    def __init__(self, dataset: Dataset, seed: int, rank: int, reseed: bool) -> None:
        self.dataset, self.seed, self.rank, self.reseed = dataset, seed, rank, reseed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int]):
        epoch, position, index = key
        if self.reseed:
            torch.manual_seed(seed_of(self.seed, epoch, position, self.rank, 1))
        return self.dataset[index]


def seed_of(*parts: int) -> int:
    """A 63-bit seed from integers (Python's tuple hash of ints is the same in every process)."""
    return hash(parts) & (2**63 - 1)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write) -> None:
    """``write(file)`` into ``path.tmp``, fsync it, rename it over ``path``, fsync the directory:
    after a crash ``path`` holds the old or the new content, never a part."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_checkpoint(path: Path, model: ZFNet, args, epoch: int, **state) -> None:
    """``last.pt``: the model record plus ``state`` (step, epoch_complete, batches_done, partial,
    metrics, optimizer, scheduler, world), written atomically and fsync'd."""
    record = model_record(model, args.arch, epoch)
    record.update(state, args=vars(args) | {"out": str(args.out)})
    write_atomic(path, lambda f: torch.save(record, f))


def write_metrics(path: Path, rows: list[dict]) -> None:
    """``metrics.csv`` holding exactly ``rows`` (written atomically, fsync'd)."""

    def write(f) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        f.write(text.getvalue().encode())

    write_atomic(path, write)


def load_checkpoint(path: Path, device: torch.device) -> dict:
    """Read ``--resume``'s checkpoint; ValueError naming ``path`` when it is unreadable."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # torch raises pickle, zip and runtime errors for a damaged file
        raise ValueError(f"--resume: cannot read checkpoint {path}: {err}") from err
    missing = [
        k
        for k in ("arch", "model", "optimizer", "scheduler", "epoch", "step")
        if not isinstance(ckpt, dict) or k not in ckpt
    ]
    if missing:
        raise ValueError(f"--resume: {path} is not a training checkpoint (no {', '.join(missing)})")
    return ckpt


def resume_point(ckpt: dict, path: Path, args, model, optimizer, scheduler, world: int) -> dict:
    """Load ``ckpt`` into the model, optimiser and scheduler after checking it fits this run;
    returns where to continue: start_epoch (last epoch begun), step, skip (batches of the next
    epoch already done), partial (that epoch's running sums) and metrics (completed rows)."""
    if ckpt["arch"] != args.arch:
        raise ValueError(f"--resume: {path} is a --arch {ckpt['arch']} checkpoint, not {args.arch}")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(f"--resume: {path} does not fit this model/run: {err}") from err
    complete = ckpt.get("epoch_complete", True)
    if not complete:
        if "batches_done" not in ckpt:
            raise ValueError(
                f"--resume: {path} stopped inside epoch {ckpt['epoch']} but holds no position in "
                "that epoch (written by an older deconvnet-attr); resume from an epoch end"
            )
        saved = ckpt.get("args", {})
        changed = [
            f"--{k.replace('_', '-')} {saved[k]} -> {getattr(args, k)}"
            for k in ("batch_size", "seed")
            if k in saved and saved[k] != getattr(args, k)
        ] + ([f"processes {ckpt['world']} -> {world}"] if ckpt.get("world", world) != world else [])
        if changed:
            raise ValueError(
                f"--resume: {path} stopped inside an epoch; continuing it needs the same "
                f"settings, changed: {', '.join(changed)}"
            )
    metrics = ckpt.get("metrics")
    if metrics is None:  # older checkpoints: the completed epochs' rows of metrics.csv
        csv_path = path.parent / "metrics.csv"
        done = ckpt["epoch"] if complete else ckpt["epoch"] - 1
        rows = list(csv.DictReader(open(csv_path))) if csv_path.is_file() else []
        metrics = [r for r in rows if int(r["epoch"]) <= done]
    return {
        "start_epoch": ckpt["epoch"] if complete else ckpt["epoch"] - 1,
        "step": ckpt["step"],
        "skip": 0 if complete else ckpt["batches_done"],
        "partial": None if complete else ckpt["partial"],
        "metrics": list(metrics),
    }
