"""Traced per-op geometry of a CNN: receptive fields and changed-region propagation.

One ``torch.fx`` trace of a network, with every node described by what it does to the spatial
(height, width) layout of its tensors:

* ``window`` -- convolution and pooling: each output unit reads a ``kernel`` window of its input,
  placed every ``stride`` units, shifted by ``padding``, spread by ``dilation``;
* ``pointwise`` -- the output unit (i, j) depends on input unit (i, j) only (activations,
  BatchNorm in eval mode, channel-mixing LocalResponseNorm, dropout in eval mode, ...);
* ``merge`` -- several same-sized maps combined unit by unit (residual add, channel concat);
* ``opaque`` -- anything that mixes positions globally or changes the layout (flatten, linear,
  global or adaptive pooling, interpolation, attention, ...), with the reason.

Two users share this description: :func:`receptive_field`, the input
window one unit of a layer sees, and the incremental occlusion engine (``incremental.py``), which
carries a changed rectangle from the input through the same arithmetic
(:meth:`Window.affected_outputs`, :meth:`Window.inputs_needed`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import GraphModule, Interpreter, Node

from deconvnet_attr.ops import OpKind, op_kind
from deconvnet_attr.state import preserved_state
from deconvnet_attr.taps import LayerSpec, resolve_layer
from deconvnet_attr.tracing import symbolic_trace

__all__ = [
    "GeometryError",
    "LayerReceptiveField",
    "layer_node",
    "OpSpec",
    "ReceptiveField",
    "TracedNet",
    "Window",
    "receptive_field",
    "receptive_field_crop",
    "receptive_field_table",
    "trace",
]


class GeometryError(ValueError):
    """The network (or the part of it asked about) has no traceable spatial geometry."""


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    if len(value) == 1:
        return (int(value[0]), int(value[0]))
    if len(value) != 2:
        raise GeometryError(f"{name}={value!r} is not a 2-D value")
    return (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class Window:
    """Geometry of a sliding-window op along (height, width).

    Output unit ``o`` of dimension ``dim`` reads input units
    ``o * stride - padding + j * dilation`` for ``j = 0 .. kernel - 1``.
    """

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)

    def span(self, dim: int) -> int:
        """Input units covered by one kernel along ``dim``: ``(kernel - 1) * dilation + 1``."""
        return (self.kernel[dim] - 1) * self.dilation[dim] + 1

    def affected_outputs(self, lo: Any, hi: Any, out_size: int, dim: int) -> tuple[Any, Any]:
        """Output units whose window meets input units ``lo .. hi`` (inclusive), clipped.

        Works elementwise on ints or integer tensors. An empty result has ``hi < lo``.
        """
        s, p = self.stride[dim], self.padding[dim]
        first = -((self.span(dim) - 1 - lo - p) // s)  # ceil((lo + p - span + 1) / s)
        last = (hi + p) // s
        if isinstance(first, Tensor):
            return first.clamp(min=0), last.clamp(max=out_size - 1)
        return max(first, 0), min(last, out_size - 1)

    def inputs_needed(self, lo: Any, hi: Any, dim: int) -> tuple[Any, Any]:
        """Input units (unclipped, may reach into the padding) read by outputs ``lo .. hi``."""
        s, p = self.stride[dim], self.padding[dim]
        return lo * s - p, hi * s - p + self.span(dim) - 1


@dataclass(frozen=True)
class OpSpec:
    """What one traced node does to the spatial layout (see the module docstring).

    For ``window`` ops, ``unpadded`` computes the op on an already padded region (padding 0),
    ``pad_value`` is the value the op's own padding stands for (0, or -inf for max pooling) and
    ``macs`` the multiply-accumulates per output element (convolutions; 0 for pooling).
    """

    kind: str
    window: Window | None = None
    unpadded: Callable[[Tensor], Tensor] | None = None
    pad_value: float = 0.0
    macs: int = 0
    reason: str = ""


POINTWISE = OpSpec("pointwise")
MERGE = OpSpec("merge")


# Signatures of the functional ops, to bind a traced call's args/kwargs by name.
def _conv_args(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return locals()


def _max_pool_args(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    return locals()


def _avg_pool_args(
    input,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    return locals()


def _bind(signature_of: Callable[..., dict], node: Node) -> dict[str, Any]:
    return inspect.signature(signature_of).bind(*node.args, **node.kwargs).arguments


def _training(node: Node, default: bool) -> bool:
    """The ``training`` argument of a traced call (``F.dropout``, ``F.rrelu``), or ``default``
    when the function takes none or its signature is unknown."""
    if not callable(node.target):
        return default
    try:
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
    except (TypeError, ValueError):  # builtins without a signature, calls that do not bind
        return default
    bound.apply_defaults()
    return bool(bound.arguments.get("training", default))


def _conv_spec(
    weight: Tensor,
    bias: Tensor | None,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
    padding_mode: str = "zeros",
) -> OpSpec:
    if weight.dim() != 4:
        return OpSpec("opaque", reason=f"{weight.dim() - 2}-D convolution")
    if padding_mode != "zeros":
        return OpSpec("opaque", reason=f"convolution with padding_mode={padding_mode!r}")
    kernel = (int(weight.shape[2]), int(weight.shape[3]))
    dilation = _pair(dilation, "dilation")
    if padding == "valid":
        padding = 0
    elif padding == "same":
        total = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        if any(t % 2 for t in total):
            return OpSpec("opaque", reason="padding='same' with asymmetric padding")
        padding = (total[0] // 2, total[1] // 2)
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    window = Window(kernel, stride, padding, dilation)

    def unpadded(region: Tensor) -> Tensor:
        return F.conv2d(region, weight, bias, stride, 0, dilation, groups)

    macs = int(weight.shape[1]) * kernel[0] * kernel[1]
    return OpSpec("window", window, unpadded, 0.0, macs)


def _max_pool_spec(
    kernel_size: Any, stride: Any, padding: Any, dilation: Any, return_indices: bool
) -> OpSpec:
    if return_indices:
        return OpSpec("opaque", reason="max pooling with return_indices=True")
    kernel = _pair(kernel_size, "kernel_size")
    stride = kernel if stride is None or stride == [] else _pair(stride, "stride")
    window = Window(kernel, stride, _pair(padding, "padding"), _pair(dilation, "dilation"))

    def unpadded(region: Tensor) -> Tensor:
        return F.max_pool2d(region, kernel, stride, 0, window.dilation)

    # ceil_mode needs no flag: the engine pads with -inf up to the cached output size.
    return OpSpec("window", window, unpadded, -math.inf)


def _avg_pool_spec(
    kernel_size: Any,
    stride: Any,
    padding: Any,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
    in_shape: torch.Size | None,
    out_shape: torch.Size | None,
    structural: bool,
) -> OpSpec:
    kernel = _pair(kernel_size, "kernel_size")
    stride = kernel if stride is None or stride == [] else _pair(stride, "stride")
    padding = _pair(padding, "padding")
    window = Window(kernel, stride, padding)
    if structural:
        return OpSpec("window", window)
    if not count_include_pad and any(padding):
        return OpSpec("opaque", window, reason="average pooling with count_include_pad=False")
    if ceil_mode and in_shape is not None and out_shape is not None:
        floor_out = [
            (in_shape[-2 + d] + 2 * padding[d] - kernel[d]) // stride[d] + 1 for d in range(2)
        ]
        if list(out_shape[-2:]) != floor_out:
            return OpSpec("opaque", window, reason="average pooling whose ceil_mode clips windows")

    def unpadded(region: Tensor) -> Tensor:
        return F.avg_pool2d(region, kernel, stride, 0, False, True, divisor_override)

    return OpSpec("window", window, unpadded, 0.0)


def _identity(region: Tensor) -> Tensor:
    return region


def _module_spec(
    module: nn.Module, in_shape: torch.Size | None, out_shape: torch.Size | None, structural: bool
) -> OpSpec:
    name = type(module).__name__
    kind = op_kind(module)
    if kind is OpKind.CONV:
        return _conv_spec(
            module.weight,
            module.bias,
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            module.padding_mode,
        )
    if kind is OpKind.MAX_POOL:
        return _max_pool_spec(
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.return_indices,
        )
    if kind is OpKind.AVG_POOL:
        return _avg_pool_spec(
            module.kernel_size,
            module.stride,
            module.padding,
            module.ceil_mode,
            module.count_include_pad,
            module.divisor_override,
            in_shape,
            out_shape,
            structural,
        )
    if kind is not None and kind.pointwise:
        return POINTWISE
    if kind is OpKind.DROPOUT:
        if module.training and not structural:
            return OpSpec("opaque", reason=f"{name} in training mode is random")
        return POINTWISE
    if kind is OpKind.BATCH_NORM:
        if module.training and not structural:
            return OpSpec("opaque", reason=f"{name} in training mode uses batch statistics")
        if module.running_mean is None and not structural:
            return OpSpec("opaque", reason=f"{name} without running statistics")
        return POINTWISE
    if kind is OpKind.ADAPTIVE_POOL and not getattr(module, "return_indices", False):
        if in_shape is not None and out_shape is not None and in_shape[-2:] == out_shape[-2:]:
            # pooling to the input's own size is the identity: a 1x1 window (on a rectangle,
            # the module itself would resize to the full output size)
            return OpSpec("window", Window((1, 1), (1, 1), (0, 0)), _identity)
    return OpSpec("opaque", reason=f"module {name}")


def _function_spec(
    node: Node, values: dict[Node, Any], shapes: dict[Node, torch.Size], structural: bool
) -> OpSpec:
    fn = node.target

    def value(x: Any) -> Any:
        return values.get(x, x) if isinstance(x, Node) else x

    name = getattr(fn, "__name__", repr(fn))
    kind = op_kind(fn)
    try:
        if kind is OpKind.CONV:
            a = {k: value(v) for k, v in _bind(_conv_args, node).items()}
            return _conv_spec(
                a["weight"], a["bias"], a["stride"], a["padding"], a["dilation"], a["groups"]
            )
        if kind is OpKind.MAX_POOL:
            a = {k: value(v) for k, v in _bind(_max_pool_args, node).items()}
            return _max_pool_spec(
                a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["return_indices"]
            )
        if kind is OpKind.AVG_POOL:
            a = {k: value(v) for k, v in _bind(_avg_pool_args, node).items()}
            in_shape = shapes.get(node.args[0]) if node.args else None
            return _avg_pool_spec(
                a["kernel_size"],
                a["stride"],
                a["padding"],
                a["ceil_mode"],
                a["count_include_pad"],
                a["divisor_override"],
                in_shape,
                shapes.get(node),
                structural,
            )
    except TypeError as error:
        return OpSpec("opaque", reason=f"unrecognised call of {name}: {error}")
    if kind is OpKind.DROPOUT or (kind is not None and kind.pointwise):
        if not structural and _training(node, default=kind is OpKind.DROPOUT):
            return OpSpec("opaque", reason=f"{name} in training mode is random")
        return POINTWISE
    if kind is OpKind.MERGE:
        return MERGE
    if kind is OpKind.CONCAT:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        ndim = {len(shapes[t]) if isinstance(t, Node) and t in shapes else -1 for t in tensors}
        if ndim == {4} and dim in (1, -3):
            return MERGE
        return OpSpec("opaque", reason=f"concatenation along dim={dim}")
    return OpSpec("opaque", reason=f"function {name}")


def _method_spec(node: Node) -> OpSpec:
    kind = op_kind(getattr(Tensor, str(node.target), None))
    if kind is not None and kind.pointwise:
        return POINTWISE
    if kind is OpKind.MERGE:
        return MERGE
    return OpSpec("opaque", reason=f"method .{node.target}()")


@dataclass
class TracedNet:
    """A traced network and the geometry of each node, from one run on an example.

    ``shapes`` are the tensor shapes on the example; ``values`` every node's output (with
    ``keep_values``; otherwise only the outputs that do not depend on the inputs);
    ``depends`` are the nodes computed from a placeholder.
    """

    module: GraphModule
    specs: dict[Node, OpSpec]
    shapes: dict[Node, torch.Size]
    depends: set[Node]
    values: dict[Node, Any] = field(default_factory=dict)

    @property
    def nodes(self) -> list[Node]:
        return list(self.module.graph.nodes)

    def placeholders(self) -> list[Node]:
        return [n for n in self.module.graph.nodes if n.op == "placeholder"]


class _Recorder(Interpreter):
    """Runs the graph once, recording every tensor's shape and keeping node outputs.

    Outputs that do not depend on a placeholder (weights, constants) are always kept; the others
    only with ``keep`` -- then in-place ops run on copies so that kept values stay intact.
    """

    def __init__(self, module: GraphModule, keep: bool) -> None:
        super().__init__(module)
        self.keep = keep
        self.values: dict[Node, Any] = {}
        self.shapes: dict[Node, torch.Size] = {}
        self.depends: set[Node] = set()

    def run_node(self, n: Node) -> Any:
        if n.op == "placeholder":
            self.depends.add(n)
            result = super().run_node(n)
        else:
            if any(a in self.depends for a in n.all_input_nodes):
                self.depends.add(n)
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            if self.keep:
                args, kwargs = _copy_tensors(args), _copy_tensors(kwargs)
            self.current_node = n
            result = getattr(self, n.op)(n.target, args, kwargs)
        if isinstance(result, Tensor):
            self.shapes[n] = result.shape
        if self.keep or n not in self.depends:
            self.values[n] = result
        return result


def _copy_tensors(tree: Any) -> Any:
    return torch.utils._pytree.tree_map(lambda x: x.clone() if isinstance(x, Tensor) else x, tree)


def trace(
    fn: Callable[..., Any],
    example_args: tuple,
    *,
    structural: bool = False,
    keep_values: bool = False,
) -> TracedNet:
    """Trace ``fn`` (an ``nn.Module`` or a traceable function) and describe every node.

    ``example_args`` are run once through the traced graph (under ``no_grad``; the model's
    buffers and flags are restored afterwards) to learn tensor shapes; with ``structural`` the
    run may stop early (e.g. an example too small for the classifier), leaving later nodes
    without shapes. With ``keep_values``
    every node's output is kept (the incremental engine's cache). ``structural=True`` describes
    the layout only and ignores training-mode randomness/batch statistics (receptive fields).
    Raises :class:`GeometryError` when ``torch.fx`` cannot trace ``fn``.
    """
    try:
        gm = symbolic_trace(fn)
    except Exception as error:  # fx raises many types (TraceError, NameError, TypeError, ...)
        raise GeometryError(
            f"torch.fx cannot trace {fn!r}: {type(error).__name__}: {error}"
        ) from error
    recorder = _Recorder(gm, keep_values)
    with torch.no_grad(), preserved_state(fn):
        try:
            recorder.run(*example_args)
        except Exception:
            if not structural:
                raise
            # the layout needs no values: nodes past the failure are described without shapes
    modules = dict(gm.named_modules())
    specs: dict[Node, OpSpec] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            specs[node] = OpSpec("input")
        elif node.op == "call_module":
            module = modules[node.target]
            arg0 = node.args[0] if node.args else None
            in_shape = recorder.shapes.get(arg0) if isinstance(arg0, Node) else None
            specs[node] = _module_spec(module, in_shape, recorder.shapes.get(node), structural)
        elif node.op == "call_function":
            specs[node] = _function_spec(node, recorder.values, recorder.shapes, structural)
        elif node.op == "call_method":
            specs[node] = _method_spec(node)
        else:
            specs[node] = OpSpec("opaque", reason=node.op)
    return TracedNet(gm, specs, recorder.shapes, recorder.depends, recorder.values)


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
        inputs = [fields[a] for a in node.all_input_nodes if a in fields]
        if not inputs:
            continue
        broken = [f for f in inputs if isinstance(f, str)]
        spec = net.specs[node]
        if broken:
            fields[node] = broken[0]
        elif spec.kind == "window":
            (rf,), w = inputs, spec.window
            fields[node] = ReceptiveField(
                tuple(rf.size[d] + (w.span(d) - 1) * rf.stride[d] for d in range(2)),
                tuple(rf.stride[d] * w.stride[d] for d in range(2)),
                tuple(rf.offset[d] - w.padding[d] * rf.stride[d] for d in range(2)),
            )
        elif spec.kind == "pointwise":
            fields[node] = inputs[0]
        elif spec.kind == "merge":
            if len({rf.stride for rf in inputs}) > 1:
                fields[node] = f"{node.name} merges maps of different strides"
                continue
            lo = tuple(min(rf.offset[d] for rf in inputs) for d in range(2))
            hi = tuple(max(rf.offset[d] + rf.size[d] for rf in inputs) for d in range(2))
            fields[node] = ReceptiveField((hi[0] - lo[0], hi[1] - lo[1]), inputs[0].stride, lo)
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
    (the union of the branches). Raises :class:`GeometryError` when an op without local
    geometry (flatten, linear, global pooling, ...) lies between the input and ``layer``.
    """
    net = trace(model, (example,), structural=True)
    name, node = layer_node(net.module, model, layer)
    source = net.placeholders()[0]
    rf = _propagate(net, source).get(node)
    if rf is None:
        raise GeometryError(f"layer {name!r} does not depend on the input")
    if isinstance(rf, str):
        raise GeometryError(
            f"no receptive field for layer {name!r}: the path from the input passes through {rf}"
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
