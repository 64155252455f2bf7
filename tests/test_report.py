"""The report builds: quick mode on the bundled data, an own model, an ImageFolder, checkpoints."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from deconvnet_attr.ablation import PAPER_GROUPS, AccuracyTable
from deconvnet_attr.analysis.correspondence import FASHION_MNIST_PARTS, part_images
from deconvnet_attr.data import load_eval_subset
from deconvnet_attr.geometry import receptive_field
from deconvnet_attr.mining import top_activations
from deconvnet_attr.models import create_model, load_reference, zfnet_fashion
from deconvnet_attr.occlusion import OcclusionMaps
from deconvnet_attr.report import (
    ReportContext,
    ablation_section,
    build_report,
    evolution_section,
    feature_grid_section,
    field_coverage,
    html_table,
    main,
    occlusion_examples,
    record_table,
    with_input_normalization,
)


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
        "Gradient, deconvnet and guided backpropagation",
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


def test_input_normalization_is_part_of_the_traced_forward():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=4).eval()
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


def _small_context(tmp_path, name: str, **kwargs) -> ReportContext:
    """A random-init Fashion-MNIST ZFNet, 48 bundled images, two 'checkpoints'."""
    torch.manual_seed(0)
    first, final = zfnet_fashion().eval(), zfnet_fashion().eval()
    images, labels = load_eval_subset()
    settings = dict(
        model=final,
        model_name="random ZFNet",
        data=TensorDataset(images[:48], labels[:48]),
        data_name="48 images",
        layers=["conv1", "conv3"],
        out=tmp_path / name,
        checkpoints={1: first, 2: final},
        k=3,
        channels=4,
        batch_size=16,
        progress=False,
    )
    settings.update(kwargs)
    return ReportContext(**settings)


def _followed(out: Path) -> list[str]:
    return re.findall(r"<p>channels followed: ([0-9, ]+)</p>", (out / "index.html").read_text())


def test_evolution_follows_the_same_channels_with_or_without_the_feature_grid(tmp_path):
    alone = _small_context(tmp_path, "alone")
    build_report(alone, sections=[evolution_section])
    both = _small_context(tmp_path, "both")
    build_report(both, sections=[feature_grid_section, evolution_section])
    # reference: each layer mined on its own, channels by mean top-k activation, 4 // 2 per layer
    want = []
    for layer in alone.layers:
        top = top_activations(alone.model, layer, load_eval_subset()[0][:48], k=3, progress=False)
        strongest = sorted(range(len(top.channels)), key=lambda c: -top.values[c].mean().item())
        want.append(", ".join(str(int(top.channels[c])) for c in strongest[:2]))
    assert _followed(alone.out) == _followed(both.out) == want


def test_removal_table_lists_the_layers_whose_input_and_output_shapes_match(tmp_path):
    ctx = _small_context(tmp_path, "ablation", layers=["conv1", "conv4"], has_labels=True)
    ctx.out.mkdir()
    section = ablation_section(ctx, {})
    # by hand: conv1 maps 1 -> 16 channels; conv4 48 -> 48 with 'same' padding, stride 1
    assert ctx.model.conv4.in_channels == ctx.model.conv4.out_channels
    assert "<td>remove conv4</td>" in section.body
    assert "remove conv1" not in section.body
    assert all(f"<td>{group}</td>" in section.body for group in PAPER_GROUPS)


def test_record_tables_are_rendered_from_their_cells_not_their_csv():
    table = AccuracyTable([("intact", {1: 75.0}), ('a, "b"', {1: 50.0})], n_examples=4)
    assert record_table(table) == (
        "<table><thead><tr><th>configuration</th><th>top-1 acc (%)</th>"
        "<th>top-1 drop (pp)</th></tr></thead><tbody>"
        "<tr><td>intact</td><td>75.00</td><td>0.00</td></tr>"
        "<tr><td>a, &quot;b&quot;</td><td>50.00</td><td>25.00</td></tr></tbody></table>"
    )


def _sweep(target: int, clean: int, changed: int) -> OcclusionMaps:
    """A 2x2 occlusion sweep whose label map differs from ``clean`` at ``changed`` positions."""
    label = torch.full((4,), clean)
    label[:changed] = clean + 1
    return OcclusionMaps(
        feature=torch.zeros(2, 2),
        probability=torch.zeros(2, 2),
        label=label.view(2, 2),
        layer="relu5",
        channel=0,
        target=target,
        rows=torch.tensor([0, 1]),
        cols=torch.tensor([0, 1]),
        window=(1, 1),
        clean_feature=0.0,
        clean_probability=0.0,
        clean_label=clean,
    )


def test_occlusion_examples_are_right_first_of_a_class_and_change_label_most():
    sweeps = [_sweep(0, 0, 2), _sweep(0, 0, 3), _sweep(1, 2, 4), _sweep(3, 3, 0), _sweep(4, 4, 1)]
    targets = torch.tensor([s.target for s in sweeps])
    chosen, changed = occlusion_examples(sweeps, targets, count=3)
    # by hand: #2 is misclassified, #3 never changes, #0 has the class of #1 (which changes more)
    assert chosen == [1, 4]
    torch.testing.assert_close(changed, torch.tensor([0.5, 0.75, 1.0, 0.0, 0.25]).double())
    assert occlusion_examples(sweeps, targets, count=1)[0] == [1]


def test_field_coverage_counts_the_units_that_see_the_whole_image(tmp_path):
    ctx = _small_context(tmp_path, "coverage")  # 28x28 images
    # conv5 of zfnet_fashion: by hand from its convs and pools (k, s, p): conv1 (7,1,3),
    # pool1 (3,2,1), conv2 (5,1,2), pool2 (3,2,1), conv3-5 (3,1,1) -> size 45, stride 4, offset -22
    field = receptive_field(ctx.model, "conv5", torch.zeros(1, 1, 28, 28))
    assert (field.size, field.stride, field.offset) == ((45, 45), (4, 4), (-22, -22))
    # a 7x7 map; unit i sees rows -22 + 4i ... 22 + 4i: the whole 0..27 for i = 2..5 (4 of 7)
    assert field_coverage(ctx, "conv5", field) == (
        "The 45×45 receptive field is larger than the 28×28 image: 16 of the 49 units see the "
        "whole image."
    )
    small = receptive_field(ctx.model, "conv1", torch.zeros(1, 1, 28, 28))
    assert field_coverage(ctx, "conv1", small) == "Receptive field 7×7 on the 28×28 image."
    assert field_coverage(ctx, "conv1", None) == ""


@pytest.mark.parametrize(
    ("size", "height", "expected"),
    [(1000, 28, 100), (50, 28, 50), (200, 224, 8), (5, 224, 5), (1000, 56, 25)],
)
def test_occlusion_sample_is_a_pixel_budget_of_100_images_at_28_px(size, height, expected):
    from deconvnet_attr.report.studies import occlusion_sample_size

    # by hand: 100 * 28 * 28 pixels in images of height * height, at least 8, at most all
    assert occlusion_sample_size(size, height, height) == expected


def test_fig7_takes_the_shown_channels_top_images_from_the_mined_result(tmp_path, monkeypatch):
    from deconvnet_attr.report import studies

    images, labels = load_eval_subset()
    data = TensorDataset(images[:40], labels[:40])
    ctx = ReportContext(
        model=load_reference().eval(),
        model_name="reference",
        data=data,
        data_name="40 images",
        layers=["conv5"],
        out=tmp_path,
        k=3,
        batch_size=16,
        progress=False,
    )
    mined = {"conv5": top_activations(ctx.model, "conv5", images[:40], k=3, progress=False)}
    passes = []
    monkeypatch.setattr(studies, "top_activations", lambda *a, **k: passes.append(a) or None)
    got = studies._strongest_images(ctx, mined, "conv5", [7, 2])
    assert not passes  # no pass over the data: the layer was mined
    direct = top_activations(ctx.model, "conv5", images[:40], k=3, channels=[7], progress=False)
    assert torch.equal(got[7].indices, direct.indices) and torch.equal(got[7].values, direct.values)
    assert got[2].channels.tolist() == [2]


def test_fig2_tiles_wider_than_the_cap_are_area_averaged():
    from deconvnet_attr.report.sections import FIG2_TILE, _tiles

    crops = torch.rand(3, 2, 2 * FIG2_TILE, 2 * FIG2_TILE)
    crops[0, :, :3, :3] = float("nan")  # outside the image
    # by hand: the mean of each 2x2 block
    blocks = crops.reshape(3, 2, FIG2_TILE, 2, FIG2_TILE, 2).mean(dim=(3, 5))
    torch.testing.assert_close(_tiles(crops), blocks, equal_nan=True)
    small = torch.rand(1, 1, FIG2_TILE, 5)
    assert _tiles(small) is small
