"""DeconvProjection and the Captum drop-ins against independent references: a literal paper
deconvnet (conv_transpose2d + max_unpool2d + relu), a torch.fx-rewritten model, Captum itself."""

import warnings

import captum.attr as ca
import pytest
import torch
import torch.nn.functional as F
from fx_reference import reference_deconvnet
from model_state import snapshot
from torch import nn

from deconvnet_attr.deconv import Deconvolution, DeconvProjection, NeuronDeconvolution


class PaperNet(nn.Module):
    """A small ZFNet-like net: conv → relu → max-pool (switches) → LRN, twice, then conv, fc.
    With ``pool=3`` the pools overlap (3x3 stride 2, as in ZFNet); with ``pool=2`` they do not.
    Input 48x48 (pool=3) or 40x40 (pool=2) gives a 2x2 conv3 map."""

    def __init__(self, pool: int = 3) -> None:
        super().__init__()
        self.pool = pool
        self.conv1 = nn.Conv2d(3, 8, 7, stride=2, padding=1)
        self.pool1 = nn.MaxPool2d(pool, 2)
        self.norm1 = nn.LocalResponseNorm(5)
        self.conv2 = nn.Conv2d(8, 12, 5, stride=2, padding=2)
        self.pool2 = nn.MaxPool2d(pool, 2)
        self.conv3 = nn.Conv2d(12, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 2 * 2, 5)

    def forward(self, x):
        x = self.norm1(self.pool1(F.relu(self.conv1(x))))
        x = self.pool2(F.relu(self.conv2(x)))
        x = F.relu(self.conv3(x))
        return self.fc(x.flatten(1))


def unpool(r: torch.Tensor, switches: torch.Tensor, k: int, size) -> torch.Tensor:
    """Place each pooled value at its switch. ``max_unpool2d`` when windows do not overlap; with
    overlapping windows two windows can share a switch, and ``max_unpool2d`` keeps only one of
    their values, so the switch placement is written out with a sum."""
    if k == 2:
        return F.max_unpool2d(r, switches, k, 2, output_size=size)
    n, c = r.shape[:2]
    out = torch.zeros(n, c, size[0] * size[1])
    out.scatter_add_(2, switches.flatten(2), r.flatten(2))
    return out.view(n, c, *size)


def paper_deconvnet(net: PaperNet, x: torch.Tensor, seed_conv3: torch.Tensor) -> torch.Tensor:
    """The paper's deconvnet written out: record switches on the way up, then unpool / rectify /
    transpose-filter on the way down. The contrast normalisation is inverted by its own transpose
    (the vector-Jacobian product), as the gradient rule does."""
    k = net.pool
    with torch.no_grad():
        a1 = F.relu(net.conv1(x))
        p1, sw1 = F.max_pool2d(a1, k, 2, return_indices=True)
        n1 = p1.detach().requires_grad_()
        with torch.enable_grad():
            normed = net.norm1(n1)
        a2 = F.relu(net.conv2(normed))
        p2, sw2 = F.max_pool2d(a2, k, 2, return_indices=True)
        # walk back down from conv3's output (below its ReLU)
        r = F.conv_transpose2d(seed_conv3, net.conv3.weight, padding=1)
        r = unpool(r, sw2, k, a2.shape[-2:])
        r = F.relu(r)
        r = F.conv_transpose2d(
            r, net.conv2.weight, stride=2, padding=2, output_padding=_out_pad(normed, net.conv2, r)
        )
        (r,) = torch.autograd.grad(normed, n1, r)
        r = unpool(r, sw1, k, a1.shape[-2:])
        r = F.relu(r)
        return F.conv_transpose2d(
            r, net.conv1.weight, stride=2, padding=1, output_padding=_out_pad(x, net.conv1, r)
        )


def _out_pad(inp, conv, out):
    """output_padding that makes conv_transpose2d land on the conv input's size."""
    s, p, k = conv.stride[0], conv.padding[0], conv.kernel_size[0]
    return tuple(inp.shape[d] - ((out.shape[d] - 1) * s - 2 * p + k) for d in (-2, -1))


@pytest.fixture
def paper_net():
    torch.manual_seed(0)
    return PaperNet().eval()


