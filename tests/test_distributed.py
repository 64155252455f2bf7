"""Several processes: mining, projection and the report under 2 gloo ranks equal one process.

The reference is always the plain single-process function on the same data (no process group),
so every check is "N ranks reproduce 1 rank", plus hand-written partitions for the shard helpers.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from deconvnet_attr import data as data_module
from deconvnet_attr import models
from deconvnet_attr.distributed import (
    all_gather_rows,
    process_group,
    rank0_writes,
    rank_and_world,
    shard_indices,
    shard_range,
    sharded_loader,
)
from deconvnet_attr.mining import TopActivations, top_activations_by_layer
from deconvnet_attr.projection import project_top_activations

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
IMAGES = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = data_module.load_eval_subset()
    return images[:IMAGES], labels[:IMAGES]


def _small(top: TopActivations, channels: int, k: int) -> TopActivations:
    """The first ``channels`` channels' first ``k`` entries of ``top``."""
    return TopActivations(
        top.values[:channels, :k],
        top.indices[:channels, :k],
        top.locations[:channels, :k],
        top.channels[:channels],
    )


def _work(model: torch.nn.Module) -> dict:
    """What each rank (and the single-process reference) computes: two layers mined from a
    tensor and from an unshuffled DataLoader, their projections (batches that do not divide the
    seeds evenly) and a projection of a single batch (one rank gets none)."""
    images, labels = _images()
    from_tensor = top_activations_by_layer(
        model, ["conv1", "conv3"], images, k=5, batch_size=64, progress=False
    )
    loader = DataLoader(TensorDataset(images, labels), batch_size=37)
    from_loader = top_activations_by_layer(
        model, {"conv2": [0, 3, 7], "conv4": None}, loader, k=4, progress=False
    )
    projections = {
        name: project_top_activations(model, name, images, top, batch_size=48, progress=False)
        for name, top in from_tensor.items()
    }
    one_batch = project_top_activations(
        model, "conv2", images, _small(from_loader["conv2"], 2, 3), batch_size=64, progress=False
    )
    return {
        "tensor": from_tensor,
        "loader": from_loader,
        "projections": projections,
        "one_batch": one_batch,
    }


def _rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    with process_group("cpu") as device:  # joins the group from the environment, like torchrun
        assert device == torch.device("cpu")
        assert rank_and_world() == (rank, world)
        result = _work(models.load_reference())
        gathered = all_gather_rows(torch.full((rank, 3), float(rank)))  # rank 0 holds no rows
        with rank0_writes(Path(out_dir)) as out:
            (out / f"written-by-{rank}.txt").write_text("x")
        result["gathered"] = gathered
    result["destroyed"] = not dist.is_initialized()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def _assert_same_top(got: TopActivations, want: TopActivations) -> None:
    torch.testing.assert_close(got.values, want.values)
    assert torch.equal(got.indices, want.indices)
    assert torch.equal(got.locations, want.locations)
    assert torch.equal(got.channels, want.channels)


def test_two_gloo_ranks_mine_and_project_like_one_process(tmp_path):
    # fork: the children need not re-import torch and the package (spawn costs ~10 s each)
    mp.start_processes(
        _rank_main,
        args=(WORLD, _free_port(), str(tmp_path)),
        nprocs=WORLD,
        join=True,
        start_method="fork",
    )
    single = _work(models.load_reference())
    assert single["loader"]["conv4"].indices.shape == (48, 4)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for source in ("tensor", "loader"):
            assert list(got[source]) == list(single[source])
            for name in single[source]:
                _assert_same_top(got[source][name], single[source][name])
        for name, want in single["projections"].items():
            assert got["projections"][name].shape == want.shape
            torch.testing.assert_close(got["projections"][name], want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["one_batch"], single["one_batch"], rtol=1e-5, atol=1e-6)
        assert torch.equal(got["gathered"], torch.ones(1, 3))  # rank 1's one row of ones
        assert got["destroyed"]
    assert sorted(p.name for p in tmp_path.glob("written-by-*")) == ["written-by-0.txt"]


