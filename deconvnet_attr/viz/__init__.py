"""Matplotlib figures: projection grids, occlusion panels, invariance curves, correspondence and
accuracy bar charts, transfer curves.

Functions return a :class:`matplotlib.figure.Figure` and never reach into attribution
internals: they draw tensors and result tables produced by the public API. One module per figure
family: :mod:`.common` (display scaling), :mod:`.features` (Figs. 2, 4), :mod:`.occlusion`
(Fig. 7), :mod:`.studies` (Fig. 5, Tables 1 and 3), :mod:`.transfer` (Fig. 9), :mod:`.filters`
(Fig. 6), :mod:`.guided` (gradient vs deconvnet vs guided backpropagation).
"""

from .common import contrast_stretch, image_display, tile_grid
from .features import feature_block, plot_evolution, plot_feature_grid
from .occlusion import plot_occlusion_maps
from .studies import plot_accuracy_table, plot_correspondence, plot_invariance
from .transfer import plot_transfer

__all__ = [
    "contrast_stretch",
    "feature_block",
    "image_display",
    "plot_accuracy_table",
    "plot_correspondence",
    "plot_evolution",
    "plot_feature_grid",
    "plot_invariance",
    "plot_occlusion_maps",
    "plot_transfer",
    "tile_grid",
]
