#!/usr/bin/env bash
# Train the four Fig. 6 models (docs/fig6.md): AlexNet stem (11x11/4) and ZFNet stem (7x7/2) on
# Fashion-MNIST upsampled 4x to 112 px, each with feature-scale clipping on (RMS 0.1) and off,
# same seed, recipe and budget (1 epoch of the 60k training set, 468 steps). Copies fp16 weights into the
# package. Needs Debian's dataset-fashion-mnist. Usage: examples/train_fig6.sh [RUN_DIR]
set -euo pipefail
run_dir="${1:-runs/fig6}"
weights="$(dirname "$0")/../deconvnet_attr/models/weights/fig6"
mkdir -p "$weights"

for stem in alexnet zfnet; do
    for clip in 0.1 0; do
        name="${stem}_clip$([ "$clip" = 0 ] && echo off || echo on)"
        python -m deconvnet_attr.train --arch "fig6-${stem}-stem" --data fashion-mnist \
            --clip-rms "$clip" --out "$run_dir/$name" --threads "${THREADS:-1}" --seed 0 \
            --no-progress --epochs "${EPOCHS:-1}"
        python -c "import sys; from deconvnet_attr.models import load_model, save_model; \
m = load_model(sys.argv[1]); save_model(m, sys.argv[2], sys.argv[3], m.epoch, __import__('torch').float16)" \
            "$run_dir/$name/model_final.pt" "$weights/$name.pt" "fig6-${stem}-stem"
    done
done
