"""Table 3 with retraining: collect the retrained variants' results into the shipped CSV.

    # train each variant (3 epochs, zfnet-fashion recipe, 1 thread, ~4-6 min each):
    for cfg in intact: no-fc7:fc7 no-fc6-fc7:fc6,fc7 no-conv3-conv4:conv3,conv4 \\
               no-conv3-conv4-fc6-fc7:conv3,conv4,fc6,fc7; do
      python -m deconvnet_attr.train --arch zfnet-fashion --epochs 3 --threads 1 --no-progress \\
          --remove "${cfg#*:}" --out runs/retrain/${cfg%%:*}
    done
    python examples/table3_retrained.py --runs runs/retrain \\
        --out deconvnet_attr/assets/table3_retrained.csv

Per variant: parameters (of model_final.pt), train error (%) = 100 - the last epoch's running
training accuracy (dropout and flips on, as during training), test error (%) = 100 - val_acc on
the 10k test set (metrics.csv). A variant without a run directory keeps the row already in the
CSV (with its ``note``), so rows are never invented: the shipped file's rows without a train
error were measured before the training script's metrics were kept (docs/ablation.md), and the
width rows are "not run" (the training script has no width option).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from deconvnet_attr.models import create_model

VARIANTS = {  # name -> (the paper's row, layers removed)
    "intact": ("our model (as Fig. 3)", ""),
    "no-fc7": ("removed layer 7", "fc7"),
    "no-fc6-fc7": ("removed layers 6, 7", "fc6,fc7"),
    "no-conv3-conv4": ("removed layers 3, 4", "conv3,conv4"),
    "no-conv3-conv4-fc6-fc7": ("removed layers 3, 4, 6, 7", "conv3,conv4,fc6,fc7"),
}
FIELDS = (
    "variant",
    "paper row",
    "removed",
    "parameters",
    "train error (%)",
    "test error (%)",
    "note",
)


def measured(run: Path, name: str, removed: str) -> dict[str, str]:
    """The CSV row of one finished run directory."""
    with open(run / "metrics.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    remove = tuple(n for n in removed.split(",") if n)
    model = create_model("zfnet-fashion", 10, remove=remove)
    params = sum(p.numel() for p in model.parameters())
    return {
        "variant": name,
        "paper row": VARIANTS[name][0],
        "removed": removed or "-",
        "parameters": str(params),
        "train error (%)": f"{100 - 100 * float(last['train_acc']):.2f}",
        "test error (%)": f"{100 - 100 * float(last['val_acc']):.2f}",
        "note": f"{last['epoch']} epochs, seed 0",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("deconvnet_attr/assets/table3_retrained.csv"))
    args = p.parse_args()
    with open(args.out, newline="") as f:
        rows = {row["variant"]: row for row in csv.DictReader(f)}
    for name, (_, removed) in VARIANTS.items():
        if (args.runs / name / "metrics.csv").is_file():
            rows[name] = measured(args.runs / name, name, removed)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows.values())
    print(args.out.read_text())


if __name__ == "__main__":
    main()
