"""The unit atlas of the bundled reference model: every channel of conv1-conv5 (176 in all).

    python examples/atlas.py --out atlas            # then open atlas/index.html in a browser
    python examples/atlas.py --images 200 --occlusion 3
    python examples/atlas.py --screenshots docs/figures   # + atlas-layer.png, atlas-channel.png

Runs on the bundled Fashion-MNIST reference model and evaluation subset (no network). The same
call, :func:`deconvnet_attr.atlas.build_atlas`, takes any CNN, layer names and images (a tensor,
a map-style Dataset or an unshuffled DataLoader).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from torch.utils.data import Subset, TensorDataset

from deconvnet_attr.atlas import build_atlas
from deconvnet_attr.data import FASHION_MNIST_CLASSES, load_eval_subset
from deconvnet_attr.models import load_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="atlas", help="atlas folder (index.html inside)")
    parser.add_argument("--layers", default="conv1,conv2,conv3,conv4,conv5")
    parser.add_argument("--images", type=int, default=1000, help="first N of the 1,000 images")
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--occlusion", type=int, default=0, help="images with occlusion maps")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--screenshots", help="folder for screenshots (needs playwright, chromium)")
    args = parser.parse_args()

    start = time.perf_counter()
    model = load_reference()
    images, labels = load_eval_subset()  # (1000, 1, 28, 28) in [0, 1], (1000,)
    data = Subset(TensorDataset(images, labels), range(min(args.images, len(images))))
    index = build_atlas(
        model,
        args.layers.split(","),
        data,
        args.out,
        k=args.k,
        batch_size=args.batch_size,
        occlusion_images=range(args.occlusion),
        class_names=FASHION_MNIST_CLASSES,
        title="Unit atlas: ZFNet Fashion-MNIST reference",
        progress=not args.no_progress,
    )
    print(f"atlas written to {index} in {time.perf_counter() - start:.1f} s")
    if args.screenshots:
        screenshots(index.parent, Path(args.screenshots))


def screenshots(atlas: Path, folder: Path) -> None:
    """A layer page and a channel page, as Debian's headless Chromium shows them."""
    from playwright.sync_api import sync_playwright

    folder.mkdir(parents=True, exist_ok=True)
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = browser.new_page(viewport={"width": 1000, "height": 640})
        loaded = "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)"
        page.goto((atlas / "layer-conv3.html").as_uri())
        page.wait_for_function(loaded)
        page.screenshot(path=str(folder / "atlas-layer.png"))
        page.goto((atlas / "layer-conv1.html").as_uri())
        page.click("#grid .tile >> nth=0")  # the strongest channel of conv1, with its filter
        page.wait_for_function(loaded)
        page.screenshot(path=str(folder / "atlas-channel.png"))
        print(f"wrote {folder}/atlas-layer.png and atlas-channel.png")
        browser.close()


if __name__ == "__main__":
    main()
