"""Traced per-op geometry of a CNN: receptive fields and changed-region propagation.

One ``torch.fx`` trace of a network, with every node described by what it does to the spatial
(height, width) layout of its tensors (:class:`OpSpec`): ``window`` (convolution, pooling,
constant padding: each output unit reads a ``kernel`` window of its input, placed every
``stride`` units, shifted by ``padding``, spread by ``dilation``), ``pointwise`` (activations,
batch norm in eval mode, dropout / drop path in eval mode, ...), ``merge`` (residual add,
per-channel scales, channel concat), ``layout`` (channel split, chunk, index, reshape),
``meta`` (``x.shape`` and arithmetic on it) and ``opaque`` (global pooling, squeeze-excitation
gates, group / layer norm, flatten, linear, attention, ...), with the reason. Ops are looked up
in the one op table, :mod:`deconvnet_attr.ops`.

Two users share this description: :func:`receptive_field`, the input window one unit of a layer
sees, and the incremental occlusion engine (:mod:`deconvnet_attr.incremental`), which carries a
changed rectangle from the input through the same arithmetic (:meth:`Window.affected_outputs`,
:meth:`Window.inputs_needed`).

The package: :mod:`~.window` (the value types), :mod:`~.ops` (window ops from their arguments),
:mod:`~.layout` (which layout ops keep space), :mod:`~.specs` (node -> spec),
:mod:`~.trace` (the traced, recorded net), :mod:`~.fields` (receptive fields, crops).
"""

from deconvnet_attr.geometry.fields import (
    LayerReceptiveField,
    ReceptiveField,
    layer_node,
    receptive_field,
    receptive_field_crop,
    receptive_field_table,
)
from deconvnet_attr.geometry.trace import TracedNet, trace
from deconvnet_attr.geometry.window import GeometryError, OpSpec, Shaped, Window

__all__ = [
    "GeometryError",
    "LayerReceptiveField",
    "layer_node",
    "OpSpec",
    "ReceptiveField",
    "Shaped",
    "TracedNet",
    "Window",
    "receptive_field",
    "receptive_field_crop",
    "receptive_field_table",
    "trace",
]
