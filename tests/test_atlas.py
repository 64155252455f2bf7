"""The unit atlas against brute force: every channel has a tile and a page, and the values, image
ids, histograms and per-image top channels on the pages equal those computed here from the full
layer output (the reference model is an ``nn.Sequential``: its first children compute a layer)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deconvnet_attr.atlas import StreamingHistogram, atlas_from_mined, build_atlas, write_atlas
from deconvnet_attr.data import (
    FASHION_MNIST_CLASSES,
    image_folder,
    image_folder_transform,
    load_eval_subset,
)
from deconvnet_attr.models import load_reference

LAYERS = ["conv1", "conv2", "conv5"]
K = 4
N = 64
PER_IMAGE = 6


class Elements(HTMLParser):
    """Every start tag of a page as ``(tag, attrs)``, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.tags
            if t == tag and (cls is None or cls in a.get("class", "").split())
        ]


def parse(path: Path) -> Elements:
    page = Elements()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def layer_maxima(model, layer: str, images: torch.Tensor) -> torch.Tensor:
    """Brute force: each image's strongest unit per channel, ``(N, C)``, from the full output."""
    position = [name for name, _ in model.named_children()].index(layer)
    with torch.no_grad():
        return nn.Sequential(*list(model.children())[: position + 1])(images).flatten(2).amax(2)


@pytest.fixture(scope="module")
def reference():
    model = load_reference()
    images, labels = load_eval_subset()
    return model, images[:N], labels[:N]


@pytest.fixture(scope="module")
def atlas(reference, tmp_path_factory):
    model, images, labels = reference
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path_factory.mktemp("atlas") / "atlas"
    index = build_atlas(
        model,
        LAYERS,
        TensorDataset(images, labels),
        out,
        k=K,
        batch_size=32,
        per_image=PER_IMAGE,
        occlusion_images=[3],
        class_names=FASHION_MNIST_CLASSES,
        progress=False,
    )
    assert index == out / "index.html"
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the atlas changed the model"
    assert not model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    return out


def test_index_links_every_layer_page(atlas):
    links = [a["href"] for a in parse(atlas / "index.html").find("a", "layer")]
    assert links == [f"layer-{name}.html" for name in LAYERS]
    assert all((atlas / link).is_file() for link in links)
    assert (atlas / "static" / "atlas.js").is_file() and (atlas / "static" / "atlas.css").is_file()


@pytest.mark.parametrize("layer", LAYERS)
def test_every_channel_has_a_lazy_tile_and_a_page(atlas, reference, layer):
    model, images, _ = reference
    channels = layer_maxima(model, layer, images[:1]).shape[1]
    page = parse(atlas / f"layer-{layer}.html")
    tiles = page.find("a", "tile")
    assert sorted(int(t["data-channel"]) for t in tiles) == list(range(channels))
    imgs = page.find("img")
    assert len(imgs) == channels and all(i["loading"] == "lazy" for i in imgs)
    for tile, img in zip(tiles, imgs, strict=True):
        assert (atlas / tile["href"]).is_file(), tile["href"]
        assert is_png(atlas / img["src"]), img["src"]
    assert any(t == "script" for t, _ in page.tags)


@pytest.mark.parametrize("layer", LAYERS)
def test_channel_pages_show_the_brute_force_top_k(atlas, reference, layer):
    model, images, _ = reference
    maxima = layer_maxima(model, layer, images)  # (N, C)
    reference_top = maxima.T.sort(dim=1, descending=True).values[:, :K]  # (C, K)
    tiles = parse(atlas / f"layer-{layer}.html").find("a", "tile")
    for tile in tiles:
        c = int(tile["data-channel"])
        assert float(tile["data-activation"]) == pytest.approx(float(reference_top[c, 0]), 1e-5)
        page = parse(atlas / f"layer-{layer}" / Path(tile["href"]).name)
        tops = page.find("figure", "top")
        assert len(tops) == K
        values = [float(t["data-activation"]) for t in tops]
        np.testing.assert_allclose(values, reference_top[c].numpy(), rtol=1e-5, atol=1e-6)
        ids = [int(t["data-image"]) for t in tops]
        assert len(set(ids)) == K
        # each listed image really has that activation (robust to ties between images)
        np.testing.assert_allclose(maxima[ids, c].numpy(), values, rtol=1e-5, atol=1e-6)
        assert [int(t["data-rank"]) for t in tops] == list(range(1, K + 1))
        srcs = [img["src"] for img in page.find("img")]
        assert sum("projection" in (a.get("class") or "") for a in page.find("img")) == K
        assert all(is_png(atlas / f"layer-{layer}" / s) for s in srcs)
        (peak,) = page.find("b", "max")
        assert float(peak["data-activation"]) == values[0]


