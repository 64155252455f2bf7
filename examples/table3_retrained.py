"""Table 3 with retraining: collect the retrained variants' results into the shipped CSV.

    # train each variant (3 epochs, zfnet-fashion recipe, 1 thread, ~4 min each when the
    # machine is quiet, 15-17 min at load 9), one at a time:
    for cfg in intact: no-fc7:fc7 no-fc6-fc7:fc6,fc7 no-conv3-conv4:conv3,conv4 \\
               no-conv3-conv4-fc6-fc7:conv3,conv4,fc6,fc7; do
      python -m deconvnet_attr.train --arch zfnet-fashion --epochs 3 --threads 1 --no-progress \\
          --remove "${cfg#*:}" --out runs/retrain/${cfg%%:*}
    done
    for cfg in fc6-fc7-half:fc6=192,fc7=192 fc6-fc7-double:fc6=768,fc7=768 \\
               conv3-5-wider:conv3=64,conv4=128,conv5=64 \\
               conv3-5-wider-fc6-fc7-double:conv3=64,conv4=128,conv5=64,fc6=768,fc7=768; do
      python -m deconvnet_attr.train --arch zfnet-fashion --epochs 3 --threads 1 --no-progress \\
          --width "${cfg#*:}" --out runs/retrain/${cfg%%:*}
    done
    python examples/table3_retrained.py --runs runs/retrain \\
        --out deconvnet_attr/assets/table3_retrained.csv

The width rows scale the paper's changes to zfnet-fashion: fc6/fc7 4096 -> 2048 / 8192 is
384 -> 192 / 768 here; conv3-5 384,384,256 -> 512,1024,512 (x4/3, x8/3, x2) is 48,48,32 ->
64,128,64.

Per variant: parameters (of model_final.pt), train error (%) = top-1 error of model_final.pt in
eval mode (no dropout, no flips) on the 60,000 Fashion-MNIST training images, test error (%) =
100 - the last epoch's val_acc on the 10k test set (metrics.csv). (The CSV has no top-5 column:
with 10 classes top-5 error is near 0 and says little.) A variant without a run directory keeps
the row already in the CSV (with its ``note``), so rows are never invented.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from deconvnet_attr.data import load_fashion_mnist
from deconvnet_attr.models import load_model

VARIANTS = {  # name -> the paper's row
    "intact": "our model (as Fig. 3)",
    "no-fc7": "removed layer 7",
    "no-fc6-fc7": "removed layers 6, 7",
    "no-conv3-conv4": "removed layers 3, 4",
    "no-conv3-conv4-fc6-fc7": "removed layers 3, 4, 6, 7",
    "fc6-fc7-half": "adjust layers 6, 7: 2048 units",
    "fc6-fc7-double": "adjust layers 6, 7: 8192 units",
    "conv3-5-wider": "adjust layers 3, 4, 5: 512, 1024, 512 maps",
    "conv3-5-wider-fc6-fc7-double": "adjust layers 6, 7: 8192 units and layers 3, 4, 5: 512, "
    "1024, 512 maps",
}
FIELDS = (
    "variant",
    "paper row",
    "removed",
    "widths",
    "parameters",
    "train error (%)",
    "test error (%)",
    "note",
)


def train_error(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 error (%) of ``model`` (eval mode) on ``images`` ``(N, 1, 28, 28)``."""
    model.eval()
    with torch.no_grad():
        wrong = sum(
            int((model(images[i : i + 1000]).argmax(1) != labels[i : i + 1000]).sum())
            for i in range(0, len(labels), 1000)
        )
    return 100.0 * wrong / len(labels)


def measured(run: Path, name: str, train: tuple[torch.Tensor, torch.Tensor]) -> dict[str, str]:
    """The CSV row of one finished run directory."""
    with open(run / "metrics.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    model = load_model(run / "model_final.pt")
    defaults = (48, 48, 32, 384, 384)
    widths = [
        f"{layer}={w}"
        for layer, w, d in zip(
            ("conv3", "conv4", "conv5", "fc6", "fc7"),
            (*model.config.convs, *model.config.fc),
            defaults,
            strict=True,
        )
        if w != d and layer not in model.removed
    ]
    return {
        "variant": name,
        "paper row": VARIANTS[name],
        "removed": ",".join(model.removed) or "-",
        "widths": ",".join(widths) or "-",
        "parameters": str(sum(p.numel() for p in model.parameters())),
        "train error (%)": f"{train_error(model, *train):.2f}",
        "test error (%)": f"{100 - 100 * float(last['val_acc']):.2f}",
        "note": f"{last['epoch']} epochs, seed 0, current training script (per-batch seeding)",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("deconvnet_attr/assets/table3_retrained.csv"))
    args = p.parse_args()
    with open(args.out, newline="") as f:
        rows = {row["variant"]: {"widths": "-", **row} for row in csv.DictReader(f)}
    train = load_fashion_mnist("train")
    for name in VARIANTS:
        if (args.runs / name / "model_final.pt").is_file():
            rows[name] = measured(args.runs / name, name, train)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows.values())
    print(args.out.read_text())


if __name__ == "__main__":
    main()
