"""Building the report: mine the analysed layers once, run the section builders, write the page."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import html
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from deconvnet_attr.atlas import ChannelMaxima
from deconvnet_attr.cli import one_line
from deconvnet_attr.distributed import rank0_writes, rank_and_world
from deconvnet_attr.mining import TopActivations, top_activations_by_layer

from .atlas import write_report_atlas
from .context import Mined, ReportContext, Section, SectionBuilder
from .html import render_page
from .sections import SECTIONS

__all__ = ["ReportResult", "build_report", "mine_layers", "write_report"]


def mine_layers(ctx: ReportContext) -> dict[str, TopActivations]:
    """The top-``ctx.k`` activations of every channel of each of ``ctx.layers`` over ``ctx.data``,
    in one pass over the data (:func:`~deconvnet_attr.mining.top_activations_by_layer`). For the
    unit atlas (``ctx.atlas``, one process) the same pass records each image's channel maxima into
    ``ctx.maxima``, so the atlas's statistics need no pass of their own."""
    if ctx.atlas and rank_and_world()[1] == 1:
        if ctx.maxima is not None:
            ctx.maxima.close()
        ctx.maxima = ChannelMaxima()
    return top_activations_by_layer(
        ctx.model,
        ctx.layers,
        ctx.loader(),
        k=ctx.k,
        batch_size=ctx.batch_size,
        progress=ctx.progress,
        maxima=ctx.maxima,
    )


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        library = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return library if library is not None and hasattr(library, "malloc_trim") else None


def release_freed_memory() -> None:
    """Hand the freed heap pages back to the operating system (glibc's ``malloc_trim``), called
    between sections: glibc keeps the pages of a section's freed tensors, so without it the next
    section's peak stacks on the last one's (measured: 1 GB kept after Fig. 2 of a ResNet-18 at
    224 px). Nothing happens where the C library has no ``malloc_trim`` (macOS, Windows, musl)."""
    library = _libc()
    if library is not None:
        library.malloc_trim(0)


@dataclass
class ReportResult:
    """What :func:`write_report` wrote: the page, and ``{section: one-line error}`` for each
    section whose builder raised (shown on the page in its place)."""

    index: Path
    failed: dict[str, str] = field(default_factory=dict)


def _title(builder: SectionBuilder) -> str:
    return builder.__name__.removesuffix("_section").replace("_", " ")


def _failed_section(builder: SectionBuilder, error: Exception) -> Section:
    message = html.escape(f"{type(error).__name__}: {one_line(error, limit=2000)}")
    return Section(
        f"{_title(builder)} (failed)",
        f'<p class="error">This section failed: <code>{message}</code></p>',
    )


def write_report(
    ctx: ReportContext,
    sections: Sequence[SectionBuilder] = SECTIONS,
    mined: Mined | None = None,
    raise_errors: bool = False,
) -> ReportResult:
    """Run every section builder, write the unit atlas (``ctx.atlas``: ``ctx.out/atlas/``,
    linked from the top of the page) and write ``ctx.out/index.html``.

    The analysed layers are mined first (``mined``, default :func:`mine_layers`), and the same
    result goes to every builder, so what a section shows does not depend on which other
    sections run. A builder that raises (an ``Exception``) does not lose the others: its place on
    the page shows the error, and :attr:`ReportResult.failed` names it — unless
    ``raise_errors``, which re-raises it at once.

    Under ``torchrun`` (:mod:`deconvnet_attr.distributed`) every rank runs the same builders (the
    mining and the projections inside them are sharded over the ranks, the rest is replicated)
    and only rank 0 writes into ``ctx.out``; the others render no figure nor atlas page
    (``ReportContext.draws``), write the page into a temporary directory that is removed, and
    return the same :class:`ReportResult` paths as rank 0.
    """
    with rank0_writes(ctx.out) as out:
        local = ctx if out == ctx.out else replace(ctx, out=out, progress=False, draws=False)
        result = _write_report(local, sections, mined, raise_errors)
    return ReportResult(ctx.out / result.index.name, result.failed)


def _write_report(
    ctx: ReportContext,
    sections: Sequence[SectionBuilder],
    mined: Mined | None,
    raise_errors: bool,
) -> ReportResult:
    """:func:`write_report` into ``ctx.out``."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if mined is None:
        mined = mine_layers(ctx)
    mining = time.perf_counter() - start
    release_freed_memory()
    built: list[tuple[Section, float]] = []
    failed: dict[str, str] = {}
    bar = tqdm(sections, desc="report", unit="section", disable=not ctx.progress)
    for builder in bar:
        bar.set_postfix_str(builder.__name__.removesuffix("_section"))
        t0 = time.perf_counter()
        try:
            section = builder(ctx, mined)
        except Exception as error:
            if raise_errors:
                raise
            section = _failed_section(builder, error)
            failed[_title(builder)] = f"{type(error).__name__}: {one_line(error)}"
        if section is not None:
            built.append((section, time.perf_counter() - t0))
        release_freed_memory()
    header, atlas_time = "", ""
    if ctx.atlas and mined:  # nothing mined (e.g. a caller's empty mined): no atlas
        t0 = time.perf_counter()
        try:
            header = write_report_atlas(ctx, mined)
        except Exception as error:
            if raise_errors:
                raise
            message = f"{type(error).__name__}: {one_line(error)}"
            failed["unit atlas"] = message
            header = (
                f'<p class="error">The unit atlas failed: <code>{html.escape(message)}</code></p>'
            )
        atlas_time = f", {time.perf_counter() - t0:.1f} s the unit atlas"
    if ctx.maxima is not None:  # its temporary file: the atlas was its only reader
        ctx.maxima.close()
        ctx.maxima = None
    total = time.perf_counter() - start
    footer = (
        f"Built in {total:.1f} s ({mining:.1f} s mining the top activations{atlas_time}) by "
        f"<code>{html.escape(ctx.command)}</code> (deconvnet-attr, Zeiler &amp; Fergus 2013)."
    )
    index = ctx.out / "index.html"
    index.write_text(
        render_page(f"deconvnet-attr report: {ctx.model_name}", built, footer, header),
        encoding="utf-8",
    )
    return ReportResult(index, failed)


def build_report(
    ctx: ReportContext, sections: Sequence[SectionBuilder] = SECTIONS, mined: Mined | None = None
) -> Path:
    """:func:`write_report`, returning the page's path; each failed section (shown on the page)
    also gives a ``RuntimeWarning`` naming it and its error."""
    result = write_report(ctx, sections, mined)
    for title, error in result.failed.items():
        warnings.warn(f"report section {title!r} failed: {error}", RuntimeWarning, stacklevel=2)
    return result.index
