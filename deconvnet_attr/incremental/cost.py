"""The cost model: is the incremental plan faster than Captum's batched full recomputation?

Both costs are in multiply-accumulate equivalents of one large batched convolution, counted dry
on the call's first perturbed batch before it runs (:mod:`~deconvnet_attr.incremental.dry`; the
batch's size is the call's ``perturbations_per_eval * N``), at torch's current thread count:

* full recomputation costs the convolutions' MACs of the whole batch (``conv_macs_full``);
* the incremental plan costs its rectangles' MACs, made dearer by ``efficiency`` (small
  convolutions use the cores less well than one large one, the more so the more threads:
  :func:`efficiency`), plus ``PER_ELEMENT`` for every element its gathers and pastes move and
  ``PER_OP`` for every op run on a rectangle (dispatch and indexing overhead).

The constants were fitted on the zoo benchmark (``benchmarks/occlusion_zoo.py``) so that the
model errs towards full recomputation near a tie: a wrong "incremental" costs more than a
wrong "full", whose loss is the saving only.
"""

from __future__ import annotations

from dataclasses import dataclass

from deconvnet_attr.incremental.executor import RunStats

__all__ = ["Estimate", "efficiency", "estimate"]

#: MAC-equivalents per element moved by a gather or a paste (an indexed copy).
PER_ELEMENT = 12.0
#: MAC-equivalents per op run on rectangles (Python, dispatch, index arithmetic).
PER_OP = 4.0e5
#: Required margin: incremental is chosen when it is estimated this much faster.
MARGIN = 1.1
#: Below this many full-recomputation MACs per batch (about 0.1 s of one core) either path is
#: quick and the incremental plan is kept without a verdict (small inputs stay incremental).
DECIDED_FROM = 4.0e9


def efficiency(threads: int) -> float:
    """How much dearer one rectangle MAC is than one MAC of a large batched convolution."""
    return 1.2 + 0.3 * (max(threads, 1) - 1)


@dataclass(frozen=True)
class Estimate:
    """The cost model's verdict for one call: ``incremental`` and ``full`` costs (MAC
    equivalents per perturbed batch), their ratio ``speedup`` (full / incremental), the
    ``threads`` it assumed and whether the incremental plan is ``chosen``."""

    incremental: float
    full: float
    threads: int

    @property
    def speedup(self) -> float:
        return self.full / max(self.incremental, 1.0)

    @property
    def decided(self) -> bool:
        """False when the batch is too small for the choice to matter (:data:`DECIDED_FROM`)."""
        return self.full >= DECIDED_FROM

    @property
    def chosen(self) -> bool:
        return not self.decided or self.speedup >= MARGIN

    def __str__(self) -> str:
        threads = f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        return (
            f"cost model: incremental estimated {self.speedup:.2f}x full recomputation at {threads}"
        )


def estimate(first_batch: RunStats, threads: int) -> Estimate:
    """The estimate from the work counted (dry or run) on one perturbed batch (``first_batch``)."""
    incremental = (
        efficiency(threads) * first_batch.conv_macs
        + PER_ELEMENT * first_batch.moved
        + PER_OP * first_batch.rect_ops
    )
    return Estimate(incremental, float(first_batch.conv_macs_full), threads)
