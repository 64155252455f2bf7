"""Occlusion over the model zoo: deconvnet_attr.Occlusion vs captum.attr.Occlusion.

For each torchvision / timm CNN (random weights, eval mode), one 3x224x224 image, the paper's
3x16x16 grey window, stride 8 (16 for the largest models; ``--stride`` overrides both),
``perturbations_per_eval=32``, at each thread count of ``--threads``: the path the cost model
chose, the plan's theoretical saving (convolution MACs of full recomputation / of the plan),
the cost model's estimate (and in brackets the ratio it measured where the estimate was
uncertain), the speed-up in CPU seconds of this process and in wall seconds
(Captum's time / ours, same process, same input, Captum first), and max |difference| / max
|attribution|. ``--fp64`` adds both results' distance to a float64 Captum run.

    python benchmarks/occlusion_zoo.py --models tv:resnet18 timm:gernet_s --threads 1 2
    python benchmarks/occlusion_zoo.py --list
    python benchmarks/occlusion_zoo.py --estimate          # predicted time of each row, total
    python benchmarks/occlusion_zoo.py --markdown table.md  # all models, 1 and 2 threads (long)
    python benchmarks/occlusion_zoo.py --budget-minutes 90 --markdown table.md
    python benchmarks/occlusion_zoo.py --models tv:resnet18 --force-full  # execution part only

The last lines give the geometric mean of the speed-ups per thread count. ``--estimate`` times
one batch of 32 per model and thread count (Captum's run costs that per occluded batch; ours at
most about as much); ``--budget-minutes`` skips the rows predicted to overrun the budget.

``--force-full`` sends every batch to the engine's full recomputation (the plan's graph run
whole: batch norms folded, channels-last maps): its speed-up is the part that does not come from
recomputing less.

Timings on a shared machine are noisy: note ``uptime``'s load with any number you quote.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from captum.attr import Occlusion as CaptumOcclusion

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's package and test helpers
from test_deconv import TIMM, TORCHVISION, build  # noqa: E402

from deconvnet_attr import Occlusion  # noqa: E402
from deconvnet_attr.incremental import cost  # noqa: E402
from deconvnet_attr.incremental.cost import Estimate  # noqa: E402

#: The deconvnet zoo (tests/test_deconv.py) and the others the occlusion issue names.
OTHERS = [
    "gernet_s", "repvgg_a0", "cspdarknet53", "dpn68", "inception_v4", "xception41",
    "fbnetc_100", "mixnet_s", "regnetz_b16", "res2net50_14w_8s", "ghostnet_100",
    "efficientnetv2_rw_t", "mobilenetv3_small_100", "lcnet_050", "rexnet_100",
    "hrnet_w18_small", "dla34", "selecsls42b", "cs3darknet_s", "resnest14d",
]  # fmt: skip
MODELS = [f"tv:{n}" for n in TORCHVISION] + [f"timm:{n}" for n in TIMM + OTHERS]
#: Models whose full run at stride 8 takes too long: stride 16.
LARGE = {"tv:vgg16", "timm:vgg11", "tv:resnet50", "tv:inception_v3", "tv:densenet121",
         "tv:convnext_tiny", "timm:densenet121", "timm:cspdarknet53", "timm:inception_v4",
         "timm:xception41", "timm:res2net50_14w_8s", "timm:dpn68", "timm:regnetz_b16"}  # fmt: skip


HEADER = (
    "| model | threads | stride | path | theoretical | estimate | CPU speed-up | wall speed-up | "
    "max diff / max attr |"
)


def timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - start, time.process_time() - cpu, result


def setting(spec: str, stride: int | None) -> tuple[torch.Tensor, dict, int]:
    """The input image, Occlusion's arguments and the number of occluded batches for ``spec``."""
    name = spec.split(":")[1]
    torch.manual_seed(0)
    side = 299 if name in ("inception_v3", "inception_v4") else 224
    x = torch.randn(1, 3, side, side)
    stride = stride or (16 if spec in LARGE else 8)
    kwargs = dict(
        sliding_window_shapes=(3, 16, 16),
        strides=(3, stride, stride),
        target=0,
        perturbations_per_eval=32,
    )
    positions = (math.ceil((side - 16) / stride) + 1) ** 2
    return x, kwargs, math.ceil(positions / 32)


def predicted_seconds(spec: str, threads: int, stride: int | None) -> float:
    """A row's predicted wall time: Captum's batches plus ours (at most as many: the cost model
    takes full recomputation where it is not faster), from one timed batch of 32, + 10 %."""
    model = build(*spec.split(":"))
    x, _, batches = setting(spec, stride)
    torch.set_num_threads(threads)
    with torch.no_grad():
        model(x.repeat(32, 1, 1, 1))
        start = time.perf_counter()
        model(x.repeat(32, 1, 1, 1))
    return 2.2 * batches * (time.perf_counter() - start)