@pytest.mark.parametrize("layer", LAYERS)
def test_histograms_count_every_image_exactly(atlas, reference, layer):
    model, images, _ = reference
    maxima = layer_maxima(model, layer, images).double().numpy()
    for c in range(maxima.shape[1]):
        html = (atlas / f"layer-{layer}" / f"c{c:02d}.html").read_text(encoding="utf-8")
        counts = np.array(re.search(r'data-counts="([^"]*)"', html).group(1).split(","), int)
        edges = np.array(re.search(r'data-edges="([^"]*)"', html).group(1).split(","), float)
        assert counts.sum() == N
        assert np.all(np.diff(edges) > 0)
        expected, _ = np.histogram(maxima[:, c], bins=edges)
        np.testing.assert_array_equal(counts, expected)


def test_first_layer_pages_show_the_filter(atlas, reference):
    model, _, _ = reference
    weight = model.conv1.weight.detach()[:, 0]  # (16, 7, 7)
    for c in range(weight.shape[0]):
        page = parse(atlas / "layer-conv1" / f"c{c:02d}.html")
        (img,) = [i for i in page.find("img") if "filter" in i["src"]]
        pixels = np.asarray(Image.open(atlas / "layer-conv1" / img["src"]).convert("L"), float)
        step = pixels.shape[0] // weight.shape[1]  # enlarged by an integer factor
        shown = pixels[::step, ::step]
        w = weight[c].numpy()
        assert shown.shape == w.shape
        assert np.unravel_index(shown.argmax(), w.shape) == np.unravel_index(w.argmax(), w.shape)
        assert np.unravel_index(shown.argmin(), w.shape) == np.unravel_index(w.argmin(), w.shape)
    assert not [
        i for i in parse(atlas / "layer-conv2" / "c00.html").find("img") if "filter" in i["src"]
    ]


def test_image_pages_list_the_brute_force_most_active_channels(atlas, reference):
    model, images, labels = reference
    linked = set()
    for layer in LAYERS:
        for page in (atlas / f"layer-{layer}").glob("c*.html"):
            for a in parse(page).find("a"):
                if "images/image-" in a["href"]:
                    assert (atlas / f"layer-{layer}" / a["href"]).is_file()
                    linked.add(int(re.search(r"image-(\d+)", a["href"]).group(1)))
    assert linked
    maxima = {layer: layer_maxima(model, layer, images) for layer in LAYERS}
    for i in sorted(linked | {3}):
        page = parse(atlas / "images" / f"image-{i}.html")
        assert FASHION_MNIST_CLASSES[int(labels[i])] in "".join(page.text)
        grids = [a["data-layer"] for a in page.find("div", "grid")]
        assert grids == LAYERS
        tiles = page.find("a", "tile")
        for g, layer in enumerate(LAYERS):
            shown = tiles[g * PER_IMAGE : (g + 1) * PER_IMAGE]
            values = [float(t["data-activation"]) for t in shown]
            expected = maxima[layer][i].sort(descending=True).values[:PER_IMAGE]
            np.testing.assert_allclose(values, expected.numpy(), rtol=1e-5, atol=1e-6)
            channels = [int(t["data-channel"]) for t in shown]
            np.testing.assert_allclose(maxima[layer][i, channels].numpy(), values, rtol=1e-5)
    index = parse(atlas / "images" / "index.html").find("a", "tile")
    assert {int(a["data-image"]) for a in index} == linked | {3}


def test_occlusion_maps_on_the_requested_image_page(atlas):
    assert is_png(atlas / "images" / "image-3-occlusion.png")
    others = [
        p for p in (atlas / "images").glob("*-occlusion.png") if p.name != "image-3-occlusion.png"
    ]
    assert not others


