"""Issue 12 "Never silently wrong", items 11, 12, 15: training resume, the report with few
classes / other class orders / failing sections, and one-line user errors of both commands."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data import make_image_folder, write_fashion_root
from torch import nn

from deconvnet_attr import cli
from deconvnet_attr.data import FASHION_MNIST_CLASSES, load_eval_subset
from deconvnet_attr.models import load_reference, zfnet_fashion
from deconvnet_attr.report import context_from_args, parse_args
from deconvnet_attr.report.sections import overview_section
from deconvnet_attr.report.studies import ablation_section
from deconvnet_attr.train import main as train_main


def train(argv) -> int:
    return train_main([str(a) for a in argv])


def command(argv) -> int:
    """``deconvnet-attr ARGV`` in-process; argparse errors come back as their exit status."""
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as stop:
        return int(stop.code)


def shell(argv, cwd) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "deconvnet_attr.cli", *map(str, argv)]
    root = str(Path(__file__).resolve().parents[1])  # this checkout's deconvnet_attr
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=root)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


@pytest.fixture
def fashion_root(tmp_path):
    root = tmp_path / "fashion"
    root.mkdir()
    return write_fashion_root(root, n_train=64, n_test=16)


def fashion_args(root, out, *extra):
    return [
        "--arch",
        "zfnet-fashion",
        "--data",
        "fashion-mnist",
        "--fashion-root",
        root,
        "--batch-size",
        "16",  # 64 images: 4 steps per epoch
        "--warmup-steps",
        "3",
        "--snapshot-epochs",
        "2",
        "--no-progress",
        "--out",
        out,
        *extra,
    ]


def assert_same_state(a: dict, b: dict) -> None:
    """Every tensor of two checkpoints' model and optimiser states is bit-identical."""
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)


def rows(out: Path) -> list[dict]:
    return list(csv.DictReader(open(out / "metrics.csv")))


# --- item 11: training resume ------------------------------------------------------------------


