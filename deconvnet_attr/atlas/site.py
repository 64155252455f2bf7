"""Write the atlas: static HTML pages and PNG tiles from precomputed records, streamed.

Layout of ``out_dir``::

    index.html                 the analysed layers, with a preview of each one's strongest tiles
    layer-<name>.html          every channel of a layer: tile grid, sortable, searchable
    layer-<name>/c<NN>.html    one channel: top-k projections and patches, histogram, filter
    layer-<name>/png/          its PNGs (c<NN>-tile.png, -p<j>.png, -x<j>.png, -filter.png)
    images/index.html          every image that has a page
    images/image-<i>.html      one image: its most active channels per layer, occlusion maps
    static/atlas.css, atlas.js the page style and the grid's sort/search script

Plain HTML and one small script (no modules, no network, no ``fetch``), so it works from
``file://``; grid images are ``loading="lazy"`` so a page of thousands of channels opens at once.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tqdm.auto import tqdm

from deconvnet_attr.viz import contrast_stretch, image_display, plot_occlusion_maps

from .records import ChannelRecord, ImageRecord, LayerRecord
from .render import histogram_svg, save_png

__all__ = ["write_atlas"]

TILE = 64  # grid tiles (px)
SHOWN = 112  # projections and patches on a channel page
PHOTO = 160  # the image on its page

esc = html.escape


@dataclass(frozen=True)
class _Tile:
    """What the layer page and the index need to know of a written channel."""

    channel: int
    value: float


def write_atlas(
    out_dir: str | os.PathLike,
    layers: Sequence[LayerRecord],
    images: Iterable[ImageRecord] = (),
    *,
    title: str = "Unit atlas",
    summary: str = "",
    class_names: Sequence[str] | None = None,
    progress: bool = True,
) -> Path:
    """Write the atlas of ``layers`` (and the pages of ``images``) into ``out_dir``.

    Each layer's channel records are consumed one at a time: its PNGs and page are written and
    only the channel number and activation are kept for the layer page. ``summary`` is a line
    for the entry page (e.g. the data set); ``class_names`` label the occlusion figures. Returns
    the path of ``out_dir/index.html``.
    """
    if not layers:
        raise ValueError("layers is empty: nothing to put in the atlas")
    out = Path(out_dir)
    (out / "static").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    for asset in ("atlas.css", "atlas.js"):
        text = (
            resources.files("deconvnet_attr.atlas")
            .joinpath("static")
            .joinpath(asset)
            .read_text("utf-8")
        )
        (out / "static" / asset).write_text(text, encoding="utf-8")
    folders = _folders([layer.name for layer in layers])
    widths = {layer.name: len(str(max(layer.num_channels - 1, 0))) for layer in layers}
    paged = _write_images(out, images, folders, widths, class_names, progress)
    previews = []
    for layer in layers:
        tiles = _write_layer(out, layer, folders[layer.name], widths[layer.name], paged, progress)
        previews.append((layer, tiles))
    _write_index(out, previews, folders, widths, title, summary, len(paged))
    return out / "index.html"


def _folders(names: Sequence[str]) -> dict[str, str]:
    """A distinct file-name-safe folder per layer name: ``layer-<name>``."""
    folders: dict[str, str] = {}
    for name in names:
        base = "layer-" + (re.sub(r"[^A-Za-z0-9._-]", "_", name) or "model")
        folder, n = base, 1
        while folder in folders.values():
            n += 1
            folder = f"{base}-{n}"
        folders[name] = folder
    return folders


def _stem(channel: int, width: int) -> str:
    return f"c{channel:0{width}d}"


def _page(title: str, body: str, depth: int, script: bool = False) -> str:
    up = "../" * depth
    js = f'<script src="{up}static/atlas.js" defer></script>' if script else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{esc(title)}</title><link rel="icon" href="data:,">'
        f'<link rel="stylesheet" href="{up}static/atlas.css">{js}</head>\n'
        f"<body>\n{body}\n</body></html>\n"
    )


def _nav(depth: int, *crumbs: tuple[str, str | None]) -> str:
    up = "../" * depth
    parts = [f'<a href="{up}index.html">atlas</a>']
    parts += [
        f'<a href="{esc(href)}">{esc(text)}</a>' if href else esc(text) for text, href in crumbs
    ]
    return '<nav class="crumbs">' + " › ".join(parts) + "</nav>"


def _value(value: float) -> str:
    """An activation as shown (4 significant digits) and kept exactly in ``data-activation``."""
    return f"{value:.4g}"


def _tile(href: str, src: str, channel: int, value: float, lazy: bool = True) -> str:
    loading = ' loading="lazy" decoding="async"' if lazy else ""
    return (
        f'<a class="tile" href="{esc(href)}" data-channel="{channel}" '
        f'data-activation="{float(value)!r}"><img src="{esc(src)}"{loading} width="{TILE}" '
        f'height="{TILE}" alt="channel {channel}"><span class="ch">{channel}</span>'
        f'<span class="act">{_value(value)}</span></a>'
    )


def _write_layer(
    out: Path, layer: LayerRecord, folder: str, width: int, paged: set[int], progress: bool
) -> list[_Tile]:
    """Write every channel page of ``layer``, then the layer page; the tiles, strongest first."""
    (out / folder / "png").mkdir(parents=True, exist_ok=True)
    tiles = []
    records = tqdm(layer.channels, total=layer.num_channels, desc=f"atlas {layer.name}",
                   disable=not progress)  # fmt: skip
    for record in records:
        _write_channel(out / folder, layer, record, width, paged)
        tiles.append(_Tile(record.channel, float(record.values[0])))
    if not tiles:
        raise ValueError(f"layer {layer.name!r} has no channel records")
    tiles.sort(key=lambda t: (-t.value, t.channel))
    grid = "".join(
        _tile(f"{folder}/{_stem(t.channel, width)}.html",
              f"{folder}/png/{_stem(t.channel, width)}-tile.png", t.channel, t.value)
        for t in tiles
    )  # fmt: skip
    field = f" · receptive field {esc(layer.field)}" if layer.field else ""
    mined = f"{len(tiles)} of {layer.num_channels}" if len(tiles) < layer.num_channels else ""
    body = (
        _nav(0, (layer.name, None))
        + f"<h1>{esc(layer.name)} <small>{mined or len(tiles)} channels{field}</small></h1>"
        '<p class="help">Each tile: the deconvnet projection of the channel\'s strongest '
        "activation over the data (grey = 0) and that activation. Click a tile for the channel's "
        "page.</p>"
        '<div class="controls"><label>Sort <select id="sort">'
        '<option value="activation">strongest first</option>'
        '<option value="weakest">weakest first</option>'
        '<option value="channel">by channel number</option></select></label> '
        '<label>Channels <input id="search" type="search" placeholder="e.g. 7 or 3-9, 12" '
        'autocomplete="off" spellcheck="false"></label> '
        f'<span id="count" aria-live="polite">{len(tiles)} of {len(tiles)} channels</span></div>'
        f'<div id="grid" class="grid">{grid}</div>'
    )
    (out / f"{folder}.html").write_text(
        _page(f"{layer.name} — atlas", body, 0, script=True), encoding="utf-8"
    )
    return tiles


def _write_channel(
    folder: Path, layer: LayerRecord, record: ChannelRecord, width: int, paged: set[int]
) -> None:
    """One channel's PNGs and page (in ``folder``, the layer's folder)."""
    stem = _stem(record.channel, width)
    projections = contrast_stretch(record.projections)
    patches = image_display(record.patches)
    save_png(projections[0], folder / "png" / f"{stem}-tile.png", TILE)
    tops = []
    for j, value in enumerate(record.values.tolist()):
        save_png(projections[j], folder / "png" / f"{stem}-p{j + 1}.png", SHOWN)
        save_png(patches[j], folder / "png" / f"{stem}-x{j + 1}.png", SHOWN)
        image = int(record.image_ids[j])
        label = f"image {image}"
        link = f'<a href="../images/image-{image}.html">{label}</a>' if image in paged else label
        name = record.image_names[j]
        file = f'<br><span class="file">{esc(name)}</span>' if name else ""
        tops.append(
            f'<figure class="top" data-rank="{j + 1}" data-activation="{float(value)!r}" '
            f'data-image="{image}"><div class="pair">'
            f'<img class="projection" src="png/{stem}-p{j + 1}.png" alt="projection {j + 1}">'
            f'<img class="patch" src="png/{stem}-x{j + 1}.png" alt="patch {j + 1}"></div>'
            f"<figcaption><b>{_value(value)}</b> · {link}{file}</figcaption></figure>"
        )
    extras = []
    if record.filter is not None:
        kernel = record.filter
        save_png(contrast_stretch(kernel[None])[0], folder / "png" / f"{stem}-filter.png", SHOWN)
        extras.append(
            f'<figure class="filter"><img src="png/{stem}-filter.png" alt="filter">'
            f"<figcaption>filter ({kernel.shape[-2]}×{kernel.shape[-1]}, grey = 0)</figcaption>"
            "</figure>"
        )
    if record.histogram is not None:
        hist = record.histogram
        svg = histogram_svg(hist, mark=float(record.values[-1]))
        extras.append(
            f'<figure class="hist">{svg}<figcaption>each image\'s strongest activation of the '
            f"channel, {int(hist.counts.sum()):,} images (line: the weakest of the top "
            f"{len(record.values)})</figcaption></figure>"
        )
    field = f" · receptive field {esc(layer.field)}" if layer.field else ""
    body = (
        _nav(1, (layer.name, f"../{folder.name}.html"), (f"channel {record.channel}", None))
        + f"<h1>{esc(layer.name)} · channel {record.channel}</h1>"
        f'<p class="meta">max activation <b class="max" data-activation='
        f'"{float(record.values[0])!r}">{_value(float(record.values[0]))}</b>{field}</p>'
        f'<div class="row">{"".join(extras)}</div>'
        f"<h2>Top {len(tops)} activations</h2>"
        '<p class="help">Each pair: the deconvnet projection of the activation (left, grey = 0) '
        "and the image patch in its receptive field (right; blue: outside the image).</p>"
        f'<div class="tops">{"".join(tops)}</div>'
    )
    (folder / f"{stem}.html").write_text(
        _page(f"{layer.name} channel {record.channel} — atlas", body, 1), encoding="utf-8"
    )


def _write_images(
    out: Path,
    images: Iterable[ImageRecord],
    folders: dict[str, str],
    widths: dict[str, int],
    class_names: Sequence[str] | None,
    progress: bool,
) -> set[int]:
    """Write each image's page and the images index; the data-set positions that have a page."""
    entries = []
    for record in tqdm(images, desc="atlas images", disable=not progress):
        stem = f"image-{record.index}"
        save_png(image_display(record.image[None])[0], out / "images" / f"{stem}.png", PHOTO)
        sections = []
        for layer, top in record.top.items():
            if layer not in folders:
                continue
            folder, width = folders[layer], widths[layer]
            tiles = "".join(
                _tile(f"../{folder}/{_stem(c, width)}.html",
                      f"../{folder}/png/{_stem(c, width)}-tile.png", c, v)
                for v, c in zip(top.values.tolist(), top.channels.tolist(), strict=True)
            )  # fmt: skip
            sections.append(
                f'<h3><a href="../{folder}.html">{esc(layer)}</a></h3>'
                f'<div class="grid" data-layer="{esc(layer)}">{tiles}</div>'
            )
        if record.occlusion is not None:
            maps = record.occlusion
            fig = plot_occlusion_maps(record.image, maps, class_names, projection=record.projection)
            fig.savefig(out / "images" / f"{stem}-occlusion.png", dpi=90)
            sections.append(
                "<h2>Occlusion (Fig. 7)</h2>"
                f'<img class="occlusion" src="{stem}-occlusion.png" alt="occlusion maps">'
                f'<p class="help">A {maps.window[0]}×{maps.window[1]} grey square slides over the '
                f"image; (b) total activation of {esc(maps.layer)} map {maps.channel}, the "
                "strongest on the clean image, (c) its projection, (d) probability of the class, "
                "(e) most probable class — as functions of the square's position.</p>"
            )
        about = " · ".join(esc(t) for t in (record.label, record.name) if t)
        body = (
            _nav(1, ("images", "index.html"), (f"image {record.index}", None))
            + f"<h1>image {record.index} <small>{about}</small></h1>"
            f'<img class="photo" src="{stem}.png" alt="image {record.index}">'
            "<h2>Most active channels</h2>"
            '<p class="help">Per layer, the channels whose strongest unit on this image is '
            "largest (value: that unit's activation on this image; picture: the channel's "
            "strongest projection over the data).</p>" + "".join(sections)
        )
        (out / "images" / f"{stem}.html").write_text(
            _page(f"image {record.index} — atlas", body, 1), encoding="utf-8"
        )
        entries.append((record.index, about))
    cells = "".join(
        f'<a class="tile" href="image-{i}.html" data-image="{i}"><img src="image-{i}.png" '
        f'loading="lazy" decoding="async" width="{TILE}" height="{TILE}" alt="image {i}">'
        f'<span class="ch">{i}</span><span class="act">{about}</span></a>'
        for i, about in sorted(entries)
    )
    body = (
        _nav(1, ("images", None)) + f"<h1>Images <small>{len(entries)} pages</small></h1>"
        '<p class="help">Every image among a channel\'s top activations (and every image with '
        f'occlusion maps).</p><div class="grid">{cells}</div>'
    )
    (out / "images" / "index.html").write_text(_page("images — atlas", body, 1), encoding="utf-8")
    return {i for i, _ in entries}


