"""Every class that takes a Captum target rejects non-integer targets, naming the value."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deconvnet_attr import (
    Deconvolution,
    DeconvProjection,
    GuidedBackprop,
    GuidedGradCam,
    LayerAblation,
    Occlusion,
)

NAMES = [
    "DeconvProjection",
    "Deconvolution",
    "Occlusion",
    "LayerAblation",
    "GuidedBackprop",
    "GuidedGradCam",
]
BAD_TARGETS = ["3", 2.7, True, torch.tensor([1.5, 2.5]), torch.tensor([True, False]), [0, 2.7]]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4)
    ).eval()


def _calls(model: nn.Module, x: torch.Tensor):
    return {
        "DeconvProjection": lambda t: DeconvProjection(model).attribute(x, target=t),
        "Deconvolution": lambda t: Deconvolution(model).attribute(x, target=t),
        "Occlusion": lambda t: Occlusion(model).attribute(
            x, sliding_window_shapes=(1, 2, 2), strides=2, target=t
        ),
        "LayerAblation": lambda t: LayerAblation(model, [model[0]]).attribute(x, target=t),
        "GuidedBackprop": lambda t: GuidedBackprop(model).attribute(x, target=t),
        "GuidedGradCam": lambda t: GuidedGradCam(model, model[0]).attribute(x, target=t),
    }


@pytest.mark.parametrize(
    "name", ["DeconvProjection", "Deconvolution", "Occlusion", "LayerAblation"]
)
@pytest.mark.parametrize("target", BAD_TARGETS, ids=repr)
def test_non_integer_targets_are_rejected_naming_the_value(name, target):
    model = _model()
    x = torch.randn(2, 1, 6, 6)
    with pytest.raises(TypeError, match="target"):
        _calls(model, x)[name](target)


@pytest.mark.parametrize(
    "name", ["DeconvProjection", "Deconvolution", "Occlusion", "LayerAblation"]
)
def test_integer_targets_still_work(name):
    model = _model()
    x = torch.randn(2, 1, 6, 6)
    for target in (1, [0, 3], torch.tensor([2, 1])):
        out = _calls(model, x)[name](target)
        assert torch.isfinite(out).all()
