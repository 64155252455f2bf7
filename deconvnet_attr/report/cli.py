"""``deconvnet-attr report``: the command line, and loading the model, images and checkpoints it
names into a :class:`~.context.ReportContext`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset, TensorDataset

from deconvnet_attr import data as data_module
from deconvnet_attr import models
from deconvnet_attr.analysis.correspondence import FASHION_MNIST_PARTS
from deconvnet_attr.cli import one_line_warnings, writable_dir
from deconvnet_attr.distributed import process_group, rank_and_world
from deconvnet_attr.taps import resolve_layers

from .build import write_report
from .context import ReportContext

__all__ = [
    "check_device",
    "context_from_args",
    "load_weights",
    "main",
    "parse_args",
    "with_input_normalization",
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Arguments of ``deconvnet-attr report``."""
    p = argparse.ArgumentParser(
        prog="deconvnet-attr report",
        description="Build the offline HTML report of the paper's analyses (figures + tables).",
    )
    p.add_argument("--out", required=True, type=Path, help="output directory (index.html, PNGs)")
    p.add_argument(
        "--model",
        default=None,
        help="torchvision/timm architecture name (timm:NAME, torchvision:NAME), module:factory, "
        "a deconvnet-attr arch (zfnet, zfnet-fashion) or model file (default: the bundled "
        "Fashion-MNIST reference model)",
    )
    p.add_argument("--weights", type=Path, help="weights file (a state dict or a checkpoint dict)")
    p.add_argument("--num-classes", type=int, help="classes of --model (default: its default)")
    p.add_argument("--images", type=Path, help="ImageFolder directory (default: bundled subset)")
    p.add_argument(
        "--folder-labels",
        action="store_true",
        help="the ImageFolder's class folders are the model's classes: named after the model's "
        "class names when it has them (any order), else 0..K-1 (folders named 0, 1, ...) or the "
        "sorted folders",
    )
    p.add_argument("--input-size", type=int, default=224, help="image side for --images")
    p.add_argument(
        "--resize",
        type=int,
        help="--images: shorter side resized to this before the centre --input-size crop "
        "(default: --input-size, the whole image; 256 with --input-size 224 is ImageNet's)",
    )
    p.add_argument("--mean", help="comma-separated per-channel mean the model expects")
    p.add_argument("--std", help="comma-separated per-channel std the model expects")
    p.add_argument(
        "--layers",
        help="comma-separated layer names (default: reference conv1..conv5; for "
        "other models up to 5 convolutions spread through the network)",
    )
    p.add_argument(
        "--checkpoints",
        nargs="+",
        type=Path,
        metavar="EPOCH=FILE",
        help="training snapshots for the evolution figure, as EPOCH=weights-file",
    )
    p.add_argument("--max-images", type=int, default=1000, help="images used (default 1000)")
    p.add_argument("--k", type=int, default=9, help="top activations per channel (default 9)")
    p.add_argument("--channels", type=int, default=16, help="channels shown per layer")
    p.add_argument(
        "--batch-size",
        type=int,
        help="images per forward pass and seeds per projection pass (default: 256 for "
        "the bundled data, 32 for --images)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="DataLoader processes reading the images (default 0: in the main process)",
    )
    p.add_argument(
        "--device", default="cpu", help="torch device for the model and batches (cpu, cuda, ...)"
    )
    p.add_argument(
        "--atlas",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the unit atlas into OUT/atlas/, linked from index.html (default: on)",
    )
    p.add_argument(
        "--atlas-channels",
        default="all",
        metavar="N|all",
        help="channels per layer in the atlas: the N strongest, or all (default all)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a small smoke-test report: 64 images, 4 channels, top-4, 2 layers, "
        "2 checkpoints, fewer images and steps in the other analyses",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    args = p.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 32 if args.images else 256
    if args.workers < 0:
        p.error(f"--workers must be 0 or more, got {args.workers}")
    if args.atlas_channels == "all":
        args.atlas_channels = None
    else:
        try:
            args.atlas_channels = int(args.atlas_channels)
        except ValueError:
            p.error(
                f"--atlas-channels must be a positive integer or 'all', got {args.atlas_channels!r}"
            )
        if args.atlas_channels < 1:
            p.error(
                f"--atlas-channels must be a positive integer or 'all', got {args.atlas_channels}"
            )
    for name in ("max_images", "k", "channels", "batch_size", "input_size", "resize"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.resize is not None and args.resize < args.input_size:
        p.error(f"--resize {args.resize} is smaller than --input-size {args.input_size}")
    if args.quick:
        args.max_images, args.channels = min(args.max_images, 64), min(args.channels, 4)
        args.k = min(args.k, 4)
    return args


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated numbers, got {text!r}") from None


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state dict, or the ``model``/``state_dict`` entry of a checkpoint dict, strictly."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and runtime errors for a damaged or foreign file
        raise ValueError(f"cannot read weights file {path}: {err}") from err
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"weights file {path} does not fit the model: {err}") from err


def with_input_normalization(
    model: nn.Module, mean: Sequence[float], std: Sequence[float]
) -> nn.Module:
    """``model`` made to take images ``(N, C, H, W)`` in [0, 1]: it first applies
    ``(x - mean) / std`` per channel.

    The model's class is replaced by a subclass whose ``forward(x)`` normalises (mean and std
    become buffers ``input_mean``/``input_std``), so module names are unchanged and ``torch.fx``
    tracing (receptive fields, incremental occlusion) sees the normalisation — a forward
    pre-hook on the root would be skipped by tracing. Returns the same (modified) object.
    """
    base = type(model)

    def forward(self, x: Tensor) -> Tensor:
        return base.forward(self, (x - self.input_mean) / self.input_std)

    model.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
    model.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))
    model.__class__ = type(f"Normalized{base.__name__}", (base,), {"forward": forward})
    return model


