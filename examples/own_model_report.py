"""The full report for your own model: from the command line or from a model object in Python.

Command line (any torchvision/timm name or ``module:factory``, your weights, your ImageFolder)::

    deconvnet-attr report --out report/ --model resnet18 --weights resnet18.pt \\
        --images my_images/ --input-size 224 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 \\
        --layers conv1,layer1,layer2,layer3,layer4 --folder-labels

Python, for a model object that has no importable factory (this script: a small CNN defined here,
untrained, on the bundled Fashion-MNIST subset, so it runs offline in well under a minute)::

    python examples/own_model_report.py --out own_report/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from deconvnet_attr.data import FASHION_MNIST_CLASSES, load_eval_subset
from deconvnet_attr.report import ReportContext, build_report


def small_cnn() -> nn.Sequential:
    """Any CNN works; name its layers so the report can refer to them."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("own_report"))
    parser.add_argument("--weights", type=Path, help="a state dict for small_cnn()")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = small_cnn()
    if args.weights:
        model.load_state_dict(torch.load(args.weights, weights_only=True))
    images, labels = load_eval_subset()
    ctx = ReportContext(
        model=model.eval(),
        model_name="small CNN (examples/own_model_report.py)",
        data=TensorDataset(images[::4], labels[::4]),  # (image, label) pairs, images in [0, 1]
        data_name="every 4th image of the bundled Fashion-MNIST subset",
        layers=["0", "3", "6"],  # the three convolutions, by module name
        out=args.out,
        class_names=FASHION_MNIST_CLASSES,
        has_labels=True,
        channels=8,
    )
    print(f"report: {build_report(ctx)}")


if __name__ == "__main__":
    main()
