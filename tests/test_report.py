"""The report builds: quick mode on the bundled data, an own model, an ImageFolder, checkpoints."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deconvnet_attr.ablation import PAPER_GROUPS
from deconvnet_attr.analysis.correspondence import FASHION_MNIST_PARTS, part_images
from deconvnet_attr.data import load_eval_subset
from deconvnet_attr.models import load_reference, zfnet_fashion
from deconvnet_attr.report import build_model, html_table, main, with_input_normalization


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def read_page(out: Path) -> _Page:
    page = _Page()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    for src in page.images:  # every figure is a PNG beside index.html
        assert (out / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    assert sorted(p.name for p in out.glob("*.png")) == sorted(page.images)
    return page


def test_quick_report_on_the_bundled_reference(tmp_path):
    out = tmp_path / "report"
    assert main(["--out", str(out), "--quick", "--no-progress"]) == 0
    page = read_page(out)
    assert page.headings == [
        "Overview",
        "Receptive fields",
        "Top activations and their projections (Fig. 2)",
        "Feature evolution during training (Fig. 4)",
        "Invariance (Fig. 5)",
        "Occlusion sensitivity (Fig. 7)",
        "Correspondence analysis (Sec. 5.3, Table 1)",
        "Layer ablation",
    ]
    assert {
        "fig2-conv1.png",
        "fig2-conv2.png",
        "fig4-conv1.png",
        "fig5-invariance.png",
        "fig7-occlusion-0.png",
        "correspondence.png",
        "ablation.png",
    } <= set(page.images)
    text = (out / "index.html").read_text(encoding="utf-8")
    # the receptive-field row of conv1: its kernel, and its output shape on a 28x28 image
    model = load_reference()
    c, h, w = model.conv1(model.normalize(torch.zeros(1, 1, 28, 28))).shape[1:]
    kh, kw = model.conv1.kernel_size
    assert f"<td>conv1 *</td><td>Conv2d</td><td>{c}×{h}×{w}</td><td>{kh}×{kw}</td>" in text
    # the ablation table lists the paper's layer groups, the correspondence table the parts
    assert all(f"<td>{group}</td>" in text for group in PAPER_GROUPS)
    assert all(f"<td>{part.name}</td>" in text for part in FASHION_MNIST_PARTS[:2])  # quick


def test_correspondence_uses_the_parts_that_enough_images_show(tmp_path):
    """With few images some parts are shown by < 2 of them: those are named as skipped, the
    others are analysed (not the whole section dropped)."""
    out = tmp_path / "report"
    main(["--out", str(out), "--max-images", "20", "--quick", "--no-progress"])
    images, labels = load_eval_subset()
    picked = torch.linspace(0, len(images) - 1, 20).round().long()  # --max-images: evenly spaced
    showing = {p: len(part_images(images[picked], labels[picked], p)) for p in FASHION_MNIST_PARTS}
    assert sorted(showing.values())[0] < 2 <= sorted(showing.values())[-1]  # both kinds occur
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "Correspondence analysis (Sec. 5.3, Table 1)" in read_page(out).headings
    for part, count in showing.items():
        assert (f"{part.name} ({count})" in text) == (count < 2), part.name
    analysed = [p for p in FASHION_MNIST_PARTS if showing[p] >= 2][:2]  # quick: two parts
    assert all(f"<td>{part.name}</td>" in text for part in analysed)


def test_quick_report_on_an_image_folder_with_an_own_model_and_checkpoints(tmp_path):
    gen = np.random.default_rng(0)
    for cls in ("boots", "shirts"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(3):
            pixels = (gen.random((40, 36, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / cls / f"{i}.png")
    torch.manual_seed(0)
    for epoch in (1, 3):  # training snapshots of the user's model, as state dicts
        torch.save(zfnet_fashion().state_dict(), tmp_path / f"epoch{epoch}.pt")
    out = tmp_path / "report"
    main(
        [
            "--out",
            str(out),
            "--model",
            "deconvnet_attr.models:zfnet_fashion",
            "--quick",
            "--images",
            str(tmp_path / "images"),
            "--input-size",
            "28",
            "--layers",
            "conv1,conv4",
            "--checkpoints",
            f"1={tmp_path / 'epoch1.pt'}",
            f"3={tmp_path / 'epoch3.pt'}",
            "--mean",
            "0.5",
            "--std",
            "0.25",
            "--no-progress",
        ]
    )
    page = read_page(out)
    assert "Feature evolution during training (Fig. 4)" in page.headings
    # folder classes are not the model's classes: no ablation, no correspondence by class parts
    assert "Layer ablation" not in page.headings
    assert "Correspondence analysis (Sec. 5.3, Table 1)" not in page.headings
    assert "Invariance (Fig. 5)" in page.headings  # on the predicted classes
    assert {"fig2-conv1.png", "fig2-conv4.png", "fig4-conv4.png"} <= set(page.images)
    assert "6 images" in (out / "index.html").read_text(encoding="utf-8")


def test_bad_arguments_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="no_such_net"):
        build_model("no_such_net")
    with pytest.raises(ValueError, match="nowhere_module"):
        build_model("nowhere_module:factory")
    with pytest.raises(ValueError, match="conv9"):
        main(
            [
                "--out",
                str(tmp_path),
                "--model",
                "deconvnet_attr.models:zfnet_fashion",
                "--layers",
                "conv9",
                "--quick",
                "--no-progress",
            ]
        )
    with pytest.raises(ValueError, match="'x.pt'"):
        main(
            [
                "--out",
                str(tmp_path),
                "--model",
                "deconvnet_attr.models:zfnet_fashion",
                "--checkpoints",
                "x.pt",
                "--quick",
                "--no-progress",
            ]
        )
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--k", "0"])


def test_torchvision_and_timm_names_build_untrained_models():
    assert type(build_model("resnet18", num_classes=3)).__name__ == "ResNet"
    assert build_model("resnet18", num_classes=3).fc.out_features == 3
    assert type(build_model("resnet10t")).__name__ == "ResNet"  # timm only


def test_input_normalization_is_part_of_the_traced_forward():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4).eval()
    x = torch.rand(2, 3, 32, 32)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    with torch.no_grad():
        want = model((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])
    names = [n for n, _ in model.named_modules()]
    wrapped = with_input_normalization(model, mean, std)
    traced = torch.fx.symbolic_trace(wrapped)  # what geometry and incremental occlusion see
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), want)
        torch.testing.assert_close(traced(x), want)
    assert [n for n, _ in wrapped.named_modules()] == names


def test_html_table_escapes_cells():
    assert html_table(["a<b"], [["x & y"]]) == (
        "<table><thead><tr><th>a&lt;b</th></tr></thead>"
        "<tbody><tr><td>x &amp; y</td></tr></tbody></table>"
    )
