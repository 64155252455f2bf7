"""Tests for deconvnet_attr.models: ZFNet architecture, removal variants, model files, reference."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from torch import nn

from deconvnet_attr.data import DEFAULT_DEBIAN_DIR, FASHION_MNIST_CLASSES, load_eval_subset
from deconvnet_attr.models import (
    create_model,
    load_checkpoints,
    load_model,
    load_reference,
    save_model,
    zfnet,
    zfnet_fashion,
)

PAPER_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


def map_sizes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of every child, recorded with forward hooks."""
    sizes = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, out, n=n: sizes.__setitem__(n, out.shape[1:]))
        for n, m in model.named_children()
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return sizes


def conv_params(c_in, c_out, k):
    return c_in * c_out * k * k + c_out


def fc_params(n_in, n_out):
    return n_in * n_out + n_out


@pytest.fixture(scope="module")
def big():
    torch.manual_seed(0)
    return zfnet(1000).eval()


def test_zfnet_parameter_count_matches_paper(big):
    by_hand = (
        conv_params(3, 96, 7)
        + conv_params(96, 256, 5)
        + conv_params(256, 384, 3)
        + conv_params(384, 384, 3)
        + conv_params(384, 256, 3)
        + fc_params(9216, 4096)
        + fc_params(4096, 4096)
        + fc_params(4096, 1000)
    )
    total = sum(p.numel() for p in big.parameters())
    assert total == by_hand == 62_357_608


def test_zfnet_map_sizes_match_figure_3(big):
    sizes = map_sizes(big, torch.rand(1, 3, 224, 224))
    spatial = [
        sizes[n][-1]
        for n in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")
    ]
    assert spatial == [110, 55, 26, 13, 13, 13, 13, 6]
    assert [sizes[n][0] for n in ("conv1", "conv2", "conv3", "conv4", "conv5")] == [
        96,
        256,
        384,
        384,
        256,
    ]
    assert sizes["flatten"] == (9216,) and sizes["fc8"] == (1000,)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in big.modules())


def test_zfnet_paper_init(big):
    for name in PAPER_LAYERS:
        layer = getattr(big, name)
        assert abs(layer.weight.std().item() - 0.01) < 0.002, name
        assert torch.count_nonzero(layer.bias) == 0, name
    assert big.drop6.p == 0.5 and big.drop7.p == 0.5
    assert isinstance(big.norm1, nn.LocalResponseNorm)


def test_zfnet_fashion_shapes_and_layer_names():
    model = zfnet_fashion()
    for name in PAPER_LAYERS:
        assert isinstance(getattr(model, name), nn.Conv2d if name[0] == "c" else nn.Linear)
    sizes = map_sizes(model, torch.rand(3, 1, 28, 28))
    spatial = [
        sizes[n][-1]
        for n in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")
    ]
    assert spatial == [28, 14, 14, 7, 7, 7, 7, 3]
    assert sizes["fc8"] == (10,)
    assert model.conv1.kernel_size == (7, 7)
    assert all(getattr(model, f"conv{i}").kernel_size == (3, 3) for i in (3, 4, 5))
    assert sum(p.numel() for p in model.parameters()) == (
        conv_params(1, 16, 7)
        + conv_params(16, 32, 5)
        + conv_params(32, 48, 3)
        + conv_params(48, 48, 3)
        + conv_params(48, 32, 3)
        + fc_params(32 * 9, 384)
        + fc_params(384, 384)
        + fc_params(384, 10)
    )


def test_normalisation_inside_model():
    model = zfnet_fashion()
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(model.normalize(x), (x - 0.2860) / 0.3530)


