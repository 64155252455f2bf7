"""top_activations against a brute-force reference (full layer output, Python sorting)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from deconvnet_attr.deconv import DeconvProjection
from deconvnet_attr.mining import top_activations, top_activations_by_layer
from deconvnet_attr.projection import project_top_activations, receptive_field_patches


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 5),
    ).eval()


def dataset(n: int = 37) -> torch.Tensor:
    """Random images; the first 37 have planted ties: duplicates and a constant (all-tied) image."""
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(max(n, 37), 1, 12, 12, generator=gen)
    images[20] = images[4]  # identical image later in the data set: tie between images
    images[9] = 0.5  # constant image: every unit of a map ties
    images[30] = images[9]
    return images[:n]


def brute_force(outputs: np.ndarray, k: int, channels: list[int]):
    """Per channel: each image's max unit (first in row-major order), sorted (-value, index)."""
    n = outputs.shape[0]
    values, indices, locations = [], [], []
    for c in channels:
        maps = outputs[:, c].reshape(n, -1)
        rows = []
        for i in range(n):
            unit = int(np.argmax(maps[i]))  # numpy: first occurrence of the maximum
            rows.append((-float(maps[i, unit]), i, unit))
        rows.sort()
        top = rows[:k]
        values.append([-v for v, _, _ in top])
        indices.append([i for _, i, _ in top])
        shape = outputs.shape[2:]
        locations.append([list(np.unravel_index(u, shape)) if shape else [] for _, _, u in top])
    return (
        torch.tensor(values),
        torch.tensor(indices),
        torch.tensor(locations, dtype=torch.long).reshape(len(channels), k, outputs.ndim - 2),
    )


def check(result, reference, channels):
    values, indices, locations = reference
    torch.testing.assert_close(result.values, values.float(), rtol=1e-5, atol=1e-6)
    assert result.indices.tolist() == indices.tolist()
    assert result.locations.tolist() == locations.tolist()
    assert result.channels.tolist() == list(channels)


@pytest.mark.parametrize("k", [1, 9])
def test_tensor_input_matches_brute_force(k):
    model, images = small_cnn(), dataset()
    with torch.no_grad():
        outputs = model[:5](images).numpy()
    result = top_activations(model, model[4], images, k=k, batch_size=8, progress=False)
    check(result, brute_force(outputs, k, list(range(6))), range(6))


def test_ties_are_broken_by_position_then_row_major():
    model, images = small_cnn(), dataset()
    result = top_activations(model, model[4], images, k=37, batch_size=5, progress=False)
    for c in range(6):
        row = result.indices[c].tolist()
        assert row.index(4) < row.index(20)  # identical images: smaller position first
        assert row.index(9) < row.index(30)
        j = row.index(9)
        with torch.no_grad():
            constant_map = model[:5](images[9:10])[0, result.channels[c]]
        if torch.all(constant_map == constant_map[0, 0]):  # every unit ties: the first wins
            assert result.locations[c, j].tolist() == [0, 0]


def test_dataloader_input_and_channel_subset():
    model, images = small_cnn(), dataset()
    labels = torch.arange(len(images))
    loader = DataLoader(TensorDataset(images, labels), batch_size=7)
    channels = [5, 0, 3]
    with torch.no_grad():
        outputs = model[:5](images).numpy()
    result = top_activations(model, "4", loader, k=4, channels=channels, progress=False)
    check(result, brute_force(outputs, 4, channels), channels)
    # plain-tensor batches (no labels) and a linear layer (no spatial dimensions)
    result = top_activations(model, model[6], iter(images.split(6)), k=3, progress=False)
    with torch.no_grad():
        logits = model(images).numpy()
    check(result, brute_force(logits, 3, list(range(5))), range(5))
    assert result.locations.shape == (5, 3, 0)


def test_fewer_images_than_k():
    model, images = small_cnn(), dataset(5)
    result = top_activations(model, model[4], images, k=9, progress=False)
    assert result.values.shape == (6, 5)
    assert sorted(result.indices[0].tolist()) == list(range(5))


def test_bad_arguments_name_the_value():
    model, images = small_cnn(), dataset(4)
    with pytest.raises(ValueError, match="0"):
        top_activations(model, model[4], images, k=0)
    with pytest.raises(ValueError, match=r"\[6, -1\]"):
        top_activations(model, model[4], images, channels=[1, 6, -1], progress=False)
    with pytest.raises(ValueError, match="conv9"):
        top_activations(model, "conv9", images)
    with pytest.raises(ValueError, match="empty"):
        top_activations(model, model[4], images[:0], progress=False)
    with pytest.raises(TypeError, match="str"):
        top_activations(model, model[4], ["not a tensor"], progress=False)


def test_model_is_untouched():
    model, images = small_cnn(), dataset(6)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    top_activations(model, model[4], images, progress=False)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    assert not model.training
    assert not model[4]._forward_hooks
    assert all(p.grad is None for p in model.parameters())


