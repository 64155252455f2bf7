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
from importlib import resources
from pathlib import Path

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
    "image_folder",
    "image_folder_transform",
    "load_eval_subset",
    "load_fashion_mnist",
    "make_eval_subset",
    "read_idx",
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
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
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


def image_folder_transform(input_size: int, in_channels: int, train: bool):
    """The paper's ImageNet preprocessing, scaled to ``input_size``: images → float ``(C, S, S)``.

    Training: resize the shorter side to ``round(input_size * 256 / 224)``, take a random
    ``input_size`` crop and a random horizontal flip. Evaluation: the same resize and a centre crop.
    Images are converted to ``in_channels`` (1 = grayscale, 3 = RGB); values stay in [0, 1].
    """
    from torchvision import transforms

    resize = round(input_size * 256 / 224)
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


def image_folder(path: str | os.PathLike, transform=None):
    """A ``torchvision.datasets.ImageFolder`` over ``path`` (one sub-directory per class).

    Raises ``FileNotFoundError`` naming ``path`` when it does not exist or holds no images.
    """
    from torchvision.datasets import ImageFolder

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder not found: {path}")
    try:
        return ImageFolder(str(path), transform=transform)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image folder {path} holds no images: {err}") from err