def row(spec: str, threads: int, stride: int | None, fp64: bool) -> tuple[str, float, float]:
    """One table row and its CPU and wall speed-ups."""
    model = build(*spec.split(":"))
    x, kwargs, _ = setting(spec, stride)
    torch.set_num_threads(threads)
    with torch.no_grad():  # warm-up: neither run pays for first-call allocations
        model(x.repeat(32, 1, 1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wall_c, cpu_c, theirs = timed(lambda: CaptumOcclusion(model).attribute(x, **kwargs))
        ours_occ = Occlusion(model)
        wall_o, cpu_o, ours = timed(lambda: ours_occ.attribute(x, **kwargs))
    run = ours_occ.last_run
    # relative to the largest attribution; absolute where Captum's is all zero (a random-init
    # network whose target logit no occlusion changes, e.g. timm's inception_v4)
    scale = float(theirs.abs().max()) or 1.0
    diff = float((ours - theirs).abs().max()) / scale
    line = (
        f"| {spec} | {threads} | {kwargs['strides'][1]} | {run.path} | "
        f"{run.stats.theoretical_speedup:.2f} | "
        f"{_estimate(run.estimate)} | {cpu_c / cpu_o:.2f} | "
        f"{wall_c / wall_o:.2f} | {diff:.1e} |"
    )
    if fp64:
        double = CaptumOcclusion(model.double()).attribute(x.double(), **kwargs)
        line += (
            f" {float((ours.double() - double).abs().max()) / scale:.1e} /"
            f" {float((theirs.double() - double).abs().max()) / scale:.1e} |"
        )
    reason = (run.reason or "").replace("|", "/")
    return line + f" {reason[:80]} |", cpu_c / cpu_o, wall_c / wall_o


def _estimate(guess: Estimate | None) -> str:
    """The cost model's estimate, and the measured ratio where it measured."""
    if guess is None:
        return "nan"
    return f"{guess.speedup:.2f}" + (f" ({guess.measured:.2f})" if guess.measured else "")


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def estimate_total(args: argparse.Namespace) -> None:
    """Print each row's predicted time and the total (one timed batch per model and thread)."""
    total = 0.0
    for spec in args.models:
        for threads in args.threads:
            seconds = predicted_seconds(spec, threads, args.stride)
            total += seconds
            print(f"{spec} at {threads} thread(s): ~{seconds:.0f} s", flush=True)
    print(f"predicted total: ~{total / 60:.0f} min (load average {os.getloadavg()[0]:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, help="source:name, e.g. tv:vgg16")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--stride", type=int, default=None, help="override the stride")
    parser.add_argument("--fp64", action="store_true", help="+ distance to a float64 run")
    parser.add_argument("--list", action="store_true", help="print the model names and exit")
    parser.add_argument(
        "--force-full",
        action="store_true",
        help="every batch through the engine's full recomputation (no incremental plan)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument(
        "--estimate", action="store_true", help="print each row's predicted time and the total"
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="skip the rows whose predicted time would overrun this budget",
    )
    args = parser.parse_args()
    if args.list:
        print("\n".join(MODELS))
        return
    if args.estimate:
        estimate_total(args)
        return
    if args.force_full:  # no estimate is in the trial band or reaches the margin
        cost.TRIAL, cost.MARGIN = (math.inf, math.inf), math.inf
    lines = [
        f"load average: {os.getloadavg()}; torch {torch.__version__}",
        "",
        HEADER + (" fp64: ours / Captum |" if args.fp64 else "") + " reason |",
        "|---" * (HEADER.count("|") - 1 + (1 if args.fp64 else 0) + 1) + "|",
    ]
    print("\n".join(lines), flush=True)
    speedups: dict[int, tuple[list[float], list[float]]] = {t: ([], []) for t in args.threads}
    skipped, start = [], time.perf_counter()
    for spec in args.models:
        for threads in args.threads:
            if args.budget_minutes is not None:
                left = 60 * args.budget_minutes - (time.perf_counter() - start)
                if predicted_seconds(spec, threads, args.stride) > left:
                    skipped.append(f"{spec}@{threads}")
                    continue
            try:
                line, cpu, wall = row(spec, threads, args.stride, args.fp64)
            except Exception as error:  # one broken model must not end a long run
                line = f"| {spec} | {threads} | error: {type(error).__name__}: {error} |"
            else:
                speedups[threads][0].append(cpu)
                speedups[threads][1].append(wall)
            lines.append(line)
            print(line, flush=True)
    lines.append("")
    for threads, (cpu, wall) in speedups.items():
        lines.append(
            f"geometric mean at {threads} thread(s) over {len(cpu)} models: CPU "
            f"{geometric_mean(cpu):.2f}x, wall {geometric_mean(wall):.2f}x"
        )
    if skipped:
        lines.append(f"skipped (over the budget): {' '.join(skipped)}")
    print("\n".join(lines[-len(speedups) - bool(skipped) :]))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
