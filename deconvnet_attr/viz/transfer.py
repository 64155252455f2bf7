"""Fig. 9: accuracy on a new data set against the number of training images per class."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from deconvnet_attr.analysis.transfer import TransferResult

__all__ = ["plot_transfer"]


def plot_transfer(result: TransferResult, title: str | None = None) -> Figure:
    """One panel per classifier: test accuracy (%, mean ± std over the draws) against the
    training images per class (log axis), one line per frozen layer, and the from-scratch model
    as a dashed black line when :func:`~deconvnet_attr.analysis.transfer.transfer` trained it."""
    kinds = list(result.accuracy)
    fig = Figure(figsize=(4.6 * len(kinds), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(kinds), sharey=True))
    n = np.asarray(result.per_class)
    for ax, kind in zip(axes, kinds, strict=True):
        for layer in result.layers:
            values = result.accuracy[kind][layer]
            ax.errorbar(n, values.mean(1), yerr=values.std(1), marker=".", capsize=2, label=layer)
        if result.scratch is not None:
            ax.errorbar(
                n,
                result.scratch.mean(1),
                yerr=result.scratch.std(1),
                color="black",
                ls="--",
                capsize=2,
                label="from scratch",
            )
        ax.set_xscale("log")
        ax.set_xlabel("training images per class")
        ax.set_title(f"frozen layers + {kind}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"test accuracy (%, {result.n_test} images)")
    axes[-1].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