def test_resume_mid_epoch_is_bit_identical_to_an_uninterrupted_run(tmp_path, fashion_root):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train(fashion_args(fashion_root, straight, "--epochs", "3", "--shift", "2")) == 0
    assert (
        train(
            fashion_args(fashion_root, split, "--epochs", "3", "--shift", "2", "--max-steps", "6")
        )
        == 0
    )
    stopped = torch.load(split / "last.pt", weights_only=False)
    assert (stopped["epoch"], stopped["step"], stopped["epoch_complete"]) == (2, 6, False)
    # the log holds epoch 1 and the stopped epoch's row so far, nothing the checkpoint lacks
    assert [(r["epoch"], r["step"]) for r in rows(split)] == [("1", "4"), ("2", "6")]
    assert (
        train(fashion_args(fashion_root, split, "--epochs", "3", "--shift", "2", "--resume")) == 0
    )
    a = torch.load(straight / "last.pt", weights_only=False)
    b = torch.load(split / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 12  # 3 epochs x 4 steps, not 14
    assert_same_state(a, b)
    want, got = rows(straight), rows(split)
    assert [r["epoch"] for r in got] == ["1", "2", "3"]  # epoch 2 once
    for r_want, r_got in zip(want, got, strict=True):
        for key in ("step", "lr", "train_loss", "train_acc", "val_loss", "val_acc"):
            assert r_want[key] == r_got[key], key
    snap_a = torch.load(straight / "model_epoch002.pt", weights_only=False)["model"]
    snap_b = torch.load(split / "model_epoch002.pt", weights_only=False)["model"]
    assert all(torch.equal(v, snap_b[k]) for k, v in snap_a.items())


def test_resume_mid_epoch_on_an_image_folder_with_workers(tmp_path):
    data = tmp_path / "imgs"
    make_image_folder(data / "train", classes=("a", "b", "c"), per_class=4)
    make_image_folder(data / "val", classes=("a", "b", "c"), per_class=1)
    common = ["--arch", "zfnet-fashion", "--data", data, "--batch-size", "4", "--epochs", "2"]
    common += ["--workers", "2", "--no-progress"]  # random crops + flips in worker processes
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train([*common, "--out", straight]) == 0
    assert train([*common, "--max-steps", "4", "--out", split]) == 0
    assert torch.load(split / "last.pt", weights_only=False)["batches_done"] == 1
    assert train([*common, "--resume", "--out", split]) == 0
    a = torch.load(straight / "last.pt", weights_only=False)
    b = torch.load(split / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 6
    assert_same_state(a, b)


def test_metrics_never_hold_rows_the_checkpoint_lacks(tmp_path, fashion_root, monkeypatch):
    out = tmp_path / "out"
    real = torch.save
    calls = []

    def failing_second_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "optimizer" in obj:  # last.pt, not a model file
            calls.append(obj["epoch"])
            if len(calls) == 2:
                raise OSError("No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_second_save)
    assert train(fashion_args(fashion_root, out, "--epochs", "3")) == 2
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 1
    assert [r["epoch"] for r in rows(out)] == ["1"]


def test_checkpoint_and_metrics_are_fsynced(tmp_path, fashion_root, monkeypatch):
    out = tmp_path / "out"
    synced = []
    real = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    assert train(fashion_args(fashion_root, out, "--epochs", "1", "--max-steps", "1")) == 0
    assert str(out / "last.pt.tmp") in synced and str(out / "metrics.csv.tmp") in synced
    assert synced.count(str(out)) >= 2  # the directory, after each rename


# --- item 15: training errors ------------------------------------------------------------------


def test_train_without_validation_prints_no_nan(tmp_path, capsys):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=2)
    argv = ["--arch", "zfnet-fashion", "--data", data, "--batch-size", "2", "--epochs", "1"]
    assert train([*argv, "--no-progress", "--out", tmp_path / "out"]) == 0
    printed = capsys.readouterr().out
    assert "nan" not in printed and "val_loss" not in printed and "train_loss=" in printed
    assert rows(tmp_path / "out")[0]["val_acc"] == ""


def one_error_line(stderr: str, *fragments: str) -> None:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr
    assert lines[-1].startswith("error: ") or ": error: " in lines[-1], stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, stderr)


def test_train_user_errors_are_one_line(tmp_path, capsys, fashion_root):
    out = tmp_path / "out"
    assert train(fashion_args(fashion_root, out, "--epochs", "1", "--max-steps", "1")) == 0
    capsys.readouterr()
    # a damaged checkpoint
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "last.pt").write_bytes(b"not a checkpoint")
    assert train(fashion_args(fashion_root, tmp_path / "bad", "--resume")) == 2
    one_error_line(capsys.readouterr().err, "cannot read checkpoint", "last.pt")
    # a checkpoint of another model: 10 classes vs an image folder of 2
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=2)
    argv = ["--arch", "zfnet-fashion", "--data", data, "--batch-size", "2", "--resume"]
    assert train([*argv, "--out", out]) == 2
    one_error_line(capsys.readouterr().err, "does not fit", "fc8")
    # --out is a file
    (tmp_path / "file").write_text("x")
    assert train(fashion_args(fashion_root, tmp_path / "file")) == 2
    one_error_line(capsys.readouterr().err, "is a file")
    assert train(fashion_args(fashion_root, tmp_path / "file" / "sub")) == 2
    one_error_line(capsys.readouterr().err, "cannot be written")
    # an image folder of damaged files only
    bad = tmp_path / "damaged" / "cls"
    bad.mkdir(parents=True)
    (bad / "0.png").write_bytes(b"garbage")
    argv = ["--arch", "zfnet-fashion", "--data", bad.parent, "--out", tmp_path / "o2"]
    assert train(argv) == 2
    one_error_line(capsys.readouterr().err, "none of its 1 images can be read")


def test_train_skips_and_counts_a_damaged_image(tmp_path, capsys):
    data = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=2)
    (data / "b" / "broken.png").write_bytes(b"\x89PNG garbage")
    argv = ["--arch", "zfnet-fashion", "--data", data, "--batch-size", "2", "--epochs", "1"]
    assert train([*argv, "--no-progress", "--out", tmp_path / "out"]) == 0
    err = capsys.readouterr().err
    assert "warning: image folder" in err and "skipped 1 unreadable image(s) of 5" in err
    assert "broken.png" in err and rows(tmp_path / "out")[0]["step"] == "2"  # 4 good images


