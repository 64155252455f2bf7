"""Layer taps: the one way the package reaches a layer of a model.

Every feature that needs a layer's output (projection, mining, probes, invariance, correspondence,
ablation, occlusion maps, the report) goes through this module:

* :func:`resolve_layer` / :func:`resolve_layers` turn a module *or* a dotted name (``"layer4.1"``)
  into ``(name, module)``; anything else raises :class:`LayerError` (a ``ValueError``) whose
  message names the layer and suggests the closest names in the model;
* :class:`Taps` captures the outputs (and, on request, inputs) of several layers in **one** forward
  pass, optionally stopping the forward right after the last layer needed;
* :func:`forward_hooks` is the only place forward hooks are registered. Hooks fire only in the
  thread that registered them, so a tap never disturbs another thread's forward pass on the same
  model, and they are removed on exit, also on exception.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

LayerSpec = nn.Module | str
Hook = Callable[[nn.Module, tuple, Any], Any]
PreHook = Callable[[nn.Module, tuple], Any]


class LayerError(ValueError):
    """A layer that is not part of the model, given twice, or not called by its forward pass."""


class LayerCallError(LayerError, RuntimeError):
    """A tapped layer that the forward pass did not call, called more than once (``once=True``)
    or that returned something else than the tensor asked for: found only while the model runs,
    hence also a ``RuntimeError``."""


def _suggest(model: nn.Module, wanted: str) -> str:
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.5)
    if close:
        return f"; closest names: {', '.join(repr(n) for n in close)}"
    shown = ", ".join(repr(n) for n in names[:8])
    return f"; its layers include {shown}" + (", ..." if len(names) > 8 else "")


def resolve_layer(model: nn.Module, layer: LayerSpec) -> tuple[str, nn.Module]:
    """``(dotted name, module)`` of ``layer``, given as a module of ``model`` or its dotted name.

    The model itself is named ``""``. Raises :class:`LayerError` for a module that is not part of
    ``model`` or an unknown name, ``TypeError`` for anything else.
    """
    if isinstance(layer, str):
        try:
            return layer, model.get_submodule(layer)
        except AttributeError:
            raise LayerError(
                f"layer {layer!r} is not a submodule of {type(model).__name__}"
                + _suggest(model, layer)
            ) from None
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules(remove_duplicate=False):
            if module is layer:
                return name, module
        label = type(layer).__name__
        raise LayerError(
            f"layer {label} ({_short(layer)}) is not a submodule of {type(model).__name__} "
            "(not a module of the model, not part of the model's module tree)"
            + _suggest(model, label.lower())
        )
    raise TypeError(
        f"layer must be an nn.Module of the model or its dotted name, got {type(layer).__name__} "
        f"{layer!r}"
    )


def _short(module: nn.Module) -> str:
    text = repr(module).splitlines()[0]
    return text if len(text) <= 60 else text[:57] + "..."


def resolve_layers(model: nn.Module, layers: Sequence[LayerSpec]) -> list[tuple[str, nn.Module]]:
    """:func:`resolve_layer` for each of a non-empty sequence; a layer given twice is an error."""
    if isinstance(layers, nn.Module | str) or not isinstance(layers, Sequence) or not layers:
        raise LayerError(f"layers must be a non-empty list of modules or names, got {layers!r}")
    resolved = [resolve_layer(model, layer) for layer in layers]
    seen: set[int] = set()
    for name, module in resolved:
        if id(module) in seen:
            raise LayerError(f"layer {name or type(model).__name__!r} is given more than once")
        seen.add(id(module))
    return resolved


def display_name(model: nn.Module, name: str) -> str:
    """A layer's name for messages and tables: the model's class name for the model itself."""
    return name or type(model).__name__


@contextmanager
def forward_hooks(
    modules: Sequence[nn.Module], hook: Hook | None = None, pre_hook: PreHook | None = None
) -> Iterator[None]:
    """Register ``hook`` (forward) and ``pre_hook`` (forward-pre) on ``modules`` for the block.

    The hooks run only for calls in the thread that entered the block; other threads' forward
    passes on the same modules are untouched. Removed on exit, also on exception.
    """
    owner = threading.get_ident()
    handles = []

    def guarded(inner: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            return inner(*args) if threading.get_ident() == owner else None

        return call

    try:
        for module in dict.fromkeys(modules):
            if pre_hook is not None:
                handles.append(module.register_forward_pre_hook(guarded(pre_hook)))
            if hook is not None:
                handles.append(module.register_forward_hook(guarded(hook)))
        yield
    finally:
        for handle in handles:
            handle.remove()


class _StopForward(Exception):
    """Raised by a tap once every tapped layer has run: nothing later needs computing."""


@dataclass
class Captured:
    """What one tapped forward pass produced.

    ``result`` is the forward's return value (``None`` when it was stopped after the last layer);
    ``outputs[name]`` / ``inputs[name]`` the captured call's output / first positional input of each
    layer, in the order the layers were given.
    """

    result: Any
    outputs: dict[str, Tensor]
    inputs: dict[str, Any] = field(default_factory=dict)


class Taps:
    """Capture the outputs of several layers of ``model`` in one forward pass.

    Args:
        model: the network whose layers are tapped.
        layers: modules of ``model`` or their dotted names.
        stop: stop the forward pass right after the last tapped layer has run (the model output
            is then not computed; :attr:`Captured.result` is ``None``).
        record_inputs: also keep each layer's first positional input.
        once: a layer that runs more than once per forward pass raises :class:`LayerCallError`
            (default: one of its calls is captured, see ``call``).
        call: which call of a layer that runs several times is captured, ``"first"`` or
            ``"last"`` (``"last"`` cannot ``stop``: only the end of the forward tells the last).
        min_dim: the least number of dimensions a captured output must have (e.g. 2 for a
            ``(N, C, ...)`` feature map); a non-tensor output is always a :class:`LayerCallError`.

    Outputs are captured as tensors that later in-place operations cannot overwrite (a copy is
    taken when the forward continues past the layer), and keep their autograd graph.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[LayerSpec] | LayerSpec,
        *,
        stop: bool = False,
        record_inputs: bool = False,
        once: bool = False,
        call: Literal["first", "last"] = "first",
        min_dim: int = 0,
    ) -> None:
        if call not in ("first", "last"):
            raise ValueError(f"call must be 'first' or 'last', got {call!r}")
        if stop and call == "last":
            raise ValueError("stop=True needs call='first': a forward cannot stop at a last call")
        many = layers if isinstance(layers, Sequence) and not isinstance(layers, str) else [layers]
        self.model = model
        self.resolved = resolve_layers(model, list(many))
        self.names = [display_name(model, name) for name, _ in self.resolved]
        self.stop, self.record_inputs, self.once = stop, record_inputs, once
        self.call, self.min_dim = call, min_dim

    @property
    def modules(self) -> list[nn.Module]:
        return [module for _, module in self.resolved]

    def run(self, forward: Callable[[], Any]) -> Captured:
        """Call ``forward()`` (a forward pass of the model) with the taps in place."""
        position = {id(m): i for i, (_, m) in enumerate(self.resolved)}
        outputs: dict[int, Tensor] = {}
        inputs: dict[int, Any] = {}

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            i = position[id(module)]
            if i in outputs:
                if self.once:
                    raise LayerCallError(
                        f"layer {self.names[i]!r} ran more than once in one forward pass"
                    )
                if self.call == "first":
                    return
            if not isinstance(output, Tensor) or output.dim() < self.min_dim:
                got = (
                    f"of shape {tuple(output.shape)}"
                    if isinstance(output, Tensor)
                    else f"a {type(output).__name__}"
                )
                rank = f" of rank >= {self.min_dim}" if self.min_dim else ""
                raise LayerCallError(f"layer {self.names[i]!r} output is {got}, not a tensor{rank}")
            last = i not in outputs and len(outputs) == len(self.resolved) - 1
            outputs[i] = output if self.stop and last else output.clone()
            if self.record_inputs:
                inputs[i] = args[0] if args else None
            if self.stop and last:
                raise _StopForward

        result = None
        with forward_hooks(self.modules, hook):
            try:
                result = forward()
            except _StopForward:
                pass
        missing = [self.names[i] for i in range(len(self.resolved)) if i not in outputs]
        if missing:
            raise LayerCallError(f"layers {missing} were not called in the model's forward pass")
        return Captured(
            result,
            {name: outputs[i] for i, name in enumerate(self.names)},
            {name: inputs[i] for i, name in enumerate(self.names) if i in inputs},
        )

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """The tapped outputs of ``model(*args, **kwargs)``, by layer name."""
        return self.run(lambda: self.model(*args, **kwargs)).outputs
