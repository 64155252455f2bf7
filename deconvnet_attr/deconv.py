"""Deconvnet projection (Zeiler & Fergus 2013) and Captum drop-ins, all thin users of the rule.

Every class here is "run the model under the deconvnet rule, then take a gradient": convolutions
back-propagate as transposed convolutions with the same filters, max-pooling routes the signal
through the switches recorded on the forward pass, and each activation function rectifies the
signal (relu*). Which activations are ruled, and how, lives in :mod:`deconvnet_attr.rules` and
:mod:`deconvnet_attr.intercept`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from captum.attr import GradientAttribution, NeuronAttribution
from captum.log import log_usage
from torch import Tensor, nn

from deconvnet_attr.captum_compat import (
    TargetType,
    TensorOrTupleOfTensorsGeneric,
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
    _run_forward,
    apply_gradient_requirements,
    construct_neuron_grad_fn,
    undo_gradient_requirements,
)
from deconvnet_attr.checks import check_batch, check_finite, check_grad_enabled, check_target
from deconvnet_attr.intercept import apply_rule
from deconvnet_attr.rules import DECONVNET, Rule
from deconvnet_attr.seeds import NeuronSpec, _channels, _layer_seed, _output_indices
from deconvnet_attr.state import preserved_state
from deconvnet_attr.taps import LayerSpec, Taps, display_name, resolve_layer

_DROP_IN_NOTES = """
    Dropout in training mode stays active under the attribution, as in Captum: the forward pass
    is the model's own, so a model in ``train()`` mode drops random units in each call (call
    ``model.eval()`` for deterministic results; the training flags are never changed). Inputs
    holding NaN or infinite values raise ValueError naming the examples; so do empty batches;
    under ``torch.inference_mode()`` it raises
    :class:`~deconvnet_attr.checks.GradientsDisabledError`. Targets must be integers (a ``str``,
    ``float``, ``bool`` or float tensor raises TypeError naming it).
