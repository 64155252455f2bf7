"""ZFNet models, the bundled Fashion-MNIST reference and the one model factory (see :mod:`.zfnet`,
:mod:`.reference`, :mod:`.factory`)."""

from .factory import create_model
from .reference import ARCHS, load_checkpoints, load_model, load_reference, save_model
from .zfnet import REMOVABLE_LAYERS, ZFNet, zfnet, zfnet_fashion

__all__ = [
    "ARCHS",
    "REMOVABLE_LAYERS",
    "ZFNet",
    "create_model",
    "load_checkpoints",
    "load_model",
    "load_reference",
    "save_model",
    "zfnet",
    "zfnet_fashion",
]