def _default_layers(model: nn.Module, count: int = 5) -> list[str]:
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if len(convs) <= count:
        return convs
    picks = torch.linspace(0, len(convs) - 1, count).round().long().tolist()
    return [convs[i] for i in dict.fromkeys(picks)]


def _evenly(dataset: Dataset, count: int) -> Dataset:
    total = len(dataset)  # type: ignore[arg-type]
    if count >= total:
        return dataset
    return Subset(dataset, torch.linspace(0, total - 1, count).round().long().tolist())


class _WithLabels(Dataset):
    """``(image, -1)`` pairs from an ImageFolder whose class folders are not the model's."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.dataset[index][0], -1


def _image_folder(
    args: argparse.Namespace, model: nn.Module, class_names: Sequence[str] | None
) -> tuple[Dataset, tuple[str, ...] | None]:
    """The ``--images`` ImageFolder (resized to ``--resize``, centre-cropped to
    ``--input-size``) and the class names; with ``--folder-labels`` its labels are the model's
    class indices (:func:`~deconvnet_attr.data.folder_labels`)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    in_channels = convs[0].in_channels if convs else 3
    transform = data_module.image_folder_transform(
        args.input_size, in_channels, train=False, resize=args.resize or args.input_size
    )
    folder = data_module.image_folder(args.images, transform=transform)
    if not args.folder_labels:
        return folder, None if class_names is None else tuple(class_names)
    device = next(model.parameters()).device
    with torch.no_grad():
        outputs = model(folder[0][0][None].to(device)).shape[-1]
    labels = data_module.folder_labels(folder.classes, class_names, outputs)
    data_module.relabel(folder, labels)
    if class_names is None:
        names = {label: name for label, name in zip(labels, folder.classes, strict=True)}
        class_names = [names.get(i, f"class {i}") for i in range(outputs)]
    return folder, tuple(class_names)


