#!/usr/bin/env bash
# Train the bundled reference model (zfnet-fashion on Fashion-MNIST) and copy its weights into the
# package. Needs Debian's dataset-fashion-mnist (`apt-get install -y dataset-fashion-mnist`).
# Usage: examples/train_reference.sh [RUN_DIR]   (default runs/reference)
set -euo pipefail
run_dir="${1:-runs/reference}"
weights="$(dirname "$0")/../deconvnet_attr/models/weights"

python -m deconvnet_attr.train --arch zfnet-fashion --data fashion-mnist --out "$run_dir" \
    --threads "${THREADS:-1}" --seed 0

mkdir -p "$weights"
cp "$run_dir/model_final.pt" "$weights/zfnet_fashion.pt"
for snapshot in "$run_dir"/model_epoch*.pt; do
    epoch="${snapshot##*model_epoch}"
    cp "$snapshot" "$weights/zfnet_fashion_epoch${epoch}"
done
python examples/evaluate_reference.py --metrics "$run_dir/metrics.csv" --figures docs/figures
