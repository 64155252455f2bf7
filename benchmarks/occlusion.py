"""Occlusion: deconvnet_attr.Occlusion (incremental inference) vs captum.attr.Occlusion.

Both run in this process on the same random-weight models and the same input: one 3x224x224
image, a 3x16x16 occluding window (the paper's grey square), ``perturbations_per_eval=32``,
stride 8 (VGG16: ``--vgg-stride``, 16 by default, to keep the run short). For each model the
table gives wall seconds (best of ``--repeats``), the speedup, the speedup in CPU seconds of this
process (less sensitive to other processes on a shared machine), the theoretical speedup of the
incremental plan (convolution multiply-accumulates of full recomputation / those of the plan),
achieved (wall) / theoretical, and the largest difference relative to max |attribution|.

    python benchmarks/occlusion.py                                  # all four models, CPU
    python benchmarks/occlusion.py --models zfnet resnet18 --threads 2 --repeats 2
    python benchmarks/occlusion.py --device cuda                    # GPU rows
    python benchmarks/occlusion.py --memory    # + peak extra memory (measured at stride 16)
    python benchmarks/occlusion.py --fp64      # + both results' distance to float64
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
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


def timed(fn: Callable[[], torch.Tensor], device: str) -> tuple[float, float, torch.Tensor]:
    """Wall seconds, CPU seconds of this process (all threads) and the result of ``fn()``."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu, result


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _peak_child(fn: Callable[[], object], queue: multiprocessing.Queue) -> None:
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:  # reset the peak (VmHWM) to now
        clear.write("5")
    fn()
    queue.put((_status_kib("VmHWM") - before) / 1024)


def peak_mib(fn: Callable[[], object]) -> float:
    """Peak resident memory (MiB) that ``fn()`` adds, measured in a forked child (Linux)."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_peak_child, args=(fn, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def bench(name: str, stride: int, args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(0)
    model = MODELS[name]().eval().to(args.device)
    image = torch.rand(1, 3, 224, 224, device=args.device)
    with torch.no_grad():
        target = int(model(image).argmax())
    kwargs = dict(
        sliding_window_shapes=(3, 16, 16),
        strides=stride,
        target=target,
        baselines=0.0,
        perturbations_per_eval=args.ppe,
    )
    ours = Occlusion(model)
    theirs = CaptumOcclusion(model)
    wall_ours, wall_theirs, cpu_ours, cpu_theirs = [], [], [], []
    for _ in range(args.repeats):  # alternate, so that load changes hit both alike
        wall, cpu, expected = timed(lambda: theirs.attribute(image, **kwargs), args.device)
        wall_theirs.append(wall)
        cpu_theirs.append(cpu)
        wall, cpu, got = timed(lambda: ours.attribute(image, **kwargs), args.device)
        wall_ours.append(wall)
        cpu_ours.append(cpu)
    run = ours.last_run
    if args.memory:  # peak memory does not grow with the number of batches: use stride 16
        small = dict(kwargs, strides=16)
        memory = (
            peak_mib(lambda: theirs.attribute(image, **small)),
            peak_mib(lambda: ours.attribute(image, **small)),
        )
    if args.fp64:  # how far each float32 result is from a float64 evaluation of the same sweep
        exact = CaptumOcclusion(copy.deepcopy(model).double()).attribute(image.double(), **kwargs)
        scale = exact.abs().max()
        fp64 = (
            f" {float((expected - exact).abs().max() / scale):.1e} / "
            f"{float((got - exact).abs().max() / scale):.1e} |"
        )
    speedup = min(wall_theirs) / min(wall_ours)
    theory = run.stats.theoretical_speedup
    return {
        "model": name,
        "windows": (224 - 16 + stride - 1) // stride + 1,
        "stride": stride,
        "captum": min(wall_theirs),
        "ours": min(wall_ours),
        "speedup": speedup,
        "cpu_captum": min(cpu_theirs),
        "cpu_ours": min(cpu_ours),
        "cpu_speedup": min(cpu_theirs) / min(cpu_ours),
        "theory": theory,
        "ratio": speedup / theory,
        "path": run.path,
        "memory": f" {memory[0]:.0f} / {memory[1]:.0f} |" if args.memory else "",
        "fp64": fp64 if args.fp64 else "",
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
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also measure the peak extra resident memory of each (CPU, Linux)",
    )
    parser.add_argument(
        "--fp64", action="store_true", help="also compare both results with a float64 evaluation"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU ({platform.processor() or platform.machine()}), "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"device: {device}; torch {torch.__version__}; 224x224, window 16x16, "
        f"perturbations_per_eval={args.ppe}, best of {args.repeats}\n"
    )
    print(
        "| model | stride | windows | Captum (s) | ours (s) | speedup | CPU-time speedup "
        "| theoretical | achieved/theoretical | max diff / max abs | path |"
        + (" peak MiB Captum / ours |" if args.memory else "")
        + (" diff to float64 Captum / ours |" if args.fp64 else "")
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * (args.memory + args.fp64))
    for name in args.models:
        row = bench(name, args.vgg_stride if name == "vgg16" else args.stride, args)
        print(
            f"| {row['model']} | {row['stride']} | {row['windows']}x{row['windows']} "
            f"| {row['captum']:.2f} | {row['ours']:.2f} | {row['speedup']:.2f}x "
            f"| {row['cpu_speedup']:.2f}x ({row['cpu_captum']:.1f} / {row['cpu_ours']:.1f} s) "
            f"| {row['theory']:.2f}x | {row['ratio']:.2f} | {row['diff']:.1e} "
            f"| {row['path']} |{row['memory']}{row['fp64']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
