"""Quick start: deconvnet projections on a torchvision model, the Captum way.

    python examples/quickstart.py                 # random weights, runs offline
    python examples/quickstart.py --pretrained    # ImageNet weights (downloads once)

Writes ``quickstart.png``: the input, the projection of the predicted class, and the paper's
projection of the strongest activation in ``layer4`` (Zeiler & Fergus 2013, Fig. 2 style).
"""

from __future__ import annotations

import argparse

import matplotlib
import torch
import torchvision

from deconvnet_attr import DeconvProjection

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def show(t: torch.Tensor) -> torch.Tensor:
    """Contrast-stretch a (3, H, W) projection to [0, 1] for display, as the paper does."""
    t = t - t.mean()
    return (t / (2 * t.abs().max().clamp_min(1e-12)) + 0.5).permute(1, 2, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", action="store_true", help="download ImageNet weights")
    parser.add_argument("--out", default="quickstart.png")
    args = parser.parse_args()

    weights = torchvision.models.ResNet18_Weights.DEFAULT if args.pretrained else None
    model = torchvision.models.resnet18(weights=weights).eval()
    torch.manual_seed(0)
    x = torch.rand(1, 3, 224, 224)  # use your own normalised image here
    label = model(x).argmax(1)

    # 1. project the predicted class score back to pixels
    class_projection = DeconvProjection(model).attribute(x, target=label)
    # 2. the paper's procedure: strongest activation of layer4, every other activation zeroed
    unit_projection = DeconvProjection(model, layer=model.layer4).attribute(x)

    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    for ax, img, title in zip(
        axes,
        (x[0].permute(1, 2, 0), show(class_projection[0]), show(unit_projection[0])),
        ("input", f"class {label.item()}", "strongest layer4 unit"),
        strict=True,
    ):
        ax.imshow(img.detach().clamp(0, 1))
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
