"""The paper's layer studies on the reference model: ablation (Table 3) and linear probes (Table 7).

Writes markdown tables (also collected in OUT/results.md), CSV files and bar charts into --out::

    python examples/ablation_study.py --out runs/ablation --data test \
        --retrained intact=runs/retrain/intact/model_final.pt \
        --retrained no-fc6-fc7=runs/retrain/no-fc6-fc7/model_final.pt \
        --probe

--data subset (the bundled 1,000 test images) needs nothing else; --data test and --probe need
the Fashion-MNIST idx files (Debian package dataset-fashion-mnist). The probe's second data set
is scikit-learn's bundled 8x8 digits, bilinearly resized to 28x28.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from deconvnet_attr import LayerAblation
from deconvnet_attr.ablation import reference_ablation
from deconvnet_attr.analysis.probe import fit_linear_probe, linear_probe
from deconvnet_attr.data import load_eval_subset, load_fashion_mnist
from deconvnet_attr.evaluation import accuracy_table
from deconvnet_attr.models.reference import load_model, load_reference
from deconvnet_attr.viz import plot_accuracy_table

matplotlib.use("Agg")

# The output of each of the paper's layers 1-7 (after ReLU, pooling, normalisation).
PROBE_LAYERS = {
    "layer 1 (norm1)": "norm1",
    "layer 2 (norm2)": "norm2",
    "layer 3 (relu3)": "relu3",
    "layer 4 (relu4)": "relu4",
    "layer 5 (pool5)": "pool5",
    "layer 6 (relu6)": "relu6",
    "layer 7 (relu7)": "relu7",
}
SHAPE_KEEPING_GROUPS = {"conv4": ("conv4",), "fc7": ("fc7",), "conv4+fc7": ("conv4", "fc7")}
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


def digits_28(seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """scikit-learn's 8x8 digits as (N, 1, 28, 28) images in [0, 1]; stratified 50/50 split."""
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    images = F.interpolate(images, size=28, mode="bilinear", align_corners=False).clamp(0, 1)
    labels = torch.tensor(digits.target)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.5, random_state=seed, stratify=digits.target
    )
    return (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])


class Writer:
    """Collects titled markdown tables into results.md; CSVs and figures beside it."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.sections: list[str] = []

    def table(self, stem: str, title: str, table, chart: bool = False) -> None:
        (self.out / f"{stem}.csv").write_text(table.to_csv())
        self.sections.append(f"### {title}\n\n{table.to_markdown()}\n")
        if chart:
            plot_accuracy_table(table, title=title).savefig(self.out / f"{stem}.png", dpi=120)
        print(self.sections[-1], flush=True)

    def close(self) -> None:
        (self.out / "results.md").write_text("\n".join(self.sections))


def layer_drops(model, data, batch_size: int = 500) -> str:
    """Mean drop of the true-class probability when each layer is zeroed / removed (identity)."""

    def probabilities(x):
        return model(x).softmax(dim=1)

    layers = [model.get_submodule(name) for name in LAYERS]
    keeps_shape = [name in ("conv4", "fc7") for name in LAYERS]
    shaped = [m for m, keep in zip(layers, keeps_shape, strict=True) if keep]
    zeroing, removing = LayerAblation(probabilities, layers), LayerAblation(probabilities, shaped)
    zero, identity, n = torch.zeros(len(LAYERS)), torch.zeros(len(LAYERS)), 0
    for start in range(0, len(data[0]), batch_size):
        x, y = data[0][start : start + batch_size], data[1][start : start + batch_size]
        zero += zeroing.attribute(x, target=y, perturbations_per_eval=4).sum(0)
        ident = removing.attribute(x, target=y, baselines="identity", perturbations_per_eval=2)
        identity[torch.tensor(keeps_shape)] += ident.sum(0)
        n += len(x)
    rows = ["| layer | zeroed: drop of p(true class) | removed (identity) |", "|---|---|---|"]
    for i, name in enumerate(LAYERS):
        ident = f"{identity[i] / n:.3f}" if keeps_shape[i] else "shape changes"
        rows.append(f"| {name} | {zero[i] / n:.3f} | {ident} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--data",
        choices=("subset", "test"),
        default="subset",
        help="evaluation data: the bundled 1,000-image subset or the 10k test set",
    )
    p.add_argument(
        "--retrained",
        action="append",
        default=[],
        metavar="NAME=MODEL_FILE",
        help="retrained variants to compare (first one is the reference row)",
    )
    p.add_argument(
        "--no-reference", action="store_true", help="skip the reference model's ablation tables"
    )
    p.add_argument("--probe", action="store_true", help="run the linear probes")
    p.add_argument(
        "--probe-train",
        type=int,
        default=10000,
        help="Fashion-MNIST training images for the probe (first N)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = load_eval_subset() if args.data == "subset" else load_fashion_mnist("test")
    what = f"{len(data[0])} Fashion-MNIST test images"
    writer = Writer(args.out)
    with torch.no_grad():
        for baselines in () if args.no_reference else ("mean", 0.0):
            table = reference_ablation(baselines, data=data)
            writer.table(
                f"ablation-{baselines}",
                f"Reference, layers ablated (baselines={baselines!r}), {what}",
                table,
                chart=True,
            )
        if not args.no_reference:
            table = reference_ablation("identity", SHAPE_KEEPING_GROUPS, data)
            title = f"Reference, layers removed (identity), {what}"
            writer.table("ablation-identity", title, table, chart=True)
            drops = layer_drops(load_reference(), data)
            writer.sections.append(f"### LayerAblation per layer, {what}\n\n{drops}\n")
            print(writer.sections[-1], flush=True)
        if args.retrained:
            models = dict(item.split("=", 1) for item in args.retrained)
            models = {name: load_model(path) for name, path in models.items()}
            table = accuracy_table(models, data)
            writer.table("retrained", f"Retrained variants, {what}", table, chart=True)
    if args.probe:
        model = load_reference()
        layers = {name: model.get_submodule(child) for name, child in PROBE_LAYERS.items()}
        train_x, train_y = load_fashion_mnist("train")
        fashion_train = (train_x[: args.probe_train], train_y[: args.probe_train])
        fashion_test = load_fashion_mnist("test")
        datasets = {"fashion": (fashion_train, fashion_test), "digits": digits_28()}
        for name, (train, test) in datasets.items():
            table = linear_probe(model, layers, train, test, pool_size=2)
            pixels = fit_linear_probe(
                train[0].flatten(1).numpy(),
                train[1].numpy(),
                test[0].flatten(1).numpy(),
                test[1].numpy(),
            )
            table.rows.insert(0, ("pixels (input)", train[0][0].numel(), *pixels))
            writer.table(
                f"probe-{name}",
                f"Linear probe on {name}: {len(train[1])} train / {len(test[1])} test images",
                table,
            )
    writer.close()


if __name__ == "__main__":
    main()
