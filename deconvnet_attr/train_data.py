"""Training data for ``deconvnet-attr train``: the ``--data`` sets and the tensor augmentation.

:func:`load_data` turns ``--data`` (Fashion-MNIST from the Debian idx files, optionally upsampled
for the Fig. 6 stems, or an ImageFolder tree) into a :class:`Data`; :func:`translate_flip` is the
per-batch augmentation of the tensor data sets.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from .data import (
    FASHION_MNIST_CLASSES,
    UpsampledImages,
    image_folder,
    image_folder_transform,
    load_fashion_mnist,
)
from .models.reference import ARCH_CONFIGS

__all__ = ["Data", "load_data", "translate_flip"]


@dataclass
class Data:
    """Training/validation sets, class names and an optional per-batch augmentation."""

    train: Dataset
    val: Dataset | None
    classes: tuple[str, ...]
    tensor_augment: bool


def load_data(args: argparse.Namespace) -> Data:
    """Load ``--data`` for ``--arch``; raises before training on a missing or empty data set."""
    spec = ARCH_CONFIGS[args.arch]
    if args.data == "fashion-mnist":
        factor = args.upsample
        if factor is None:
            factor = spec.input_size // 28 if spec.input_size % 28 == 0 else 1
        if (spec.in_channels, spec.input_size) != (1, 28 * factor):
            raise ValueError(
                f"--data fashion-mnist holds 1x28x28 images (x{factor} = {28 * factor} px); "
                f"--arch {args.arch} expects "
                f"{spec.in_channels}x{spec.input_size}x{spec.input_size} "
                "(use --arch zfnet-fashion)"
            )
        root = {} if args.fashion_root is None else {"root": args.fashion_root}
        train_x, train_y = load_fashion_mnist("train", **root)
        if args.train_subset is not None:
            train_x, train_y = train_x[: args.train_subset], train_y[: args.train_subset]
        test_x, test_y = load_fashion_mnist("test", **root)
        if factor == 1:
            return Data(
                TensorDataset(train_x, train_y),
                TensorDataset(test_x, test_y),
                FASHION_MNIST_CLASSES,
                tensor_augment=True,
            )
        return Data(
            UpsampledImages(train_x, train_y, factor),
            UpsampledImages(test_x, test_y, factor),
            FASHION_MNIST_CLASSES,
            tensor_augment=True,
        )
    path = Path(args.data)
    if not path.is_dir():
        raise FileNotFoundError(f"--data: directory not found: {path}")
    train_dir = path / "train" if (path / "train").is_dir() else path
    val_dir = path / "val" if train_dir != path and (path / "val").is_dir() else None
    train = image_folder(train_dir, image_folder_transform(spec.input_size, spec.in_channels, True))
    val = None
    if val_dir is not None:
        val_tf = image_folder_transform(spec.input_size, spec.in_channels, False)
        val = image_folder(val_dir, val_tf)
        if val.classes != train.classes:
            raise ValueError(f"{val_dir} classes {val.classes} differ from {train_dir} classes")
    return Data(train, val, tuple(train.classes), tensor_augment=False)


def translate_flip(x: torch.Tensor, generator: torch.Generator, shift: int = 2) -> torch.Tensor:
    """Random horizontal flip and random translation by up to ``shift`` pixels (zero fill).

    ``x``: ``(N, C, H, W)``; each image gets its own flip and offset. Returns a new tensor.
    """
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    padded = F.pad(x, (shift, shift, shift, shift))
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
