"""``deconvnet-attr transfer``: the paper's generalisation experiment (Tables 4-7, Fig. 9).

Freezes a ZFNet's layers 1..k (:data:`~deconvnet_attr.report.paper_sections.PAPER_LAYERS`, or
``--layers``), fits a softmax and a linear SVM on layer k's features of n images per class of a
second data set and trains the architecture from scratch on the same images
(:func:`deconvnet_attr.analysis.transfer.transfer`). Writes into ``--out``: ``table7.md`` and
``table7.csv`` (Table 7's layout at the largest n), ``transfer.csv`` (every n, layer, classifier
and draw) and ``fig9-transfer.png`` (accuracy against n).

Data (``--data``): ``digits`` is scikit-learn's bundled 8x8 digits (a stratified half for
testing); ``fashion-heldout`` is the Fashion-MNIST *test* split (never trained on) restricted to
``--classes``, split in half per class, so the frozen features are tested on unseen images of
known classes (an easier task than the paper's new data sets; say so when quoting it).
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .analysis.transfer import CLASSIFIERS, TransferResult, digits_data, transfer
from .cli import writable_dir
from .data import DEFAULT_DEBIAN_DIR, load_fashion_mnist
from .models import ZFNet, create_model, load_model, load_reference
from .models.zfnet import build_zfnet

__all__ = ["fashion_heldout_data", "main", "parse_args"]

DATA_CHOICES = ("digits", "fashion-heldout")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Arguments of ``deconvnet-attr transfer``."""
    p = argparse.ArgumentParser(
        prog="deconvnet-attr transfer",
        description="Frozen layers + softmax / linear SVM on a new data set (Tables 4-7, Fig. 9).",
    )
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument(
        "--model",
        default=None,
        help="a deconvnet-attr arch or model file (default: the bundled reference model)",
    )
    p.add_argument("--checkpoint", type=Path, help="a model file or training checkpoint to load")
    p.add_argument("--data", default="digits", choices=DATA_CHOICES)
    p.add_argument("--fashion-root", type=Path, default=DEFAULT_DEBIAN_DIR)
    p.add_argument(
        "--classes", default="0,1,2,3,4", help="fashion-heldout: comma-separated class indices"
    )
    p.add_argument(
        "--per-class", default="1,2,5,10,20,50", help="comma-separated n (training images/class)"
    )
    p.add_argument("--repeats", type=int, default=5, help="random draws per n (the paper: 5)")
    p.add_argument("--layers", help="comma-separated layer names (default: layers 1..7)")
    p.add_argument("--pool-size", type=int, default=2, help="average pooling; 0 keeps unpooled")
    p.add_argument("--scratch-steps", type=int, default=150, help="0 skips the from-scratch row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p.parse_args(argv)


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag} is empty")
    return values


def fashion_heldout_data(
    classes: Sequence[int], root: Path = DEFAULT_DEBIAN_DIR, seed: int = 0
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The Fashion-MNIST test split's images of ``classes``, relabelled 0..len-1 in that order,
    halved per class (``seed``-fixed) into ``(train, test)`` pairs of ``(N, 1, 28, 28)`` images
    in [0, 1] and ``(N,)`` labels."""
    if len(set(classes)) != len(classes) or any(not 0 <= c <= 9 for c in classes):
        raise ValueError(f"--classes must be distinct indices in 0..9, got {list(classes)}")
    images, labels = load_fashion_mnist("test", root)
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for new, c in enumerate(classes):
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        half = len(members) // 2
        train.append((members[half:], new))
        test.append((members[:half], new))

    def gather(parts):
        index = torch.cat([m for m, _ in parts])
        return images[index], torch.cat([torch.full((len(m),), n) for m, n in parts])

    return gather(train), gather(test)


def _model(args: argparse.Namespace) -> ZFNet:
    """The frozen model: a ZFNet (its config rebuilds the from-scratch copy)."""
    if args.checkpoint is not None:
        model: nn.Module = load_model(args.checkpoint)
    elif args.model is None:
        model = load_reference()
    else:
        model = create_model(args.model).eval()
    if not isinstance(model, ZFNet):
        raise ValueError(f"--model {args.model!r} is not a deconvnet-attr ZFNet arch or file")
    return model


def _write(result: TransferResult, out: Path) -> None:
    (out / "table7.md").write_text(result.to_markdown() + "\n")
    with open(out / "table7.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(result.records())
    with open(out / "transfer.csv", "w", newline="") as f:
        rows = csv.writer(f, lineterminator="\n")
        rows.writerow(["per_class", "draw", "classifier", "layer", "accuracy (%)"])
        repeats = next(iter(next(iter(result.accuracy.values())).values())).shape[1]
        for i, n in enumerate(result.per_class):
            for r in range(repeats):
                for kind, by_layer in result.accuracy.items():
                    for layer, acc in by_layer.items():
                        rows.writerow([n, r, kind, layer, f"{acc[i, r]:.2f}"])
                if result.scratch is not None:
                    rows.writerow([n, r, "from scratch", "-", f"{result.scratch[i, r]:.2f}"])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; user errors raise (``deconvnet-attr`` prints one ``error:`` line)."""
    from .report.paper_sections import PAPER_LAYERS
    from .viz import plot_transfer

    args = parse_args(argv)
    per_class = _ints(args.per_class, "--per-class")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.scratch_steps < 0 or args.pool_size < 0:
        raise ValueError(
            f"--scratch-steps/--pool-size must be >= 0, got {args.scratch_steps}, {args.pool_size}"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    model = _model(args)
    shape = (model.in_channels, model.input_size, model.input_size)
    if args.data == "digits":
        train, test = digits_data(shape, seed=args.seed)
    else:
        train, test = fashion_heldout_data(_ints(args.classes, "--classes"), args.fashion_root)
    writable_dir(args.out)
    layers = {n: n for n in args.layers.split(",") if n} if args.layers else dict(PAPER_LAYERS)
    started = time.time()
    classes = int(train[1].max()) + 1
    config, removed = model.config, model.removed
    result = transfer(
        model,
        layers,
        train,
        test,
        per_class=per_class,
        classifiers=CLASSIFIERS,
        repeats=args.repeats,
        pool_size=args.pool_size or None,
        scratch=(lambda: build_zfnet(config, classes, removed)) if args.scratch_steps else None,
        scratch_steps=args.scratch_steps or 150,
        seed=args.seed,
    )
    _write(result, args.out)
    plot_transfer(result, f"{args.data}: {len(test[1])} test images").savefig(
        args.out / "fig9-transfer.png", dpi=110
    )
    print(result.to_markdown())
    print(f"wrote {args.out} in {time.time() - started:.1f} s")
    return 0