@pytest.mark.parametrize(
    "remove", [("conv3", "conv4"), ("fc6", "fc7"), ("conv3", "conv4", "fc6", "fc7"), ("conv5",)]
)
def test_remove_layers_reconnects_shapes(remove):
    model = zfnet_fashion(remove=remove)
    assert model.removed == tuple(
        sorted(remove, key=("conv3", "conv4", "conv5", "fc6", "fc7").index)
    )
    for name in remove:
        assert not hasattr(model, name)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    # The documented bridging rule, by hand: the next remaining layer takes the previous width.
    expected, channels = conv_params(1, 16, 7) + conv_params(16, 32, 5), 32
    for name, width in (("conv3", 48), ("conv4", 48), ("conv5", 32)):
        if name not in remove:
            expected, channels = expected + conv_params(channels, width, 3), width
    features = channels * 3 * 3
    for name in ("fc6", "fc7"):
        if name not in remove:
            expected, features = expected + fc_params(features, 384), 384
    expected += fc_params(features, 10)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_remove_conv3_conv4_bridges_channels():
    model = zfnet_fashion(remove=("conv3", "conv4"))
    assert model.conv5.in_channels == model.conv2.out_channels
    model = zfnet_fashion(remove=("fc6", "fc7"))
    assert model.fc8.in_features == 32 * 3 * 3


def test_remove_errors():
    with pytest.raises(ValueError, match="'conv1'"):
        zfnet_fashion(remove=("conv1",))
    with pytest.raises(ValueError, match="'fc9'"):
        zfnet(remove=("fc9",))
    with pytest.raises(TypeError, match="'conv3'"):
        zfnet_fashion(remove="conv3")
    with pytest.raises(ValueError, match="num_classes"):
        zfnet_fashion(num_classes=0)


def test_one_sgd_step_lowers_loss_both_archs():
    for model, x in (
        (zfnet(num_classes=5), torch.rand(2, 3, 224, 224)),
        (zfnet_fashion(), torch.rand(8, 1, 28, 28)),
    ):
        y = torch.arange(len(x)) % model.num_classes
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        model.eval()
        before = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        before.backward()
        for name in PAPER_LAYERS:
            assert torch.isfinite(getattr(model, name).weight.grad).all()
        opt.step()
        with torch.no_grad():
            after = nn.functional.cross_entropy(model(x), y)
        assert after < before


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    model = zfnet_fashion(remove=("conv4",)).eval()
    model.class_names = tuple("abcdefghij")
    x = torch.rand(4, 1, 28, 28)
    save_model(model, tmp_path / "m.pt", "zfnet-fashion", epoch=3)
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.removed == ("conv4",) and loaded.class_names == tuple("abcdefghij")
    assert loaded.epoch == 3 and not loaded.training
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    save_model(model, tmp_path / "h.pt", "zfnet-fashion", epoch=3, dtype=torch.float16)
    half = load_model(tmp_path / "h.pt")
    assert half.conv1.weight.dtype == torch.float32
    torch.testing.assert_close(half(x), model(x), rtol=1e-2, atol=1e-2)


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_model(tmp_path / "nope.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt"):
        load_model(tmp_path / "other.pt")


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        predictions = torch.cat([model(chunk).argmax(1) for chunk in x.split(1000)])
    return (predictions == y).float().mean().item()


def test_reference_on_bundled_subset():
    model = load_reference()
    assert not model.training
    assert model.class_names == FASHION_MNIST_CLASSES
    x, y = load_eval_subset()
    assert accuracy(model, x, y) >= 0.90


def test_checkpoints_show_training_progress():
    snapshots = load_checkpoints()
    epochs = list(snapshots)
    assert epochs == sorted(epochs) and epochs[0] == 1 and len(epochs) >= 3
    x, y = load_eval_subset()
    accs = [accuracy(m, x, y) for m in snapshots.values()]
    assert all(not m.training for m in snapshots.values())
    assert accs[-1] == max(accs) and accs[0] < accs[-1]


DEBIAN_TEST = [
    DEFAULT_DEBIAN_DIR / "t10k-images-idx3-ubyte.gz",
    DEFAULT_DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz",
]


@pytest.mark.skipif(
    not all(p.is_file() for p in DEBIAN_TEST), reason="dataset-fashion-mnist (Debian) not installed"
)
def test_reference_on_full_test_set():
    with gzip.open(DEBIAN_TEST[0]) as f:
        images = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 1, 28, 28)
    with gzip.open(DEBIAN_TEST[1]) as f:
        labels = np.frombuffer(f.read()[8:], np.uint8)
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    assert len(y) == 10_000
    assert accuracy(load_reference(), x, y) >= 0.91


def same_init(build_a, build_b) -> bool:
    """Both constructors, under the same seed, give the same class and the same parameters."""
    torch.manual_seed(3)
    a = build_a()
    torch.manual_seed(3)
    b = build_b()
    sa, sb = a.state_dict(), b.state_dict()
    return (
        type(a) is type(b) and list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    )


