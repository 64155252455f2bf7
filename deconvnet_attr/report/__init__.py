"""The offline HTML report: the paper's analyses for one model and one image set, one command.

``deconvnet-attr report --out DIR`` (or ``python -m deconvnet_attr.report``) runs every analysis
on the bundled reference model and the bundled Fashion-MNIST evaluation subset (no network) and
writes ``DIR/index.html``, each figure a PNG beside it and each table inline. The same command
takes a user's own model (``--model``: any name :func:`~deconvnet_attr.models.create_model`
knows, ``--weights``: a weights file), images (``--images``: an ImageFolder directory) and layers
(``--layers``).

The package, one job per module:

* :mod:`.context` -- :class:`ReportContext` (what every section shares) and :class:`Section`;
* :mod:`.build` -- :func:`build_report`: mines the analysed layers once (:func:`mine_layers`),
  hands the result to every section builder of :data:`SECTIONS`, writes the atlas and the page;
* :mod:`.atlas` -- :func:`write_report_atlas`: the unit atlas in ``OUT/atlas/`` from that mining;
* :mod:`.sections` / :mod:`.studies` -- the section builders, per layer / on the whole model;
* :mod:`.html` -- the markup: tables (from cells or a ``RecordTable``), paragraphs, the page;
* :mod:`.cli` -- argument parsing and loading the model, images and checkpoints they name.
"""

from .atlas import atlas_channels, write_report_atlas
from .build import build_report, mine_layers
from .cli import (
    check_device,
    context_from_args,
    load_weights,
    main,
    parse_args,
    with_input_normalization,
)
from .context import Mined, ReportContext, Section, SectionBuilder
from .html import html_table, record_table
from .paper_sections import fig6_section, table3_retrained_section, transfer_section
from .sections import (
    SECTIONS,
    evolution_section,
    feature_grid_section,
    field_coverage,
    followed_channels,
    overview_section,
    receptive_field_section,
)
from .studies import (
    ablation_section,
    correspondence_section,
    invariance_section,
    occlusion_examples,
    occlusion_section,
)

__all__ = [
    "SECTIONS",
    "Mined",
    "ReportContext",
    "Section",
    "SectionBuilder",
    "ablation_section",
    "atlas_channels",
    "build_report",
    "check_device",
    "context_from_args",
    "correspondence_section",
    "evolution_section",
    "feature_grid_section",
    "field_coverage",
    "fig6_section",
    "followed_channels",
    "html_table",
    "invariance_section",
    "load_weights",
    "main",
    "mine_layers",
    "occlusion_examples",
    "occlusion_section",
    "overview_section",
    "parse_args",
    "receptive_field_section",
    "table3_retrained_section",
    "transfer_section",
    "record_table",
    "with_input_normalization",
    "write_report_atlas",
]