@pytest.mark.parametrize("pool", [2, 3])
def test_literal_paper_deconvnet_strongest_activation(pool):
    torch.manual_seed(0)
    paper_net = PaperNet(pool).eval()
    x = torch.randn(3, 3, 48 if pool == 3 else 40, 48 if pool == 3 else 40)
    with torch.no_grad():
        act = F.relu(paper_net.conv3(paper_net.pool2(F.relu(paper_net.conv2(
            paper_net.norm1(paper_net.pool1(F.relu(paper_net.conv1(x)))))))))  # fmt: skip
    # the paper's seed: per example the strongest activation of the strongest channel, alone
    flat = act.flatten(1).argmax(1)
    seed = torch.zeros_like(act).flatten(1)
    seed[torch.arange(3), flat] = act.flatten(1)[torch.arange(3), flat]
    expected = paper_deconvnet(paper_net, x, seed.view_as(act))
    ours = DeconvProjection(paper_net, paper_net.conv3).attribute(x)
    assert expected.abs().max() > 0
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)


def test_literal_paper_deconvnet_whole_channel(paper_net):
    x = torch.randn(2, 3, 48, 48)
    captured = {}
    paper_net.conv3.register_forward_hook(lambda m, i, o: captured.setdefault("a", o.detach()))
    paper_net(x)
    paper_net.conv3._forward_hooks.clear()
    seed = torch.zeros_like(captured["a"])
    seed[0, 5] = captured["a"][0, 5]
    seed[1, 2] = captured["a"][1, 2]
    expected = paper_deconvnet(paper_net, x, seed)
    ours = DeconvProjection(paper_net, paper_net.conv3).attribute(x, target=[5, 2], neuron="all")
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ the model zoo
TORCHVISION = [
    "alexnet", "vgg16", "resnet18", "resnet50", "densenet121", "googlenet", "inception_v3",
    "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf", "squeezenet1_1",
    "shufflenet_v2_x1_0", "convnext_tiny", "mnasnet1_0",
]  # fmt: skip
TIMM = [
    "resnet18", "efficientnet_b0", "mobilenetv3_large_100", "vgg11", "regnety_002",
    "densenet121", "convnext_atto",
]  # fmt: skip
#: models where Captum's nn.ReLU hooks see every activation (so its numbers must equal ours)
CAPTUM_SEES_ALL = {
    "tv:alexnet", "tv:vgg16", "tv:resnet18", "tv:resnet50", "tv:regnet_y_400mf",
    "tv:squeezenet1_1", "tv:shufflenet_v2_x1_0", "tv:mnasnet1_0", "timm:resnet18", "timm:vgg11",
    "timm:regnety_002", "timm:densenet121",
}  # fmt: skip


def build(source: str, name: str) -> nn.Module:
    import timm
    import torchvision

    torch.manual_seed(0)
    if source == "tv":
        extra = (
            {"aux_logits": False, "init_weights": False}
            if name in ("googlenet", "inception_v3")
            else {}
        )
        model = getattr(torchvision.models, name)(weights=None, **extra)
    else:
        model = timm.create_model(name, pretrained=False)
    for module in model.modules():  # ConvNeXt's layer scale starts at 1e-6: make blocks matter
        for pname in ("layer_scale", "gamma"):
            param = getattr(module, pname, None)
            if isinstance(param, nn.Parameter):
                nn.init.constant_(param, 1.0)
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize(
    "source,name", [("tv", n) for n in TORCHVISION] + [("timm", n) for n in TIMM]
)
def test_zoo_matches_independent_reference(source, name):
    model = build(source, name)
    x = torch.randn(
        2, 3, 80 if name == "inception_v3" else 64, 64 if name != "inception_v3" else 80
    )
    ours = DeconvProjection(model).attribute(x, target=[1, 7])
    ref_model, _ = reference_deconvnet(model)
    leaf = x.clone().requires_grad_()
    out = ref_model(leaf)
    (ref,) = torch.autograd.grad(out[:, 1][0] + out[:, 7][1], leaf)
    scale = ref.abs().max()
    assert scale > 0
    assert (ours - ref).abs().max() <= 1e-4 * scale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captum = ca.Deconvolution(model).attribute(x, target=[1, 7])
        dropin = Deconvolution(model).attribute(x, target=[1, 7])
    assert (dropin - ref).abs().max() <= 1e-4 * scale
    if f"{source}:{name}" in CAPTUM_SEES_ALL:
        assert (captum - ours).abs().max() <= 1e-5 * scale
    else:  # the gap we close: Captum misses activations here
        assert (captum - ours).abs().max() > 1e-2 * scale


