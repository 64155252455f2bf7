"""Receptive fields and window arithmetic against brute force (gradient support, enumeration)."""

import copy
import itertools

import pytest
import torch
import torchvision
from torch import nn

from deconvnet_attr.geometry import (
    GeometryError,
    Window,
    receptive_field,
    receptive_field_table,
    trace,
)
from deconvnet_attr.models.zfnet import zfnet


class Branchy(nn.Module):
    """Dilation, groups, asymmetric kernels/strides, a residual add and a channel concat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, (3, 5), stride=(2, 1), padding=(1, 2))
        self.a = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
        self.b = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(8, 8, 1))
        self.c = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.pool = nn.AvgPool2d(2, ceil_mode=True)
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        y = y + torch.cat([x, x], 1)
        return self.pool(self.bn(self.c(y)).relu())


class _Stop(Exception):
    pass


def _positive_twin(model: nn.Module) -> nn.Module:
    """Same geometry; every path carries a positive signal, so gradient support = field.

    Max pooling (whose gradient picks one unit) becomes average pooling of the same window;
    weights become 1 / fan-in so activations stay positive and of order one.
    """
    twin = copy.deepcopy(model).eval()
    for name, module in list(twin.named_modules()):
        if isinstance(module, nn.MaxPool2d):
            parent, _, child = name.rpartition(".")
            setattr(
                twin.get_submodule(parent),
                child,
                nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode),
            )
    with torch.no_grad():
        for p in twin.parameters():
            p.fill_(1.0 / p[0].numel() if p.dim() > 1 else 1.0)
    return twin


def _support(twin: nn.Module, layer: str, x: torch.Tensor, units):
    """Bounding rows/cols of input pixels with nonzero gradient of each layer unit (i, j)."""
    out = {}

    def stop(module, args, output):
        out["o"] = output
        raise _Stop

    handle = twin.get_submodule(layer).register_forward_hook(stop)
    x = x.abs().requires_grad_()
    try:
        twin(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    result = []
    for i, j in units:
        (grad,) = torch.autograd.grad(out["o"][0, :, i, j].sum(), x, retain_graph=True)
        rows = grad[0].abs().sum((0, 2)).nonzero().flatten()
        cols = grad[0].abs().sum((0, 1)).nonzero().flatten()
        result.append(
            ((rows.min().item(), rows.max().item()), (cols.min().item(), cols.max().item()))
        )
    return out["o"].shape[-2:], result


CASES = [
    (lambda: torchvision.models.alexnet(weights=None), ["features.5", "features.12"], 127),
    (lambda: torchvision.models.vgg11(weights=None), ["features.10", "features.20"], 64),
    (lambda: torchvision.models.resnet18(weights=None), ["layer1", "layer2.0"], 64),
    (lambda: zfnet(), ["conv2", "pool5"], 120),
    (Branchy, ["a", "b", "c", "pool"], 33),
]


@pytest.mark.parametrize("factory,layers,size", CASES)
def test_receptive_field_matches_gradient_support(factory, layers, size):
    torch.manual_seed(0)
    model = factory().eval()
    twin = _positive_twin(model)
    x = torch.rand(1, 3, size, size)
    for layer in layers:
        rf = receptive_field(model, layer, x)
        (h, w), _ = _support(twin, layer, x, [])
        units = sorted({(0, 0), (h - 1, w - 1), (h // 2, w // 2), (0, w - 1), (h // 3, 1 % w)})
        _, supports = _support(twin, layer, x, units)
        for (i, j), (rows, cols) in zip(units, supports, strict=True):
            lo, hi = rf.rows(i)
            assert rows == (max(lo, 0), min(hi, size - 1)), (layer, i, j)
            lo, hi = rf.cols(j)
            assert cols == (max(lo, 0), min(hi, size - 1)), (layer, i, j)


def test_published_values():
    """The values the visualisation issue quotes (hand-derivable from the layer tables)."""
    x = torch.zeros(1, 3, 64, 64)
    alexnet = torchvision.models.alexnet(weights=None)
    rf = receptive_field(alexnet, alexnet.features[12], x)
    assert (rf.size, rf.stride, rf.offset) == ((195, 195), (32, 32), (-66, -66))
    vgg = torchvision.models.vgg16(weights=None)
    rf = receptive_field(vgg, vgg.features[28], x)
    assert (rf.size, rf.stride, rf.offset) == ((196, 196), (16, 16), (-90, -90))
    resnet = torchvision.models.resnet18(weights=None)
    rf = receptive_field(resnet, resnet.layer1, x)
    assert (rf.size, rf.stride, rf.offset) == ((43, 43), (4, 4), (-21, -21))


def test_table_lists_every_conv_and_pool_and_matches_receptive_field():
    model = zfnet()
    x = torch.zeros(1, 3, 120, 120)  # too small for fc6: the table needs the conv part only
    rows = receptive_field_table(model, x)
    expected = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
    assert [r.name for r in rows] == expected
    for row in rows:
        assert row.field == receptive_field(model, row.name, x)
        assert row.output_shape[0] == 1 and len(row.output_shape) == 4


def test_errors_and_model_untouched():
    model = torchvision.models.resnet18(weights=None).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(GeometryError, match="fc"):
        receptive_field(model, model.fc, x)
    with pytest.raises(ValueError, match="nope"):
        receptive_field(model, "nope", x)
    with pytest.raises(ValueError, match="Linear"):
        receptive_field(model, nn.Linear(2, 2), x)
    with pytest.raises(GeometryError, match="cannot trace"):
        receptive_field(lambda t: model(t), "layer1", x)  # noqa: PLW0108
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(
    "kernel,stride,padding,dilation",
    [(3, 1, 1, 1), (3, 2, 1, 1), (7, 2, 3, 1), (3, 2, 0, 2), (1, 2, 0, 1), (5, 3, 2, 2)],
)
def test_window_ranges_match_enumeration(kernel, stride, padding, dilation):
    w = Window((kernel, kernel), (stride, stride), (padding, padding), (dilation, dilation))
    size = 23
    out = (size + 2 * padding - w.span(0)) // stride + 1
    reads = {o: {o * stride - padding + j * dilation for j in range(kernel)} for o in range(out)}
    for lo, hi in itertools.combinations_with_replacement(range(size), 2):
        hit = [o for o in range(out) if any(lo <= r <= hi for r in reads[o])]
        first, last = w.affected_outputs(lo, hi, out, 0)
        if hit:  # a contiguous range containing every affected output, tight without holes
            assert first <= min(hit) and last >= max(hit)
            assert first >= 0 and last <= out - 1
            if dilation == 1:
                assert (first, last) == (min(hit), max(hit))
        elif dilation == 1:
            assert first > last
        t_first, t_last = w.affected_outputs(torch.tensor([lo]), torch.tensor([hi]), out, 0)
        assert (t_first.item(), t_last.item()) == (first, last)
        if first <= last:
            need_lo, need_hi = w.inputs_needed(first, last, 0)
            assert (need_lo, need_hi) == (min(reads[first]), max(reads[last]))


def test_trace_specs_classify_ops():
    net = trace(Branchy().eval(), (torch.rand(1, 3, 16, 16),))
    kinds = {n.name: s.kind for n, s in net.specs.items()}
    assert kinds["stem"] == kinds["a"] == kinds["pool"] == "window"
    assert kinds["cat"] == kinds["add"] == "merge"
    assert kinds["relu"] == kinds["bn"] == "pointwise"
    train = trace(Branchy().train(), (torch.rand(2, 3, 16, 16),))
    assert {n.name: s.kind for n, s in train.specs.items()}["bn"] == "opaque"


def test_unknown_receptive_field_is_said_not_shown_as_patches():
    """Past a global op the field is unknown: GeometryError.reason names the op, the report's
    caption and the atlas's field note say whole images are shown, and nothing is cropped."""
    from types import SimpleNamespace

    from deconvnet_attr.atlas.build import _field as atlas_field
    from deconvnet_attr.report.sections import _crop, _field, field_coverage

    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1)
    ).eval()
    image = torch.rand(1, 12, 12)
    with pytest.raises(GeometryError) as raised:
        receptive_field(model, "3", image[None])
    assert "2" in raised.value.reason and raised.value.reason in str(raised.value)
    ctx = SimpleNamespace(model=model, data=[(image, 0)])
    why = _field(ctx, "3")
    assert why == raised.value.reason
    assert field_coverage(ctx, "3", why) == (
        f"Receptive field unknown for 3 ({why}): whole images shown."
    )
    images = torch.rand(2, 1, 12, 12)
    assert _crop(why, images, torch.zeros(2, 2, dtype=torch.long)) is images
    assert atlas_field(model, "3", image[None]) == why
    known = _field(ctx, "0")
    assert known == receptive_field(model, "0", image[None]) and known.size == (3, 3)