def _write_index(
    out: Path,
    previews: list[tuple[LayerRecord, list[_Tile]]],
    folders: dict[str, str],
    widths: dict[str, int],
    title: str,
    summary: str,
    num_images: int,
) -> None:
    rows = []
    for layer, tiles in previews:
        folder, width = folders[layer.name], widths[layer.name]
        strip = "".join(
            _tile(f"{folder}/{_stem(t.channel, width)}.html",
                  f"{folder}/png/{_stem(t.channel, width)}-tile.png", t.channel, t.value)
            for t in tiles[:8]
        )  # fmt: skip
        rows.append(
            f'<tr><td><a class="layer" href="{folder}.html">{esc(layer.name)}</a></td>'
            f"<td>{len(tiles)}</td><td>{esc(layer.field or '—')}</td>"
            f'<td><div class="strip">{strip}</div></td></tr>'
        )
    body = (
        f"<h1>{esc(title)}</h1>"
        + (f'<p class="meta">{esc(summary)}</p>' if summary else "")
        + '<p class="help">Every channel of every analysed layer: open a layer for the grid of '
        "its channels, a channel for its strongest activations.</p>"
        "<table><thead><tr><th>layer</th><th>channels</th><th>receptive field</th>"
        f"<th>strongest channels</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f'<p><a href="images/index.html">{num_images:,} image pages</a></p>'
    )
    (out / "index.html").write_text(_page(title, body, 0), encoding="utf-8")
