"""ZFNet models and the bundled Fashion-MNIST reference (see :mod:`.zfnet`, :mod:`.reference`)."""

from .reference import (
    ARCHS,
    build_model,
    load_checkpoints,
    load_model,
    load_reference,
    save_model,
)
from .zfnet import REMOVABLE_LAYERS, ZFNet, zfnet, zfnet_fashion

__all__ = [
    "ARCHS",
    "REMOVABLE_LAYERS",
    "ZFNet",
    "build_model",
    "load_checkpoints",
    "load_model",
    "load_reference",
    "save_model",
    "zfnet",
    "zfnet_fashion",
]
