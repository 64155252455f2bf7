"""The report's paper-experiment sections: Fig. 6 from the shipped stems, Table 3 retrained from
the shipped results, transfer (Tables 4-7, Fig. 9)."""

from __future__ import annotations

import html
import re

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from deconvnet_attr.data import FASHION_MNIST_CLASSES, load_eval_subset
from deconvnet_attr.fig6 import load_fig6_models
from deconvnet_attr.models import zfnet_fashion
from deconvnet_attr.report import ReportContext, fig6_section


def _context(tmp_path, count: int = 40, **kwargs) -> ReportContext:
    images, labels = load_eval_subset()
    picked = torch.linspace(0, len(images) - 1, count).round().long()  # all ten classes
    settings = dict(
        model=zfnet_fashion().eval(),
        model_name="random ZFNet",
        data=TensorDataset(images[picked], labels[picked]),
        data_name=f"{count} images",
        layers=["conv1"],
        out=tmp_path,
        class_names=FASHION_MNIST_CLASSES,
        has_labels=True,
        batch_size=16,
        progress=False,
    )
    settings.update(kwargs)
    return ReportContext(**settings)


def _cells(body: str) -> list[list[str]]:
    rows = re.findall(r"<tr>(.*?)</tr>", body)
    return [[html.unescape(c) for c in re.findall(r"<t[dh]>(.*?)</t[dh]>", r)] for r in rows]


def test_fig6_section_measures_the_shipped_stems(tmp_path):
    ctx = _context(tmp_path)
    section = fig6_section(ctx, {})
    assert section is not None and "Fig. 6" in section.title
    assert (tmp_path / "fig6-stems.png").read_bytes()[:4] == b"\x89PNG"
    header, *rows = _cells(section.body)
    models = load_fig6_models()
    assert [r[0] for r in rows] == list(models)
    images, labels = ctx.images()
    big = F.interpolate(images, scale_factor=4, mode="bilinear", align_corners=False)
    with torch.no_grad():  # accuracy by hand on the 4x-upsampled images
        for row in rows:
            correct = (models[row[0]](big).argmax(1) == labels).sum().item()
            assert float(row[3]) == round(correct / len(labels), 4)
    assert header[3] == f"accuracy ({len(labels)} images)"


def test_fig6_section_needs_fashion_mnist_and_is_left_out_of_quick_reports(tmp_path):
    assert fig6_section(_context(tmp_path, quick=True), {}) is None
    assert fig6_section(_context(tmp_path, has_labels=False), {}) is None
    assert fig6_section(_context(tmp_path, class_names=("a", "b")), {}) is None
    images = torch.rand(4, 3, 32, 32)
    other = _context(tmp_path, data=TensorDataset(images, torch.zeros(4, dtype=torch.long)))
    assert fig6_section(other, {}) is None


def test_table3_retrained_section_shows_the_shipped_csv_and_its_train_errors(tmp_path):
    import csv
    from pathlib import Path

    import deconvnet_attr
    from deconvnet_attr.report import table3_retrained_section

    path = Path(deconvnet_attr.__file__).parent / "assets" / "table3_retrained.csv"
    with open(path, newline="") as f:
        want = list(csv.reader(f))
    section = table3_retrained_section(_context(tmp_path), {})
    assert section is not None and _cells(section.body) == want
    header = want[0]
    train, note = header.index("train error (%)"), header.index("note")
    assert "train error" in section.body and "60,000 training images" in section.body
    for row in want[1:]:  # a number, or a note saying why not
        if row[train] == "not run":
            assert row[note].startswith("not run: ")
        elif row[train] == "not recorded":
            assert "docs/ablation.md run" in row[note]
        else:
            assert 0 <= float(row[train]) <= 100
    assert table3_retrained_section(_context(tmp_path, quick=True), {}) is None
