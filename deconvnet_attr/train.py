"""Train ZFNet or its Fashion-MNIST variant: ``python -m deconvnet_attr.train``.

Single process, or many through ``torchrun`` (DistributedDataParallel; gloo on CPU, NCCL on GPU;
DistributedSampler; rank 0 alone writes checkpoints, the metrics CSV and the progress bar).

Per epoch, rank 0 writes into ``--out``: ``last.pt`` (full checkpoint: model, optimiser, scheduler,
counters, the position in the epoch, the metrics rows; ``--resume`` continues from it exactly, also
mid-epoch), then ``metrics.csv``, rewritten from the checkpoint's rows; at ``--snapshot-epochs``
a model file ``model_epochNNN.pt`` (fp16) for the feature-evolution figure; at the end
``model_final.pt`` (fp32). Model files load with :func:`deconvnet_attr.models.load_model`.

Defaults follow the paper for ``--arch zfnet`` (SGD lr 1e-2, momentum 0.9, batch 128, dropout 0.5,
lr x0.1 when validation accuracy plateaus, 70 epochs) and a short cosine schedule for
``--arch zfnet-fashion``. Feature-scale clipping (:func:`feature_scale_clip`, RMS 0.1) runs after
every step for both.

Preprocessing is *not* exactly the paper's. The paper resizes the shorter side to 256, crops the
centre 256x256, subtracts the per-pixel mean and trains on 10 fixed 224x224 sub-crops of it (the
four corners and the centre, each also flipped). Here (ImageFolder data,
:func:`~deconvnet_attr.data.image_folder_transform`) the shorter side is resized to
``round(S * 256 / 224)`` and a random ``S x S`` crop is taken from anywhere in the resized image
(not just the centre square) with a random horizontal flip; no mean subtraction (images stay in
[0, 1]); evaluation uses the centre crop. Fashion-MNIST trains on the whole 28x28 image with random
flips only.

Under ``torchrun`` ``--batch-size`` is per process, so N processes train with an effective batch
of ``batch_size x N`` (128 x N by default) at an unchanged learning rate: the lr is not scaled
with N (scale it by hand, e.g. the linear rule ``lr x N`` with warm-up, to keep the single-process
recipe's behaviour).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sized
from pathlib import Path
from typing import cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from .checkpoint import (
    EpochSampler,
    Keyed,
    load_checkpoint,
    resume_point,
    save_checkpoint,
    seed_of,
    write_metrics,
)
from .cli import USER_ERRORS, one_line_warnings, user_error, writable_dir
from .clipping import feature_scale_clip
from .models.factory import create_model
from .models.reference import save_model
from .models.zfnet import ZFNet
from .train_args import parse_args
from .train_data import Data, load_data, translate_flip

__all__ = ["main", "parse_args", "translate_flip"]


class Distributed:
    """Process-group state: initialised from torchrun's environment, or a single process."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world > 1:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.main = self.rank == 0

    def sum(self, *values: float) -> list[float]:
        """All-reduce (sum) a few scalars across processes."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.world > 1:
            dist.destroy_process_group()


def evaluate(
    model: nn.Module, data: Dataset, env: Distributed, batch_size: int, workers: int
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy over ``data``, sharded across processes."""
    size = len(cast(Sized, data))
    shard = Subset(data, range(env.rank, size, env.world))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=workers)
    model.eval()
    loss_sum = correct = 0.0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(env.device), y.to(env.device)
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    loss_sum, correct = env.sum(loss_sum, correct)
    return loss_sum / size, correct / size


def _make_scheduler(args, optimizer, steps_per_epoch: int):
    if args.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.1, patience=args.patience
        )
    total = args.epochs * steps_per_epoch
    warmup = min(args.warmup_steps, total)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _warmup_cosine(step, warmup, total)
    )


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(step - warmup, total - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * progress))


def train(args: argparse.Namespace) -> Path:
    """Run training as configured by :func:`parse_args`; returns the final model file's path."""
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(args)  # before any process group or model: bad data fails fast
    if args.resume and not (args.out / "last.pt").is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {args.out / 'last.pt'}")
    writable_dir(args.out)
    env = Distributed()
    try:
        return _train(args, data, env)
    finally:
        env.close()


