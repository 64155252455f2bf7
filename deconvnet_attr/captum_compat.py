"""The one place the package imports Captum's private helpers.

Mirroring Captum's classes exactly (argument formatting, target selection, batch expansion) is
easiest with the helpers Captum's own classes use, but they live in ``captum._utils`` and may change
in any minor release. Every private name the package uses is imported here and nowhere else, the
Captum range is pinned in ``pyproject.toml``, and ``tests/test_captum_compat.py`` checks each
helper's behaviour on small inputs, so a Captum release that changes one fails a test instead of
silently changing results.
"""

from __future__ import annotations

from captum._utils.common import (
    ExpansionTypes,
    _expand_additional_forward_args,
    _expand_target,
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
    _run_forward,
)
from captum._utils.gradient import (
    apply_gradient_requirements,
    construct_neuron_grad_fn,
    undo_gradient_requirements,
)
from captum._utils.typing import BaselineType, TargetType, TensorOrTupleOfTensorsGeneric
from captum.attr._utils.common import (
    _format_and_verify_sliding_window_shapes,
    _format_and_verify_strides,
    _format_input_baseline,
)

__all__ = [
    "BaselineType",
    "ExpansionTypes",
    "TargetType",
    "TensorOrTupleOfTensorsGeneric",
    "_expand_additional_forward_args",
    "_expand_target",
    "_format_additional_forward_args",
    "_format_and_verify_sliding_window_shapes",
    "_format_and_verify_strides",
    "_format_input_baseline",
    "_format_output",
    "_format_tensor_into_tuples",
    "_is_tuple",
    "_run_forward",
    "apply_gradient_requirements",
    "construct_neuron_grad_fn",
    "undo_gradient_requirements",
]
