"""Exact incremental inference over a traced graph (Nakandala et al., SIGMOD 2019).

:class:`IncrementalForward` stands in for a network inside a perturbation loop. Its first call
runs the unperturbed inputs through the ``torch.fx`` graph and keeps every node's output (one
input's worth of activations). Each later call receives a batch of ``B = k * N`` perturbed copies
(Captum's layout: sample ``b`` is a copy of example ``b % N``), or the changed rectangles of a
4-D input as a :class:`~deconvnet_attr.incremental.patches.Patch` (``deconvnet_attr.sweep``
knows them). Otherwise it finds, per sample, the rectangle in which the input differs from the
reference; it carries that rectangle through the graph with the arithmetic of ``geometry.py``:

* window ops (convolution, pooling) recompute only the output units whose window meets the
  rectangle, from a region of their input (the rectangle plus the halo the kernel needs) that is
  gathered from the cached map with the changed values pasted in;
* pointwise ops run on the rectangle; merges (residual add, channel concat) on the bounding box
  of their inputs' rectangles;
* from the first op whose rectangle covers (most of) its map, or that has no local geometry
  (flatten, linear, global pooling, ...), the batch is materialised and run as usual -- in
  calls of a few copies when its activations are large (``Plan.copies_per_call``).

All samples of a batch share one rectangle size per node (the largest); each has its own position,
shifted inward at the borders. Recomputing a few unchanged units is harmless, so the result is
full recomputation up to float rounding. Unchanged nodes are never recomputed.

The package splits the job in three: :mod:`~deconvnet_attr.incremental.plan` (built once from
the unperturbed call: eligibility, liveness, cost), :mod:`~deconvnet_attr.incremental.executor`
(one perturbed batch, a handler per geometry kind, multiply-accumulate counting) and
:mod:`~deconvnet_attr.incremental.patches` (rectangle arithmetic on tensors);
:class:`IncrementalForward` ties them together.
"""

from deconvnet_attr.incremental.executor import RunStats
from deconvnet_attr.incremental.forward import IncrementalForward

__all__ = ["IncrementalForward", "RunStats"]