def test_shards_partition_the_data_set():
    for size, world in ((7, 1), (7, 2), (9, 3), (10, 4), (3, 3)):
        shards = [shard_indices(size, rank, world).tolist() for rank in range(world)]
        assert sorted(sum(shards, [])) == list(range(size))  # every position exactly once
        assert all(shard == list(range(rank, size, world)) for rank, shard in enumerate(shards))
        blocks = [list(shard_range(size, rank, world)) for rank in range(world)]
        assert sum(blocks, []) == list(range(size))  # contiguous, in rank order
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    with pytest.raises(ValueError, match="2 examples cannot be shared by 3 ranks"):
        shard_indices(2, 0, 3)


def test_sharded_loader_keeps_data_set_positions_and_refuses_shuffled_loaders():
    dataset = TensorDataset(torch.arange(11.0)[:, None])
    loader = sharded_loader(DataLoader(dataset, batch_size=4), rank=1, world=3)
    assert list(loader.sampler) == [1, 4, 7, 10]
    assert torch.cat([x for (x,) in loader]).flatten().tolist() == [1.0, 4.0, 7.0, 10.0]
    with pytest.raises(ValueError, match="RandomSampler"):
        sharded_loader(DataLoader(dataset, sampler=RandomSampler(dataset)), rank=0, world=2)
    with pytest.raises(ValueError, match="list"):
        sharded_loader([dataset[0]], rank=0, world=2)


def test_a_single_process_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with process_group("cpu") as device:
        assert device == torch.device("cpu") and not dist.is_initialized()
        assert rank_and_world() == (0, 1)
    with rank0_writes(tmp_path) as out:
        assert out == tmp_path
    rows = torch.randn(3, 2)
    assert all_gather_rows(rows) is rows


def _atlas_tops(atlas: Path) -> dict[tuple[str, int], list[tuple[int, float]]]:
    """``{(layer, channel): [(image id, activation), ...]}`` read from the atlas channel pages."""
    tops = {}
    for page in sorted(atlas.glob("layer-*/c*.html")):
        found = re.findall(r'data-activation="([^"]+)" data-image="(\d+)"', page.read_text())
        key = (page.parent.name.removeprefix("layer-"), int(page.stem[1:]))
        tops[key] = [(int(image), float(value)) for value, image in found]
    return tops


@pytest.mark.slow
def test_torchrun_report_rank0_writes_the_site_mined_like_one_process(tmp_path):
    out = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={WORLD}", "-m", "deconvnet_attr.report"]
    args = ["--quick", "--out", str(out), "--no-progress"]
    run = subprocess.run(
        command + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("report written to") == 1  # rank 0 alone reports
    assert f"by {WORLD} processes" in run.stdout
    assert (out / "index.html").is_file() and (out / "atlas" / "index.html").is_file()

    # the independent reference: the plain single-process mining of the same context
    from deconvnet_attr.report.cli import context_from_args, parse_args

    ctx = context_from_args(parse_args(args))
    mined = top_activations_by_layer(
        ctx.model, ctx.layers, ctx.loader(), k=ctx.k, batch_size=ctx.batch_size, progress=False
    )
    tops = _atlas_tops(out / "atlas")
    want = {
        (layer, int(channel)): list(
            zip(top.indices[i].tolist(), top.values[i].tolist(), strict=True)
        )
        for layer, top in mined.items()
        for i, channel in enumerate(top.channels)
    }
    assert sorted(tops) == sorted(want)  # the atlas shows every channel of the mined layers
    for key, entries in want.items():
        assert [image for image, _ in tops[key]] == [image for image, _ in entries], key
        got = torch.tensor([value for _, value in tops[key]])
        torch.testing.assert_close(got, torch.tensor([value for _, value in entries]))
