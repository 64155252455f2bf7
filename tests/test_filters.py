"""Tests for deconvnet_attr.analysis.filters on synthetic filters with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_data import write_fashion_root
from torch import nn

from deconvnet_attr.analysis.filters import (
    aliasing_score,
    filter_diagnostics,
    filter_rms,
    layer_activations,
    layer_response_std,
    shift_sensitivity,
)
from deconvnet_attr.data import load_eval_subset, upsample_images
from deconvnet_attr.fig6 import FIG6_VARIANTS, fig6_table, load_fig6_models
from deconvnet_attr.models import load_model
from deconvnet_attr.train import main as train_main
from deconvnet_attr.viz.filters import filter_mosaic, plot_filter_panels, weight_tiles


def gabor(size: int = 7, freq: float = 0.06, sigma: float = 1.5, theta: float = 0.3) -> np.ndarray:
    r = np.arange(size) - (size - 1) / 2
    y, x = np.meshgrid(r, r, indexing="ij")
    u = x * math.cos(theta) + y * math.sin(theta)
    return np.exp(-(x**2 + y**2) / (2 * sigma**2)) * np.cos(2 * math.pi * freq * u)


def checkerboard(size: int = 7) -> np.ndarray:
    i, j = np.indices((size, size))
    return (-1.0) ** (i + j)


def bank(*filters: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.stack(filters)[:, None], dtype=torch.float64)


def numpy_aliasing(w: np.ndarray, stride: int, size: int) -> float:
    """Independent reference: written-out DFT of one (C, k, k) filter, energy outside the band."""
    total = folded = 0.0
    k = w.shape[-1]
    n = np.arange(size)
    for c in range(w.shape[0]):
        padded = np.zeros((size, size))
        padded[:k, :k] = w[c]
        basis = np.exp(-2j * np.pi * np.outer(n, n) / size)  # DFT matrix
        spectrum = np.abs(basis @ padded @ basis.T) ** 2
        freqs = np.where(n < size / 2, n, n - size) / size
        fy, fx = np.meshgrid(freqs, freqs, indexing="ij")
        outside = np.maximum(np.abs(fy), np.abs(fx)) > 1 / (2 * stride) + 1e-12
        total += spectrum.sum()
        folded += spectrum[outside].sum()
    return folded / total


def test_constant_and_zero_filters_are_dead_gabor_and_checkerboard_alive():
    rng = np.random.default_rng(0)
    filters = [gabor(theta=t) for t in (0.0, 0.7, 1.4)] + [checkerboard(), rng.normal(size=(7, 7))]
    filters += [np.full((7, 7), 0.3), np.zeros((7, 7))]
    diag = filter_diagnostics(bank(*filters), stride=2)
    assert diag.dead.tolist() == [False] * 5 + [True, True]
    assert diag.dead_count == 2
    assert math.isnan(float(diag.aliasing[-1]))  # all-zero filter has no spectrum


def test_checkerboard_aliases_gabor_does_not():
    diag = filter_diagnostics(bank(checkerboard(), gabor()), stride=2)
    assert diag.aliasing[0] > 0.9
    assert diag.aliasing[1] < 0.05
    assert diag.noise_aliasing == pytest.approx(0.75)
    stride1 = filter_diagnostics(bank(checkerboard(), gabor()), stride=1)
    assert stride1.aliasing.tolist() == [0.0, 0.0]  # stride 1 folds nothing


@pytest.mark.parametrize("stride", [2, 4])
def test_aliasing_matches_written_out_dft(stride):
    w = np.random.default_rng(stride).normal(size=(3, 2, 11, 11))
    ours = aliasing_score(torch.tensor(w), stride, size=64)
    expected = [numpy_aliasing(f, stride, 64) for f in w]
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-10)


def test_white_noise_scores_near_its_baseline():
    w = torch.randn(400, 1, 11, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    diag = filter_diagnostics(w, stride=4)
    assert diag.mean_aliasing == pytest.approx(1 - 1 / 16, abs=0.02)


def test_rms_matches_formula_and_layer_stride_is_used():
    conv = nn.Conv2d(3, 5, 5, stride=2)
    w = conv.weight.detach().double().numpy()
    expected = [math.sqrt(sum(v * v for v in f.ravel()) / f.size) for f in w]
    np.testing.assert_allclose(filter_rms(conv.weight).numpy(), expected, rtol=1e-12)
    diag = filter_diagnostics(conv)
    assert diag.stride == 2
    np.testing.assert_allclose(diag.rms.numpy(), expected, rtol=1e-12)
    assert "| 4 |" in diag.to_markdown()


def test_silent_responses_are_dead():
    w = bank(gabor(), gabor(theta=1.0), gabor(theta=2.0))
    acts = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    acts[:, 1] = 0.0  # a ReLU unit that never fires
    diag = filter_diagnostics(w, acts)
    assert diag.dead.tolist() == [False, True, False]
    np.testing.assert_allclose(diag.response_std[0], acts[:, 0].double().std(), rtol=1e-12)


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match="list"):
        filter_diagnostics([1, 2])
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        filter_diagnostics(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="stride=3"):
        filter_diagnostics(nn.Conv2d(1, 2, 3, stride=2), stride=3)
    with pytest.raises(ValueError, match="1.5"):
        filter_diagnostics(bank(gabor()), dead_ratio=1.5)
    with pytest.raises(ValueError, match="channels"):
        filter_diagnostics(bank(gabor()), torch.zeros(1, 2, 3, 3))


def test_shift_sensitivity_zero_for_stride1_box_and_positive_for_strided_checkerboard():
    images = torch.zeros(4, 1, 32, 32)
    images[:, :, 8:24, 8:24] = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    box = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, bias=False), nn.ReLU())
    nn.init.constant_(box[0].weight, 1.0)
    before = {k: v.clone() for k, v in box.state_dict().items()}
    # stride 1 and content away from the border: the spatial mean is exactly shift-invariant
    assert shift_sensitivity(box, box[1], images, shifts=3) == pytest.approx(0.0, abs=1e-6)
    strided = nn.Sequential(nn.Conv2d(1, 1, 2, stride=2, bias=False), nn.ReLU())
    with torch.no_grad():
        strided[0].weight.copy_(torch.tensor([[[[1.0, -1.0], [-1.0, 1.0]]]]))
    assert shift_sensitivity(strided, "1", images, shifts=1) > 0.1
    assert all(torch.equal(v, before[k]) for k, v in box.state_dict().items())
    acts = layer_activations(box, "0", images, batch_size=3)
    torch.testing.assert_close(acts, nn.functional.conv2d(images, box[0].weight, padding=1))


# --- Fig. 6 figure, data and shipped models ---------------------------------------------------


def test_weight_tiles_stretch_each_filter_and_mosaic_frames_dead_ones():
    w = torch.stack([torch.arange(9.0).view(1, 3, 3) - 4, torch.full((1, 3, 3), 2.0)])
    tiles = weight_tiles(w)
    np.testing.assert_allclose(tiles[0], (np.arange(9.0).reshape(3, 3)) / 8)
    np.testing.assert_allclose(tiles[1], 0.5)
    mosaic = filter_mosaic(tiles, columns=2, gap=1, dead=[False, True])
    assert mosaic.shape == (5, 9, 3)
    assert tuple(mosaic[0, 4]) == (0.85, 0.1, 0.1)  # frame of the dead tile
    assert tuple(mosaic[0, 0]) == (1.0, 1.0, 1.0)  # white gap by the living one
    np.testing.assert_allclose(mosaic[1:4, 1:4, 0], tiles[0])


def test_plot_filter_panels_checks_keys():
    w = {"a": torch.randn(4, 1, 5, 5), "b": torch.randn(4, 1, 3, 3)}
    proj = {"a": torch.randn(4, 1, 9, 9), "b": torch.randn(4, 1, 9, 9)}
    fig = plot_filter_panels(w, proj, dead={"a": [0, 1, 0, 0], "b": [0] * 4})
    assert len(fig.axes) == 4
    with pytest.raises(ValueError, match="conv2_projections"):
        plot_filter_panels(w, {"a": proj["a"]})


def test_upsample_images_is_bilinear_with_pixel_centres():
    x = torch.rand(2, 1, 5, 6, dtype=torch.float64)
    f = 4

    def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(n * f) + 0.5) / f - 0.5, 0, n - 1)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n - 1), src - lo

    (r0, r1, wr), (c0, c1, wc) = axis(5), axis(6)
    a = x.numpy()[:, :, :, :]
    rows = a[:, :, r0] * (1 - wr)[:, None] + a[:, :, r1] * wr[:, None]
    expected = rows[..., c0] * (1 - wc) + rows[..., c1] * wc
    np.testing.assert_allclose(upsample_images(x, f).numpy(), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="0"):
        upsample_images(x, 0)


def test_shipped_fig6_models_load_and_reproduce_their_accuracy():
    models = load_fig6_models()
    assert list(models) == list(FIG6_VARIANTS)
    assert models["alexnet_clipon"].conv1.kernel_size == (11, 11)
    assert models["alexnet_clipon"].conv1.stride == (4, 4)
    assert models["zfnet_clipoff"].conv1.kernel_size == (7, 7)
    assert models["zfnet_clipoff"].conv1.stride == (2, 2)
    x, y = load_eval_subset()
    x, y = x[::5], y[::5]  # 200 images, 20 per class
    table = fig6_table(models, x, y, shift_images=16)
    for row, (name, model) in zip(table.rows, models.items(), strict=True):
        with torch.no_grad():
            big = nn.functional.interpolate(x, size=112, mode="bilinear", align_corners=False)
            correct = sum(int(model(big[i : i + 1]).argmax()) == int(y[i]) for i in range(len(y)))
        assert row.accuracy == correct / len(y)
        assert row.accuracy >= 0.75, name  # docs/fig6.md: all four score >= 0.80 on 10k
    assert "alexnet_clipon" in table.to_markdown()


def test_train_fig6_arch_on_upsampled_synthetic_idx(tmp_path):
    root = write_fashion_root(tmp_path, n_train=40, n_test=12)
    out = tmp_path / "out"
    argv = ["--arch", "fig6-alexnet-stem", "--fashion-root", root, "--out", out, "--no-progress"]
    assert train_main([str(a) for a in [*argv, "--batch-size", "8", "--train-subset", "16"]]) == 0
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[1] == "2"  # 16 images / batch 8 = 2 steps
    model = load_model(out / "model_final.pt")
    assert model.input_size == 112 and model.conv1.stride == (4, 4)
    # 28 px data cannot feed a 112 px arch without upsampling by 4
    bad = [*argv, "--upsample", "2", "--batch-size", "8"]
    assert train_main([str(a) for a in bad]) == 2


def test_streamed_response_std_equals_the_std_of_the_whole_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU()).eval()
    images = torch.randn(23, 2, 9, 9)
    with torch.no_grad():
        whole = model(images)  # (N, F, H, W), every response at once
    expected = torch.stack([whole[:, f].double().std() for f in range(4)])
    for batch_size in (1, 5, 64):
        got = layer_response_std(model, "1", images, batch_size=batch_size)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5)  # float32 conv
    w = model[0].weight
    by_std = filter_diagnostics(w, response_std=expected)
    by_acts = filter_diagnostics(w, whole)
    assert by_std.dead.tolist() == by_acts.dead.tolist()
    np.testing.assert_allclose(by_std.response_std.numpy(), by_acts.response_std.numpy())
    with pytest.raises(ValueError, match=r"response_std must be \(4,\)"):
        filter_diagnostics(w, response_std=torch.ones(3))
    with pytest.raises(ValueError, match="not both"):
        filter_diagnostics(w, whole, response_std=expected)