def _rank_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, images = small_cnn(), dataset()
        from_tensor = top_activations(model, model[4], images, k=9, batch_size=4, progress=False)
        loader = DataLoader(
            TensorDataset(images, torch.zeros(len(images))),
            batch_size=5,
            sampler=DistributedSampler(TensorDataset(images), shuffle=True, seed=3),
        )
        from_loader = top_activations(
            model, model[4], loader, k=40, channels=[2, 5], progress=False
        )
        try:
            top_activations(model, model[4], iter(images.split(4)), progress=False)
            error = ""
        except ValueError as err:
            error = str(err)
        torch.save(
            {"tensor": from_tensor, "loader": from_loader, "error": error},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_merge_equals_single_process(tmp_path):
    world = 2
    # fork: the children need not re-import torch and the package (spawn costs ~10 s each)
    mp.start_processes(
        _rank_main,
        args=(world, str(tmp_path / "init"), str(tmp_path)),
        nprocs=world,
        join=True,
        start_method="fork",
    )
    model, images = small_cnn(), dataset()
    single = top_activations(model, model[4], images, k=9, progress=False)
    single_subset = top_activations(model, model[4], images, k=40, channels=[2, 5], progress=False)
    assert single_subset.indices.shape == (2, 37)
    for rank in range(world):
        merged = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        # 37 images on 2 ranks: the DistributedSampler pads with a repeat that must count once;
        # k=40 keeps every image, so the repeat would show
        for got, want in ((merged["tensor"], single), (merged["loader"], single_subset)):
            torch.testing.assert_close(got.values, want.values)
            assert torch.equal(got.indices, want.indices)
            assert torch.equal(got.locations, want.locations)
            assert torch.equal(got.channels, want.channels)
        assert "DistributedSampler" in merged["error"] and "tuple_iterator" in merged["error"]


def test_world_size_one_accepts_plain_iterables(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        model, images = small_cnn(), dataset(8)
        result = top_activations(model, model[4], iter(images.split(3)), k=2, progress=False)
        assert result.indices.shape == (6, 2)
    finally:
        dist.destroy_process_group()


def test_batched_projections_equal_one_at_a_time_calls():
    model, images = small_cnn(), dataset(23)
    top = top_activations(model, model[4], images, k=3, channels=[4, 1, 2], progress=False)
    one_by_one = DeconvProjection(model, model[4])
    expected = torch.stack(
        [
            torch.stack(
                [
                    one_by_one.attribute(
                        images[int(top.indices[c, j])][None],
                        target=int(top.channels[c]),
                        neuron=top.locations[c, j][None],
                    )[0]
                    for j in range(3)
                ]
            )
            for c in range(3)
        ]
    )
    labels = torch.zeros(len(images))
    for data in (images, TensorDataset(images, labels), DataLoader(TensorDataset(images, labels))):
        got = project_top_activations(model, model[4], data, top, batch_size=4, progress=False)
        assert got.shape == (3, 3, 1, 12, 12)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())


class _Items(torch.utils.data.Dataset):
    """A map-style dataset that is not a TensorDataset: (image, label) tuples."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], 0


def test_projections_from_a_generic_dataset():
    model, images = small_cnn(), dataset(10)
    top = top_activations(model, "4", images, k=2, progress=False)
    want = project_top_activations(model, "4", images, top, progress=False)
    got = project_top_activations(model, "4", _Items(images), top, batch_size=3, progress=False)
    torch.testing.assert_close(got, want)
    with pytest.raises(TypeError, match="generator"):
        project_top_activations(model, "4", (x for x in images), top, progress=False)


def test_projecting_a_top_from_other_data_or_another_layer_says_so():
    model, images = small_cnn(), dataset(10)
    top4 = top_activations(model, "4", images, k=2, progress=False)  # 6 channels, 3x3 maps
    top1 = top_activations(model, "1", images, k=2, progress=False)  # 4 channels, 10x10 maps
    few = images[: int(top4.indices.max())]
    with pytest.raises(
        ValueError, match=f"position {int(top4.indices.max())} but data holds {len(few)} examples"
    ):
        project_top_activations(model, "4", few, top4, progress=False)
    with pytest.raises(ValueError, match="channel .* out of range.*mined on this layer"):
        project_top_activations(model, "1", images, top4, progress=False)
    with pytest.raises(ValueError, match="out of range.*mined on this layer"):
        project_top_activations(model, "4", images, top1, progress=False)


def test_receptive_field_patches_match_pixelwise_crop():
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(4, 2, 10, 12, generator=gen)
    field = SimpleNamespace(size=(5, 4), stride=(2, 3), offset=(-2, -1))
    locations = torch.tensor([[0, 0], [2, 1], [4, 3], [1, 4]])
    got = receptive_field_patches(images, locations, field, fill=-7.0)
    assert got.shape == (4, 2, 5, 4)
    for m, (i, j) in enumerate(locations.tolist()):
        for a in range(5):
            for b in range(4):
                r, c = -2 + 2 * i + a, -1 + 3 * j + b
                inside = 0 <= r < 10 and 0 <= c < 12
                want = images[m, :, r, c] if inside else torch.full((2,), -7.0)
                assert torch.equal(got[m, :, a, b], want), (m, a, b)
    # a field at least as large as the image shows the whole image
    whole = receptive_field_patches(
        images, locations, SimpleNamespace(size=(30, 12), stride=(1, 1), offset=(-9, 0))
    )
    assert torch.equal(whole, images)


def test_several_layers_in_one_pass_equal_separate_calls():
    model, images = small_cnn(), dataset()
    calls = []
    model[6].register_forward_hook(lambda *args: calls.append(1))
    both = top_activations_by_layer(model, {"4": [3, 1], "0": None}, images, k=5, progress=False)
    assert list(both) == ["4", "0"]
    assert not calls  # the forward pass stops once conv/relu outputs are captured
    for name, channels in (("4", [3, 1]), ("0", None)):
        alone = top_activations(model, name, images, k=5, channels=channels, progress=False)
        for field in ("values", "indices", "locations", "channels"):
            assert torch.equal(getattr(both[name], field), getattr(alone, field))
    with pytest.raises(TypeError, match="'conv1'"):
        top_activations_by_layer(model, "conv1", images)
