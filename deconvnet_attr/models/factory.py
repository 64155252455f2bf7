"""One model factory: a model by name, from any of the places the package knows of.

:func:`create_model` is what ``deconvnet-attr train --arch`` and ``deconvnet-attr report --model``
resolve their names with. Everything it builds is randomly initialised (nothing is downloaded),
except a deconvnet-attr model file, which holds its own weights.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from pathlib import Path
from typing import Any

from torch import nn

from .reference import ARCHS, load_model

__all__ = ["create_model"]

_MODEL_FILE_SUFFIXES = (".pt", ".pth")


def create_model(
    name: str | os.PathLike, num_classes: int | None = None, **kwargs: Any
) -> nn.Module:
    """Build the model ``name`` names; untrained unless ``name`` is a model file.

    ``name`` is, in the order tried:

    * a deconvnet-attr model file or training checkpoint (a path object, an existing file, or a
      name ending in ``.pt``/``.pth``): loaded by :func:`~.reference.load_model`, in eval mode;
    * a deconvnet-attr arch (a key of :data:`~.reference.ARCHS`: ``"zfnet"``,
      ``"zfnet-fashion"``; ``remove=`` builds a Table 3 variant);
    * ``"timm:NAME"`` or ``"torchvision:NAME"``: that library's architecture;
    * ``"package.module:factory"`` (``factory`` may be dotted, ``"pkg.mod:Class.build"``): the
      callable, imported and called;
    * a plain torchvision architecture (``torchvision.models.list_models()``), else a plain timm
      one (``timm.list_models()``); a name both know is torchvision's.

    Args:
        name: see above.
        num_classes: passed as ``num_classes=`` when given (the constructor's default otherwise);
            for a model file it must match the file's.
        **kwargs: further keyword arguments for the constructor (not for a model file).

    Raises:
        ValueError: an unknown name (the message names it), an import that fails, a bad
            ``num_classes``, or a model file given ``num_classes``/``kwargs`` it does not have.
        TypeError: ``name`` is not a string or path, a ``module:factory`` that is not callable or
            does not return an ``nn.Module``.
        FileNotFoundError: a model-file name that does not exist.
    """
    if not isinstance(name, str | os.PathLike):
        raise TypeError(
            f"model name must be a string or a path, got {type(name).__name__} {name!r}"
        )
    if num_classes is not None and (
        not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1
    ):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if _is_model_file(name):
        return _from_model_file(Path(name), num_classes, kwargs)
    name = str(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if name in ARCHS:
        return ARCHS[name](**kwargs)
    prefix, sep, rest = name.partition(":")
    if sep and prefix == "timm":
        return _timm(rest, kwargs)
    if sep and prefix == "torchvision":
        return _torchvision(rest, kwargs)
    if sep:
        return _from_factory(name, prefix, rest, kwargs)
    if _torchvision_knows(name):
        return _torchvision(name, kwargs)
    if _timm_knows(name):
        return _timm(name, kwargs)
    raise ValueError(
        f"unknown model {name!r}: not a deconvnet-attr arch ({', '.join(ARCHS)}), a torchvision "
        "or timm architecture, timm:NAME, torchvision:NAME, module:factory, nor a model file"
    )


def _is_model_file(name: str | os.PathLike) -> bool:
    if not isinstance(name, str):
        return True
    return Path(name).is_file() or name.endswith(_MODEL_FILE_SUFFIXES)


def _from_model_file(path: Path, num_classes: int | None, kwargs: dict[str, Any]) -> nn.Module:
    if kwargs:
        raise ValueError(
            f"a model file takes no constructor arguments, got {sorted(kwargs)} for {path}"
        )
    model = load_model(path)
    if num_classes is not None and num_classes != model.num_classes:
        raise ValueError(
            f"num_classes={num_classes} does not match the {model.num_classes} classes of {path}"
        )
    return model


def _torchvision_knows(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models()


def _torchvision(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    if not _torchvision_knows(name):
        raise ValueError(f"unknown torchvision architecture {name!r}")
    builder = torchvision.models.get_model_builder(name)
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs = {"weights_backbone": None, **kwargs}  # detection/segmentation: no download
    return torchvision.models.get_model(name, weights=None, **kwargs)


def _timm_knows(name: str) -> bool:
    import timm

    return bool(timm.is_model(name))


def _timm(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if not _timm_knows(name):
        raise ValueError(f"unknown timm architecture {name!r}")
    return timm.create_model(name, pretrained=False, **kwargs)


def _from_factory(name: str, module_name: str, attribute: str, kwargs: dict[str, Any]) -> nn.Module:
    if not module_name or not attribute:
        raise ValueError(f"model factory must be 'package.module:factory', got {name!r}")
    try:
        factory = functools.reduce(
            getattr, attribute.split("."), importlib.import_module(module_name)
        )
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import model factory {name!r}: {err}") from err
    if not callable(factory):
        raise TypeError(f"model factory {name!r} is a {type(factory).__name__}, not a callable")
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model factory {name!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model
