"""Tests for deconvnet_attr.data: idx reader, Fashion-MNIST loading, eval subset, ImageFolder."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from deconvnet_attr.data import (
    DEFAULT_DEBIAN_DIR,
    FASHION_MNIST_CLASSES,
    image_folder,
    image_folder_transform,
    load_eval_subset,
    load_fashion_mnist,
    read_idx,
)

DEBIAN_FILES = [
    DEFAULT_DEBIAN_DIR / f for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
]
needs_debian = pytest.mark.skipif(
    not all(p.is_file() for p in DEBIAN_FILES),
    reason="dataset-fashion-mnist (Debian) not installed",
)


def write_idx(path, array: np.ndarray, type_code: int, big_endian_dtype: str) -> None:
    """Hand-written idx encoder: magic (0, 0, type, ndim), big-endian dims, big-endian data."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(big_endian_dtype).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def write_fashion_root(root, n_train: int = 64, n_test: int = 32, seed: int = 0):
    """A tiny synthetic stand-in for the Debian directory (same file names and format)."""
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images, 0x08, "u1")
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels, 0x08, "u1")
    return root


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype, code", [("u1", 0x08), (">i4", 0x0C), (">f4", 0x0D)])
def test_read_idx_matches_hand_encoded(tmp_path, name, dtype, code):
    array = (np.arange(2 * 3 * 5).reshape(2, 3, 5) * 7 % 251).astype(dtype)
    write_idx(tmp_path / name, array, code, dtype)
    out = read_idx(tmp_path / name)
    assert out.shape == (2, 3, 5)
    np.testing.assert_array_equal(out, array.astype(array.dtype.newbyteorder("=")))


def test_read_idx_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.idx"):
        read_idx(tmp_path / "nowhere.idx")
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "bad.idx")
    write_idx(tmp_path / "short.idx", np.zeros((4, 4), np.uint8), 0x08, "u1")
    (tmp_path / "short.idx").write_bytes((tmp_path / "short.idx").read_bytes()[:-3])
    with pytest.raises(ValueError, match="bytes"):
        read_idx(tmp_path / "short.idx")


def test_load_fashion_mnist_synthetic_root(tmp_path):
    write_fashion_root(tmp_path, n_train=20, n_test=10)
    x, y = load_fashion_mnist("train", root=tmp_path)
    assert x.shape == (20, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (20,) and y.dtype == torch.int64
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read()[16:], np.uint8).reshape(20, 28, 28)
    torch.testing.assert_close(x[:, 0], torch.from_numpy(raw.astype(np.float32) / 255.0))
    torch.testing.assert_close(y, torch.arange(20) % 10)


def test_load_fashion_mnist_missing_names_path_and_apt(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_fashion_mnist("test", root=tmp_path / "absent")
    assert str(tmp_path / "absent" / "t10k-images-idx3-ubyte.gz") in str(err.value)
    assert "apt-get install -y dataset-fashion-mnist" in str(err.value)
    with pytest.raises(ValueError, match="'validation'"):
        load_fashion_mnist("validation", root=tmp_path)


def test_eval_subset_is_class_balanced():
    x, y = load_eval_subset()
    assert x.shape == (1000, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
    assert torch.bincount(y, minlength=10).tolist() == [100] * 10
    assert len(FASHION_MNIST_CLASSES) == 10


@needs_debian
def test_eval_subset_is_first_100_test_images_per_class():
    with gzip.open(DEBIAN_FILES[0]) as f:
        images = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 28, 28)
    with gzip.open(DEBIAN_FILES[1]) as f:
        labels = np.frombuffer(f.read()[8:], np.uint8)
    picked = np.sort(np.concatenate([np.flatnonzero(labels == c)[:100] for c in range(10)]))
    x, y = load_eval_subset()
    np.testing.assert_array_equal(y.numpy(), labels[picked])
    np.testing.assert_array_equal((x[:, 0] * 255).round().to(torch.uint8).numpy(), images[picked])


def make_image_folder(root, classes=("cat", "dog"), per_class=2, size=(40, 30)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


def test_image_folder_and_transform(tmp_path):
    make_image_folder(tmp_path)
    ds = image_folder(tmp_path, image_folder_transform(28, 1, train=True))
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    x, label = ds[3]
    assert x.shape == (1, 28, 28) and label == 1 and 0 <= x.min() and x.max() <= 1
    rgb = image_folder(tmp_path, image_folder_transform(224, 3, train=False))
    assert rgb[0][0].shape == (3, 224, 224)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no images"):
        image_folder(tmp_path / "empty")


def test_folder_labels_by_name_by_number_or_sorted():
    from deconvnet_attr.data import folder_labels

    names = ("T-shirt/top", "Trouser", "Ankle boot")
    assert folder_labels(["ankle_boot", "t-shirt_top"], names, 3) == [2, 0]
    assert folder_labels(["10", "2"], None, 11) == [10, 2]  # not the sorted positions 0, 1
    assert folder_labels(["cat", "dog"], None, 5) == [0, 1]
    with pytest.raises(ValueError, match="'hat'"):
        folder_labels(["hat", "Trouser"], names, 3)
    with pytest.raises(ValueError, match="3 outputs"):
        folder_labels(["a", "b", "c", "d"], None, 3)
