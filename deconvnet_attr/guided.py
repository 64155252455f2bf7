"""Guided backpropagation and Guided Grad-CAM (Springenberg et al. 2014; Selvaraju et al. 2017)
as drop-ins for Captum's classes, with the :data:`~deconvnet_attr.rules.GUIDED` rule on *every*
activation.

Guided backpropagation is the deconvnet's direct successor: at each activation the backward is
``relu(f'(x) * grad_output)`` -- the forward mask of the gradient *and* the deconvnet's relu* of
the signal. Captum's classes hook only ``nn.ReLU`` modules, so on models with functional ReLUs or
SiLU / GELU / Hardswish / ... activations they return (part of) the plain gradient; these classes
rule every activation the op table knows (:mod:`deconvnet_attr.ops`). Where Captum's hooks see
every activation (``nn.ReLU``-only models) the numbers are identical.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from captum.attr import GradientAttribution, LayerAttribution, LayerGradCam
from captum.log import log_usage
from torch import Tensor, nn

from deconvnet_attr.captum_compat import (
    TargetType,
    TensorOrTupleOfTensorsGeneric,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
)
from deconvnet_attr.deconv import _DROP_IN_NOTES, RuledGradient, RuledNeuronGradient
from deconvnet_attr.rules import GUIDED
from deconvnet_attr.taps import LayerSpec, resolve_layer

__all__ = ["GuidedBackprop", "GuidedGradCam", "NeuronGuidedBackprop"]


class GuidedBackprop(RuledGradient):
    r"""Drop-in for :class:`captum.attr.GuidedBackprop` that guides *every* activation.

    Same constructor, ``attribute(inputs, target=None, additional_forward_args=None)``, argument
    meanings, return shapes and errors as Captum's class. Each activation's backward is
    ``relu(f'(x) * grad_output)`` (:data:`~deconvnet_attr.rules.GUIDED`): for ReLU exactly Captum's
    rule, for smooth activations (GELU, SiLU, ...) its natural extension.
    """

    rule = GUIDED


class NeuronGuidedBackprop(RuledNeuronGradient):
    r"""Drop-in for :class:`captum.attr.NeuronGuidedBackprop` that guides *every* activation.

    Same constructor (``model, layer, device_ids=None``; ``layer`` also by dotted name),
    ``attribute(inputs, neuron_selector, additional_forward_args=None,
    attribute_to_neuron_input=False)``, argument meanings and returns as Captum's class. Each call
    builds its own neuron gradient function: concurrent calls do not interfere.
    """

    rule = GUIDED


class GuidedGradCam(GradientAttribution):
    r"""Drop-in for :class:`captum.attr.GuidedGradCam`: guided backpropagation (every activation
    guided) times the rectified Grad-CAM map of ``layer``, upsampled to each input.

    Same constructor (``model, layer, device_ids=None``; ``layer`` also by dotted name) and
    ``attribute`` as Captum's class. Grad-CAM itself is Captum's
    :class:`~captum.attr.LayerGradCam` (plain gradients at the layer, as in the paper); only
    the guided factor differs from Captum, and only where Captum's hooks miss activations.
    """

    def __init__(
        self, model: nn.Module, layer: LayerSpec, device_ids: list[int] | None = None
    ) -> None:
        GradientAttribution.__init__(self, model)
        _, module = resolve_layer(model, layer)
        self.grad_cam = LayerGradCam(model, module, device_ids)
        self.guided_backprop = GuidedBackprop(model)

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Any = None,
        interpolate_mode: str = "nearest",
        attribute_to_layer_input: bool = False,
    ) -> TensorOrTupleOfTensorsGeneric:
        r"""Guided Grad-CAM attributions, as :meth:`captum.attr.GuidedGradCam.attribute`.

        Args:
            inputs: tensor or tuple of tensors (N, C, *spatial), spatially aligned with the
                layer's output (N, K, *spatial').
            target: Captum's ``TargetType``.
            additional_forward_args: passed to the model after ``inputs``.
            interpolate_mode: ``torch.nn.functional.interpolate`` mode for upsampling the
                Grad-CAM map to each input's spatial size ("nearest", "area", "bilinear", ...).
            attribute_to_layer_input: Grad-CAM of the layer's input instead of its output.

        Returns:
            Tensor or tuple shaped like ``inputs``: guided backprop times the upsampled map. An
            input the map cannot be interpolated to (wrong rank, unknown mode) gets an empty
            tensor, with a warning, as in Captum.
        """
        is_inputs_tuple = _is_tuple(inputs)
        inputs_tuple = _format_tensor_into_tuples(inputs)
        cam = self.grad_cam.attribute(
            inputs_tuple,
            target=target,
            additional_forward_args=additional_forward_args,
            attribute_to_layer_input=attribute_to_layer_input,
            relu_attributions=True,
        )
        if isinstance(cam, tuple):
            assert len(cam) == 1, (
                "GuidedGradCAM attributions for layer with multiple inputs / outputs is not "
                "supported."
            )
            cam = cam[0]
        guided = self.guided_backprop.attribute(
            inputs_tuple, target=target, additional_forward_args=additional_forward_args
        )
        return _format_output(
            is_inputs_tuple,
            tuple(
                _times_map(g, cam, x, interpolate_mode)
                for g, x in zip(guided, inputs_tuple, strict=True)
            ),
        )


def _times_map(guided: Tensor, cam: Tensor, x: Tensor, mode: str) -> Tensor:
    """``guided`` times ``cam`` (N, 1, *spatial') upsampled to ``x``'s spatial size; an empty
    tensor, with a warning, when that interpolation is impossible."""
    try:
        return guided * LayerAttribution.interpolate(cam, tuple(x.shape[2:]), mode)
    except (RuntimeError, ValueError, NotImplementedError) as error:
        warnings.warn(
            f"Couldn't interpolate the Grad-CAM map {tuple(cam.shape)} to the input of shape "
            f"{tuple(x.shape)} with interpolate_mode={mode!r} ({error}); returning an empty "
            "tensor for that input.",
            UserWarning,
            stacklevel=3,
        )
        return torch.empty(0)


for _drop_in in (GuidedBackprop, NeuronGuidedBackprop):
    _drop_in.__doc__ = (_drop_in.__doc__ or "") + _DROP_IN_NOTES
