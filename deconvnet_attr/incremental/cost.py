"""The cost model: is the incremental plan faster than Captum's batched full recomputation?

Both costs are in multiply-accumulate equivalents of one large batched convolution, counted dry
on the call's first perturbed batch before it runs (:mod:`~deconvnet_attr.incremental.dry`; the
batch's size is the call's ``perturbations_per_eval * N``), at torch's current thread count:

* full recomputation costs the convolutions' MACs of the whole batch (``conv_macs_full``) plus
  ``PER_OUTPUT`` for every output element its ops write (``elements_full``): batch norms,
  activations, additions and depthwise convolutions are memory-bound, and on mobile networks they
  cost more than the MACs;
* the incremental plan costs its rectangles' MACs times ``EFFICIENCY``, ``PER_ELEMENT`` for every
  element its gathers and pastes move, ``PER_OP`` for every op run on a rectangle (Python,
  dispatch and index arithmetic) and ``PER_OUTPUT`` for every output element it writes.

The constants (:func:`constants`) were fitted by least squares to one measured perturbed batch of
40 torchvision / timm CNNs at 1 and 2 threads (``benchmarks/cost_fit.py``, 224 px, 3x16x16
window, 32 windows a batch; docs/performance.md); beyond 2 threads they are extrapolated
linearly. The fit's per-model error is about 15 %, so the plan is chosen only when estimated at
least ``MARGIN`` faster: a wrong "incremental" costs more than a wrong "full", whose loss is the
saving only.
"""

from __future__ import annotations

from dataclasses import dataclass

from deconvnet_attr.incremental.executor import RunStats

__all__ = ["Constants", "Estimate", "constants", "estimate"]

#: Required margin: incremental is chosen when it is estimated this much faster.
MARGIN = 1.3
#: Below this full-recomputation cost per batch (MAC equivalents, about 0.1 s of one core)
#: either path is quick and the incremental plan is kept without a verdict.
DECIDED_FROM = 4.0e9


@dataclass(frozen=True)
class Constants:
    """The cost model's constants at one thread count, in MAC equivalents of a batched
    convolution at that thread count."""

    efficiency: float  # per rectangle MAC
    per_element: float  # per element a gather or paste moves
    per_op: float  # per op run on a rectangle
    per_output: float  # per output element written (either path)


def constants(threads: int) -> Constants:
    """Fitted at 1 thread (0.82, 14, 1.45e7, 28) and 2 threads (0.79, 24, 2.0e7, 33): each
    rectangle op's fixed cost gains less from a second core than a large convolution does."""
    extra = max(threads, 1) - 1
    return Constants(
        efficiency=0.8,
        per_element=14.0 + 9.6 * extra,
        per_op=1.45e7 * (1 + 0.38 * extra),
        per_output=28.0 + 5.3 * extra,
    )


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
            f"cost model: incremental estimated {self.speedup:.2f}x full recomputation at "
            f"{threads} (chosen from {MARGIN:.1f}x)"
        )


def estimate(first_batch: RunStats, threads: int) -> Estimate:
    """The estimate from the work counted (dry or run) on one perturbed batch (``first_batch``)."""
    c = constants(threads)
    incremental = (
        c.efficiency * first_batch.conv_macs
        + c.per_element * first_batch.moved
        + c.per_op * first_batch.rect_ops
        + c.per_output * first_batch.elements
    )
    full = first_batch.conv_macs_full + c.per_output * first_batch.elements_full
    return Estimate(incremental, float(full), threads)
