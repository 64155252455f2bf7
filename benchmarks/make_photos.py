"""Make a folder of photos for the report's scale measurements (never committed).

``python benchmarks/make_photos.py OUT --count 200 --size 224`` writes ``OUT/photos/NNNN.jpg``:
random crops (a quarter to all of the shorter side), horizontal flips and colour jitter of
scikit-learn's two bundled sample photos (``sklearn.datasets.load_sample_images``: a Chinese
temple and a flower, 427x640). Deterministic for a given ``--seed``. One class folder, so it is
an ImageFolder for ``deconvnet-attr report --images OUT``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance
from sklearn.datasets import load_sample_images


def make_photos(out: Path, count: int = 200, size: int = 224, seed: int = 0) -> list[Path]:
    """Write ``count`` JPEGs of ``size`` x ``size`` into ``out/photos/``; returns their paths."""
    if count < 1 or size < 8:
        raise ValueError(f"count must be >= 1 and size >= 8, got count={count}, size={size}")
    rng = np.random.default_rng(seed)
    sources = [Image.fromarray(image) for image in load_sample_images().images]
    folder = out / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        photo = sources[i % len(sources)]
        side = int(rng.uniform(0.25, 1.0) * min(photo.size))
        left = int(rng.integers(0, photo.width - side + 1))
        top = int(rng.integers(0, photo.height - side + 1))
        image = photo.crop((left, top, left + side, top + side)).resize((size, size))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            image = enhance(image).enhance(float(rng.uniform(0.7, 1.3)))
        path = folder / f"{i:04d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    paths = make_photos(args.out, args.count, args.size, args.seed)
    print(f"{len(paths)} photos in {args.out / 'photos'}")


if __name__ == "__main__":
    main()