def test_create_model_builds_torchvision_architectures_untrained():
    import torchvision

    assert same_init(
        lambda: create_model("resnet18", num_classes=3),
        lambda: torchvision.models.resnet18(num_classes=3),
    )
    assert same_init(
        lambda: create_model("torchvision:squeezenet1_0"), torchvision.models.squeezenet1_0
    )
    model = create_model("resnet18", num_classes=3)
    assert type(model) is torchvision.models.ResNet and model.fc.out_features == 3
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in torchvision.models.resnet18(num_classes=3).parameters()
    )


def test_create_model_builds_timm_architectures_untrained():
    import timm

    assert same_init(
        lambda: create_model("resnet10t"),  # timm only
        lambda: timm.create_model("resnet10t", pretrained=False),
    )
    # a name both libraries know is torchvision's; timm:NAME asks for timm's
    assert same_init(
        lambda: create_model("timm:resnet18", num_classes=4),
        lambda: timm.create_model("resnet18", pretrained=False, num_classes=4),
    )
    assert type(create_model("timm:resnet18")) is timm.models.resnet.ResNet
    assert type(create_model("resnet18")) is not timm.models.resnet.ResNet


def test_create_model_never_downloads(monkeypatch):
    import torch.hub

    def offline(*args, **kwargs):
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    # a detection model whose backbone would load ImageNet weights by default
    model = create_model("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3


def test_create_model_builds_deconvnet_attr_archs_and_factories():
    assert same_init(lambda: create_model("zfnet-fashion"), zfnet_fashion)
    assert same_init(
        lambda: create_model("zfnet-fashion", 5, remove=["conv4"]),
        lambda: zfnet_fashion(5, remove=("conv4",)),
    )
    assert sum(p.numel() for p in create_model("zfnet").parameters()) == 62_357_608  # the paper
    assert same_init(
        lambda: create_model("deconvnet_attr.models:zfnet_fashion", num_classes=7),
        lambda: zfnet_fashion(7),
    )
    import torchvision

    assert same_init(
        lambda: create_model("torchvision.models:resnet.resnet18"),  # a dotted attribute
        torchvision.models.resnet18,
    )


def test_create_model_loads_model_files(tmp_path):
    torch.manual_seed(1)
    model = zfnet_fashion(num_classes=4, remove=("conv5",)).eval()
    save_model(model, tmp_path / "m.pt", "zfnet-fashion", epoch=2)
    x = torch.rand(2, 1, 28, 28)
    for name in (tmp_path / "m.pt", str(tmp_path / "m.pt")):
        loaded = create_model(name)
        assert loaded.removed == ("conv5",) and not loaded.training
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert create_model(tmp_path / "m.pt", num_classes=4).num_classes == 4
    with pytest.raises(ValueError, match="num_classes=3.*m.pt"):
        create_model(tmp_path / "m.pt", num_classes=3)
    with pytest.raises(ValueError, match="remove"):
        create_model(tmp_path / "m.pt", remove=["conv4"])
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        create_model("missing.pt")


def test_create_model_errors_name_the_value():
    with pytest.raises(ValueError, match="no_such_net"):
        create_model("no_such_net")
    with pytest.raises(ValueError, match="nowhere_module"):
        create_model("nowhere_module:factory")
    with pytest.raises(ValueError, match="'timm:no_such_net'|'no_such_net'"):
        create_model("timm:no_such_net")
    with pytest.raises(ValueError, match="'no_such_net'"):
        create_model("torchvision:no_such_net")
    with pytest.raises(ValueError, match="':zfnet'"):
        create_model(":zfnet")
    with pytest.raises(ValueError, match="missing_factory"):
        create_model("deconvnet_attr.models:missing_factory")
    with pytest.raises(TypeError, match="'math:pi'.*float"):
        create_model("math:pi")
    with pytest.raises(TypeError, match="'builtins:dict'.*dict.*nn.Module"):
        create_model("builtins:dict")
    with pytest.raises(TypeError, match="got int 3"):
        create_model(3)
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match=f"num_classes.*{bad!r}"):
            create_model("zfnet-fashion", num_classes=bad)
