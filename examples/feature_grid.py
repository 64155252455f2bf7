"""Fig. 2 for one layer: top-9 deconvnet projections of a few channels beside their image patches.

    python examples/feature_grid.py --layer conv3 --channels 0,5,9,12 --out conv3.png

Runs on the bundled Fashion-MNIST reference model and evaluation subset (no network, seconds on a
CPU). The same five calls work for any CNN and any image tensor or DataLoader.
"""

from __future__ import annotations

import argparse

from deconvnet_attr import project_top_activations, receptive_field, top_activations
from deconvnet_attr.data import load_eval_subset
from deconvnet_attr.models import load_reference
from deconvnet_attr.projection import receptive_field_patches
from deconvnet_attr.viz import plot_feature_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", default="conv3")
    parser.add_argument("--channels", default="0,1,2,3,4,5,6,7", help="comma-separated channels")
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--out", default="feature_grid.png")
    args = parser.parse_args()

    model = load_reference()
    images, _ = load_eval_subset()  # (1000, 1, 28, 28) in [0, 1]
    channels = [int(c) for c in args.channels.split(",")]

    # 1. one streaming pass: the k images that excite each channel most, and where
    top = top_activations(model, args.layer, images, k=args.k, channels=channels)
    # 2. every (image, channel, location) projected by the deconvnet, many per backward pass
    projections = project_top_activations(model, args.layer, images, top)  # (C, k, 1, 28, 28)
    # 3. crop images and projections to the receptive field of each projected unit
    field = receptive_field(model, args.layer, images[:1])
    proj_sets, patch_sets = [], []
    for c in range(len(channels)):  # NaN: the part of a field outside the image, drawn amber
        for source, sets in ((projections[c], proj_sets), (images[top.indices[c]], patch_sets)):
            sets.append(receptive_field_patches(source, top.locations[c], field, fill=float("nan")))
    # 4. draw: projections (contrast-stretched) left, patches right, strongest first
    fig = plot_feature_grid(
        proj_sets,
        patch_sets,
        labels=[f"ch {c}" for c in channels],
        title=f"{args.layer} (receptive field {field.size[0]}x{field.size[1]})",
        percentile=98.0,  # the report's Fig. 2 contrast
        outside="#e8a33d",  # padding: amber, with a legend
    )
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}; strongest activations per channel:")
    for c, channel in enumerate(channels):
        print(f"  ch {channel:3d}: " + ", ".join(f"{v:.2f}" for v in top.values[c].tolist()))


if __name__ == "__main__":
    main()
