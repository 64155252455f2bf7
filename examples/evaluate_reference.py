"""Evaluate the bundled reference model on the full Fashion-MNIST test set.

Prints a markdown summary (overall top-1, per-class accuracy) and writes
``reference-confusion.png`` and, given ``--metrics``, ``reference-training.png`` into ``--figures``.

    python examples/evaluate_reference.py --metrics runs/reference/metrics.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

from deconvnet_attr.data import FASHION_MNIST_CLASSES, load_fashion_mnist  # noqa: E402
from deconvnet_attr.models import load_model, load_reference  # noqa: E402


def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(chunk).argmax(1) for chunk in x.split(1000)])


def plot_confusion(matrix, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(10), FASHION_MNIST_CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(10), FASHION_MNIST_CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(10):
        for j in range(10):
            ax.text(
                j,
                i,
                matrix[i, j],
                ha="center",
                va="center",
                fontsize=7,
                color="white" if matrix[i, j] > matrix.max() / 2 else "black",
            )
    fig.colorbar(im, ax=ax)
    ax.set_title("Reference zfnet-fashion: confusion matrix (10k test images)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(metrics: Path, path: Path) -> None:
    rows = list(csv.DictReader(open(metrics)))
    epochs = [int(r["epoch"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [float(r["train_acc"]) for r in rows], "o-", label="train (augmented, dropout)")
    ax.plot(epochs, [float(r["val_acc"]) for r in rows], "s-", label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Reference zfnet-fashion training")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="model file (default: the bundled reference)")
    parser.add_argument("--metrics", type=Path, help="metrics.csv of the training run")
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))
    args = parser.parse_args()
    model = load_model(args.model) if args.model else load_reference()
    x, y = load_fashion_mnist("test")
    pred = predict(model, x)
    matrix = confusion_matrix(y.numpy(), pred.numpy(), labels=range(10))
    print(f"top-1 accuracy on the {len(y)} test images: {(pred == y).float().mean():.4f}\n")
    print("| class | accuracy |\n|---|---|")
    for c, name in enumerate(FASHION_MNIST_CLASSES):
        print(f"| {name} | {matrix[c, c] / matrix[c].sum():.3f} |")
    args.figures.mkdir(parents=True, exist_ok=True)
    plot_confusion(matrix, args.figures / "reference-confusion.png")
    if args.metrics:
        plot_training(args.metrics, args.figures / "reference-training.png")


if __name__ == "__main__":
    main()
