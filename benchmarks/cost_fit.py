"""Data for the occlusion cost model: one perturbed batch, full vs incremental, per model.

For each zoo model (``occlusion_zoo``'s setting: 224 px, 3x16x16 window, the zoo's stride,
batches of 32) and each thread count: the seconds of one batch of 32 occluded copies through the
model as one call (Captum's full recomputation), through the engine's full recomputation (the
planned model in calls below ``plan.CALL_BYTES``) and through the incremental plan (forced, no
cost model; each best of ``--repeats``), the plan's dry count of that batch (convolution
MACs done and needed in full, elements moved, rectangle ops, output elements of the ops the
plan runs on whole batches and of full recomputation), the current cost model's estimate, and
the measured ratio. Then, per thread count, the least-squares fit of the cost model's
constants to the measured seconds and how many models each model (current / refitted) sends
down the wrong path.

    python benchmarks/cost_fit.py --threads 1 2 --csv cost_fit.csv
    python benchmarks/cost_fit.py --models tv:mobilenet_v2 timm:regnety_002 --threads 2

Timings need a quiet machine (``uptime``): the script prints the load average.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]
from occlusion_zoo import MODELS, setting  # noqa: E402
from test_deconv import build  # noqa: E402

from deconvnet_attr.incremental import IncrementalForward  # noqa: E402
from deconvnet_attr.incremental.cost import TRIAL, estimate  # noqa: E402
from deconvnet_attr.incremental.dry import dry_run  # noqa: E402

FIELDS = (
    "model", "threads", "one_call_s", "full_s", "incremental_s", "measured", "estimate",
    "conv_macs", "conv_macs_full", "moved", "rect_ops", "elements", "elements_full",
)  # fmt: skip


def occluded_batch(x: torch.Tensor, stride: int, first: int, count: int = 32) -> torch.Tensor:
    """Windows ``first .. first + count - 1`` of the zoo's sweep (3x16x16, value 0), as Captum
    builds its batches: one occluded copy of ``x`` per window, in row-major window order."""
    side = x.shape[-1]
    per_row = (side - 16 + stride - 1) // stride + 1
    batch = x.repeat(count, 1, 1, 1)
    for b in range(count):
        row, col = divmod(first + b, per_row)
        top, left = min(row * stride, side - 16), min(col * stride, side - 16)
        batch[b, :, top : top + 16, left : left + 16] = 0
    return batch


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(spec: str, threads: int, repeats: int) -> dict[str, object] | None:
    """One row: times and counts of the batch of windows 32..63 (inside the image, typical)."""
    torch.set_num_threads(threads)
    model = build(*spec.split(":"))
    x, kwargs, _ = setting(spec, None)
    batch = occluded_batch(x, kwargs["strides"][1], 32)
    engine = IncrementalForward(model, cost_model=False)
    with torch.no_grad():
        engine(x)
        if not engine.incremental:
            return None
        full = IncrementalForward(model, cost_model=False)
        full(x)
        full.reason = "full recomputation, measured"
        model(batch)  # warm-up of the three paths
        full(batch)
        engine(batch)
        one_call_s = best(lambda: model(batch), repeats)
        full_s = best(lambda: full(batch), repeats)
        incremental_s = best(lambda: engine(batch), repeats)
    counted = dry_run(engine.plan, (batch,), 32, engine.full_fraction)
    return {
        "model": spec,
        "threads": threads,
        "one_call_s": round(one_call_s, 4),
        "full_s": round(full_s, 4),
        "incremental_s": round(incremental_s, 4),
        "measured": round(full_s / incremental_s, 3),
        "estimate": round(estimate(counted, threads).speedup, 3),
        "conv_macs": counted.conv_macs,
        "conv_macs_full": counted.conv_macs_full,
        "moved": counted.moved,
        "rect_ops": counted.rect_ops,
        "elements": counted.elements,
        "elements_full": counted.elements_full,
    }


def fit(rows: list[dict[str, object]]) -> None:
    """Least squares (non-negative by clipping) of full_s ~ a*macs_full + b*elements_full and
    incremental_s ~ a*e*macs + a*(m*moved + o*rect_ops) + b*elements, printed with the
    cost-model constants they imply (in MAC equivalents)."""

    def col(name: str) -> torch.Tensor:
        return torch.tensor([float(r[name]) for r in rows], dtype=torch.float64)

    full_s, inc_s = col("full_s"), col("incremental_s")
    # weights 1/t: relative errors count, not the big models' seconds
    a_full = torch.stack([col("conv_macs_full"), col("elements_full")], 1) / full_s[:, None]
    coef_full = torch.linalg.lstsq(a_full, torch.ones_like(full_s)[:, None]).solution[:, 0]
    per_mac, per_elem = (float(c) for c in coef_full)
    a_inc = (
        torch.stack([col("conv_macs"), col("moved"), col("rect_ops"), col("elements")], 1)
        / inc_s[:, None]
    )
    coef_inc = torch.linalg.lstsq(a_inc, torch.ones_like(inc_s)[:, None]).solution[:, 0]
    print(
        f"  full: {per_mac * 1e9:.3f} s per GMAC, {per_elem * 1e9:.3f} s per G output elements"
        f" -> an output element costs {per_elem / per_mac:.1f} MACs"
    )
    names = ("efficiency", "PER_ELEMENT", "PER_OP", "PER_OUTPUT")
    print("  incremental, in MACs of full recomputation: " + ", ".join(
        f"{n} {float(c) / per_mac:.3g}" for n, c in zip(names, coef_inc, strict=True)
    ))  # fmt: skip
    ratios = [(float(r["estimate"]), float(r["measured"])) for r in rows]
    outside = [(e, m) for e, m in ratios if not TRIAL[0] <= e < TRIAL[1]]
    wrong = sum((e >= TRIAL[1]) != (m >= 1.0) for e, m in outside)
    print(
        f"  {len(ratios) - len(outside)} of {len(rows)} models measured (estimate in {TRIAL});"
        f" the model's choice is wrong on {wrong} of the other {len(outside)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--csv", type=Path)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}; torch {torch.__version__}", flush=True)
    print(" ".join(FIELDS), flush=True)
    rows: list[dict[str, object]] = []
    for spec in args.models:
        for threads in args.threads:
            try:
                row = measure(spec, threads, args.repeats)
            except Exception as error:  # one broken model must not end a long run
                print(f"{spec} {threads}: error {type(error).__name__}: {error}", flush=True)
                continue
            if row is None:
                print(f"{spec} {threads}: not incremental", flush=True)
                continue
            rows.append(row)
            print(" ".join(str(row[f]) for f in FIELDS), flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    for threads in args.threads:
        subset = [r for r in rows if r["threads"] == threads]
        if len(subset) >= 4:
            print(f"fit at {threads} thread(s), {len(subset)} models:")
            fit(subset)


if __name__ == "__main__":
    main()
