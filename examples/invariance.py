"""Invariance curves (Zeiler & Fergus 2013, Fig. 5) on the bundled reference model.

    python examples/invariance.py                        # writes analysis-invariance.png
    python examples/invariance.py --layers relu1 relu7 --classes 0 1 7 8 9 --out fig.png

One image per chosen class of the bundled Fashion-MNIST evaluation subset (the first of each;
default FASHION_MNIST_FIG5_CLASSES, the report's five images) is
shifted vertically (±8 px), scaled (0.5 … 1.5) and rotated (0 … 360°), the uncovered pixels
painted black (the background). The figure plots the Euclidean distance between the original and
transformed image's feature vectors at a low and a high layer, and the true-class probability.
Prints the largest distance per layer and transform. Offline, about a second on CPU.
"""

from __future__ import annotations

import argparse

import matplotlib
import torch

from deconvnet_attr import invariance_curves
from deconvnet_attr.analysis.invariance import FASHION_MNIST_FIG5_CLASSES, first_of_classes
from deconvnet_attr.data import load_eval_subset
from deconvnet_attr.models import load_reference
from deconvnet_attr.viz import plot_invariance

matplotlib.use("Agg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", default=["conv1", "fc7"])
    parser.add_argument("--classes", type=int, nargs="+", default=list(FASHION_MNIST_FIG5_CLASSES))
    parser.add_argument("--out", default="analysis-invariance.png")
    args = parser.parse_args()

    model = load_reference()
    images, labels = load_eval_subset()
    picks = first_of_classes(labels, args.classes)
    images, labels = images[picks], labels[picks]
    result = invariance_curves(model, images, labels, args.layers)

    print(
        "| transform | "
        + " | ".join(f"max {layer} distance" for layer in result.layers)
        + " | min P(true class) |"
    )
    print("|---|" + "---|" * (len(result.layers) + 1))
    for name, curve in result.curves.items():
        cells = [
            f"{float(curve.distances[layer].max(1).values.mean()):.2f}" for layer in result.layers
        ]
        lowest = ", ".join(
            f"{model.class_names[int(c)]} {float(p):.2f}"
            for c, p in zip(labels, curve.probability.min(1).values, strict=True)
        )
        print(f"| {name} | " + " | ".join(cells) + f" | {lowest} |")
    fig = plot_invariance(result, images, model.class_names, all_strips=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
