"""The atlas in a real browser: Debian's headless Chromium driven by Playwright, from file://.

Every tile is present and its (lazy) image loads, sorting and search work, a tile leads to a
channel page with k projections, no request leaves the machine and the console stays clean. The
browser is the system one (``apt-get install chromium``); nothing downloads a browser. A missing
Chromium or Playwright is a failure, not a skip: CI installs both.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deconvnet_attr.atlas import build_atlas
from deconvnet_attr.data import load_eval_subset
from deconvnet_attr.models import load_reference

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAYERS = {"conv1": 16, "conv3": 48}
K = 4


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> Path:
    images, _ = load_eval_subset()
    out = tmp_path_factory.mktemp("browser") / "atlas"
    build_atlas(load_reference(), list(LAYERS), images[:48], out, k=K, progress=False)
    return out


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright's Python package: pip install playwright")
    if shutil.which(CHROMIUM) is None:
        pytest.fail(
            f"the browser tests need Debian's Chromium at {CHROMIUM}: apt-get install chromium"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A page whose every request is recorded (only file:// ones are let through), with its
    console errors and uncaught exceptions collected."""
    context = browser.new_context(viewport={"width": 900, "height": 500})
    requests: list[str] = []
    errors: list[str] = []

    def route(route):
        requests.append(route.request.url)
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", route)
    tab = context.new_page()
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.requests, tab.errors = requests, errors
    yield tab
    context.close()


def visible_tiles(page) -> list[tuple[int, float]]:
    return page.eval_on_selector_all(
        "#grid .tile:not([hidden])",
        "tiles => tiles.map(t => [Number(t.dataset.channel), Number(t.dataset.activation)])",
    )


def load_every_image(page) -> None:
    """Scroll each lazy image into view, then wait until all have decoded."""
    page.evaluate(
        """async () => {
            for (const img of document.images) {
                img.scrollIntoView();
                await new Promise(done => requestAnimationFrame(done));
            }
            window.scrollTo(0, 0);
        }"""
    )
    page.wait_for_function(
        "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)", timeout=20000
    )


@pytest.mark.parametrize("layer", list(LAYERS))
def test_layer_page_tiles_sorting_and_search(atlas, page, tmp_path, layer):
    page.goto((atlas / f"layer-{layer}.html").as_uri())
    channels = LAYERS[layer]
    tiles = page.locator("#grid .tile")
    assert tiles.count() == channels
    assert page.locator('#grid img[loading="lazy"]').count() == channels
    load_every_image(page)
    widths = page.eval_on_selector_all("#grid img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == channels and min(widths) > 0

    shown = visible_tiles(page)  # initially strongest first
    assert [v for _, v in shown] == sorted((v for _, v in shown), reverse=True)
    assert sorted(c for c, _ in shown) == list(range(channels))
    page.select_option("#sort", "channel")
    assert [c for c, _ in visible_tiles(page)] == list(range(channels))
    page.select_option("#sort", "weakest")
    values = [v for _, v in visible_tiles(page)]
    assert values == sorted(values)
    page.select_option("#sort", "activation")
    assert visible_tiles(page) == shown

    page.fill("#search", "7")
    assert [c for c, _ in visible_tiles(page)] == [7]
    assert page.inner_text("#count") == f"1 of {channels} channels"
    page.fill("#search", "3-5, 10")
    assert sorted(c for c, _ in visible_tiles(page)) == [3, 4, 5, 10]
    page.fill("#search", "seven")
    assert visible_tiles(page) == []
    assert page.eval_on_selector("#search", "s => !s.checkValidity()")
    page.fill("#search", "")
    assert len(visible_tiles(page)) == channels
    page.screenshot(path=str(tmp_path / f"layer-{layer}.png"), full_page=True)
    assert (tmp_path / f"layer-{layer}.png").stat().st_size > 0

    assert page.requests and all(url.startswith("file://") for url in page.requests)
    assert page.errors == []


def test_a_tile_leads_to_a_channel_page_with_k_projections(atlas, page, tmp_path):
    page.goto((atlas / "index.html").as_uri())
    page.click('a.layer[href="layer-conv3.html"]')
    page.fill("#search", "12")
    page.click('#grid .tile[data-channel="12"]')
    page.wait_for_load_state("load")
    assert page.url == (atlas / "layer-conv3" / "c12.html").as_uri()
    assert page.locator("figure.top").count() == K
    assert page.locator("figure.top img.projection").count() == K
    assert page.locator("figure.top img.patch").count() == K
    assert page.locator("svg.histogram rect").count() > 0
    load_every_image(page)
    page.screenshot(path=str(tmp_path / "channel.png"), full_page=True)

    page.click("figure.top >> nth=0 >> a")  # the strongest image's page
    page.wait_for_load_state("load")
    assert "/images/image-" in page.url
    load_every_image(page)
    assert page.locator(".grid").count() == len(LAYERS)

    assert all(url.startswith("file://") for url in page.requests)
    assert page.errors == []


def test_the_first_layer_page_shows_the_filter(atlas, page):
    page.goto((atlas / "layer-conv1" / "c03.html").as_uri())
    load_every_image(page)
    assert page.locator("figure.filter img").evaluate("i => i.naturalWidth") > 0
    assert page.errors == []


def test_nothing_is_fetched_from_the_network(atlas, page):
    """Each kind of page (entry, layers, channels, images), opened in turn, asks only for files
    beside it."""
    pages = [atlas / "index.html", atlas / "images" / "index.html"]
    pages += sorted(atlas.glob("layer-*.html"))
    pages += (
        sorted(atlas.glob("layer-*/c0*.html"))[:4] + sorted(atlas.glob("images/image-*.html"))[:3]
    )
    for path in pages:
        page.goto(path.as_uri())
        load_every_image(page)
    assert len(page.requests) > len(pages)  # pages, style sheets, scripts and images
    assert all(url.startswith("file://") for url in page.requests)
    assert page.errors == []