def _train(args: argparse.Namespace, data: Data, env: Distributed) -> Path:
    torch.manual_seed(args.seed)
    model = cast(
        ZFNet, create_model(args.arch, len(data.classes), remove=args.remove, width=args.width)
    )
    model.class_names = data.classes
    model.to(env.device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    if env.world > 1:
        base: Sampler = DistributedSampler(
            data.train,
            num_replicas=env.world,
            rank=env.rank,
            shuffle=True,
            seed=args.seed,
            drop_last=True,
        )
    else:
        base = torch.utils.data.RandomSampler(cast(Sized, data.train), generator=torch.Generator())
    sampler = EpochSampler(base, args.seed, args.batch_size)
    loader = DataLoader(
        Keyed(data.train, args.seed, env.rank, reseed=not data.tensor_augment),
        batch_size=args.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(
            f"--batch-size {args.batch_size} exceeds the {len(cast(Sized, data.train))} training "
            f"images per process"
        )
    scheduler = _make_scheduler(args, optimizer, steps_per_epoch)
    where: dict = {"start_epoch": 0, "step": 0, "skip": 0, "partial": None, "metrics": []}
    if args.resume:
        path = args.out / "last.pt"
        ckpt = load_checkpoint(path, env.device)
        where = resume_point(ckpt, path, args, model, optimizer, scheduler, env.world)
    start_epoch, step = int(where["start_epoch"]), int(where["step"])
    history: list[dict] = where["metrics"]
    net = nn.parallel.DistributedDataParallel(model) if env.world > 1 else model
    aug_gen = torch.Generator()
    epoch = start_epoch
    for epoch in range(start_epoch + 1, args.epochs + 1):
        if args.max_steps is not None and step >= args.max_steps:
            break
        resumed = epoch == start_epoch + 1 and where["skip"] > 0
        done = where["skip"] if resumed else 0
        # Rank 0 carries the stopped epoch's sums (all ranks' totals); the others start at 0.
        partial = where["partial"] if resumed and env.main else {}
        loss_sum, correct = partial.get("loss_sum", 0.0), partial.get("correct", 0.0)
        seen, clipped = partial.get("seen", 0), partial.get("clipped", 0)
        started = time.time() - partial.get("seconds", 0.0)
        sampler.start(epoch, done)
        batches = iter(loader)
        net.train()
        bar = tqdm(
            total=steps_per_epoch,
            initial=done,
            desc=f"epoch {epoch}/{args.epochs}",
            leave=False,
            disable=not env.main or args.no_progress,
            mininterval=0.5 if sys.stderr.isatty() else 30,
        )
        complete = True
        for batch in range(done, steps_per_epoch):
            if args.max_steps is not None and step >= args.max_steps:
                complete = False
                break
            x, y = next(batches)
            # Dropout and augmentation are seeded per (seed, epoch, batch, rank): a run resumed
            # at any batch draws what an uninterrupted run draws there.
            batch_seed = seed_of(args.seed, epoch, batch, env.rank)
            torch.manual_seed(batch_seed)
            aug_gen.manual_seed(batch_seed)
            if data.tensor_augment:
                x = translate_flip(x, aug_gen, args.shift)
            x, y = x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if args.clip_rms > 0:
                clipped += feature_scale_clip(model, args.clip_rms)
            if args.schedule == "cosine":
                scheduler.step()
            step += 1
            done += 1
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.update()
            bar.set_postfix(
                loss=f"{loss.item():.3f}",
                lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                refresh=False,
            )
        bar.close()
        del batches
        loss_sum, correct, seen = env.sum(loss_sum, correct, seen)  # clipped: rank 0's
        val_loss, val_acc = (
            evaluate(model, data.val, env, 2 * args.batch_size, args.workers)
            if data.val is not None
            else ("", "")  # no validation split: empty in metrics.csv, left out of the log line
        )
        if args.schedule == "plateau" and complete:
            scheduler.step(val_acc if data.val is not None else -loss_sum / max(seen, 1))
        row = {
            "epoch": epoch,
            "step": step,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "epoch_seconds": round(time.time() - started, 1),
            "clipped_filters": int(clipped),
        }
        if env.main:
            # The checkpoint first, holding the rows of its completed epochs; metrics.csv is then
            # rewritten from them (+ this epoch's row so far): it never shows work last.pt lacks.
            if complete:
                history.append(row)
            save_checkpoint(
                args.out / "last.pt",
                model,
                args,
                epoch,
                step=step,
                epoch_complete=complete,
                batches_done=done,
                partial=None
                if complete
                else {
                    "loss_sum": loss_sum,
                    "correct": correct,
                    "seen": seen,
                    "clipped": clipped,
                    "seconds": time.time() - started,
                },
                metrics=history,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                world=env.world,
            )
            write_metrics(args.out / "metrics.csv", history if complete else [*history, row])
            if complete and epoch in args.snapshot_epochs:
                save_model(
                    model, args.out / f"model_epoch{epoch:03d}.pt", args.arch, epoch, torch.float16
                )
            print(
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in row.items()
                    if v != ""
                ),
                flush=True,
            )
    final = args.out / "model_final.pt"
    if env.main:
        save_model(model, final, args.arch, epoch)
    return final


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 on success, 2 on a user error: one
    line ``error: ...`` on stderr, the traceback with ``--debug``)."""
    args = parse_args(argv)
    try:
        with one_line_warnings():
            final = train(args)
    except USER_ERRORS as err:
        if args.debug:
            raise
        return user_error(err)
    print(f"wrote {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
