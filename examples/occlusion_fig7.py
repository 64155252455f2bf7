"""Occlusion sensitivity (Zeiler & Fergus 2013, Fig. 7) on the bundled reference model.

    python examples/occlusion_fig7.py                 # writes occlusion_fig7_*.png
    python examples/occlusion_fig7.py --images 0 17 --window 8 --stride 2

For each chosen image of the bundled Fashion-MNIST evaluation subset: the paper's three maps from
one sweep of a grey square (total activation of the strongest conv5 feature map, probability of
the true class, most probable class), then the Captum-style attribution of the same sweep with
``deconvnet_attr.Occlusion``, checked against ``captum.attr.Occlusion``. Runs offline in seconds.
(On 28x28 images a window covers much of every map, so there is little to gain in speed; see
``benchmarks/occlusion.py`` for 224x224 networks.)
"""

from __future__ import annotations

import argparse

import matplotlib
from captum.attr import Occlusion as CaptumOcclusion

from deconvnet_attr import Occlusion, occlusion_maps
from deconvnet_attr.data import FASHION_MNIST_CLASSES, load_eval_subset
from deconvnet_attr.models import load_reference
from deconvnet_attr.viz import plot_occlusion_maps

matplotlib.use("Agg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--layer", default="conv5")
    parser.add_argument("--out", default="occlusion_fig7")
    args = parser.parse_args()

    model = load_reference()
    images, labels = load_eval_subset()
    for index in args.images:
        image, label = images[index], int(labels[index])
        # grey occluder: 0.5 in the model's input units (images in [0, 1])
        maps = occlusion_maps(
            model, image, args.window, args.stride, args.layer, target=label, baseline=0.5
        )
        fig = plot_occlusion_maps(
            image,
            maps,
            FASHION_MNIST_CLASSES,
            title=f"image {index}: {FASHION_MNIST_CLASSES[label]}",
        )
        fig.savefig(f"{args.out}_{index}.png", dpi=120)

        kwargs = dict(
            sliding_window_shapes=(1, args.window, args.window),
            strides=args.stride,
            target=label,
            baselines=0.5,
            perturbations_per_eval=32,
        )
        ours = Occlusion(model).attribute(image[None], **kwargs)
        theirs = CaptumOcclusion(model).attribute(image[None], **kwargs)
        print(
            f"image {index} ({FASHION_MNIST_CLASSES[label]}): p(true class) "
            f"{maps.clean_probability:.3f} unoccluded, {maps.probability.min():.3f} at worst; "
            f"attribution max |ours - Captum| {(ours - theirs).abs().max():.1e} "
            f"(max |attribution| {theirs.abs().max():.2f})"
        )


if __name__ == "__main__":
    main()
