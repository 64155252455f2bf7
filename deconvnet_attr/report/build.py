"""Building the report: mine the analysed layers once, run the section builders, write the page."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from deconvnet_attr.mining import TopActivations, top_activations_by_layer

from .context import Mined, ReportContext, Section, SectionBuilder
from .html import render_page
from .sections import SECTIONS

__all__ = ["build_report", "mine_layers"]


def mine_layers(ctx: ReportContext) -> dict[str, TopActivations]:
    """The top-``ctx.k`` activations of every channel of each of ``ctx.layers`` over ``ctx.data``,
    in one pass over the data (:func:`~deconvnet_attr.mining.top_activations_by_layer`)."""
    return top_activations_by_layer(
        ctx.model,
        ctx.layers,
        ctx.loader(),
        k=ctx.k,
        batch_size=ctx.batch_size,
        progress=ctx.progress,
    )


def build_report(
    ctx: ReportContext, sections: Sequence[SectionBuilder] = SECTIONS, mined: Mined | None = None
) -> Path:
    """Run every section builder and write ``ctx.out/index.html``; returns its path.

    The analysed layers are mined first (``mined``, default :func:`mine_layers`), and the same
    result goes to every builder, so what a section shows does not depend on which other
    sections run.
    """
    ctx.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if mined is None:
        mined = mine_layers(ctx)
    mining = time.perf_counter() - start
    built: list[tuple[Section, float]] = []
    bar = tqdm(sections, desc="report", unit="section", disable=not ctx.progress)
    for builder in bar:
        bar.set_postfix_str(builder.__name__.removesuffix("_section"))
        t0 = time.perf_counter()
        section = builder(ctx, mined)
        if section is not None:
            built.append((section, time.perf_counter() - t0))
    total = time.perf_counter() - start
    footer = (
        f"Built in {total:.1f} s ({mining:.1f} s mining the top activations) by "
        f"<code>{html.escape(ctx.command)}</code> (deconvnet-attr, Zeiler &amp; Fergus 2013)."
    )
    index = ctx.out / "index.html"
    index.write_text(
        render_page(f"deconvnet-attr report: {ctx.model_name}", built, footer), encoding="utf-8"
    )
    return index
