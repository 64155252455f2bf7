"""Several processes (``torchrun``): rank helpers, data shards and the all-gathers the report needs.

Under ``torchrun --nproc_per_node=N`` the report splits its two heavy steps over the ranks and
replicates the rest:

* **mining** (:mod:`deconvnet_attr.mining`): each rank mines its shard of the data
  (:func:`shard_indices`: rank ``r`` takes examples ``r, r + N, ...``, no padding, original
  data-set positions kept) and the per-rank top-k are all-gathered (:func:`all_gather_cat`) and
  merged exactly, so every rank continues with the same mined result;
* **projection** (:mod:`deconvnet_attr.projection`): each rank projects a contiguous block of the
  seed batches (:func:`shard_range`) and the projections are all-gathered back in seed order
  (:func:`all_gather_rows`);
* everything else (the other sections' passes over the data) runs identically on every rank —
  it is deterministic, so the collectives inside it line up — and only rank 0 writes files
  (:func:`rank0_writes`).

Without an initialised process group every helper is the identity (rank 0 of 1), so a single
process behaves exactly as if this module did not exist.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, SequentialSampler

__all__ = [
    "ShardSampler",
    "all_gather_cat",
    "all_gather_rows",
    "process_group",
    "rank0_writes",
    "rank_and_world",
    "shard_indices",
    "shard_range",
    "sharded_loader",
]


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextmanager
def process_group(device: str | torch.device) -> Iterator[torch.device]:
    """Join the ``torchrun`` process group for the duration of the block; yields the device to use.

    ``torchrun`` is detected from the environment (``WORLD_SIZE`` > 1, with ``RANK`` and
    ``LOCAL_RANK``); the group is initialised with ``nccl`` for a CUDA ``device`` (each rank then
    uses ``cuda:LOCAL_RANK`` unless ``device`` names an index) and ``gloo`` otherwise, and
    destroyed on exit. Without ``torchrun``, or when a group is already initialised (the caller
    owns it), nothing is initialised and ``device`` is yielded unchanged.
    """
    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        yield device
        return
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but torch.distributed is not available here")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


def shard_indices(size: int, rank: int, world: int) -> Tensor:
    """Data-set positions ``(ceil((size - rank) / world),)`` of rank ``rank``'s shard:
    ``rank, rank + world, ...`` — a partition of ``range(size)`` (no padding repeats).

    Raises ``ValueError`` when ``size < world`` (a rank would have nothing to mine); every rank
    raises alike, so none is left waiting in a collective.
    """
    if size < world:
        raise ValueError(
            f"{size} examples cannot be shared by {world} ranks: give at least {world}"
        )
    return torch.arange(rank, size, world)


def shard_range(count: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous block of ``range(count)`` (blocks in rank order, sizes differing
    by at most one): concatenating the ranks' blocks gives back ``range(count)`` in order."""
    return range(count * rank // world, count * (rank + 1) // world)


class ShardSampler(DistributedSampler):
    """The unshuffled :func:`shard_indices` of a map-style data set, as a ``DistributedSampler``
    (which :func:`~deconvnet_attr.mining.top_activations` requires of a loader under
    ``torch.distributed``) but without the padding repeats."""

    def __init__(self, dataset: object, rank: int, world: int) -> None:
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=False)  # type: ignore[arg-type]
        self.positions = shard_indices(len(dataset), rank, world)  # type: ignore[arg-type]
        self.num_samples = len(self.positions)

    def __iter__(self) -> Iterator[int]:
        return iter(self.positions.tolist())

    def __len__(self) -> int:
        return self.num_samples


def sharded_loader(loader: object, rank: int, world: int) -> DataLoader:
    """This rank's shard of ``loader``: ``loader`` itself when it has a ``DistributedSampler``;
    for an unshuffled loader over a map-style data set, the same loader (batch size, workers,
    collate function) over :class:`ShardSampler`. Anything else raises ``ValueError``."""
    if isinstance(loader, DataLoader) and isinstance(loader.sampler, DistributedSampler):
        return loader
    if (
        isinstance(loader, DataLoader)
        and isinstance(loader.sampler, SequentialSampler)
        and not isinstance(loader.dataset, IterableDataset)
        and not loader.drop_last
        and loader.batch_size is not None
    ):
        return DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=ShardSampler(loader.dataset, rank, world),
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
        )
    sampler = getattr(loader, "sampler", None)
    raise ValueError(
        "under torch.distributed, data must be a tensor or an unshuffled DataLoader over a "
        "map-style Dataset (sharded automatically), or a DataLoader with a DistributedSampler, "
        f"got {type(loader).__name__}"
        + (f" with sampler {type(sampler).__name__}" if sampler is not None else "")
    )


def _backend_device() -> torch.device:
    """Where the group's collectives need their tensors: the current GPU for nccl, else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_cat(tensor: Tensor, dim: int = 0) -> Tensor:
    """Every rank's ``tensor`` (the same shape on all ranks), concatenated along ``dim`` in rank
    order, on ``tensor``'s device; ``tensor`` itself without a process group."""
    _, world = rank_and_world()
    if world == 1:
        return tensor
    local = tensor.to(_backend_device()).contiguous()
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local)
    return torch.cat(parts, dim=dim).to(tensor.device)


def all_gather_rows(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` ``(n_r, ...)`` concatenated along dim 0 in rank order:
    ``(sum n_r, ...)`` on the CPU. The ranks may hold different numbers of rows (zero too: such a
    rank may pass any empty tensor); the row shape and dtype come from the ranks that hold rows.
    ``tensor`` itself without a process group."""
    _, world = rank_and_world()
    if world == 1:
        return tensor
    metas: list = [None] * world  # (rows, row shape, dtype name) of each rank
    mine = (len(tensor), tuple(tensor.shape[1:]), str(tensor.dtype).removeprefix("torch."))
    dist.all_gather_object(metas, mine if len(tensor) else (0, (), ""))
    rows = [meta[0] for meta in metas]
    shape, dtype_name = next(((m[1], m[2]) for m in metas if m[0]), ((), ""))
    if not max(rows):
        return tensor
    dtype = getattr(torch, dtype_name)
    device = _backend_device()
    padded = torch.zeros((max(rows), *shape), dtype=dtype, device=device)
    if len(tensor):
        padded[: len(tensor)] = tensor.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, rows, strict=True)]).cpu()


@contextmanager
def rank0_writes(out: Path) -> Iterator[Path]:
    """The directory this rank writes into: ``out`` on rank 0 (and in a single process); on the
    other ranks a temporary directory, removed on exit, so that they run the same code (and take
    part in the same collectives) while only rank 0's files are kept."""
    rank, _ = rank_and_world()
    if rank == 0:
        yield out
        return
    with tempfile.TemporaryDirectory(prefix=f"deconvnet-attr-rank{rank}-") as scratch:
        yield Path(scratch)