def test_image_folder_pages_name_the_files(tmp_path, reference):
    model, images, _ = reference
    root = tmp_path / "photos"
    written = set()
    for i in range(12):
        folder = root / ("shoes" if i % 2 else "shirts")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"photo-{i:02d}.png"
        Image.fromarray((images[i, 0].numpy() * 255).astype(np.uint8)).save(folder / name)
        written.add(name)
    data = image_folder(root, transform=image_folder_transform(28, 1, train=False))
    out = tmp_path / "atlas"
    build_atlas(model, ["conv1"], DataLoader(data, batch_size=5), out, k=3, progress=False)
    for page in (out / "layer-conv1").glob("c*.html"):
        tops = parse(page).find("figure", "top")
        html = page.read_text(encoding="utf-8")
        for top in tops:
            expected = Path(data.samples[int(top["data-image"])][0]).name
            assert expected in written and expected in html


def test_atlas_from_mined_takes_the_reports_mining(reference, tmp_path):
    from deconvnet_attr.mining import top_activations_by_layer

    model, images, _ = reference
    mined = top_activations_by_layer(model, ["conv2"], images[:40], k=2, progress=False)
    index = atlas_from_mined(model, images[:40], mined, tmp_path / "a", progress=False)
    tiles = parse(tmp_path / "a" / "layer-conv2.html").find("a", "tile")
    assert len(tiles) == 32 and index.is_file()
    for tile in tiles:
        c = int(tile["data-channel"])
        assert float(tile["data-activation"]) == pytest.approx(float(mined["conv2"].values[c, 0]))