"""
"""What every ruled attribution class adds to its docstring: train-mode dropout and the input
errors (appended at import, so the text is written once)."""


@contextmanager
def _deconvnet(
    model: nn.Module, whole_forward: bool = True, rule: Rule = DECONVNET
) -> Iterator[None]:
    """The model's forward under ``rule``, its state preserved, gradients enabled.

    Warns (UserWarning) when the rule may have missed activations:

    * the forward met a rectifying call or module the rule cannot reach (``threshold`` with a
      non-zero threshold or value, a TorchScript module), named in the message;
    * a whole forward pass ruled no activation (the result is then the plain gradient);
    * a forward stopped at a layer ruled no activation although it ran two or more convolution /
      linear ops on the way (a stack of linear maps with nothing between them is what an
      activation the rule cannot see looks like). A layer reached through at most one of them
      (``conv1``, its batch norm or pooling) legitimately has no activation below it.
    """
    with preserved_state(model), torch.enable_grad(), apply_rule(rule, model) as seen:
        yield
    if seen.unruled:
        warnings.warn(
            f"The forward pass met {', '.join(seen.unruled)}, out of reach of the {rule.name} "
            "rule: true gradients are kept there.",
            UserWarning,
            stacklevel=3,
        )
    if seen.count == 0 and (whole_forward or seen.weighted >= 2):
        where = "" if whole_forward else f" up to the layer ({seen.weighted} conv / linear ops)"
        warnings.warn(
            f"No activation function was found in the forward pass{where}: the {rule.name} "
            "projection is the plain gradient.",
            UserWarning,
            stacklevel=3,
        )


def _check_inputs(inputs: tuple[Tensor, ...]) -> None:
    check_grad_enabled(inputs)
    for index, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"inputs[{index}] is a {type(x).__name__}, expected a torch.Tensor")
        if not x.dtype.is_floating_point:
            raise TypeError(
                f"inputs[{index}] has dtype {x.dtype}; a projection needs floating-point inputs"
            )
        if x.dim() == 0 or x.shape[0] != inputs[0].shape[0]:
            raise ValueError(
                f"inputs[{index}] has shape {tuple(x.shape)}; every input needs the same batch "
                f"size in dim 0 ({inputs[0].shape[0]})"
            )
    check_batch(inputs)
    check_finite(inputs)


class DeconvProjection(GradientAttribution):
    r"""Project a class score or a layer activation back to pixel space with the deconvnet.

    Zeiler & Fergus (2013), Sec. 2.1: set every other activation of a layer to zero, then walk
    back down, unpooling with the forward switches, rectifying (relu*) and filtering with the
    transposed filters. This equals back-propagation in which every activation function's backward
    is ``relu(grad_output)``; that rule is applied to every activation of the forward pass
    (module, functional, method or in-place form; ReLU, ReLU6, LeakyReLU, PReLU, ELU, GELU, SiLU,
    Mish, Hardswish, Softplus, ...). Gates (sigmoid, tanh, softmax) keep their true gradient.

    Args:
        model: the network (``nn.Module``).
        layer: ``None`` to project the model output ``target``; or a module of ``model`` (or its
            dotted name, ``"layer4"``) whose output (N, C, ...) is projected, ``target`` then
            naming the channel. The module's first call in the forward pass is the one projected.
        rule: the backward rule of every activation (:mod:`deconvnet_attr.rules`): the paper's
            :data:`~deconvnet_attr.rules.DECONVNET` (default), or any
            :class:`~deconvnet_attr.rules.Rule`, e.g. :data:`~deconvnet_attr.rules.GRADIENT`.

    A layer may also be fully connected (output (N, F)): a unit is then a feature, ``target`` its
    index, and ``neuron`` ``"max"`` or ``"all"`` (the same single unit). ``layer`` on a
    TorchScript model (``torch.jit.script`` / ``trace``) raises ValueError: TorchScript hides the
    layers.
    """

    def __init__(
        self, model: nn.Module, layer: LayerSpec | None = None, rule: Rule = DECONVNET
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(rule, Rule):
            raise TypeError(f"rule {rule!r} is not a deconvnet_attr.rules.Rule")
        GradientAttribution.__init__(self, model)
        self.model = model
        self.rule = rule
        self.layer: nn.Module | None = None
        if layer is not None:
            if isinstance(model, torch.jit.ScriptModule):
                raise ValueError(
                    f"model is a TorchScript module ({type(model).__name__}, from torch.jit."
                    f"script or torch.jit.trace): TorchScript hides its layers, so layer={layer!r} "
                    "can be neither tapped nor reached by the rule; project the original nn.Module"
                )
            name, self.layer = resolve_layer(model, layer)
            self.layer_name = display_name(model, name)

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Any = None,
        neuron: NeuronSpec = "max",
    ) -> TensorOrTupleOfTensorsGeneric:
        r"""Deconvnet projections of each example, same shape as ``inputs``.

        Args:
            inputs: tensor (N, ...) or tuple of tensors, floating point; gradients are taken with
                respect to them (they are not modified).
            target: with ``layer=None``, Captum's ``TargetType`` (int, per-example list / 1-D
                tensor, tuples for outputs with more than 2 dims). With a layer: the channel, an
                int, a per-example list / 1-D tensor, or ``None`` for the channel holding each
                example's strongest activation.
            additional_forward_args: passed to the model after ``inputs``, as in Captum.
            neuron: only with a layer. ``"max"``: project the channel's strongest activation
                alone, seeded with its value (the paper's figures); ``"all"``: the whole channel
                map; or an integer tensor (N, k) with one location in the (k-dim) map per example.

        Returns:
            Tensor or tuple of tensors shaped like ``inputs``: the projection in input space.
            One forward and one backward serve the whole batch.
        """
        is_tuple = _is_tuple(inputs)
        inputs_tuple = _format_tensor_into_tuples(inputs)
        _check_inputs(inputs_tuple)
        check_target(target)
        if self.layer is None and not (isinstance(neuron, str) and neuron == "max"):
            raise ValueError("neuron selects units of a layer: give DeconvProjection a layer")
        leaves = tuple(x.detach().requires_grad_() for x in inputs_tuple)
        with _deconvnet(self.model, whole_forward=self.layer is None, rule=self.rule):
            # the model runs on copies (made with grad enabled): in-place first ops write those
            fed = tuple(leaf.clone() for leaf in leaves)
            if self.layer is None:
                output = _run_forward(self.forward_func, fed, None, additional_forward_args)
                index = _output_indices(target, output.shape).to(output.device)
                rows = torch.arange(output.shape[0], device=output.device)
                selected = (
                    output.reshape(output.shape[0], -1)
                    if index.shape[1] == 0
                    else output[(rows,) + tuple(index.unbind(1))]
                )
                grads = torch.autograd.grad(selected.sum(), leaves, allow_unused=True)
            else:
                act = self._layer_output(fed, additional_forward_args)
                seed = _layer_seed(act, _channels(target, act), neuron)
                grads = torch.autograd.grad(act, leaves, seed, allow_unused=True)
        grads = tuple(
            torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves, strict=True)
        )
        return _format_output(is_tuple, grads)

    def _layer_output(self, inputs: tuple[Tensor, ...], additional_forward_args: Any) -> Tensor:
        """Run the forward pass up to (and including) the layer's first call; return its output."""
        extra = _format_additional_forward_args(additional_forward_args) or ()
        layer = cast(nn.Module, self.layer)
        taps = Taps(self.model, [layer], stop=True, min_dim=2)
        act = taps.run(lambda: self.forward_func(*inputs, *extra)).outputs[self.layer_name]
        if not act.requires_grad:
            raise ValueError(f"layer {self.layer_name!r} output does not depend on the inputs")
        return act

    @property
    def multiplies_by_inputs(self) -> bool:
        return False


def _ruled_gradients(
    model: nn.Module,
    gradient_func: Callable,
    forward_func: Callable,
    inputs: TensorOrTupleOfTensorsGeneric,
    target: TargetType,
    additional_forward_args: Any,
    rule: Rule = DECONVNET,
) -> TensorOrTupleOfTensorsGeneric:
    """Captum's ``gradient_func(forward_func, inputs, target, args)`` with every activation under
    ``rule``, shaped like ``inputs`` (the body of the Captum drop-ins: deconvnet and guided)."""
    is_inputs_tuple = _is_tuple(inputs)
    inputs_tuple = _format_tensor_into_tuples(inputs)
    check_grad_enabled(inputs_tuple)
    check_target(target)
    check_batch(inputs_tuple)
    check_finite(inputs_tuple)
    count = len(inputs_tuple)

    def forward_on_copies(*args: Any) -> Any:
        # the caller's tensors are the gradient leaves; the model gets copies, so that an
        # in-place first op (nn.ReLU(inplace=True)) neither fails on a leaf nor writes them
        copies = (a.clone() if isinstance(a, Tensor) else a for a in args[:count])
        return forward_func(*copies, *args[count:])

    gradient_mask = apply_gradient_requirements(inputs_tuple)
    try:
        with _deconvnet(model, rule=rule):
            gradients = gradient_func(
                forward_on_copies, inputs_tuple, target, additional_forward_args
            )
    finally:
        undo_gradient_requirements(inputs_tuple, gradient_mask)
    return _format_output(is_inputs_tuple, gradients)


_MODEL_ASSERT = "Given model must be an instance of torch.nn.Module to properly hook ReLU layers."


class RuledGradient(GradientAttribution):
    """The body of the Captum drop-ins for ``Deconvolution`` / ``GuidedBackprop``: Captum's
    constructor and ``attribute(inputs, target=None, additional_forward_args=None)``, every
    activation under the subclass's :attr:`rule`."""

    rule: Rule = DECONVNET

    def __init__(self, model: nn.Module) -> None:
        GradientAttribution.__init__(self, model)
        self.model = model
        assert isinstance(self.model, nn.Module), _MODEL_ASSERT

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Any = None,
    ) -> TensorOrTupleOfTensorsGeneric:
        r"""Attributions under the rule, exactly as Captum's ``attribute`` of the same class.

        Args:
            inputs: tensor or tuple of tensors (N, ...).
            target: Captum's ``TargetType``: output indices for which gradients are computed.
            additional_forward_args: passed to the model after ``inputs``.

        Returns:
            Tensor or tuple of tensors shaped like ``inputs``.
        """
        return _ruled_gradients(
            self.model,
            self.gradient_func,
            self.forward_func,
            inputs,
            target,
            additional_forward_args,
            rule=self.rule,
        )

    def attribute_future(self) -> Callable:
        raise NotImplementedError(f"attribute_future is not implemented for {type(self).__name__}")


