"""The cost model: is the incremental plan faster than Captum's batched full recomputation?

Both costs are in multiply-accumulate equivalents of one large batched convolution, counted dry
on the call's first perturbed batch before it runs (:mod:`~deconvnet_attr.incremental.dry`; the
batch's size is the call's ``perturbations_per_eval * N``), at torch's current thread count:

* full recomputation (the engine's: in calls of ``Plan.copies_per_call`` copies) costs the
  convolutions' MACs of the whole batch (``conv_macs_full``) plus ``per_output_full`` for every
  output element its ops write (``elements_full``): batch norms, activations, additions and
  depthwise convolutions are memory-bound, and on mobile networks they cost more than the MACs;
* the incremental plan costs its rectangles' MACs times ``efficiency``, ``per_element`` for every
  element its gathers and pastes move, ``per_op`` for every op run on a rectangle (Python,
  dispatch and index arithmetic) and ``per_output`` for every output element it writes.

The constants (:func:`constants`) were fitted by least squares to one measured perturbed batch of
41 torchvision / timm CNNs at 1 and 2 threads (``benchmarks/cost_fit.py``, 224 px, 3x16x16
window, 32 windows a batch; docs/performance.md, docs/cost_fit.csv); beyond 2 threads they are
extrapolated linearly. The fit's mean per-model error is 12 % (1 thread) / 15 % (2 threads), but
single models are off by up to 2x (ShuffleNet-v2's plan at one thread: estimated 1.16x, measured
1.86x): an estimate within :data:`TRIAL` is no verdict. A call of at least :data:`TRIAL_BATCHES`
batches measures instead (one perturbed batch on each path,
:class:`~deconvnet_attr.incremental.forward.IncrementalForward`); a shorter one takes the plan
when it is estimated at least :data:`MARGIN` faster.
"""

from __future__ import annotations

from dataclasses import dataclass

from deconvnet_attr.incremental.executor import RunStats

__all__ = ["Constants", "Estimate", "constants", "estimate"]

#: Estimates from ``TRIAL[0]`` up to ``TRIAL[1]`` are within the model's error on its fit data:
#: measured instead when the call has enough batches.
TRIAL = (0.6, 1.6)
#: A measurement runs one batch on the slower path (up to 2x slower where the model erred):
#: from this many batches on that costs at most 5 %.
TRIAL_BATCHES = 20
#: Without a measurement, incremental is chosen when it is estimated this much faster.
MARGIN = 1.2
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
    per_output: float  # per output element the incremental plan writes
    per_output_full: float  # per output element full recomputation writes


def constants(threads: int) -> Constants:
    """Fitted at 1 thread (1.07, 13.2, 4.09e7, 54.3, 46.4) and 2 threads (1.07, 12.7, 5.94e7,
    69.1, 59.9): each rectangle op's fixed cost gains less from a second core than a large
    convolution does."""
    extra = max(threads, 1) - 1
    return Constants(
        efficiency=1.07,
        per_element=max(13.2 - 0.5 * extra, 0.0),
        per_op=4.09e7 * (1 + 0.45 * extra),
        per_output=54.3 + 14.8 * extra,
        per_output_full=46.4 + 13.5 * extra,
    )


@dataclass(frozen=True)
class Estimate:
    """The cost model's verdict for one call: ``incremental`` and ``full`` costs (MAC
    equivalents per perturbed batch), their ratio ``speedup`` (full / incremental), the
    ``threads`` it assumed, the ``measured`` ratio of seconds per copy (full / incremental,
    one batch each) when the estimate was :attr:`uncertain`, and whether the incremental plan
    is ``chosen``."""

    incremental: float
    full: float
    threads: int
    #: whether the call is long enough to settle an uncertain estimate by measurement
    trial: bool = False
    measured: float | None = None

    @property
    def speedup(self) -> float:
        return self.full / max(self.incremental, 1.0)

    @property
    def decided(self) -> bool:
        """False when the batch is too small for the choice to matter (:data:`DECIDED_FROM`)."""
        return self.full >= DECIDED_FROM

    @property
    def uncertain(self) -> bool:
        """True while a decided estimate within :data:`TRIAL` waits for its measurement."""
        return (
            self.trial
            and self.decided
            and self.measured is None
            and TRIAL[0] <= self.speedup < TRIAL[1]
        )

    @property
    def chosen(self) -> bool:
        """Whether the incremental plan runs (first, while :attr:`uncertain`)."""
        if self.measured is not None:
            return self.measured >= 1.0
        return self.uncertain or not self.decided or self.speedup >= MARGIN

    def __str__(self) -> str:
        threads = f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        band = f"measured from {TRIAL[0]:.1f}x to {TRIAL[1]:.1f}x, else " if self.trial else ""
        text = (
            f"cost model: incremental estimated {self.speedup:.2f}x full recomputation at "
            f"{threads} ({band}chosen from {MARGIN:.1f}x)"
        )
        if self.measured is not None:
            text += f"; measured {self.measured:.2f}x on one batch each"
        return text


def estimate(first_batch: RunStats, threads: int, batches: int | None = None) -> Estimate:
    """The estimate from the work counted (dry or run) on one perturbed batch (``first_batch``)
    of a call of ``batches`` batches (``None``: unknown)."""
    c = constants(threads)
    incremental = (
        c.efficiency * first_batch.conv_macs
        + c.per_element * first_batch.moved
        + c.per_op * first_batch.rect_ops
        + c.per_output * first_batch.elements
    )
    full = first_batch.conv_macs_full + c.per_output_full * first_batch.elements_full
    trial = batches is not None and batches >= TRIAL_BATCHES
    return Estimate(incremental, float(full), threads, trial)
