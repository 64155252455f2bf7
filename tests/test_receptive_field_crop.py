"""geometry.receptive_field_crop against brute force: the gradient support of each unit. (The
window formula, pixel by pixel, is checked through mining.receptive_field_patches in
test_mining.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deconvnet_attr.geometry import ReceptiveField, receptive_field, receptive_field_crop


def positive_net() -> nn.Sequential:
    """Strided, dilated convolutions and average pooling with positive weights: every input
    pixel inside a unit's field gets a positive gradient, none outside does. Only the first
    layer pads (its padding lies outside the image, so the fields reach past every border);
    padding inside the net would put holes at the border of a field that no gradient crosses."""
    net = nn.Sequential(
        nn.Conv2d(1, 1, 3, stride=2, padding=1),
        nn.AvgPool2d(2, stride=1),
        nn.Conv2d(1, 1, 3, dilation=2),
    )
    for conv in (net[0], net[2]):
        nn.init.constant_(conv.weight, 1.0)
        nn.init.zeros_(conv.bias)
    return net


def test_crop_shows_exactly_the_gradient_support_of_each_unit():
    net, height, width = positive_net(), 17, 15
    field = receptive_field(net, "2", torch.zeros(1, 1, height, width))
    assert field.size[0] < height and field.size[1] < width  # the crop is a window, not the image
    assert min(field.offset) < 0  # the first units' fields start above / left of the image
    image = torch.arange(height * width, dtype=torch.float32).view(1, 1, height, width)
    before = image.clone()
    x = image.clone().requires_grad_(True)
    out = net(x)
    last = (field.rows(out.shape[2] - 1)[1], field.cols(out.shape[3] - 1)[1])
    assert last[0] >= height and last[1] >= width  # ... and the last ones end below / right of it
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            (grad,) = torch.autograd.grad(out[0, 0, i, j], x, retain_graph=True)
            rows = grad[0, 0].abs().sum(1).nonzero().flatten()
            cols = grad[0, 0].abs().sum(0).nonzero().flatten()
            support = image[0, 0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            crop = receptive_field_crop(field, image, torch.tensor([[i, j]]), fill=float("nan"))
            assert crop.shape == (1, 1, *field.size)
            seen = ~crop[0, 0].isnan()
            inside = crop[0, 0][seen.any(1)][:, seen.any(0)]  # the non-NaN block
            assert torch.equal(inside, support), (i, j)
            assert int(seen.sum()) == support.numel()  # everything else is fill
            # where the block sits: the fill above / left of it is the field's part outside
            top = -(field.offset[0] + i * field.stride[0])
            left = -(field.offset[1] + j * field.stride[1])
            assert int(seen.any(1).nonzero()[0]) == max(0, top)
            assert int(seen.any(0).nonzero()[0]) == max(0, left)
    assert torch.equal(image, before)  # the images are not changed


def test_a_field_at_least_as_large_as_the_image_shows_the_whole_image_along_that_axis():
    images = torch.rand(2, 1, 6, 8)
    tall = ReceptiveField(size=(6, 3), stride=(1, 2), offset=(-4, 1))
    got = receptive_field_crop(tall, images, torch.tensor([[5, 0], [0, 2]]))
    assert got.shape == (2, 1, 6, 3)
    assert torch.equal(got[0], images[0, :, :, 1:4])
    assert torch.equal(got[1], images[1, :, :, 5:8])
    huge = ReceptiveField(size=(40, 40), stride=(4, 4), offset=(-20, -20))
    assert torch.equal(receptive_field_crop(huge, images, torch.tensor([[1, 1], [0, 3]])), images)


def test_a_window_entirely_outside_the_image_is_all_fill():
    images = torch.rand(1, 1, 5, 5)
    field = ReceptiveField(size=(2, 2), stride=(1, 1), offset=(-9, 0))
    assert torch.equal(
        receptive_field_crop(field, images, torch.tensor([[0, 0]]), fill=3.0),
        torch.full((1, 1, 2, 2), 3.0),
    )


def test_bad_shapes_are_named():
    field = ReceptiveField((3, 3), (1, 1), (0, 0))
    with pytest.raises(ValueError, match=r"\(2, 5, 5\)"):
        receptive_field_crop(field, torch.rand(2, 5, 5), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        receptive_field_crop(field, torch.rand(2, 1, 5, 5), torch.zeros(3, 2, dtype=torch.long))