class RuledNeuronGradient(NeuronAttribution, GradientAttribution):
    """The body of the Captum drop-ins for ``NeuronDeconvolution`` / ``NeuronGuidedBackprop``:
    Captum's constructor (``model, layer, device_ids=None``; ``layer`` also by dotted name) and
    ``attribute(inputs, neuron_selector, additional_forward_args=None,
    attribute_to_neuron_input=False)``, every activation under the subclass's :attr:`rule`. Each
    call builds its own neuron gradient function: nothing shared is changed, so concurrent calls
    with different neurons do not interfere."""

    rule: Rule = DECONVNET

    def __init__(
        self, model: nn.Module, layer: LayerSpec, device_ids: list[int] | None = None
    ) -> None:
        assert isinstance(model, nn.Module), _MODEL_ASSERT
        _, module = resolve_layer(model, layer)
        NeuronAttribution.__init__(self, model, module, device_ids)
        GradientAttribution.__init__(self, model)
        self.model = model

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        neuron_selector: int | tuple | Callable,
        additional_forward_args: Any = None,
        attribute_to_neuron_input: bool = False,
    ) -> TensorOrTupleOfTensorsGeneric:
        r"""Attributions of one neuron under the rule, as Captum's ``attribute`` of the class.

        Args:
            inputs: tensor or tuple of tensors (N, ...).
            neuron_selector: int (2-D layer output), tuple of ints/slices (one per non-batch
                dim; slices sum the neurons) or a callable ``layer output -> (N,)`` tensor.
            additional_forward_args: passed to the model after ``inputs``.
            attribute_to_neuron_input: attribute to the layer's input instead of its output.

        Returns:
            Tensor or tuple of tensors shaped like ``inputs``.
        """
        gradient_func = construct_neuron_grad_fn(
            self.layer, neuron_selector, self.device_ids, attribute_to_neuron_input
        )
        return _ruled_gradients(
            self.model,
            gradient_func,
            self.forward_func,
            inputs,
            None,
            additional_forward_args,
            rule=self.rule,
        )


