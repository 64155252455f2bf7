"""The command line of ``deconvnet-attr train``: its flags and the per-arch defaults.

:func:`parse_args` parses and checks the flags; :data:`ARCH_DEFAULTS` fills those left unset (the
paper's recipe for ``zfnet``, a two-core budget for the Fashion-MNIST models).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .models.reference import ARCHS
from .models.zfnet import REMOVABLE_LAYERS, WIDENABLE_LAYERS

__all__ = ["ARCH_DEFAULTS", "parse_args"]

# Per-arch defaults for flags left unset: the paper's recipe for zfnet, a 2-core budget for fashion.
ARCH_DEFAULTS = {
    "zfnet": {
        "epochs": 70,
        "batch_size": 128,
        "lr": 1e-2,
        "weight_decay": 5e-4,
        "schedule": "plateau",
        "snapshot_epochs": "1,2,5,10,20,30,40,64",
    },
    "zfnet-fashion": {
        "epochs": 12,
        "batch_size": 128,
        "lr": 5e-2,
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "snapshot_epochs": "1,2,5",
    },
}
# The Fig. 6 stems (docs/fig6.md) train on Fashion-MNIST upsampled 4x with the fashion recipe.
for _arch in ("fig6-alexnet-stem", "fig6-zfnet-stem"):
    ARCH_DEFAULTS[_arch] = ARCH_DEFAULTS["zfnet-fashion"] | {"epochs": 1, "snapshot_epochs": ""}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line; per-arch defaults fill flags left unset."""
    p = argparse.ArgumentParser(
        prog="deconvnet-attr train", description="Train ZFNet or its Fashion-MNIST variant."
    )
    p.add_argument("--arch", required=True, help=f"one of {', '.join(ARCHS)}")
    p.add_argument(
        "--data",
        default="fashion-mnist",
        help="'fashion-mnist' (Debian idx files) or an ImageFolder PATH (PATH/train and "
        "PATH/val if present, else PATH itself for training only)",
    )
    p.add_argument(
        "--fashion-root",
        default=None,
        help="directory of the Fashion-MNIST idx files (default: the Debian location)",
    )
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="per-process batch size")
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float)
    p.add_argument(
        "--schedule",
        choices=("plateau", "cosine"),
        help="plateau: lr x0.1 after --patience epochs without val gain; "
        "cosine: linear warm-up, then cosine decay per step",
    )
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--warmup-steps", type=int, default=200, help="linear warm-up (cosine only)")
    p.add_argument(
        "--clip-rms", type=float, default=0.1, help="feature-scale clipping radius; 0 disables"
    )
    p.add_argument(
        "--remove",
        default="",
        help=f"comma-separated layers to leave out ({', '.join(REMOVABLE_LAYERS)})",
    )
    p.add_argument(
        "--width",
        default="",
        help="comma-separated LAYER=N: output channels or units of "
        f"{', '.join(WIDENABLE_LAYERS)} (Table 3's width rows, e.g. fc6=192,fc7=192)",
    )
    p.add_argument(
        "--shift",
        type=int,
        default=0,
        help="Fashion-MNIST augmentation: random translation of up to this many pixels "
        "(random horizontal flips are always applied)",
    )
    p.add_argument(
        "--upsample",
        type=int,
        default=None,
        help="Fashion-MNIST only: bilinear upsampling factor (default: input size / 28, so 4 "
        "for the fig6-* archs)",
    )
    p.add_argument(
        "--train-subset",
        type=int,
        default=None,
        help="Fashion-MNIST only: train on the first N training images (the test set is whole)",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this many optimiser steps in total (smoke tests)",
    )
    p.add_argument("--snapshot-epochs", help="comma-separated epochs to save fp16 model files at")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (ImageFolder)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)

    if args.arch not in ARCHS:
        p.error(f"unknown arch {args.arch!r}; choose one of {', '.join(ARCHS)}")
    for key, value in ARCH_DEFAULTS[args.arch].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("epochs", "batch_size"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if args.max_steps is not None and args.max_steps < 1:
        p.error(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.shift < 0:
        p.error(f"--shift must be >= 0, got {args.shift}")
    if args.upsample is not None and args.upsample < 1:
        p.error(f"--upsample must be >= 1, got {args.upsample}")
    if args.train_subset is not None and args.train_subset < 1:
        p.error(f"--train-subset must be >= 1, got {args.train_subset}")
    if args.clip_rms < 0:
        p.error(f"--clip-rms must be >= 0, got {args.clip_rms}")
    args.remove = tuple(n for n in args.remove.split(",") if n)
    for name in args.remove:
        if name not in REMOVABLE_LAYERS:
            p.error(f"--remove: cannot remove {name!r}; removable: {', '.join(REMOVABLE_LAYERS)}")
    args.width = _parse_width(p, args.width)
    try:
        args.snapshot_epochs = {int(e) for e in args.snapshot_epochs.split(",") if e}
    except ValueError:
        p.error(f"--snapshot-epochs must be comma-separated integers, got {args.snapshot_epochs!r}")
    return args


def _parse_width(p: argparse.ArgumentParser, text: str) -> dict[str, int]:
    """``"fc6=192,fc7=192"`` -> ``{"fc6": 192, "fc7": 192}``; bad items end with ``p.error``."""
    width: dict[str, int] = {}
    for item in (i for i in text.split(",") if i):
        name, sep, value = item.partition("=")
        if name not in WIDENABLE_LAYERS:
            p.error(
                f"--width: cannot set the width of {name!r}; widenable: "
                f"{', '.join(WIDENABLE_LAYERS)}"
            )
        if not sep or not value.isdigit() or int(value) < 1:
            p.error(f"--width: {item!r} must be LAYER=N with an integer N >= 1")
        width[name] = int(value)
    return width
