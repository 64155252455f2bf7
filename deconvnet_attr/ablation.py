"""Whole-layer ablation: :class:`LayerAblation` (a Captum attribution) and ablation studies.

Zeiler & Fergus (2013, Table 3) ask which layers carry a network's performance by removing
them. Captum's ``LayerFeatureAblation`` ablates units *inside* one layer; here a whole layer
(or a group of layers) is ablated by replacing its output in a forward hook with

* a number — the output filled with that value (``0.0``: the layer's signal is cut),
* ``"identity"`` — the layer's input passed through, i.e. the layer is removed (only for
  layers whose input and output shapes match),
* a callable ``output -> replacement`` of the same shape (e.g. a data-set mean activation).

:class:`LayerAblation` measures per example how much the target output drops;
:func:`ablation_study` measures top-k accuracy over a data set, intact and with each group
of layers ablated (the accuracy bookkeeping lives in :mod:`deconvnet_attr.evaluation`, whose
:func:`~deconvnet_attr.evaluation.accuracy_table` compares separately (re)trained models, which
is how the paper's Table 3 was made). Layers are modules of the model or their dotted names;
the replacing hooks are registered through :func:`deconvnet_attr.taps.forward_hooks`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from functools import partial
from typing import cast

import torch
from captum.attr import PerturbationAttribution
from captum.log import log_usage
from torch import Tensor, nn
from tqdm.auto import tqdm

from deconvnet_attr.captum_compat import (
    ExpansionTypes,
    TargetType,
    _expand_additional_forward_args,
    _expand_target,
    _format_additional_forward_args,
    _format_tensor_into_tuples,
    _run_forward,
)
from deconvnet_attr.checks import check_target
from deconvnet_attr.evaluation import AccuracyTable, accuracies, iterate_batches
from deconvnet_attr.state import preserved_forward_state, preserved_state
from deconvnet_attr.taps import LayerSpec, display_name, forward_hooks, resolve_layer

Baseline = float | int | str | Callable[[Tensor], Tensor]
LayerOrGroup = LayerSpec | Sequence[LayerSpec]

__all__ = ["PAPER_GROUPS", "LayerAblation", "ablated", "ablation_study", "reference_ablation"]


def _check_baselines(baselines: object) -> None:
    valid = (
        baselines == "identity"
        if isinstance(baselines, str)
        else not isinstance(baselines, bool)
        and (isinstance(baselines, int | float) or callable(baselines))
    )
    if not valid:
        raise ValueError(
            f"baselines must be a number, 'identity' or a callable output -> replacement; "
            f"got {baselines!r}"
        )


def _as_group(model: object, entry: LayerOrGroup, where: str) -> dict[nn.Module, str]:
    """One ablation = one layer or a tuple/list of layers ablated together: module -> label.

    Layers are resolved in ``model`` when it is an ``nn.Module`` (a module of it or a dotted
    name); a plain function wrapping a model can only be given modules, unchecked.
    """
    group = (entry,) if isinstance(entry, nn.Module | str) else tuple(entry)
    if not group or not all(isinstance(m, nn.Module | str) for m in group):
        raise TypeError(
            f"{where} must be a layer (module or dotted name) or a non-empty list of them; "
            f"got {entry!r}"
        )
    if isinstance(model, nn.Module):
        resolved = [resolve_layer(model, layer) for layer in group]
        return {module: display_name(model, name) for name, module in resolved}
    if any(isinstance(layer, str) for layer in group):
        raise TypeError(
            f"{where}={entry!r}: layer names need forward_func to be the model (an nn.Module)"
        )
    return {cast(nn.Module, module): type(module).__name__ for module in group}


class _Splice:
    """Forward hooks that replace rows of some layers' outputs; removed on exit, also on error.

    ``rows[module]`` lists the row slices (of the batch dimension) whose output that module
    must have replaced; ``slice(None)`` ablates the whole batch. ``batch`` (if given) is the
    expected leading size of every hooked output.
    """

    def __init__(
        self,
        rows: Mapping[nn.Module, list[slice]],
        baselines: Baseline,
        names: Mapping[nn.Module, str],
        batch: int | None = None,
    ) -> None:
        self.rows, self.baselines, self.names, self.batch = rows, baselines, names, batch
        self.called: set[int] = set()
        self._saved: dict[int, list[Tensor]] = {}

    def _pre_hook(self, module: nn.Module, args: tuple) -> None:
        # "identity" needs the input as it was before the layer ran (in-place layers overwrite it)
        name = self.names[module]
        if not args or not isinstance(args[0], Tensor):
            raise ValueError(f"baselines='identity' needs a tensor input to layer {name!r}")
        self._saved[id(module)] = [args[0][sl].clone() for sl in self.rows[module]]

    def _hook(self, module: nn.Module, args: tuple, output: object) -> Tensor:
        name = self.names[module]
        self.called.add(id(module))
        if not isinstance(output, Tensor):
            raise TypeError(
                f"layer {name!r} returns {type(output).__name__}; layer ablation needs a tensor"
            )
        if self.batch is not None and (output.dim() == 0 or output.shape[0] != self.batch):
            raise ValueError(
                f"layer {name!r} output has shape {tuple(output.shape)}; expected the batch "
                f"dimension first with size {self.batch}"
            )
        if isinstance(self.baselines, str) and args[0].shape != output.shape:
            raise ValueError(
                f"baselines='identity' removes layer {name!r}, but its input shape "
                f"{tuple(args[0].shape)} differs from its output shape {tuple(output.shape)}"
            )
        spliced = output.clone()
        for i, sl in enumerate(self.rows[module]):
            if isinstance(self.baselines, str):
                spliced[sl] = self._saved[id(module)][i]
            elif callable(self.baselines):
                part = output[sl]
                replacement = self.baselines(part)
                if not isinstance(replacement, Tensor) or replacement.shape != part.shape:
                    got = (
                        tuple(replacement.shape) if isinstance(replacement, Tensor) else replacement
                    )
                    raise ValueError(
                        f"baselines callable must return a tensor of shape {tuple(part.shape)} "
                        f"for layer {name!r}; got {got!r}"
                    )
                spliced[sl] = replacement
            else:
                spliced[sl] = self.baselines
        return spliced

    @contextmanager
    def applied(self) -> Iterator[_Splice]:
        pre_hook = self._pre_hook if isinstance(self.baselines, str) else None
        try:
            with forward_hooks(list(self.rows), self._hook, pre_hook):
                yield self
        finally:
            self._saved.clear()

    def check_called(self) -> None:
        missing = [self.names[m] for m in self.rows if id(m) not in self.called]
        if missing:
            raise ValueError(f"layers {missing} were not called during the forward pass")


@contextmanager
def ablated(
    model: nn.Module, layers: LayerOrGroup, baselines: Baseline = 0.0
) -> Iterator[nn.Module]:
    """Context manager: inside it, ``model``'s ``layers`` are ablated for every example.

    ``layers`` is one layer or a list of layers of ``model`` (modules or dotted names), ablated
    together;
    ``baselines`` as in :meth:`LayerAblation.attribute`. Hooks are removed on exit (also on
    error); nothing else about the model changes.

    Example::

        with ablated(model, [model.fc6, model.fc7], 0.0):
            logits = model(images)
    """
    _check_baselines(baselines)
    group = _as_group(model, layers, "layers")
    splice = _Splice({m: [slice(None)] for m in group}, baselines, group)
    with splice.applied():
        yield model


class LayerAblation(PerturbationAttribution):
    r"""How much each layer contributes to the target output: intact minus ablated output.

    For each example and each entry of ``layers``, the attribution is the target output of
    the intact model minus the target output when that entry's output is replaced (see
    ``baselines`` in :meth:`attribute`). An entry is one layer or a list of layers ablated
    together (e.g. ``[model.fc6, model.fc7]`` or ``["fc6", "fc7"]``). A module called several
    times in one forward pass is ablated at every call.

    Args:
        forward_func (Callable or torch.nn.Module): the model or a function wrapping it; its
            output, after target selection, must hold one value per example.
        layers (list): layers of the model (modules, or dotted names when ``forward_func`` is
            the model) or lists of them, one attribution column each.

    The model is not changed: buffers (BatchNorm running statistics in training mode), training
    and ``requires_grad`` flags are restored after ``attribute``, also on error. When
    ``forward_func`` is a plain function or lambda, the models restored are those
    :func:`~deconvnet_attr.state.modules_behind` finds in its closure and globals, and the
    ablated layers. Dropout in training mode stays active, as in Captum.
    """

    def __init__(self, forward_func: Callable, layers: Sequence[LayerOrGroup]) -> None:
        PerturbationAttribution.__init__(self, forward_func)
        if isinstance(layers, nn.Module | str) or not isinstance(layers, Sequence) or not layers:
            raise TypeError(f"layers must be a non-empty list of modules; got {layers!r}")
        self.layers = list(layers)
        self._groups = [
            _as_group(forward_func, entry, f"layers[{i}]") for i, entry in enumerate(layers)
        ]
        self._names = {m: label for group in self._groups for m, label in group.items()}

    def _target_output(
        self, inputs: tuple[Tensor, ...], target: TargetType, args: tuple | None, rows: int
    ) -> Tensor:
        out = _run_forward(self.forward_func, inputs, target, args)
        if out.numel() != rows:
            raise ValueError(
                f"forward_func output after target selection has shape {tuple(out.shape)}; "
                f"LayerAblation needs one value per example ({rows}) - pass target"
            )
        return out.reshape(rows)

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType = None,
        additional_forward_args: object | None = None,
        baselines: Baseline = 0.0,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> Tensor:
        r"""Ablate each entry of ``layers`` in turn and return the drop of the target output.

        Args:
            inputs (Tensor or tuple of Tensor): model inputs, batch dimension first (N, ...).
            target (int, tuple, Tensor or list, optional): Captum's target convention — the
                output index per example (an int for all, or N of them) selected from the
                forward output. None if the output already holds one value per example.
            additional_forward_args (Any, optional): extra forward arguments after
                ``inputs`` (tensors among them are repeated along dim 0 for batching).
            baselines (float, int, "identity" or Callable): the replacement of a layer's
                output: a number fills it; ``"identity"`` passes the layer's input through
                (the layer is removed; input and output shapes must match); a callable
                receives the (N, ...) output of the layer for one ablation and returns a
                tensor of the same shape.
            perturbations_per_eval (int): how many entries of ``layers`` are ablated in one
                forward pass (the batch is repeated that many times and each copy has a
                different entry ablated). Results equal those of 1.
            show_progress (bool): a tqdm progress bar over the forward passes.

        Returns:
            Tensor of shape (N, len(layers)): intact minus ablated target output.
        """
        check_target(target)
        _check_baselines(baselines)
        if (
            isinstance(perturbations_per_eval, bool)
            or not isinstance(perturbations_per_eval, int)
            or perturbations_per_eval < 1
        ):
            raise ValueError(
                f"perturbations_per_eval must be an integer >= 1; got {perturbations_per_eval!r}"
            )
        inputs_t = _format_tensor_into_tuples(inputs)
        args = _format_additional_forward_args(additional_forward_args)
        n = inputs_t[0].shape[0]
        columns = []
        starts = range(0, len(self._groups), perturbations_per_eval)
        with torch.no_grad(), preserved_forward_state(self.forward_func, *self._names):
            intact = self._target_output(inputs_t, target, args, n)
            for start in tqdm(starts, desc="LayerAblation", disable=not show_progress):
                chunk = self._groups[start : start + perturbations_per_eval]
                k = len(chunk)
                rows: dict[nn.Module, list[slice]] = {}
                for j, group in enumerate(chunk):
                    for module in group:
                        rows.setdefault(module, []).append(slice(j * n, (j + 1) * n))
                splice = _Splice(rows, baselines, self._names, batch=n * k)
                expanded = tuple(torch.cat([x] * k) for x in inputs_t)
                with splice.applied():
                    out = self._target_output(
                        expanded,
                        _expand_target(target, k, ExpansionTypes.repeat),
                        _expand_additional_forward_args(args, k, ExpansionTypes.repeat),
                        n * k,
                    )
                splice.check_called()
                columns.append((intact.unsqueeze(0) - out.view(k, n)).T)
        return torch.cat(columns, dim=1)


def _broadcast(fill: Tensor, out: Tensor) -> Tensor:
    """``fill`` (the layer's mean output) in ``out``'s dtype/device, broadcast to its shape."""
    return fill.to(out).expand_as(out)


def _layer_means(
    model: nn.Module,
    data: tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]],
    layers: Sequence[nn.Module],
    batch_size: int,
    device: torch.device | str,
) -> dict[nn.Module, Tensor]:
    """Mean output of each layer over the data set (mean over examples, all other dims kept;
    a layer called several times per forward pass sums every call, as it is ablated at each)."""
    sums: dict[nn.Module, Tensor] = {}
    count = 0

    def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        total = output.double().sum(dim=0)
        sums[module] = sums[module] + total if module in sums else total

    with forward_hooks(layers, hook), preserved_state(model):
        for x, _ in iterate_batches(data, batch_size):
            model(x.to(device))
            count += len(x)
    return {m: s / count for m, s in sums.items()}


def ablation_study(
    model: nn.Module,
    data: tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]],
    groups: Mapping[str, LayerOrGroup],
    baselines: Baseline = 0.0,
    topk: Sequence[int] = (1, 5),
    batch_size: int = 256,
    show_progress: bool = False,
) -> AccuracyTable:
    """Top-k accuracy of ``model`` intact and with each group of layers ablated.

    Args:
        model: a classifier returning logits (N, classes); it is evaluated as it is (call
            ``model.eval()`` first for dropout/batch-norm inference behaviour).
        data: ``(inputs, labels)`` tensors or an iterable of such batches.
        groups: configuration name -> layer or list of layers (modules or dotted names)
            ablated together, e.g. ``{"fc6+fc7": [model.fc6, model.fc7]}`` or
            ``{"fc6+fc7": ["fc6", "fc7"]}``.
        baselines: as in :meth:`LayerAblation.attribute`, or ``"mean"``: each layer's output
            is replaced by its mean over ``data`` (mean ablation; one extra pass).
        topk: the k of the top-k accuracies.
        batch_size: used when ``data`` is a tensor pair.
        show_progress: a tqdm bar over the batches.

    Returns:
        :class:`AccuracyTable` with rows "intact" and one per group, accuracies in %.
    """
    mean = isinstance(baselines, str) and baselines == "mean"
    if not mean:
        _check_baselines(baselines)
    resolved = {name: tuple(_as_group(model, g, f"groups[{name!r}]")) for name, g in groups.items()}
    if mean:
        layers = [m for g in resolved.values() for m in g]
        device = next(model.parameters()).device
        with torch.no_grad():
            means = _layer_means(model, data, layers, batch_size, device)

    def configuration(group: tuple[nn.Module, ...]) -> Callable[[], AbstractContextManager]:
        if not mean:
            return lambda: ablated(model, group, baselines)

        def mean_ablated() -> ExitStack:
            stack = ExitStack()
            for m in group:
                stack.enter_context(ablated(model, m, partial(_broadcast, means[m])))
            return stack

        return mean_ablated

    configurations: dict[str, tuple[nn.Module, Callable[[], AbstractContextManager]]] = {
        "intact": (model, nullcontext)
    }
    configurations |= {name: (model, configuration(g)) for name, g in resolved.items()}
    return accuracies(configurations, data, topk, batch_size, show_progress)


# The layer groups of the paper's Table 3 ("removed layers ..."), by ZFNet child name.
PAPER_GROUPS: dict[str, tuple[str, ...]] = {
    "fc7": ("fc7",),
    "fc6+fc7": ("fc6", "fc7"),
    "conv3+conv4": ("conv3", "conv4"),
    "conv3+conv4+fc6+fc7": ("conv3", "conv4", "fc6", "fc7"),
}


def reference_ablation(
    baselines: Baseline = "mean",
    groups: Mapping[str, Sequence[str]] | None = None,
    data: tuple[Tensor, Tensor] | None = None,
) -> AccuracyTable:
    """The ablation table of the bundled reference model on the bundled evaluation subset.

    Without retraining: each group of layers (default :data:`PAPER_GROUPS`, by child name of
    the reference ZFNet) is ablated with ``baselines`` (default ``"mean"``: the layer's mean
    output over the data, so the rest of the network still sees typical values). ``data``
    defaults to the bundled 1,000-image Fashion-MNIST subset; a few seconds on CPU.
    """
    from .data import load_eval_subset
    from .models.reference import load_reference

    model = load_reference()
    chosen = PAPER_GROUPS if groups is None else groups
    return ablation_study(model, load_eval_subset() if data is None else data, chosen, baselines)