# ------------------------------------------------------------------ model-output projection
def test_output_projection_equals_dropin_and_captum_for_every_target_form(paper_net):
    x = torch.randn(4, 3, 48, 48)
    for target in (2, [0, 1, 2, 4], torch.tensor([3, 3, 0, 1]), torch.tensor(1)):
        ours = DeconvProjection(paper_net).attribute(x, target=target)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            captum_fn = ca.Deconvolution(paper_net).attribute(x.clone(), target=target)
        # Captum misses the functional ReLUs of PaperNet; compare with the fx reference instead
        ref_model, _ = reference_deconvnet(paper_net)
        leaf = x.clone().requires_grad_()
        out = ref_model(leaf)
        idx = (
            torch.as_tensor(target).expand(4)
            if torch.as_tensor(target).numel() == 1
            else (torch.as_tensor(target))
        )
        (ref,) = torch.autograd.grad(out[torch.arange(4), idx].sum(), leaf)
        torch.testing.assert_close(ours, ref)
        assert not torch.allclose(captum_fn, ref)


class SeqNet(nn.Module):
    """Captum sees all activations here (nn.ReLU modules); outputs (N, 2, 3) for tuple targets."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 6, 3), nn.ReLU()
        )
        self.head = nn.Linear(6 * 5 * 5, 6)

    def forward(self, x, scale=1.0):
        return (self.head(self.body(x).flatten(1)) * scale).view(-1, 2, 3)


def test_tuple_targets_and_additional_forward_args_match_captum():
    torch.manual_seed(1)
    net = SeqNet().eval()
    x = torch.randn(3, 3, 16, 16)
    for target in ((1, 2), [(0, 1), (1, 0), (1, 2)]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = ca.Deconvolution(net).attribute(
                x, target=target, additional_forward_args=2.0
            )
        ours = DeconvProjection(net).attribute(x, target=target, additional_forward_args=2.0)
        torch.testing.assert_close(ours, expected)


def test_tuple_inputs_give_tuple_outputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(5, 3)

        def forward(self, x, y):
            return F.relu(self.a(x)) + F.relu(self.b(y))

    torch.manual_seed(0)
    net = Two()
    x, y = torch.randn(2, 4), torch.randn(2, 5)
    ours = DeconvProjection(net).attribute((x, y), target=1)
    assert isinstance(ours, tuple) and ours[0].shape == x.shape and ours[1].shape == y.shape
    torch.testing.assert_close(ours[0], net.a.weight[1].expand(2, 4) * (1.0))
    torch.testing.assert_close(ours[1], net.b.weight[1].expand(2, 5))


# ------------------------------------------------------------------ layer projection
def _layer_output(net, layer, x):
    store = []
    handle = layer.register_forward_hook(lambda m, i, o: store.append(o.detach()))
    net(x)
    handle.remove()
    return store[0]


def test_layer_projection_default_picks_strongest_channel_and_unit(paper_net):
    x = torch.randn(4, 3, 48, 48)
    act = _layer_output(paper_net, paper_net.conv2, x)
    ours = DeconvProjection(paper_net, paper_net.conv2).attribute(x)
    for n in range(4):  # brute force: the strongest unit of the example, one NeuronDeconvolution
        c, i, j = torch.unravel_index(act[n].argmax(), act[n].shape)
        neuron = NeuronDeconvolution(paper_net, paper_net.conv2).attribute(
            x[n : n + 1], (int(c), int(i), int(j))
        )
        torch.testing.assert_close(ours[n : n + 1], neuron * act[n, c, i, j])


def test_layer_projection_given_locations_batched_equals_one_by_one(paper_net):
    x = torch.randn(3, 3, 48, 48)
    channels = torch.tensor([0, 4, 7])
    where = torch.tensor([[1, 2], [0, 0], [3, 1]])
    act = _layer_output(paper_net, paper_net.conv2, x)
    ours = DeconvProjection(paper_net, paper_net.conv2).attribute(x, target=channels, neuron=where)
    for n in range(3):
        c, (i, j) = int(channels[n]), where[n].tolist()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # seeded with the unit's own value (the rule is not linear in a negative seed)
            single = NeuronDeconvolution(paper_net, paper_net.conv2).attribute(
                x[n : n + 1], lambda out, c=c, i=i, j=j, v=act[n, c, i, j]: out[:, c, i, j] * v
            )
        torch.testing.assert_close(ours[n : n + 1], single)


def test_layer_projection_whole_channel_matches_captum_dropin_callable_selector():
    torch.manual_seed(2)
    net = SeqNet().eval()
    layer = net.body[3]
    x = torch.randn(2, 3, 16, 16)
    act = _layer_output(net, layer, x)
    ours = DeconvProjection(net, layer).attribute(x, target=4, neuron="all")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ca.NeuronDeconvolution(net, layer).attribute(
            x, lambda out: (out[:, 4] * act[:, 4]).flatten(1).sum(1)
        )
    torch.testing.assert_close(ours, expected)


def test_noise_tunnel_wraps_deconv_projection(paper_net):
    x = torch.randn(2, 3, 48, 48)
    dp = DeconvProjection(paper_net, paper_net.conv3)
    plain = dp.attribute(x, target=[1, 3], neuron="all")
    smooth = ca.NoiseTunnel(dp).attribute(
        x, nt_type="smoothgrad", nt_samples=3, stdevs=0.0, target=[1, 3], neuron="all"
    )
    torch.testing.assert_close(smooth, plain)
    noisy = ca.NoiseTunnel(DeconvProjection(paper_net)).attribute(
        x, nt_type="smoothgrad_sq", nt_samples=4, stdevs=0.1, target=1
    )
    assert noisy.shape == x.shape and torch.isfinite(noisy).all()


# ------------------------------------------------------------------ drop-ins vs Captum
def test_dropins_equal_captum_where_hooks_see_everything():
    torch.manual_seed(3)
    net = SeqNet().eval()
    x = torch.randn(3, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for selector in (
            (2, 1, 1),
            (slice(0, 3), 2, slice(1, 4)),
            lambda out: out[:, 1].sum((1, 2)),
        ):
            for to_input in (False, True):
                expected = ca.NeuronDeconvolution(net, net.body[3]).attribute(
                    x, selector, attribute_to_neuron_input=to_input
                )
                ours = NeuronDeconvolution(net, net.body[3]).attribute(
                    x, selector, attribute_to_neuron_input=to_input
                )
                torch.testing.assert_close(ours, expected)
        expected = ca.Deconvolution(net).attribute(x, target=(1, 1), additional_forward_args=0.5)
        ours = Deconvolution(net).attribute(x, target=(1, 1), additional_forward_args=0.5)
    torch.testing.assert_close(ours, expected)


def test_dropins_raise_what_captum_raises():
    net = SeqNet().eval()
    x = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ours, theirs, args in (
            (Deconvolution(net), ca.Deconvolution(net), dict(target=(5, 0))),
            (NeuronDeconvolution(net, net.body[3]), ca.NeuronDeconvolution(net, net.body[3]),
             dict(neuron_selector=(9, 0, 0))),
        ):  # fmt: skip
            with pytest.raises(Exception) as expected:
                theirs.attribute(x.clone(), **args)
            with pytest.raises(expected.type):
                ours.attribute(x.clone(), **args)
    with pytest.raises(AssertionError):
        Deconvolution(lambda t: t)


# ------------------------------------------------------------------ never a trace
def _global_hooks():
    from torch.nn.modules import module as nn_module

    return tuple(
        len(getattr(nn_module, name))
        for name in dir(nn_module)
        if name.startswith("_global_") and name.endswith("hooks")
    )


def _assert_same(a, b):
    state_a, *rest_a = a
    state_b, *rest_b = b
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    assert rest_a[0] == rest_b[0] and rest_a[1] == rest_b[1] and rest_a[3] == rest_b[3]
    for ga, gb in zip(rest_a[2], rest_b[2], strict=True):
        assert (ga is None and gb is None) or torch.equal(ga, gb)


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.bn(self.conv(x)))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("layer", [None, "conv2"])
def test_model_and_inputs_untouched_even_on_error(layer):
    torch.manual_seed(0)
    net = BNNet().train()
    net.fc.weight.requires_grad_(False)
    net.conv.weight.grad = torch.ones_like(net.conv.weight)
    dp = DeconvProjection(net, getattr(net, layer) if layer else None)
    x = torch.randn(2, 3, 12, 12)
    x_before = x.clone()
    before = snapshot(net)
    modes, global_hooks = torch._C._len_torch_function_stack(), _global_hooks()
    dp.attribute(x, target=1)
    _assert_same(before, snapshot(net))
    with pytest.raises(ValueError, match="out of range"):
        dp.attribute(x, target=99)
    _assert_same(before, snapshot(net))
    assert torch._C._len_torch_function_stack() == modes and _global_hooks() == global_hooks
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None
    for cls in (Deconvolution,):
        cls(net).attribute(x, target=1)
        _assert_same(before, snapshot(net))
        assert not x.requires_grad


def test_model_raising_in_forward_is_restored():
    class Boom(BNNet):
        def forward(self, x):
            super().forward(x)
            raise RuntimeError("boom")

    net = Boom().train()
    before = snapshot(net)
    with pytest.raises(RuntimeError, match="boom"):
        DeconvProjection(net).attribute(torch.randn(2, 3, 12, 12), target=0)
    _assert_same(before, snapshot(net))
    assert torch._C._len_torch_function_stack() == 0


# ------------------------------------------------------------------ clear errors
def test_clear_errors(paper_net):
    x = torch.randn(2, 3, 48, 48)
    with pytest.raises(ValueError, match="not a module of the model"):
        DeconvProjection(paper_net, nn.Conv2d(3, 3, 3))
    with pytest.raises(ValueError, match="target 5 is out of range"):
        DeconvProjection(paper_net).attribute(x, target=5)
    with pytest.raises(ValueError, match="3 entries for 2 examples"):
        DeconvProjection(paper_net).attribute(x, target=[1, 2, 3])
    with pytest.raises(ValueError, match="more than one value per example"):
        DeconvProjection(paper_net).attribute(x)
    with pytest.raises(ValueError, match="target channel 12 is out of range.*12 channels"):
        DeconvProjection(paper_net, paper_net.conv2).attribute(x, target=12)
    with pytest.raises(TypeError, match="torch.int64"):
        DeconvProjection(paper_net).attribute(x.long(), target=1)
    with pytest.raises(ValueError, match="neuron index 9 is out of range"):
        DeconvProjection(paper_net, paper_net.conv2).attribute(
            x, target=0, neuron=torch.tensor([[9, 0], [0, 0]])
        )
    with pytest.raises(ValueError, match="expected an integer tensor of shape \\(2, 2\\)"):
        DeconvProjection(paper_net, paper_net.conv2).attribute(x, neuron=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="give DeconvProjection a layer"):
        DeconvProjection(paper_net).attribute(x, target=1, neuron="all")
    with pytest.raises(ValueError, match="neuron='middle'"):
        DeconvProjection(paper_net, paper_net.conv2).attribute(x, neuron="middle")


def test_layer_output_not_a_channel_tensor():
    class TupleOut(nn.Module):
        def forward(self, x):
            return x, x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.split = TupleOut()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            a, b = self.split(x)
            return self.fc(F.relu(a + b))

    net = Net()
    with pytest.raises(ValueError, match="not a tensor of rank >= 2"):
        DeconvProjection(net, net.split).attribute(torch.randn(2, 4))


def test_no_activation_warns():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x = torch.randn(2, 1, 6, 6)
    with pytest.warns(UserWarning, match="No activation function"):
        ours = DeconvProjection(net).attribute(x, target=1)
    torch.testing.assert_close(ours, ca.Saliency(net).attribute(x, target=1, abs=False))


def test_neuron_dropins_take_a_layer_by_dotted_name():
    """NeuronDeconvolution (like NeuronGuidedBackprop) takes a layer by dotted name; Captum's own
    class on the module is the reference (SeqNet: nn.ReLU modules, which Captum's hooks see); a
    misspelt name raises LayerError naming it."""
    from deconvnet_attr.taps import LayerError

    torch.manual_seed(3)
    net = SeqNet().eval()
    x = torch.randn(2, 3, 16, 16)
    by_name = NeuronDeconvolution(net, "body.3").attribute(x, (1, 2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ca.NeuronDeconvolution(net, net.body[3]).attribute(x, (1, 2, 2))
    torch.testing.assert_close(by_name, expected)
    with pytest.raises(LayerError, match="body.9"):
        NeuronDeconvolution(net, "body.9")
