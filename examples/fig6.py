"""Fig. 6 from the shipped models: the filter figure and the table of docs/fig6.md.

Usage: python examples/fig6.py [--figure docs/figures/fig6_filters.png] [--threads 1]

Measures the four Fig. 6 models (AlexNet 11x11/4 vs ZFNet 7x7/2 stem, feature-scale clipping on
and off) on the bundled 1,000-image Fashion-MNIST eval subset, upsampled 4x to 112 px, prints the
table as markdown and the per-filter conv1 tables, and writes the figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from deconvnet_attr.analysis.filters import filter_diagnostics, layer_activations
from deconvnet_attr.data import load_eval_subset, upsample_images
from deconvnet_attr.fig6 import FIG6_UPSAMPLE, fig6_summary, load_fig6_models


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--figure", type=Path, default=Path("docs/figures/fig6_filters.png"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--per-filter", action="store_true", help="also print per-filter tables")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    models = load_fig6_models()
    images, labels = load_eval_subset()
    figure, table = fig6_summary(models, images, labels)
    print(table.to_markdown())
    if args.per_filter:
        big = upsample_images(images, FIG6_UPSAMPLE)
        for name, model in models.items():
            acts = layer_activations(model, "relu1", big)
            print(f"\n### {name}\n")
            print(filter_diagnostics(model.conv1, acts, name=f"{name} conv1").to_markdown())
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.figure, dpi=110)
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