def test_bad_input_is_named(reference, tmp_path):
    model, images, labels = reference
    shuffled = DataLoader(TensorDataset(images, labels), batch_size=8, shuffle=True)
    with pytest.raises(ValueError, match="RandomSampler"):
        build_atlas(model, ["conv1"], shuffled, tmp_path / "x", progress=False)
    with pytest.raises(TypeError, match="list"):
        build_atlas(model, ["conv1"], [images], tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="conv9"):
        build_atlas(model, ["conv9"], images[:4], tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match=r"occlusion_images \[64\]"):
        build_atlas(model, ["conv1"], images, tmp_path / "x", occlusion_images=[64], progress=False)
    with pytest.raises(ValueError, match="per_image"):
        build_atlas(model, ["conv1"], images[:4], tmp_path / "x", per_image=0, progress=False)
    with pytest.raises(ValueError, match="mined is empty"):
        atlas_from_mined(model, images[:4], {}, tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="layers is empty"):
        write_atlas(tmp_path / "x", [])
    with pytest.raises(ValueError, match="bins"):
        StreamingHistogram(3, bins=2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_histogram_equals_numpy(seed):
    gen = torch.Generator().manual_seed(seed)
    scale = torch.tensor([1.0, 10.0, 0.01, 3.0, 0.0, 1e4])
    shift = torch.tensor([0.0, 5.0, 100.0, -50.0, 0.0, 0.0])
    hist = StreamingHistogram(len(scale), bins=16)
    batches = []
    for b in range(20):
        size = 1 if b == 0 else int(torch.randint(1, 40, (1,), generator=gen))
        batch = torch.randn(size, len(scale), generator=gen) * scale * (1 + b) + shift
        batches.append(batch)
        hist.add(batch)
    values = torch.cat(batches).double().numpy()
    for c in range(len(scale)):
        h = hist.histogram(c)
        assert len(h.counts) <= 16 and h.counts[0] > 0 and h.counts[-1] > 0
        expected, _ = np.histogram(values[:, c], bins=h.edges)
        np.testing.assert_array_equal(h.counts, expected)
        assert h.counts.sum() == len(values)


def test_write_atlas_streams_hand_made_records(tmp_path):
    """The writer needs no model: records from a generator, consumed once, one at a time."""
    from deconvnet_attr.atlas import ChannelRecord, Histogram, LayerRecord

    consumed = []

    def records():
        gen = torch.Generator().manual_seed(0)
        for c in (4, 0, 2):
            consumed.append(c)
            shown = torch.rand(2, 3, 5, 5, generator=gen)
            yield ChannelRecord(
                channel=c,
                values=torch.tensor([10.0 + c, 1.0]),
                image_ids=torch.tensor([c, 7]),
                image_names=[f"img{c}.jpg", None],
                projections=shown - 0.5,
                patches=shown,
                histogram=Histogram(np.array([1, 3]), np.array([0.0, 0.5, 1.0])),
            )

    write_atlas(tmp_path, [LayerRecord("block.1", 6, records(), "5×5 px")], progress=False)
    assert consumed == [4, 0, 2]
    page = parse(tmp_path / "layer-block.1.html")
    tiles = page.find("a", "tile")
    assert [int(t["data-channel"]) for t in tiles] == [4, 2, 0]  # strongest first
    assert "3 of 6 channels" in "".join(page.text)
    channel = (tmp_path / "layer-block.1" / "c4.html").read_text(encoding="utf-8")
    assert "img4.jpg" in channel and 'data-counts="1,3"' in channel
    assert "images/image-4.html" not in channel  # no image page, no link


def test_channel_maxima_recorded_while_mining_equal_a_statistics_pass(reference):
    """The maxima recorded during mining give exactly the statistics of a separate pass over
    the same batches (histograms, image pages' top channels), for any subset of the channels."""
    from deconvnet_attr.atlas import ChannelMaxima, activation_stats
    from deconvnet_attr.mining import top_activations_by_layer

    model, images, labels = reference
    loader = DataLoader(TensorDataset(images, labels), batch_size=12)  # uneven last batch
    maxima = ChannelMaxima()
    mined = top_activations_by_layer(model, LAYERS, loader, k=K, progress=False, maxima=maxima)
    shown = {"conv1": torch.tensor([5, 0, 3]), "conv5": mined["conv5"].channels}
    watch = [0, 7, 63, 9]
    got = maxima.stats(shown, watch=watch, per_image=3, bins=16)
    expected = activation_stats(model, shown, loader, watch=watch, per_image=3, bins=16)
    assert got.num_images == expected.num_images == N
    for layer, channels in shown.items():
        assert torch.equal(got.channels[layer], channels)
        for row in range(len(channels)):
            a, b = got.histograms[layer].histogram(row), expected.histograms[layer].histogram(row)
            np.testing.assert_array_equal(a.counts, b.counts)
            np.testing.assert_array_equal(a.edges, b.edges)
    assert sorted(got.top) == sorted(watch)
    for image in watch:
        for layer in shown:
            assert torch.equal(got.top[image][layer].values, expected.top[image][layer].values)
            assert torch.equal(got.top[image][layer].channels, expected.top[image][layer].channels)
    # against brute force too: conv1's channel 5 histogram counts every image's maximum
    brute = layer_maxima(model, "conv1", images)[:, 5].double().numpy()
    hist = got.histograms["conv1"].histogram(0)
    np.testing.assert_array_equal(hist.counts, np.histogram(brute, bins=hist.edges)[0])
    with pytest.raises(ValueError, match="'conv2' was not recorded"):
        ChannelMaxima().stats({"conv2": [0]})
    with pytest.raises(ValueError, match=r"channels \[99\] of layer 'conv1'"):
        maxima.stats({"conv1": [1, 99]})
    maxima.close()


def test_build_atlas_makes_no_statistics_pass(reference, tmp_path, monkeypatch):
    """build_atlas reads the statistics from its mining pass: the separate pass never runs."""
    import deconvnet_attr.atlas.build as build_module

    def no_pass(*args, **kwargs):
        raise AssertionError("a second pass over the data")

    monkeypatch.setattr(build_module, "activation_stats", no_pass)
    model, images, labels = reference
    index = build_atlas(model, ["conv2"], images[:20], tmp_path / "a", k=2, progress=False)
    assert index.is_file()


def test_atlas_without_writing_projects_every_chunk_and_writes_nothing(
    reference, tmp_path, monkeypatch
):
    """``write=False`` (ranks > 0 under torchrun): the same projection calls as a written atlas
    (they are collective), no statistics pass, no file."""
    import deconvnet_attr.atlas.build as build_module
    from deconvnet_attr.mining import top_activations_by_layer
    from deconvnet_attr.projection import project_top_activations

    model, images, _ = reference
    mined = top_activations_by_layer(model, ["conv1", "conv2"], images[:24], k=3, progress=False)

    def recording(calls):
        def project(layer, top):
            calls.append((layer, top.channels.tolist(), top.indices.tolist()))
            return project_top_activations(model, layer, images[:24], top, progress=False)

        return project

    written, silent = [], []
    atlas_from_mined(
        model, images[:24], mined, tmp_path / "a", project=recording(written), progress=False
    )

    def no_pass(*args, **kwargs):
        raise AssertionError("a statistics pass")

    monkeypatch.setattr(build_module, "activation_stats", no_pass)
    index = atlas_from_mined(
        model,
        images[:24],
        mined,
        tmp_path / "b",
        project=recording(silent),
        progress=False,
        write=False,
    )
    assert silent == written and len(written) > 2
    assert index == tmp_path / "b" / "index.html" and not (tmp_path / "b").exists()
