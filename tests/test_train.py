"""Tests for deconvnet_attr.train and deconvnet_attr.clipping."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch
from test_data import make_image_folder, write_fashion_root
from torch import nn

from deconvnet_attr.clipping import feature_scale_clip
from deconvnet_attr.data import DEFAULT_DEBIAN_DIR
from deconvnet_attr.models import load_model
from deconvnet_attr.train import main, translate_flip

HAS_DEBIAN = all(
    (DEFAULT_DEBIAN_DIR / f).is_file()
    for f in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
)


# --- feature-scale clipping -------------------------------------------------------------------


def test_feature_scale_clip_matches_per_filter_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv1d(4, 5, 2), nn.Linear(4, 4))
    with torch.no_grad():
        model[0].weight.mul_(torch.tensor([0.1, 1, 10, 0.1, 5, 1]).view(-1, 1, 1, 1))
        model[3].weight.mul_(100)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = {}
    count = 0
    for key in ("0.weight", "2.weight"):
        filters = []
        for w in before[key]:
            rms = float(torch.sqrt(torch.mean(w.double() ** 2)))
            count += rms > 0.1
            filters.append(w * (0.1 / rms) if rms > 0.1 else w)
        expected[key] = torch.stack(filters)
    assert feature_scale_clip(model, max_rms=0.1) == count > 0
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected.get(key, before[key]))
    rms = model[0].weight.flatten(1).pow(2).mean(1).sqrt()
    assert rms.max().item() == pytest.approx(0.1, rel=1e-5)


def test_feature_scale_clip_rejects_bad_radius():
    for bad in (0, -0.1, "0.1", True):
        with pytest.raises(ValueError, match=repr(bad)):
            feature_scale_clip(nn.Conv2d(1, 1, 1), max_rms=bad)


def test_translate_flip_moves_pixels_only():
    x = torch.rand(16, 1, 28, 28)
    out = translate_flip(x, torch.Generator().manual_seed(0), shift=2)
    assert out.shape == x.shape
    for a, b in zip(x, out, strict=True):
        inner = b[:, 2:-2, 2:-2]
        candidates = [
            img[:, 2 + dy : 26 + dy, 2 + dx : 26 + dx]
            for img in (a, a.flip(2))
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        ]
        assert any(torch.equal(inner, c) for c in candidates)


# --- the training script --------------------------------------------------------------------


def run(argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture
def fashion_root(tmp_path):
    root = tmp_path / "fashion"
    root.mkdir()
    return write_fashion_root(root, n_train=64, n_test=24)


def test_one_step_zfnet_fashion_on_synthetic_idx(tmp_path, fashion_root):
    out = tmp_path / "out"
    assert (
        run(
            [
                "--arch",
                "zfnet-fashion",
                "--data",
                "fashion-mnist",
                "--fashion-root",
                fashion_root,
                "--epochs",
                "1",
                "--max-steps",
                "1",
                "--batch-size",
                "16",
                "--out",
                out,
                "--no-progress",
            ]
        )
        == 0
    )
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["step"] == 1 and ckpt["epoch_complete"] is False
    torch.manual_seed(0)
    from deconvnet_attr.models import zfnet_fashion

    init = zfnet_fashion().state_dict()
    changed = [k for k, v in ckpt["model"].items() if not torch.equal(v, init[k])]
    assert {"conv1.weight", "fc8.bias"} <= set(changed)
    assert load_model(out / "model_final.pt").class_names[0] == "T-shirt/top"


def test_one_step_zfnet_on_image_folder(tmp_path):
    data = tmp_path / "imgs"
    make_image_folder(data / "train", classes=("a", "b", "c"), per_class=1)
    make_image_folder(data / "val", classes=("a", "b", "c"), per_class=1)
    out = tmp_path / "out"
    assert (
        run(
            [
                "--arch",
                "zfnet",
                "--data",
                data,
                "--epochs",
                "1",
                "--max-steps",
                "1",
                "--batch-size",
                "2",
                "--out",
                out,
                "--no-progress",
            ]
        )
        == 0
    )
    model = load_model(out / "model_final.pt")
    assert model.class_names == ("a", "b", "c") and model.fc8.out_features == 3
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 1 and 0 <= float(rows[0]["val_acc"]) <= 1


def test_resume_reproduces_uninterrupted_run(tmp_path, fashion_root):
    common = [
        "--arch",
        "zfnet-fashion",
        "--data",
        "fashion-mnist",
        "--fashion-root",
        fashion_root,
        "--batch-size",
        "16",
        "--no-progress",
        "--snapshot-epochs",
        "1",
        "--warmup-steps",
        "2",
    ]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run([*common, "--epochs", "2", "--out", straight]) == 0
    assert run([*common, "--epochs", "2", "--max-steps", "4", "--out", split]) == 0
    first = torch.load(split / "last.pt", weights_only=False)
    assert first["epoch"] == 1 and first["step"] == 4 and first["epoch_complete"]
    assert run([*common, "--epochs", "2", "--resume", "--out", split]) == 0
    a = torch.load(straight / "last.pt", weights_only=False)
    b = torch.load(split / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 8
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6)
    rows = list(csv.DictReader(open(split / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert (split / "model_epoch001.pt").is_file() and not (split / "model_epoch002.pt").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--arch", "resnet"], "unknown arch 'resnet'"),
        (["--arch", "zfnet", "--remove", "conv1"], "cannot remove 'conv1'"),
        (["--arch", "zfnet", "--epochs", "0"], "--epochs must be >= 1"),
    ],
)
def test_bad_flags_exit_before_training(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        run([*argv, "--out", tmp_path / "o"])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _hand_parameter_count(convs: tuple[int, int, int], fc: tuple[int, int]) -> int:
    """zfnet-fashion's weights + biases, written out layer by layer (conv1 16 7x7, conv2 32 5x5,
    3x3 conv3..5, 3x3 pool5 map into fc6, 10 classes)."""
    count = (1 * 49 + 1) * 16 + (16 * 25 + 1) * 32
    channels = 32
    for width in convs:
        count += (channels * 9 + 1) * width
        channels = width
    features = channels * 9
    for units in fc:
        count += (features + 1) * units
        features = units
    return count + (features + 1) * 10


def test_width_flag_trains_the_widened_shapes(tmp_path, fashion_root):
    out = tmp_path / "wide"
    argv = ["--arch", "zfnet-fashion", "--fashion-root", fashion_root, "--epochs", "1"]
    argv += ["--max-steps", "1", "--batch-size", "16", "--out", out, "--no-progress"]
    assert run([*argv, "--width", "conv3=64,conv4=128,conv5=64,fc6=768,fc7=768"]) == 0
    model = load_model(out / "model_final.pt")
    assert model.conv3.weight.shape == (64, 32, 3, 3)
    assert model.conv4.weight.shape == (128, 64, 3, 3)
    assert model.conv5.weight.shape == (64, 128, 3, 3)
    assert model.fc6.weight.shape == (768, 64 * 9)
    assert model.fc7.weight.shape == (768, 768)
    assert model.fc8.weight.shape == (10, 768)
    assert sum(p.numel() for p in model.parameters()) == _hand_parameter_count(
        (64, 128, 64), (768, 768)
    )
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_width_with_remove_and_half_fc():
    from deconvnet_attr.models import create_model

    half = create_model("zfnet-fashion", 10, width={"fc6": 192, "fc7": 192})
    assert sum(p.numel() for p in half.parameters()) == _hand_parameter_count(
        (48, 48, 32), (192, 192)
    )
    # fc6 removed: fc7 (width 96) reads the 32 * 9 pool5 features directly
    bridged = create_model("zfnet-fashion", 10, remove=("fc6",), width={"fc7": 96})
    assert bridged.fc7.weight.shape == (96, 32 * 9) and bridged.fc8.in_features == 96


@pytest.mark.parametrize(
    "width, message",
    [
        ("conv1=8", "cannot set the width of 'conv1'"),
        ("fc6=0", "'fc6=0' must be LAYER=N"),
        ("fc6", "'fc6' must be LAYER=N"),
        ("fc7=big", "'fc7=big' must be LAYER=N"),
    ],
)
def test_bad_width_flag_exits_before_training(tmp_path, capsys, width, message):
    with pytest.raises(SystemExit):
        run(["--arch", "zfnet-fashion", "--width", width, "--out", tmp_path / "o"])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_with_widths_rejects_bad_values():
    from deconvnet_attr.models.zfnet import ZFNET_FASHION, with_widths

    with pytest.raises(ValueError, match="'fc8'"):
        with_widths(ZFNET_FASHION, {"fc8": 5})
    with pytest.raises(ValueError, match="width of fc6 must be >= 1, got -1"):
        with_widths(ZFNET_FASHION, {"fc6": -1})
    with pytest.raises(TypeError, match="2.5"):
        with_widths(ZFNET_FASHION, {"fc6": 2.5})
    with pytest.raises(TypeError, match="mapping"):
        with_widths(ZFNET_FASHION, "fc6=3")


def test_bad_data_errors_before_training(tmp_path, capsys, fashion_root):
    cases = [
        (["--arch", "zfnet-fashion", "--data", tmp_path / "nodir"], "directory not found"),
        (
            [
                "--arch",
                "zfnet-fashion",
                "--data",
                "fashion-mnist",
                "--fashion-root",
                tmp_path / "nodir",
            ],
            "apt-get install -y dataset-fashion-mnist",
        ),
        (
            ["--arch", "zfnet", "--data", "fashion-mnist", "--fashion-root", fashion_root],
            "use --arch zfnet-fashion",
        ),
        (["--arch", "zfnet-fashion", "--data", fashion_root], "holds no images"),
    ]
    (fashion_root / "cls").mkdir()
    for argv, message in cases:
        assert run([*argv, "--out", tmp_path / "o", "--no-progress"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "o").exists()
    argv = ["--arch", "zfnet-fashion", "--data", "fashion-mnist", "--fashion-root", fashion_root]
    assert run([*argv, "--resume", "--out", tmp_path / "o"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def torchrun(args, tmp_path, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "deconvnet_attr.train",
        *map(str, args),
    ]
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path
    )


def test_torchrun_two_processes(tmp_path, fashion_root):
    """The issue's smoke command; on the synthetic idx files when the Debian package is absent."""
    out = tmp_path / "ddp"
    source = [] if HAS_DEBIAN else ["--fashion-root", fashion_root]
    proc = torchrun(
        [
            "--arch",
            "zfnet-fashion",
            "--data",
            "fashion-mnist",
            *source,
            "--epochs",
            "1",
            "--max-steps",
            "5",
            "--batch-size",
            "32" if HAS_DEBIAN else "8",
            "--out",
            out,
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["step"] == (5 if HAS_DEBIAN else 4)  # the synthetic set has 4 steps per epoch
    assert load_model(out / "model_final.pt").fc8.out_features == 10
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 1  # rank 0 alone logs