class Deconvolution(RuledGradient):
    r"""Drop-in for :class:`captum.attr.Deconvolution` that rules *every* activation.

    Same constructor, ``attribute`` signature, argument meanings, return shapes and errors as
    Captum's class. Captum hooks only ``nn.ReLU`` modules, so on models with functional ReLUs,
    SiLU/GELU/Hardswish activations (GoogLeNet, MobileNet, EfficientNet, ConvNeXt, DenseNet's final
    ReLU) it silently returns plain gradients; here those activations get the deconvnet rule too.
    Where Captum sees every activation, the numbers are identical. Like Captum, an in-place first
    op (``nn.ReLU(inplace=True)``) works and leaves the caller's inputs untouched.
    """

    rule = DECONVNET


class NeuronDeconvolution(RuledNeuronGradient):
    r"""Drop-in for :class:`captum.attr.NeuronDeconvolution` that rules *every* activation.

    Same constructor (``model, layer, device_ids=None``), ``attribute(inputs, neuron_selector,
    additional_forward_args=None, attribute_to_neuron_input=False)``, argument meanings and
    returns as Captum's class; the activation coverage of :class:`Deconvolution`.
    """

    rule = DECONVNET


for _drop_in in (DeconvProjection, Deconvolution, NeuronDeconvolution):
    _drop_in.__doc__ = (_drop_in.__doc__ or "") + _DROP_IN_NOTES
