"""Receptive fields: the input window one unit of a layer sees, from the traced geometry, and
crops of images to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from torch import Tensor, nn
from torch.fx import GraphModule, Node

from deconvnet_attr.geometry.trace import TracedNet, trace
from deconvnet_attr.geometry.window import GeometryError
from deconvnet_attr.taps import LayerSpec, resolve_layer

__all__ = [
    "LayerReceptiveField",
    "ReceptiveField",
    "layer_node",
    "receptive_field",
    "receptive_field_crop",
    "receptive_field_table",
]


@dataclass(frozen=True)
class ReceptiveField:
    """Input window of one unit: unit (i, j) sees rows ``offset[0] + i * stride[0]`` ...
    ``+ size[0] - 1`` and columns likewise (before clipping to the image)."""

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]

    def rows(self, i: int) -> tuple[int, int]:
        """First and last input row (inclusive, unclipped) seen by output row ``i``."""
        start = self.offset[0] + i * self.stride[0]
        return start, start + self.size[0] - 1

    def cols(self, j: int) -> tuple[int, int]:
        """First and last input column (inclusive, unclipped) seen by output column ``j``."""
        start = self.offset[1] + j * self.stride[1]
        return start, start + self.size[1] - 1


def _propagate(net: TracedNet, source: Node) -> dict[Node, ReceptiveField | str]:
    """Receptive field (w.r.t. ``source``) of every node that depends on it, or why none."""
    fields: dict[Node, ReceptiveField | str] = {source: ReceptiveField((1, 1), (1, 1), (0, 0))}
    for node in net.nodes:
        if node is source or node.op == "placeholder":
            continue
        spec = net.specs[node]
        inputs = [fields[a] for a in node.all_input_nodes if a in fields]
        if not inputs or spec.kind == "meta":
            continue  # meta values (x.shape, x.size(1) // 2) are about the layout: no field
        broken = [f for f in inputs if isinstance(f, str)]
        if broken:
            fields[node] = broken[0]
        elif spec.kind == "window" and spec.window is not None:
            rf, w = cast(ReceptiveField, inputs[0]), spec.window
            size = [rf.size[d] + (w.span(d) - 1) * rf.stride[d] for d in range(2)]
            stride = [rf.stride[d] * w.stride[d] for d in range(2)]
            offset = [rf.offset[d] - w.padding[d] * rf.stride[d] for d in range(2)]
            fields[node] = ReceptiveField(
                (size[0], size[1]), (stride[0], stride[1]), (offset[0], offset[1])
            )
        elif spec.kind in ("pointwise", "layout"):
            fields[node] = inputs[0]
        elif spec.kind == "merge":
            maps = [cast(ReceptiveField, f) for f in inputs]
            if len({rf.stride for rf in maps}) > 1:
                fields[node] = f"{node.name} merges maps of different strides"
                continue
            lo = [min(rf.offset[d] for rf in maps) for d in range(2)]
            hi = [max(rf.offset[d] + rf.size[d] for rf in maps) for d in range(2)]
            fields[node] = ReceptiveField(
                (hi[0] - lo[0], hi[1] - lo[1]), maps[0].stride, (lo[0], lo[1])
            )
        else:
            fields[node] = f"{node.name} ({spec.reason})"
    return fields


def layer_node(module: GraphModule, model: nn.Module, layer: LayerSpec) -> tuple[str, Node]:
    """``layer``'s qualified name in ``model`` and the node of ``model``'s trace ``module`` that
    holds its output (its last call if it runs several times)."""
    name, _ = resolve_layer(model, layer)
    nodes = list(module.graph.nodes)
    if name == "":
        return name, next(n for n in nodes if n.op == "output").args[0]
    inside = [
        n
        for n in nodes
        if (n.op == "call_module" and n.target == name)
        or any(v[0] == name for v in n.meta.get("nn_module_stack", {}).values())
    ]
    members = set(inside)
    outputs = [n for n in inside if any(u not in members for u in n.users)]
    if not outputs:
        raise ValueError(f"layer {name!r} is never called in the traced forward pass")
    return name, outputs[-1]


def receptive_field(model: nn.Module, layer: nn.Module | str, example: Tensor) -> ReceptiveField:
    """Exact receptive field of one unit of ``layer``'s output map.

    ``layer`` is a submodule (or its qualified name); ``example`` an input of shape
    ``(1, C, H, W)`` used to trace the model (the model is not changed). Unit (i, j) of the
    layer's output sees input rows ``offset[0] + i * stride[0]`` ... ``+ size[0] - 1`` and
    columns likewise, before clipping to the image. Exact through convolution and pooling
    (kernel, stride, padding, dilation, groups), pointwise ops, residual add and channel concat
    (the union of the branches), constant padding, and layout ops that keep space (channel
    split / chunk / index, reshapes of channel dims). Raises :class:`GeometryError` when an op
    without local geometry (flatten, linear, global pooling, ...) lies between the input and
    ``layer``.
    """
    net = trace(model, (example,), structural=True)
    name, node = layer_node(net.module, model, layer)
    source = net.placeholders()[0]
    rf = _propagate(net, source).get(node)
    if rf is None:
        raise GeometryError(
            f"layer {name!r} does not depend on the input", "it does not depend on the input"
        )
    if isinstance(rf, str):
        raise GeometryError(
            f"no receptive field for layer {name!r}: the path from the input passes through {rf}",
            f"the path from the input passes through {rf}",
        )
    return rf


@dataclass(frozen=True)
class LayerReceptiveField:
    """One row of :func:`receptive_field_table`: a convolution or pooling call and its field."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    field: ReceptiveField


