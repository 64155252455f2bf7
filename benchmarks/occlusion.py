"""Occlusion: deconvnet_attr.Occlusion (incremental inference) vs captum.attr.Occlusion.

Both run in this process on the same random-weight models and the same input: one 3x224x224
image, a 3x16x16 occluding window (the paper's grey square), ``perturbations_per_eval=32``,
stride 8 (VGG16: ``--vgg-stride``, 16 by default, to keep the run short). For each model the
table gives wall seconds (best of ``--repeats``), the speedup, the theoretical speedup of the
incremental plan (convolution multiply-accumulates of full recomputation / those of the plan),
achieved / theoretical, and the largest difference relative to max |attribution|.

    python benchmarks/occlusion.py                                  # all four models, CPU
    python benchmarks/occlusion.py --models zfnet resnet18 --threads 2 --repeats 2
    python benchmarks/occlusion.py --device cuda                    # GPU rows
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
import torchvision
from captum.attr import Occlusion as CaptumOcclusion
from torch import nn

from deconvnet_attr import Occlusion
from deconvnet_attr.models import zfnet

MODELS: dict[str, Callable[[], nn.Module]] = {
    "zfnet": lambda: zfnet(num_classes=1000),
    "alexnet": lambda: torchvision.models.alexnet(weights=None),
    "vgg16": lambda: torchvision.models.vgg16(weights=None),
    "resnet18": lambda: torchvision.models.resnet18(weights=None),
}


def timed(fn: Callable[[], torch.Tensor], device: str) -> tuple[float, torch.Tensor]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def bench(name: str, stride: int, args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(0)
    model = MODELS[name]().eval().to(args.device)
    image = torch.rand(1, 3, 224, 224, device=args.device)
    with torch.no_grad():
        target = int(model(image).argmax())
    kwargs = dict(sliding_window_shapes=(3, 16, 16), strides=stride, target=target,
                  baselines=0.0, perturbations_per_eval=args.ppe)
    ours = Occlusion(model)
    theirs = CaptumOcclusion(model)
    t_ours, t_theirs = [], []
    for _ in range(args.repeats):  # alternate, so that load changes hit both alike
        t, expected = timed(lambda: theirs.attribute(image, **kwargs), args.device)
        t_theirs.append(t)
        t, got = timed(lambda: ours.attribute(image, **kwargs), args.device)
        t_ours.append(t)
    run = ours.last_run
    speedup = min(t_theirs) / min(t_ours)
    theory = run.stats.theoretical_speedup
    return {
        "model": name, "windows": (224 - 16 + stride - 1) // stride + 1, "stride": stride,
        "captum": min(t_theirs), "ours": min(t_ours), "speedup": speedup, "theory": theory,
        "ratio": speedup / theory, "path": run.path,
        "diff": float((got - expected).abs().max() / expected.abs().max()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--vgg-stride", type=int, default=16)
    parser.add_argument("--ppe", type=int, default=32, help="perturbations_per_eval")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"
    print(f"device: {device}; torch {torch.__version__}; 224x224, window 16x16, "
          f"perturbations_per_eval={args.ppe}, best of {args.repeats}\n")
    print("| model | stride | windows | Captum (s) | ours (s) | speedup | theoretical "
          "| achieved/theoretical | max diff / max abs | path |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        row = bench(name, args.vgg_stride if name == "vgg16" else args.stride, args)
        print(f"| {row['model']} | {row['stride']} | {row['windows']}x{row['windows']} "
              f"| {row['captum']:.2f} | {row['ours']:.2f} | {row['speedup']:.2f}x "
              f"| {row['theory']:.2f}x | {row['ratio']:.2f} | {row['diff']:.1e} "
              f"| {row['path']} |", flush=True)


if __name__ == "__main__":
    main()
