"""Correspondence analysis (Zeiler & Fergus 2013, Sec. 5.3 / Table 1) on the bundled reference.

    python examples/correspondence.py                    # writes analysis-correspondence.png
    python examples/correspondence.py --layers conv5 fc7 --sets 10 --out fig.png

For each part of :data:`FASHION_MNIST_PARTS` (a 6×6 box on the same garment region of one class —
shirt collar, T-shirt sleeve, trouser waistband, sneaker toe, ankle-boot heel, bag corner), 5
images of the class are drawn (``--sets`` times), the box is blacked out in each, and
Δ = mean pairwise normalised Hamming distance between the signs of the feature changes is computed
at two layers; controls: random boxes of the same size (one per image, and one shared by all
images). Prints the table (mean ± std, Markdown) and writes the figure. Offline, a few seconds.
"""

from __future__ import annotations

import argparse

import matplotlib
import torch

from deconvnet_attr import correspondence_table
from deconvnet_attr.analysis.correspondence import correspondence_markdown
from deconvnet_attr.data import load_eval_subset
from deconvnet_attr.models import load_reference
from deconvnet_attr.viz import plot_correspondence

matplotlib.use("Agg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", default=["relu5", "relu7"])  # the paper's
    parser.add_argument("--sets", type=int, default=5, help="image sets per part")
    parser.add_argument("--random", type=int, default=10, help="random boxes per image set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="analysis-correspondence.png")
    args = parser.parse_args()

    model = load_reference()
    images, labels = load_eval_subset()
    table = correspondence_table(
        model, images, labels, args.layers, n_sets=args.sets, n_random=args.random, seed=args.seed
    )
    print(correspondence_markdown(table))
    fig = plot_correspondence(table, images, labels)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
