"""One occluded batch through the incremental engine, with and without channels-last maps.

For each model (random weights, eval mode) and the zoo benchmark's setting (224 px, 3x16x16
window of zeros, 32 windows from the middle of the sweep), the best of ``--repeats`` seconds of:
the plan (rectangles, then whole maps), the plan with whole maps channels-last (the default),
full recomputation of the plan's graph (batch norms folded) without and with channels-last, and
the model's own forward on the same batch (what Captum runs). Same process, same batch.

    python benchmarks/engine_layout.py --threads 1 --models timm:efficientnetv2_rw_t tv:vgg16
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]
from occlusion_zoo import setting  # noqa: E402
from test_deconv import build  # noqa: E402

from deconvnet_attr.incremental import IncrementalForward  # noqa: E402
from deconvnet_attr.incremental.executor import Executor, RunStats  # noqa: E402


def occluded_batch(x: torch.Tensor, stride: int, size: int = 16) -> torch.Tensor:
    """32 copies of ``x`` with the window of zeros at 32 consecutive positions of the sweep."""
    side = x.shape[-1]
    steps = range(0, side - size + 1, stride)
    positions = [(r, c) for r in steps for c in steps]
    first = max(0, min(320, len(positions) - 40))
    batch = x.repeat(32, 1, 1, 1)
    for i, (r, c) in enumerate(positions[first : first + 32]):
        batch[i, :, r : r + size, c : c + size] = 0.0
    return batch


def row(spec: str, repeats: int) -> str:
    model = build(*spec.split(":"))
    x, kwargs, _ = setting(spec, None)
    batch = occluded_batch(x, kwargs["strides"][1])
    engine = IncrementalForward(model, cost_model=False)
    with torch.no_grad():
        engine(x)
        plan = engine.plan
        assert plan is not None, engine.reason
        layout_free = plan.channels_last_from
        never = len(plan.net.nodes) + 1
        runs = {
            "plan": (0.9, never),
            "plan, channels-last": (0.9, layout_free),
            "full": (0.0, never),
            "full, channels-last": (0.0, layout_free),
        }
        best = dict.fromkeys([*runs, "model"], float("inf"))
        for _ in range(repeats):
            for name, (fraction, start) in runs.items():
                plan.channels_last_from = start
                begin = time.perf_counter()
                Executor(plan, RunStats(), fraction).run((batch,), 32)
                best[name] = min(best[name], time.perf_counter() - begin)
            begin = time.perf_counter()
            model(batch)
            best["model"] = min(best["model"], time.perf_counter() - begin)
        plan.channels_last_from = layout_free
    return (
        f"| {spec} | {torch.get_num_threads()} | "
        + " | ".join(f"{best[k]:.3f}" for k in best)
        + " |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="source:name, e.g. tv:vgg16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average: {os.getloadavg()}; torch {torch.__version__}\n")
    print(
        "| model | threads | plan (s) | plan, channels-last | full | full, channels-last | model |"
    )
    print("|---|---|---|---|---|---|---|")
    for spec in args.models:
        print(row(spec, args.repeats), flush=True)


if __name__ == "__main__":
    main()
