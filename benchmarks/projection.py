"""Batched deconvnet projections of all top-k units of a layer vs a loop of Captum calls.

Feature mining (the paper's Fig. 2) projects every top-k unit of every channel of a layer: for the
reference model's conv5 over the bundled 1,000-image test subset that is 48 channels x 9 = 432
(image, channel, location) seeds. Captum's ``NeuronDeconvolution`` projects one neuron per call, so
the baseline is one forward + backward per seed. ``project_top_activations`` puts many seeds in one
batch (one forward + one backward per batch) through ``DeconvProjection(neuron=locations)``.

Both see the same seeds and the same inputs in the same process; the script checks that they agree
(ours seeds the unit with its activation value, as the paper does, Captum with 1, so Captum's is
scaled by that value before comparing) and prints a markdown table.

    python benchmarks/projection.py                   # reference conv5, bundled subset
    python benchmarks/projection.py --layer conv3 --threads 2
    python benchmarks/projection.py --device cuda      # both methods on the GPU
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from captum.attr import NeuronDeconvolution
from torch.utils.flop_counter import FlopCounterMode

from deconvnet_attr import project_top_activations, top_activations
from deconvnet_attr.data import load_eval_subset
from deconvnet_attr.deconv import DeconvProjection, _deconvnet, _layer_seed
from deconvnet_attr.models import load_reference


def captum_loop(model, layer, images, top) -> torch.Tensor:
    """One ``NeuronDeconvolution.attribute`` call per (image, channel, location) seed."""
    method = NeuronDeconvolution(model, layer)
    out = torch.empty(*top.indices.shape, *images.shape[1:], device=images.device)
    with warnings.catch_warnings():  # Captum warns on every call; printing would cost it time
        warnings.simplefilter("ignore")
        for c, channel in enumerate(top.channels.tolist()):
            for j, index in enumerate(top.indices[c].tolist()):
                neuron = (channel, *top.locations[c, j].tolist())
                out[c, j] = method.attribute(images[index : index + 1], neuron_selector=neuron)[0]
    return out


def seed_batch(images, top) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All seeds as one batch: their images (a leaf requiring grad), channels and locations."""
    batch = images[top.indices.reshape(-1)].detach().requires_grad_()
    channels = top.channels[:, None].expand_as(top.indices).reshape(-1)
    return batch, channels, top.locations.reshape(-1, top.locations.shape[-1])


def split_passes(model, layer, images, top) -> tuple[float, float]:
    """Wall times (s) of the forward and of the backward of one batched pass over all seeds.

    The backward alone is a lower bound for any method that back-propagates each seed separately
    (the deconvnet's relu* makes projections of different seeds non-additive, so seeds of the same
    image cannot share a backward).
    """
    projector = DeconvProjection(model, layer)
    batch, channels, locations = seed_batch(images, top)
    with _deconvnet(model, whole_forward=False):
        start = time.perf_counter()
        act = projector._layer_output((batch,), None)
        synchronize(batch.device)
        forward = time.perf_counter() - start
        seed = _layer_seed(act, channels, locations)
        synchronize(batch.device)
        start = time.perf_counter()
        torch.autograd.grad(act, batch, seed)
        synchronize(batch.device)
        backward = time.perf_counter() - start
    return forward, backward


def gflop(model, layer, images, top) -> float:
    """GFLOP of the forward + backward of one batched pass over all seeds (``FlopCounterMode``)."""
    projector = DeconvProjection(model, layer)
    batch, channels, locations = seed_batch(images, top)
    with _deconvnet(model, whole_forward=False), FlopCounterMode(display=False) as counter:
        act = projector._layer_output((batch * 1,), None)  # its module hooks need a non-leaf input
        torch.autograd.grad(act, batch, _layer_seed(act, channels, locations))
    return counter.get_total_flops() / 1e9


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(repeats: int, fn, device: torch.device):
    """Smallest wall time of ``repeats`` runs of ``fn`` and the last result."""
    times, result = [], None
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", default="conv5")
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument(
        "--batch-sizes",
        default="1,64,512",
        help="comma-separated seed batch sizes for the batched projection",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="where both methods run, e.g. cuda")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    model = load_reference().to(device)
    images = load_eval_subset()[0].to(device)
    layer = model.get_submodule(args.layer)
    top = top_activations(model, layer, images, k=args.k, progress=False)
    seeds = top.indices.numel()

    baseline_time, baseline = best_of(
        args.repeats, lambda: captum_loop(model, layer, images, top), device
    )
    baseline = baseline.cpu()
    rows = [("Captum `NeuronDeconvolution`, one call per seed", 1, seeds, baseline_time)]
    worst = 0.0
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        elapsed, ours = best_of(
            args.repeats,
            lambda b=batch_size: project_top_activations(
                model, layer, images, top, batch_size=b, progress=False
            ),
            device,
        )
        positive = top.values > 0  # a unit with activation <= 0 has no meaningful projection
        value = top.values[positive].reshape(-1, *([1] * (images.dim() - 1)))
        expected = value * baseline[positive]
        error = (ours[positive] - expected).abs().max() / ours[positive].abs().max()
        worst = max(worst, float(error))
        passes = -(-seeds // batch_size)
        rows.append(
            (f"`project_top_activations` (batch {batch_size})", batch_size, passes, elapsed)
        )
    splits = [split_passes(model, layer, images, top) for _ in range(args.repeats)]
    forward, backward = min(s[0] for s in splits), min(s[1] for s in splits)
    flops = gflop(model, layer, images, top)
    rows.append(
        (
            f"forward alone, all seeds in one batch ({flops:.2f} GFLOP fwd+bwd)",
            seeds,
            "1 forward",
            forward,
        )
    )
    rows.append(
        (
            "deconvnet backward alone, all seeds in one batch (lower bound)",
            seeds,
            "1 backward",
            backward,
        )
    )

    print(
        f"reference model `{args.layer}`, {len(images)} images, top-{args.k} of "
        f"{len(top.channels)} channels = {seeds} seeds, {device}, "
        f"torch threads {torch.get_num_threads()}, best of {args.repeats}\n"
    )
    print("| method | seeds per pass | forward+backward passes | time (s) | seeds/s | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, per_pass, passes, elapsed in rows:
        print(
            f"| {name} | {per_pass} | {passes} | {elapsed:.3f} | {seeds / elapsed:.0f} | "
            f"{baseline_time / elapsed:.1f}x |"
        )
    print(
        f"\n{flops:.2f} GFLOP for the forward + backward of all seeds (FlopCounterMode): "
        f"{flops / (forward + backward):.0f} GFLOP/s in the split passes."
    )
    print(
        f"max |ours - activation * captum| / max |ours| = {worst:.1e} over the "
        f"{int((top.values > 0).sum())} seeds with a positive activation"
    )


if __name__ == "__main__":
    main()
