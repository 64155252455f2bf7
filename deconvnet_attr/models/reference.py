"""Saving and loading ZFNet model files, and the bundled reference model with its snapshots.

A model file is a ``torch.save`` dict with ``arch`` ("zfnet" or "zfnet-fashion"), ``config`` (the
:class:`~.zfnet.ZFNetConfig` fields, so a file keeps loading if an arch's default sizes change),
``num_classes``, ``remove`` (removed layer names), ``class_names`` (tuple or None), ``epoch`` and
``model`` (the state dict). Training checkpoints written by :mod:`deconvnet_attr.train` hold the
same keys plus the optimiser state, so :func:`load_model` reads both.

Shipped under ``deconvnet_attr/models/weights/``: ``zfnet_fashion.pt`` (the reference model, fp32)
and ``zfnet_fashion_epochNNN.pt`` (training-evolution snapshots, fp16), all trained by
``examples/train_reference.sh``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .zfnet import (
    FIG6_ALEXNET_STEM,
    FIG6_ZFNET_STEM,
    ZFNET_FASHION,
    ZFNET_IMAGENET,
    ZFNet,
    ZFNetConfig,
    build_zfnet,
    fig6_alexnet_stem,
    fig6_zfnet_stem,
    zfnet,
    zfnet_fashion,
)

__all__ = [
    "ARCHS",
    "ARCH_CONFIGS",
    "REFERENCE_FILE",
    "load_checkpoints",
    "load_model",
    "load_reference",
    "model_record",
    "save_model",
]

ARCHS: dict[str, Callable[..., ZFNet]] = {
    "zfnet": zfnet,
    "zfnet-fashion": zfnet_fashion,
    "fig6-alexnet-stem": fig6_alexnet_stem,
    "fig6-zfnet-stem": fig6_zfnet_stem,
}
ARCH_CONFIGS: dict[str, ZFNetConfig] = {
    "zfnet": ZFNET_IMAGENET,
    "zfnet-fashion": ZFNET_FASHION,
    "fig6-alexnet-stem": FIG6_ALEXNET_STEM,
    "fig6-zfnet-stem": FIG6_ZFNET_STEM,
}
REFERENCE_FILE = "zfnet_fashion.pt"
_SNAPSHOT = re.compile(r"zfnet_fashion_epoch(\d+)\.pt")


def model_record(model: ZFNet, arch: str, epoch: int, dtype: torch.dtype | None = None) -> dict:
    """The dict :func:`save_model` writes; floating-point tensors are cast to ``dtype`` if given."""
    state = {
        k: (
            v.detach().to("cpu", dtype)
            if dtype is not None and v.is_floating_point()
            else v.detach().cpu()
        )
        for k, v in model.state_dict().items()
    }
    return {
        "arch": arch,
        "config": dataclasses.asdict(model.config),
        "num_classes": model.num_classes,
        "remove": list(model.removed),
        "class_names": None if model.class_names is None else list(model.class_names),
        "epoch": epoch,
        "model": state,
    }


def save_model(
    model: ZFNet, path: str | os.PathLike, arch: str, epoch: int, dtype: torch.dtype | None = None
) -> Path:
    """Write a model file (see module docstring) atomically; returns its path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(model_record(model, arch, epoch, dtype), tmp)
    os.replace(tmp, path)
    return path


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ZFNet:
    """Rebuild the model stored in a model file or training checkpoint, in eval mode, fp32.

    The returned model has ``class_names`` and an ``epoch`` attribute (the epochs trained).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    record = torch.load(path, map_location=map_location, weights_only=True)
    missing = {"arch", "num_classes", "remove", "model"} - set(record)
    if missing:
        raise ValueError(f"{path} is not a deconvnet-attr model file (missing {sorted(missing)})")
    if "config" in record:
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in record["config"].items()
        }
        config = ZFNetConfig(**fields)
    elif record["arch"] in ARCH_CONFIGS:  # files written before the config was stored
        config = ARCH_CONFIGS[record["arch"]]
    else:
        raise ValueError(f"{path} holds unknown arch {record['arch']!r}; known: {', '.join(ARCHS)}")
    model = build_zfnet(config, record["num_classes"], record["remove"])
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in record["model"].items()}
    )
    names = record.get("class_names")
    model.class_names = None if names is None else tuple(names)
    model.epoch = record.get("epoch")
    return model.to(map_location).eval()


def _weights_dir():
    return resources.files("deconvnet_attr") / "models" / "weights"


def load_reference() -> ZFNet:
    """The bundled reference: :func:`zfnet_fashion` trained on Fashion-MNIST, in eval mode.

    Input float ``(N, 1, 28, 28)`` images in [0, 1] (normalisation is inside the model); output
    ``(N, 10)`` logits; ``model.class_names`` is
    :data:`deconvnet_attr.data.FASHION_MNIST_CLASSES`. Loads from package data, no network.
    """
    with resources.as_file(_weights_dir() / REFERENCE_FILE) as path:
        return load_model(path)


def load_checkpoints() -> dict[int, ZFNet]:
    """The bundled training-evolution snapshots of the reference, ``{epoch: model}`` by epoch.

    Each model is in eval mode (fp16 weights upcast to fp32); the last entry is the reference.
    For the paper's Fig. 4 (feature evolution during training).
    """
    models: dict[int, ZFNet] = {}
    for entry in _weights_dir().iterdir():
        match = _SNAPSHOT.fullmatch(entry.name)
        if match:
            with resources.as_file(entry) as path:
                models[int(match.group(1))] = load_model(path)
    reference = load_reference()
    if reference.epoch is None:
        raise ValueError("the shipped reference model file records no training epoch")
    models[reference.epoch] = reference
    return dict(sorted(models.items()))