def test_train_errors_from_the_shell(tmp_path, fashion_root):
    (tmp_path / "file").write_text("x")
    proc = shell(["train", *fashion_args(fashion_root, tmp_path / "file")], tmp_path)
    assert proc.returncode == 2
    one_error_line(proc.stderr, "is a file")
    proc = shell(["train", *fashion_args(fashion_root, tmp_path / "file"), "--debug"], tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr


# --- item 12: the report with few classes, other orders, failing sections ----------------------


def gray_folder(root: Path, per_class: dict[str, np.ndarray]) -> Path:
    """Write uint8 ``(N, 28, 28)`` arrays as grayscale PNGs, one folder per key."""
    for name, images in per_class.items():
        (root / name).mkdir(parents=True)
        for i, pixels in enumerate(images):
            Image.fromarray(pixels, mode="L").save(root / name / f"{i:03d}.png")
    return root


def bundled_uint8(classes: list[int], per_class: int) -> dict[int, np.ndarray]:
    images, labels = load_eval_subset()
    return {
        c: (images[labels == c][:per_class, 0] * 255).round().to(torch.uint8).numpy()
        for c in classes
    }


def test_class_folders_map_to_the_models_class_names_and_keep_the_whole_image(tmp_path):
    # Trouser (1), Bag (8), Sneaker (7), T-shirt/top (0): sorted folder order differs
    picked = bundled_uint8([1, 8, 7, 0], per_class=25)
    names = {1: "trouser", 8: "Bag", 7: "sneaker", 0: "T-shirt_top"}
    root = gray_folder(tmp_path / "imgs", {names[c]: a for c, a in picked.items()})
    args = parse_args(["--out", str(tmp_path / "o"), "--images", str(root), "--input-size", "28"])
    args.folder_labels = True
    ctx = context_from_args(args)
    assert ctx.class_names == FASHION_MNIST_CLASSES
    # reference: the bundled tensors and labels, in the folders' sorted order
    order = sorted(names, key=lambda c: names[c])
    images, labels = load_eval_subset()
    want_x = torch.cat([images[labels == c][:25] for c in order])
    want_y = torch.cat([labels[labels == c][:25] for c in order])
    got_x, got_y = ctx.images()
    assert torch.equal(got_y, want_y)
    assert torch.equal(got_x, want_x)  # resize to the input size + centre crop: no rescaling
    model = load_reference()
    with torch.no_grad():
        want_acc = (model(want_x).argmax(1) == want_y).float().mean()
        got_acc = (ctx.model(got_x).argmax(1) == got_y).float().mean()
    assert got_acc == want_acc


def test_folders_that_name_no_model_class_are_rejected(tmp_path):
    root = gray_folder(
        tmp_path / "imgs", {"Trouser": bundled_uint8([1], 2)[1], "hat": bundled_uint8([2], 2)[2]}
    )
    args = parse_args(
        [
            "--out",
            str(tmp_path / "o"),
            "--images",
            str(root),
            "--input-size",
            "28",
            "--folder-labels",
        ]
    )
    with pytest.raises(ValueError, match=r"\['hat'\] name none of the model's classes"):
        context_from_args(args)


def two_class_model(path: Path) -> Path:
    torch.manual_seed(0)
    torch.save(zfnet_fashion(num_classes=2).state_dict(), path)
    return path


def test_ablation_section_with_two_classes_reports_top1_only(tmp_path):
    root = gray_folder(
        tmp_path / "imgs", {"a": bundled_uint8([0], 6)[0], "b": bundled_uint8([1], 6)[1]}
    )
    weights = two_class_model(tmp_path / "w.pt")
    argv = ["--out", str(tmp_path / "o"), "--model", "zfnet-fashion", "--num-classes", "2"]
    argv += ["--weights", str(weights), "--images", str(root), "--input-size", "28"]
    ctx = context_from_args(parse_args([*argv, "--folder-labels", "--quick", "--no-progress"]))
    ctx.out.mkdir()
    section = ablation_section(ctx, {})
    assert "top-1" in section.body and "top-5" not in section.body
    # reference: intact top-1 accuracy of the 12 images by hand
    x, y = ctx.images()
    with torch.no_grad():
        acc = 100 * (ctx.model(x).argmax(1) == y).float().mean().item()
    assert f"<td>intact</td><td>{acc:.2f}</td>" in section.body


def test_a_failing_section_does_not_lose_the_page(tmp_path):
    from deconvnet_attr.report.build import write_report

    ctx = context_from_args(parse_args(["--out", str(tmp_path / "o"), "--quick", "--no-progress"]))

    def broken_section(ctx, mined):
        raise RuntimeError("boom\nsecond line")

    result = write_report(ctx, sections=[overview_section, broken_section], mined={})
    page = result.index.read_text()
    assert result.failed == {"broken": "RuntimeError: boom second line"}
    assert "Overview" in page and "broken (failed)" in page and "boom second line" in page
    with pytest.raises(RuntimeError, match="boom"):
        write_report(ctx, sections=[broken_section], mined={}, raise_errors=True)


def test_report_exit_status_1_when_a_section_fails(tmp_path, capsys, monkeypatch):
    import deconvnet_attr.report.build as build

    def broken_section(ctx, mined):
        raise RuntimeError("boom")

    monkeypatch.setattr(build, "SECTIONS", [overview_section, broken_section])
    monkeypatch.setattr(build.write_report, "__defaults__", (build.SECTIONS, None, False))
    argv = ["report", "--out", tmp_path / "o", "--quick", "--no-progress", "--layers", "conv1"]
    assert command(argv) == 1
    assert "error: section 'broken' failed: RuntimeError: boom" in capsys.readouterr().err
    assert "Overview" in (tmp_path / "o" / "index.html").read_text()


# --- item 15: report errors --------------------------------------------------------------------


def test_report_user_errors_are_one_line(tmp_path, capsys):
    out = ["--out", tmp_path / "o", "--quick", "--no-progress"]
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not torch")
    wrong = tmp_path / "wrong.pt"
    torch.save(nn.Linear(2, 2).state_dict(), wrong)
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    damaged = tmp_path / "damaged"
    (damaged / "cls").mkdir(parents=True)
    (damaged / "cls" / "x.png").write_bytes(b"garbage")
    (tmp_path / "file").write_text("x")
    cases = [
        (["--weights", junk], "cannot load model file"),
        (["--model", "zfnet-fashion", "--weights", junk], "cannot read weights file"),
        (["--model", "zfnet-fashion", "--weights", wrong], "does not fit the model"),
        (["--model", "os:getcwd"], "returned a str, not a torch.nn.Module"),
        (["--model", "no-such-net"], "unknown model 'no-such-net'"),
        (["--images", empty], "holds no images"),
        (["--images", damaged], "none of its 1 images can be read"),
    ]
    for extra, message in cases:
        assert command(["report", *out, *extra]) == 2, extra
        one_error_line(capsys.readouterr().err, message)
    for bad_out, message in [
        (tmp_path / "file", "is a file"),
        (tmp_path / "file" / "s", "cannot be written"),
    ]:
        assert command(["report", "--out", bad_out, "--quick"]) == 2
        one_error_line(capsys.readouterr().err, message)
    assert command(["report", *out, "--k", "0"]) == 2
    one_error_line(capsys.readouterr().err, "--k must be positive, got 0")


def test_report_skips_and_counts_a_damaged_image(tmp_path, capsys):
    root = gray_folder(tmp_path / "imgs", {"Trouser": bundled_uint8([1], 3)[1]})
    (root / "Trouser" / "bad.png").write_bytes(b"garbage")
    argv = ["--out", str(tmp_path / "o"), "--images", str(root), "--input-size", "28"]
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        ctx = context_from_args(parse_args([*argv, "--folder-labels"]))
    assert len(ctx.data) == 3 and "(1 unreadable images skipped)" in ctx.data_name


def test_report_errors_from_the_shell(tmp_path):
    proc = shell(["report", "--out", tmp_path / "o", "--model", "no-such-net"], tmp_path)
    assert proc.returncode == 2
    one_error_line(proc.stderr, "unknown model 'no-such-net'")
    proc = shell(["report", "--out", tmp_path / "o", "--k", "0", "--quick"], tmp_path)
    assert proc.returncode == 2
    one_error_line(proc.stderr, "--k must be positive, got 0")
    proc = shell(["report", "--out", tmp_path / "o", "--model", "no-such-net", "--debug"], tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr
