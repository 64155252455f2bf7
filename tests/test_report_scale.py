"""The report at scale: its unit atlas (OUT/atlas/, linked from index.html), streamed data,
bounded sections, and the device option."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from deconvnet_attr.cli import main as cli_main
from deconvnet_attr.data import load_eval_subset
from deconvnet_attr.models import load_reference
from deconvnet_attr.report import ReportContext, main
from deconvnet_attr.report import context as context_module
from deconvnet_attr.report.atlas import atlas_channels, write_report_atlas
from deconvnet_attr.report.build import mine_layers
from deconvnet_attr.report.sections import feature_grid_section

QUICK_LAYERS = ["conv1", "conv2"]  # --quick analyses the first two reference layers


def _links(page: Path) -> list[str]:
    return re.findall(r'<a [^>]*href="([^"]+)"', page.read_text(encoding="utf-8"))


def _tile_channels(page: Path) -> list[int]:
    return [int(c) for c in re.findall(r'class="tile"[^>]*data-channel="(\d+)"', page.read_text())]


def _quick_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The 64 images --quick uses: evenly spaced over the bundled subset."""
    images, labels = load_eval_subset()
    picks = torch.linspace(0, len(images) - 1, 64).round().long()
    return images[picks], labels[picks]


def _strongest_by_brute_force(layer: str, k: int, count: int) -> list[int]:
    """Channels by mean of their top-``k`` per-image maxima over the quick data, strongest
    first, from a plain forward pass (no mining code)."""
    model = load_reference().eval()
    images, _ = _quick_data()
    captured = {}
    handle = getattr(model, layer).register_forward_hook(lambda m, i, o: captured.update(out=o))
    with torch.no_grad():
        model(images)
    handle.remove()
    maxima = captured["out"].flatten(2).amax(2)  # (N, C)
    score = maxima.topk(k, dim=0).values.mean(0)
    return torch.argsort(score, descending=True, stable=True)[:count].tolist()


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scale") / "report"
    assert main(["--out", str(out), "--quick", "--no-progress", "--device", "cpu"]) == 0
    return out


def test_the_report_links_its_atlas_listing_every_analysed_layer(quick_report):
    assert "atlas/index.html" in _links(quick_report / "index.html")
    atlas = quick_report / "atlas" / "index.html"
    assert atlas.is_file()
    assert [link for link in _links(atlas) if re.fullmatch(r"layer-[^/]+\.html", link)] == [
        f"layer-{layer}.html" for layer in QUICK_LAYERS
    ]
    model = load_reference()
    for layer in QUICK_LAYERS:  # default: every channel of the layer
        channels = getattr(model, layer).out_channels
        assert sorted(_tile_channels(quick_report / "atlas" / f"layer-{layer}.html")) == list(
            range(channels)
        )


def test_atlas_channels_keeps_the_strongest(tmp_path):
    out = tmp_path / "report"
    argv = ["--out", str(out), "--quick", "--no-progress", "--atlas-channels", "3", "--k", "4"]
    assert main(argv) == 0
    for layer in QUICK_LAYERS:
        shown = _tile_channels(out / "atlas" / f"layer-{layer}.html")
        assert sorted(shown) == sorted(_strongest_by_brute_force(layer, k=4, count=3))


def test_no_atlas_writes_none_and_links_none(tmp_path):
    out = tmp_path / "report"
    assert main(["--out", str(out), "--quick", "--no-progress", "--no-atlas"]) == 0
    assert not (out / "atlas").exists()
    assert "atlas/index.html" not in _links(out / "index.html")


@pytest.mark.parametrize("bad", ["0", "-2", "some"])
def test_bad_atlas_channels_are_named(tmp_path, bad, capsys):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--atlas-channels", bad])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--atlas-channels" in last and last.rstrip("'").endswith(bad), last


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_cuda_is_a_one_line_error(tmp_path, capsys):
    status = cli_main(["report", "--out", str(tmp_path / "r"), "--quick", "--device", "cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "'cuda'" in err[0], err
    assert not (tmp_path / "r" / "index.html").exists()


def test_not_a_device_is_a_one_line_error(tmp_path, capsys):
    status = cli_main(["report", "--out", str(tmp_path / "r"), "--device", "gpu9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "'gpu9'" in err[0], err


def test_first_per_class_streams_the_first_image_of_the_smallest_labels(tmp_path):
    images, labels = load_eval_subset()
    images, labels = images[:300], labels[:300]
    ctx = ReportContext(
        model=load_reference(),
        model_name="reference",
        data=TensorDataset(images, labels),
        data_name="300 images",
        layers=["conv1"],
        out=tmp_path,
        batch_size=7,
    )
    got_images, got_labels = ctx.first_per_class(4)
    # by hand: the smallest 4 labels present, each with the index of its first occurrence
    wanted = sorted(set(labels.tolist()))[:4]
    firsts = [labels.tolist().index(c) for c in wanted]
    assert got_labels.tolist() == wanted
    assert torch.equal(got_images, images[firsts])
    fewer_images, fewer_labels = ctx.first_per_class(2)  # from the kept result
    assert fewer_labels.tolist() == wanted[:2] and torch.equal(fewer_images, images[firsts[:2]])


def test_workers_stream_the_same_batches_in_order(tmp_path):
    images, labels = _quick_data()
    settings = dict(
        model=load_reference(),
        model_name="reference",
        data=TensorDataset(images, labels),
        data_name="64 images",
        layers=["conv1"],
        out=tmp_path,
        batch_size=10,
    )
    streamed = list(ReportContext(**settings, workers=2).loader())
    # reference: the data set's rows in order, cut every 10
    assert [len(x) for x, _ in streamed] == [10] * 6 + [4]
    assert torch.equal(torch.cat([x for x, _ in streamed]), images)
    assert torch.equal(torch.cat([y for _, y in streamed]), labels)


def test_fig2_and_the_atlas_share_one_projection_per_layer(tmp_path, monkeypatch):
    images, labels = _quick_data()
    data = TensorDataset(images[:24], labels[:24])
    ctx = ReportContext(
        model=load_reference().eval(),
        model_name="reference",
        data=data,
        data_name="24 images",
        layers=QUICK_LAYERS,
        out=tmp_path,
        k=3,
        channels=4,
        batch_size=8,
        progress=False,
        quick=True,
        atlas=True,
        atlas_channels=4,
    )
    calls: list[str] = []
    direct = context_module.project_top_activations

    def counting(model, layer, *args, **kwargs):
        calls.append(layer)
        return direct(model, layer, *args, **kwargs)

    monkeypatch.setattr(context_module, "project_top_activations", counting)
    received: dict[tuple[str, int], list[torch.Tensor]] = {}
    project = ctx.project

    def recording(layer, top, **memo):
        result = project(layer, top, **memo)
        for channel, projection in zip(top.channels.tolist(), result, strict=True):
            received.setdefault((layer, channel), []).append(projection)
        return result

    ctx.project = recording  # type: ignore[method-assign]
    mined = mine_layers(ctx)
    feature_grid_section(ctx, mined)
    write_report_atlas(ctx, mined)
    assert calls == QUICK_LAYERS  # one projection call per layer: the atlas reused Fig. 2's
    assert not ctx._projected  # the atlas took every kept projection out of the memo
    for layer in QUICK_LAYERS:
        shown = atlas_channels(mined, 4)[layer]
        expected = direct(ctx.model, layer, data, shown, batch_size=5, progress=False)
        for row, channel in enumerate(shown.channels.tolist()):
            fig2, atlas = received[(layer, channel)]  # Fig. 2 first, then the atlas
            torch.testing.assert_close(fig2, expected[row])
            torch.testing.assert_close(atlas, expected[row])


def _context(data: TensorDataset, tmp_path: Path, batch_size: int) -> ReportContext:
    return ReportContext(
        model=load_reference().eval(),
        model_name="reference",
        data=data,
        data_name="test images",
        layers=QUICK_LAYERS,
        out=tmp_path,
        batch_size=batch_size,
        progress=False,
        quick=True,
        atlas=False,
    )


@pytest.mark.parametrize(
    ("side", "batch_size", "expected"),
    # PASS_PIXELS / (H * W), written out: 4 * 224 * 224 pixels a pass
    [(28, 64, 64), (224, 64, 4), (448, 64, 1), (1024, 64, 1), (224, 2, 2), (112, 64, 16)],
)
def test_pass_size_bounds_the_pixels_of_a_pass(tmp_path, side, batch_size, expected):
    data = TensorDataset(torch.zeros(2, 1, side, side), torch.zeros(2, dtype=torch.long))
    assert _context(data, tmp_path, batch_size).pass_size == expected
    assert context_module.PASS_PIXELS == 4 * 224 * 224


def test_freed_memory_is_released_after_mining_and_every_section(tmp_path, monkeypatch):
    """write_report hands freed heap pages back after mining and after each section (glibc's
    malloc_trim; the report's resnet18 run kept 1 GB after Fig. 2 without it)."""
    import deconvnet_attr.report.build as build

    events: list[str] = []
    monkeypatch.setattr(build, "release_freed_memory", lambda: events.append("release"))

    def section(name):
        def builder(ctx, mined):
            events.append(name)

        builder.__name__ = f"{name}_section"
        return builder

    images, labels = _quick_data()
    ctx = _context(TensorDataset(images[:8], labels[:8]), tmp_path, 8)
    build.write_report(ctx, [section("a"), section("b")], mined={})
    assert events == ["release", "a", "release", "b", "release"]


def test_release_freed_memory_runs_where_glibc_is_and_is_a_no_op_elsewhere(monkeypatch):
    import deconvnet_attr.report.build as build

    build.release_freed_memory()  # glibc here (Debian): malloc_trim is called, nothing raises
    monkeypatch.setattr(build, "_libc", lambda: None)
    build.release_freed_memory()  # no malloc_trim: nothing happens


def test_the_reports_atlas_takes_its_statistics_from_the_mining_pass(tmp_path, monkeypatch):
    """With the atlas on, mining records the channel maxima and the atlas makes no pass of its
    own over the data; the temporary file is closed when the report is written."""
    import deconvnet_attr.atlas.build as build_module
    from deconvnet_attr.report.build import write_report

    def no_pass(*args, **kwargs):
        raise AssertionError("a second pass over the data")

    monkeypatch.setattr(build_module, "activation_stats", no_pass)
    images, labels = _quick_data()
    ctx = _context(TensorDataset(images[:24], labels[:24]), tmp_path, 8)
    ctx.atlas, ctx.atlas_channels, ctx.k = True, 3, 2
    result = write_report(ctx, sections=[], raise_errors=True)
    assert result.index.is_file() and (tmp_path / "atlas" / "index.html").is_file()
    assert ctx.maxima is None  # closed after the atlas


def test_a_context_that_does_not_draw_renders_no_figure(tmp_path):
    """Ranks > 0 under torchrun (``draws=False``): ``save`` writes nothing, closes the figure
    and returns the same tag as rank 0's."""
    import matplotlib.pyplot as plt

    images, labels = load_eval_subset()
    settings = dict(
        model=load_reference(),
        model_name="reference",
        data=TensorDataset(images[:4], labels[:4]),
        data_name="4 images",
        layers=["conv1"],
    )
    tags = []
    for draws, folder in ((True, tmp_path / "drawn"), (False, tmp_path / "silent")):
        folder.mkdir()
        ctx = ReportContext(**settings, out=folder, draws=draws)
        fig = plt.figure()
        tags.append(ctx.save(fig, "f.png", "a figure"))
        assert not plt.fignum_exists(fig.number)
    assert tags[0] == tags[1] == '<img src="f.png" alt="a figure">'
    assert (tmp_path / "drawn" / "f.png").is_file() and not any((tmp_path / "silent").iterdir())