def receptive_field_table(model: nn.Module, example: Tensor) -> list[LayerReceptiveField]:
    """Receptive field of every convolution and pooling call of ``model``, in forward order.

    ``example`` is an input of shape ``(1, C, H, W)``; ``output_shape`` is the layer's output on
    it. Layers past the first op without local geometry (flatten, linear, ...), or past the
    point where ``example`` stops running, are omitted.
    """
    net = trace(model, (example,), structural=True)
    fields = _propagate(net, net.placeholders()[0])
    modules = dict(net.module.named_modules())
    rows = []
    for node in net.nodes:
        rf = fields.get(node)
        if (
            net.specs[node].kind != "window"
            or not isinstance(rf, ReceptiveField)
            or node not in net.shapes
        ):
            continue
        if node.op == "call_module":
            name, kind = str(node.target), type(modules[node.target]).__name__
        else:
            name, kind = node.name, getattr(node.target, "__name__", str(node.target))
        rows.append(LayerReceptiveField(name, kind, tuple(net.shapes[node]), rf))
    return rows


def receptive_field_crop(
    field: ReceptiveField, images: Tensor, locations: Tensor, fill: float = 0.0
) -> Tensor:
    """Cut out of each image the input window that one unit of a layer's output map sees.

    Args:
        field: the layer's :class:`ReceptiveField` (:func:`receptive_field`); unit ``(i, j)``
            sees rows ``field.rows(i)`` and columns ``field.cols(j)``.
        images: ``(M, C, H, W)`` -- input images, or their projections (any dtype).
        locations: ``(M, 2)`` integer -- ``(i, j)`` of the unit for each image, in the layer's
            output map (e.g. :attr:`~deconvnet_attr.mining.TopActivations.locations`).
        fill: value for the part of a window that lies outside the image (e.g. NaN, drawn as
            background).

    Returns:
        ``(M, C, h, w)``: ``h = field.size[0]`` when the field is smaller than the image (pixel
        ``(a, b)`` of crop ``m`` is ``images[m, :, rows(i)[0] + a, cols(j)[0] + b]``, or ``fill``
        outside the image), and ``h = H`` -- the whole image height -- when the field is at least
        as tall as the image; likewise ``w``. The inputs are not changed.
    """
    if images.dim() != 4 or locations.shape != (images.shape[0], 2):
        raise ValueError(
            f"need images (M, C, H, W) and locations (M, 2), got {tuple(images.shape)} and "
            f"{tuple(locations.shape)}"
        )
    height, width = images.shape[2:]
    whole_rows, whole_cols = field.size[0] >= height, field.size[1] >= width
    crop = images.new_full(
        (
            *images.shape[:2],
            height if whole_rows else field.size[0],
            width if whole_cols else field.size[1],
        ),
        fill,
    )
    for m, (i, j) in enumerate(locations.tolist()):
        top, bottom = (0, height - 1) if whole_rows else field.rows(i)
        left, right = (0, width - 1) if whole_cols else field.cols(j)
        r0, r1 = max(top, 0), min(bottom, height - 1)
        c0, c1 = max(left, 0), min(right, width - 1)
        if r0 <= r1 and c0 <= c1:
            crop[m, :, r0 - top : r1 - top + 1, c0 - left : c1 - left + 1] = images[
                m, :, r0 : r1 + 1, c0 : c1 + 1
            ]
    return crop