def check_device(name: str) -> torch.device:
    """``name`` as a ``torch.device``; ``ValueError`` naming it when it is not a device string
    or the device is not available here (e.g. ``cuda`` on a machine without a GPU)."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r} is not a torch device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name!r}: only {torch.cuda.device_count()} CUDA devices here"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name!r}: MPS is not available on this machine")
    return device


def context_from_args(args: argparse.Namespace, command: str = "") -> ReportContext:
    """Load the model, images and checkpoints named by the command-line arguments."""
    if bool(args.mean) != bool(args.std):
        raise ValueError("--mean and --std go together")
    check_device(args.device)

    def prepared(net: nn.Module) -> nn.Module:
        if args.mean:
            net = with_input_normalization(
                net, _floats(args.mean, "mean"), _floats(args.std, "std")
            )
        return net.to(args.device).eval()

    def load(weights: Path | None) -> nn.Module:
        if args.model is None and weights is not None:  # a deconvnet-attr model file
            if not weights.is_file():
                raise FileNotFoundError(f"model file not found: {weights}")
            try:
                return models.create_model(weights)
            except Exception as err:  # a damaged file: pickle, zip, key or runtime errors
                raise ValueError(f"cannot load model file {weights}: {err}") from err
        net = models.create_model(args.model, args.num_classes)
        if weights is not None:
            load_weights(net, weights)
        return net

    checkpoints: dict[int, nn.Module] | None = None
    parts = None
    if args.model is None and args.weights is None:
        model: nn.Module = models.load_reference()
        name = "ZFNet (Fashion-MNIST reference)"
        checkpoints = dict(models.load_checkpoints())
    else:
        model = load(args.weights)
        name = args.model or "deconvnet-attr model"
        name += f" ({args.weights.name})" if args.weights else " (untrained)"
    if args.checkpoints:
        checkpoints = {}
        for spec in args.checkpoints:
            epoch, sep, path = str(spec).partition("=")
            if not sep or not epoch.isdigit():
                raise ValueError(f"--checkpoints entries must be EPOCH=FILE, got {str(spec)!r}")
            checkpoints[int(epoch)] = load(Path(path))
    model = prepared(model)
    if checkpoints:
        checkpoints = {epoch: prepared(net) for epoch, net in checkpoints.items()}

    class_names = getattr(model, "class_names", None)
    if args.images is None:
        images, labels = data_module.load_eval_subset()
        dataset: Dataset = _evenly(TensorDataset(images, labels), args.max_images)
        data_name, has_labels = "bundled Fashion-MNIST evaluation subset", True
        class_names = class_names or data_module.FASHION_MNIST_CLASSES
        parts = FASHION_MNIST_PARTS
    else:
        folder, class_names = _image_folder(args, model, class_names)
        has_labels = args.folder_labels
        dataset = _evenly(folder if has_labels else _WithLabels(folder), args.max_images)
        data_name = f"image folder {args.images}"
        skipped = getattr(folder, "skipped", [])  # set by data.image_folder
        if skipped:
            data_name += f" ({len(skipped)} unreadable images skipped)"
    if args.layers:
        layers = [layer.strip() for layer in args.layers.split(",") if layer.strip()]
    elif args.model is None:
        layers = [f"conv{i}" for i in range(1, 6) if hasattr(model, f"conv{i}")]
    else:
        layers = _default_layers(model)
    resolve_layers(model, layers)  # LayerError (a ValueError) naming an unknown layer
    if args.quick:
        layers = layers[:2]
        if checkpoints:
            epochs = sorted(checkpoints)
            checkpoints = {e: checkpoints[e] for e in (epochs[0], epochs[-1])}
    return ReportContext(
        model=model,
        model_name=name,
        data=dataset,
        data_name=data_name,
        layers=layers,
        out=args.out,
        class_names=class_names,
        has_labels=has_labels,
        checkpoints=checkpoints,
        k=args.k,
        channels=args.channels,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        quick=args.quick,
        command=command,
        parts=parts,
        atlas=args.atlas,
        atlas_channels=args.atlas_channels,
        workers=args.workers,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``deconvnet-attr report``; returns the exit status.

    0: the whole report was written. 1: the page was written, but some sections failed (each
    shows its error on the page and gets an ``error: section ...`` line on stderr; ``--debug``
    raises the first instead). A user error (bad argument, path or file: ``OSError``,
    ``ValueError``, ``TypeError``) raises before the page is written; the ``deconvnet-attr``
    command (:func:`deconvnet_attr.cli.run`) turns it into one line ``error: ...`` and status 2.

    Under ``torchrun --nproc_per_node=N`` the ranks join one process group (gloo, or nccl with
    ``--device cuda``: rank ``r`` on ``cuda:LOCAL_RANK``), share the mining and the projections
    (:mod:`deconvnet_attr.distributed`) and rank 0 alone writes the site and prints.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    matplotlib.use("Agg")
    start = time.perf_counter()
    with one_line_warnings(), process_group(check_device(args.device)) as device:
        rank, world = rank_and_world()
        if world > 1:
            args.device = str(device)  # with --device cuda: cuda:LOCAL_RANK
        if rank == 0:
            writable_dir(args.out)
        ctx = context_from_args(args, command="deconvnet-attr report " + " ".join(argv))
        result = write_report(ctx, raise_errors=args.debug)
    if rank != 0:  # rank 0 reports for all
        return 1 if result.failed else 0
    for title, error in result.failed.items():
        print(f"error: section {title!r} failed: {error}", file=sys.stderr)
    ranks = f" by {world} processes" if world > 1 else ""
    print(f"report written to {result.index}{ranks} in {time.perf_counter() - start:.1f} s")
    return 1 if result.failed else 0
