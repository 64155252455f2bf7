"""Data for the reference model: Fashion-MNIST idx files, the bundled eval subset, ImageFolder.

Fashion-MNIST is read from Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``); nothing is ever downloaded. Images come back as float32
``(N, 1, 28, 28)`` tensors in [0, 1] and labels as int64 ``(N,)`` — the input format of
:func:`deconvnet_attr.models.load_reference`. A class-balanced 1,000-image subset of the test split
ships inside the package (``assets/fashion_mnist_eval.npz``) so demos and tests work without the
Debian package.
"""

from __future__ import annotations

import gzip
import os
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "DEFAULT_DEBIAN_DIR",
    "UpsampledImages",
    "EVAL_SUBSET_FILE",
    "FASHION_MNIST_CLASSES",
    "fashion_mnist_files",
    "folder_labels",
    "image_folder",
    "image_folder_transform",
    "load_eval_subset",
    "load_fashion_mnist",
    "make_eval_subset",
    "read_idx",
    "relabel",
    "upsample_images",
]

DEFAULT_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
EVAL_SUBSET_FILE = "fashion_mnist_eval.npz"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_APT_HINT = "install it with `apt-get install -y dataset-fashion-mnist`"
_IDX_DTYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (as in LeCun's MNIST format), gzip-compressed if its name ends in ``.gz``.

    Returns an array of the file's dtype and shape (e.g. uint8 ``(N, 28, 28)`` for images).
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a malformed one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"idx file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (header bytes {raw[:4]!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: {len(raw)} bytes, header needs {header}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + dtype.itemsize * int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(f"{path} has {len(raw)} bytes, its header {shape} implies {expected}")
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def fashion_mnist_files(
    split: str, root: str | os.PathLike = DEFAULT_DEBIAN_DIR
) -> tuple[Path, Path]:
    """Paths of the ``(images, labels)`` idx files of ``split`` ("train"/"test") under ``root``."""
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = _SPLIT_PREFIX[split]
    root = Path(root)
    return root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike = DEFAULT_DEBIAN_DIR
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a Fashion-MNIST split from the Debian idx files.

    Returns ``(images, labels)``: float32 ``(N, 1, 28, 28)`` in [0, 1] and int64 ``(N,)``, with
    N = 60,000 for "train" and 10,000 for "test". Raises ``FileNotFoundError`` naming the missing
    file and the apt command that installs it.
    """
    image_path, label_path = fashion_mnist_files(split, root)
    for path in (image_path, label_path):
        if not path.is_file():
            raise FileNotFoundError(f"Fashion-MNIST file not found: {path}; {_APT_HINT}")
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{image_path} has shape {images.shape} but {label_path} has shape {labels.shape}"
        )
    return _to_tensors(images, labels)


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).float().div_(255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_eval_subset() -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled class-balanced 1,000-image Fashion-MNIST test subset (100 per class).

    Same format as :func:`load_fashion_mnist`: float32 ``(1000, 1, 28, 28)`` in [0, 1], int64
    ``(1000,)``. The images are the first 100 test images of each class, in test-set order.
    """
    with resources.as_file(resources.files("deconvnet_attr") / "assets" / EVAL_SUBSET_FILE) as p:
        with np.load(p) as npz:
            return _to_tensors(npz["images"], npz["labels"])


def make_eval_subset(
    out: str | os.PathLike, per_class: int = 100, root: str | os.PathLike = DEFAULT_DEBIAN_DIR
) -> Path:
    """Write the eval subset: the first ``per_class`` test images of each class, in test order.

    The ``.npz`` holds ``images`` (uint8 ``(10*per_class, 28, 28)``), ``labels`` (uint8) and
    ``indices`` (int64 positions in the 10k test split). Returns the written path.
    """
    image_path, label_path = fashion_mnist_files("test", root)
    for path in (image_path, label_path):
        if not path.is_file():
            raise FileNotFoundError(f"Fashion-MNIST file not found: {path}; {_APT_HINT}")
    images, labels = read_idx(image_path), read_idx(label_path)
    picked = [np.flatnonzero(labels == c)[:per_class] for c in range(len(FASHION_MNIST_CLASSES))]
    indices = np.sort(np.concatenate(picked))
    out = Path(out)
    np.savez_compressed(out, images=images[indices], labels=labels[indices], indices=indices)
    return out


def upsample_images(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinear upsampling of ``(N, C, H, W)`` images by an integer ``factor`` → ``(N, C, fH, fW)``.

    ``align_corners=False`` (pixel centres keep their positions); values stay in the input's range
    because every output pixel is a convex combination of input pixels. Used for the Fig. 6 models,
    which take Fashion-MNIST at 4x (112 px). Returns a new tensor; ``factor=1`` returns a copy.
    """
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(
            f"images must be an (N, C, H, W) tensor, got {getattr(images, 'shape', images)!r}"
        )
    if factor == 1:
        return images.clone()
    return F.interpolate(images, scale_factor=factor, mode="bilinear", align_corners=False)


class UpsampledImages(Dataset):
    """``(image, label)`` pairs with each image upsampled on access (:func:`upsample_images`).

    Keeps the small ``(N, C, H, W)`` images in memory (60,000 Fashion-MNIST images at 112 px
    would take 3 GB) and returns ``(C, factor*H, factor*W)`` float images and int64 labels.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, factor: int) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        upsample_images(images[:1], factor)  # validates images and factor
        self.images, self.labels, self.factor = images, labels, factor

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return upsample_images(self.images[index : index + 1], self.factor)[0], self.labels[index]


def image_folder_transform(
    input_size: int, in_channels: int, train: bool, resize: int | None = None
):
    """Images → float ``(C, S, S)`` in [0, 1], ``S = input_size``; ``in_channels`` 1 = grayscale,
    3 = RGB.

    The shorter side is resized to ``resize``, default the paper's ImageNet ratio
    ``round(input_size * 256 / 224)`` (training and its validation); then training takes a random
    ``input_size`` crop and a random horizontal flip, evaluation the centre crop.
    ``resize=input_size`` keeps the whole (square) image: the report's ``--images`` default.
    """
    from torchvision import transforms

    if resize is None:
        resize = round(input_size * 256 / 224)
    if resize < input_size:
        raise ValueError(f"resize {resize} is smaller than the crop input_size {input_size}")
    steps = [
        transforms.Grayscale(1) if in_channels == 1 else transforms.Lambda(_rgb),
        transforms.Resize(resize),
    ]
    if train:
        steps += [transforms.RandomCrop(input_size), transforms.RandomHorizontalFlip()]
    else:
        steps += [transforms.CenterCrop(input_size)]
    return transforms.Compose([*steps, transforms.ToTensor()])


def _rgb(image):
    return image.convert("RGB")


def _unreadable(path: str) -> str | None:
    """Why PIL cannot read the image file ``path`` (header and structure check), else ``None``."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        return f"{type(err).__name__}: {err}"
    return None


def image_folder(path: str | os.PathLike, transform=None):
    """A ``torchvision.datasets.ImageFolder`` over ``path`` (one sub-directory per class),
    without the files PIL cannot read.

    Every file is opened and verified (header and structure, no full decode); unreadable ones
    are left out with one ``UserWarning`` that counts them and names the first; the dataset's
    ``skipped`` attribute lists their paths. Raises ``FileNotFoundError`` naming ``path`` when it
    does not exist or holds no images, ``ValueError`` when none of its images can be read.
    """
    from torchvision.datasets import ImageFolder

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder not found: {path}")
    try:
        folder = ImageFolder(str(path), transform=transform)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image folder {path} holds no images: {err}") from err
    problems = {p: why for p, _ in folder.samples if (why := _unreadable(p)) is not None}
    if len(problems) == len(folder.samples):
        first, why = next(iter(problems.items()))
        raise ValueError(
            f"image folder {path}: none of its {len(problems)} images can be read "
            f"(e.g. {first}: {why})"
        )
    if problems:
        first, why = next(iter(problems.items()))
        warnings.warn(
            f"image folder {path}: skipped {len(problems)} unreadable image(s) of "
            f"{len(folder.samples)} (e.g. {first}: {why})",
            stacklevel=2,
        )
        folder.samples = [s for s in folder.samples if s[0] not in problems]
        folder.imgs = folder.samples
        folder.targets = [t for _, t in folder.samples]
    folder.skipped = list(problems)
    return folder


def _class_key(name: str) -> str:
    return "".join(ch for ch in name.casefold() if ch.isalnum())


def folder_labels(
    folders: Sequence[str], class_names: Sequence[str] | None, num_classes: int
) -> list[int]:
    """The model's class index for each ImageFolder class folder (``folders``, sorted).

    With ``class_names`` (the model's, in its output order): each folder must name one of them;
    names match ignoring case and everything but letters and digits (``t-shirt_top`` is
    ``T-shirt/top``), so the folders may be any subset in any order. Without: folders named
    ``0``, ``1``, ... are those indices; otherwise the sorted folders are classes 0..K-1.
    Raises ``ValueError`` naming the folders that match no class, or an index / a folder count
    beyond the model's ``num_classes`` outputs.
    """
    if class_names is not None:
        keys: dict[str, int] = {}
        for index, name in enumerate(class_names):
            keys.setdefault(_class_key(name), index)
        unmatched = [f for f in folders if _class_key(f) not in keys]
        if unmatched:
            raise ValueError(
                f"class folders {unmatched} name none of the model's classes "
                f"{list(class_names)} (folders must be named after them)"
            )
        return [keys[_class_key(f)] for f in folders]
    if all(f.isdigit() for f in folders):
        labels = [int(f) for f in folders]
    else:
        labels = list(range(len(folders)))
    if max(labels) >= num_classes:
        raise ValueError(
            f"class folders {list(folders)} need class index {max(labels)}, "
            f"but the model has {num_classes} outputs"
        )
    return labels


def relabel(folder, labels: Sequence[int]) -> None:
    """Give the images of class folder ``i`` of an ImageFolder the label ``labels[i]``."""
    folder.samples = [(p, labels[t]) for p, t in folder.samples]
    folder.imgs = folder.samples
    folder.targets = [t for _, t in folder.samples]
    folder.class_to_idx = {name: labels[i] for i, name in enumerate(folder.classes)}
