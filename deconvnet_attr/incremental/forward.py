""":class:`IncrementalForward`: the drop-in for ``fn`` that plans on the first call and executes
the plan on later ones, falling back to ``fn`` whenever the plan does not apply."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from deconvnet_attr.geometry import TracedNet
from deconvnet_attr.incremental.cost import Estimate, estimate
from deconvnet_attr.incremental.dry import dry_run
from deconvnet_attr.incremental.executor import Executor, RunStats
from deconvnet_attr.incremental.patches import Patch, concat
from deconvnet_attr.incremental.plan import Ineligible, Plan, make_plan

logger = logging.getLogger("deconvnet_attr.occlusion")

#: Further ``full_fraction`` values the cost model compares (measured on gernet_s,
#: cs3darknet_s and resnet18: 0.5-0.7 were up to 10 % faster than 0.9 where rectangles grow
#: large; below 0.3 the full ops dominate).
FRACTIONS = (0.7, 0.5)


class IncrementalForward:
    """A drop-in for ``fn`` in a perturbation loop that recomputes only what changed.

    ``fn`` is an ``nn.Module`` or a function ``torch.fx`` can trace. The first call must carry
    the unperturbed inputs (N examples); later calls carry ``B = k * N`` perturbed copies in
    Captum's layout. Anything the engine cannot handle -- ``fn`` not traceable, a module with
    hooks or in training mode, in-place aliasing, inputs of other shapes -- is passed to ``fn``
    unchanged; ``reason`` says why.
    ``full_fraction``: an op whose changed output rectangle covers at least this fraction of its
    map is computed in full (and so is everything after it).

    With ``cost_model`` (the default), the plan's work on the first perturbed batch, counted dry
    before any of it runs (:func:`~deconvnet_attr.incremental.dry.dry_run`), decides
    (:func:`~deconvnet_attr.incremental.cost.estimate`, at torch's current thread count): when
    full recomputation is estimated faster, that batch and all later ones are recomputed whole
    -- the plan's graph with its batch norms folded into the convolutions before them
    (:mod:`~deconvnet_attr.incremental.fold`), maps channels-last where every later op
    allows; ``fn`` itself if that fails --, ``reason`` says so and ``stats`` hold the dry
    count; ``estimate`` holds the verdict. When the caller says how many perturbed
    ``batches`` follow (at least
    :data:`~deconvnet_attr.incremental.cost.TRIAL_BATCHES`), an estimate within the model's
    error (:data:`~deconvnet_attr.incremental.cost.TRIAL`) is settled by measurement: that
    batch runs the plan and the next one full recomputation, each timed, and the faster per
    copy takes the rest (``estimate.measured``; ``stats`` then count the one incremental batch).

    A caller that knows where each sample changed (``deconvnet_attr.sweep``) may pass a 4-D input
    as a :class:`~deconvnet_attr.incremental.patches.Patch` over the reference instead of the
    whole batch: the plan starts from it, and a plain call of ``fn`` gets it pasted in.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        full_fraction: float = 0.9,
        cost_model: bool = True,
        batches: int | None = None,
    ) -> None:
        self.fn = fn
        self.batches = batches
        self.full_fraction = full_fraction
        self.cost_model = cost_model
        self.plan: Plan | None = None
        self.reason: str | None = None
        self.stats = RunStats()
        self.estimate: Estimate | None = None
        self._plan_seconds: float | None = None  # per copy, while the estimate is uncertain
        self._failed = False  # an op surprised the executor: fn from here on

    @property
    def net(self) -> TracedNet | None:
        """The traced graph with its reference values (after a successful first call)."""
        return self.plan.net if self.plan is not None else None

    @property
    def incremental(self) -> bool:
        """True while calls are evaluated incrementally (after a successful first call)."""
        return self.plan is not None and self.reason is None

    def __call__(self, *args: Any) -> Any:
        if self.reason is not None:
            return self._recompute(args) if self._full_chosen else self._plain(args)
        if self.plan is None:
            return self._start(args)
        batch = self.plan.batch_size(args)
        if batch is None:
            return self._plain(args)
        copies = batch // self.plan.examples
        if self.cost_model and self.estimate is None and not self._choose(args, copies):
            return self._recompute(args)
        if self.estimate is not None and self.estimate.uncertain:
            return self._trial(args, copies)
        return self._execute(args, copies)

    @property
    def _full_chosen(self) -> bool:
        """Whether the cost model (not a failure) sent the batches to full recomputation."""
        return not self._failed and self.estimate is not None and not self.estimate.chosen

    def _recompute(self, args: tuple) -> Any:
        """Full recomputation of a perturbed batch: the plan's graph (batch norms folded,
        :mod:`~deconvnet_attr.incremental.fold`; channels-last maps) run on whole maps, in calls
        of :meth:`Plan.copies_per_call` copies; ``fn`` itself if that fails. ``stats`` are not
        touched (they keep the dry count)."""
        assert self.plan is not None
        batch = self.plan.batch_size(args)
        if batch is None:
            return self._plain(args)
        copies = batch // self.plan.examples
        return self._run_plan(args, copies, RunStats(), 0.0, "full recomputation")

    def _trial(self, args: tuple, copies: int) -> Any:
        """One timed batch on each path while the estimate is uncertain: the plan first, then
        full recomputation; the faster per copy (``estimate.measured``) runs the rest."""
        assert self.estimate is not None
        start = time.perf_counter()
        if self._plan_seconds is None:
            result = self._execute(args, copies)
            if self.reason is None:  # the plan ran (a failure fell back to fn for good)
                self._plan_seconds = (time.perf_counter() - start) / copies
            return result
        result = self._recompute(args)
        if self._failed:
            return result
        full_seconds = (time.perf_counter() - start) / copies
        self.estimate = replace(self.estimate, measured=full_seconds / self._plan_seconds)
        if not self.estimate.chosen:
            self.reason = str(self.estimate)
        logger.debug("%s", self.estimate)
        return result

    def _execute(self, args: tuple, copies: int) -> Any:
        """The plan on one perturbed batch; ``fn`` from here on if an op surprises it."""
        return self._run_plan(
            args, copies, self.stats, self.full_fraction, "incremental evaluation"
        )

    def _run_plan(
        self, args: tuple, copies: int, stats: RunStats, fraction: float, what: str
    ) -> Any:
        """The executor on one batch (counting into ``stats``); if an op behaves unlike its
        description, ``fn`` for this batch and all later ones, and ``reason`` says why."""
        assert self.plan is not None
        try:
            with torch.no_grad():
                return Executor(self.plan, stats, fraction).run(args, copies)
        except Exception as error:  # be safe: run fn
            self._failed = True
            self.reason = f"{what} failed ({type(error).__name__}: {error})"
            logger.warning("%s; plain forward passes from here on", self.reason)
            return self._plain(args)

    def _plain(self, args: tuple) -> Any:
        """``fn`` itself on ``args`` (a :class:`Patch` among them pasted into its batch).

        Once planned, ``fn`` is known to be a pure function of its inputs (eval mode, no
        hooks, traceable), so a batch of perturbed copies is run in calls of
        :meth:`Plan.copies_per_call` copies and the outputs concatenated: the same values,
        allocated and cached better.
        """
        plan = self.plan
        batch = plan.batch_size(args) if plan is not None else None
        if plan is None or batch is None:
            if any(isinstance(a, Patch) for a in args):
                raise ValueError("a Patch argument needs the unperturbed call first")
            return self.fn(*args)
        copies = batch // plan.examples
        whole = plan.whole(args, copies)
        step = plan.copies_per_call(copies) * plan.examples
        if step >= batch:
            return self.fn(*whole)
        parts = [
            self.fn(*(a[i : i + step] if isinstance(a, torch.Tensor) else a for a in whole))
            for i in range(0, batch, step)
        ]
        return concat(parts)

    def _choose(self, args: tuple, copies: int) -> bool:
        """The cost model's verdict on the first perturbed batch, before any of it runs: True to
        run the plan. On False, ``stats`` keep the dry count (the plan's work on that batch).

        The dry count is taken at ``full_fraction`` and at the smaller :data:`FRACTIONS`: a
        rectangle covering most of its map costs its gathers on top of nearly the full op, so
        the fraction with the cheapest estimate is kept for the rest of the call (a batch too
        small for a verdict keeps ``full_fraction``).
        """
        assert self.plan is not None
        threads = torch.get_num_threads()
        best: tuple[Estimate, RunStats, float] | None = None
        for fraction in sorted({self.full_fraction, *FRACTIONS}, reverse=True):
            try:
                counted = dry_run(self.plan, args, copies, fraction)
            except Exception as error:  # the executor would meet the same surprise: let it run
                logger.debug("no dry count (%s: %s)", type(error).__name__, error)
                return True
            guess = estimate(counted, threads, self.batches)
            if not guess.decided:  # too small a batch to matter: the default, no verdict
                self.estimate = guess
                return True
            if best is None or guess.incremental < best[0].incremental:
                best = (guess, counted, fraction)
        assert best is not None
        self.estimate, counted, self.full_fraction = best
        if self.estimate.chosen:
            return True
        self.reason = str(self.estimate)
        self.stats = counted
        return False

    def _start(self, args: tuple) -> Any:
        try:
            self.plan = make_plan(self.fn, args)
        except Ineligible as why:
            self.reason = str(why)
            # a recorded run copied in-place ops' inputs: the result comes from fn itself
            return self._plain(args)
        return self.plan.reference_output()
