"""Invariance curves (Fig. 5) against hand computations: shifted / rotated tensors built with
torch.roll and torch.rot90, a direct softmax, and the model's untouched state."""

import math

import matplotlib
import pytest
import torch
from torch import nn

from deconvnet_attr.analysis.features import flat_layer_outputs
from deconvnet_attr.analysis.invariance import invariance_curves, transform_images
from deconvnet_attr.viz import plot_invariance

matplotlib.use("Agg")


def small_cnn(seed: int = 0, batchnorm: bool = False) -> nn.Sequential:
    """A random CNN with an identity 'pixels' layer, so pixel-space distances are exposed."""
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.pixels = nn.Identity()
    model.conv1 = nn.Conv2d(1, 4, 3, padding=1)
    model.bn = nn.BatchNorm2d(4) if batchnorm else nn.Identity()
    model.relu1 = nn.ReLU()
    model.pool = nn.MaxPool2d(2)
    model.flatten = nn.Flatten()
    model.drop = nn.Dropout(0.5)
    model.fc = nn.Linear(4 * 10 * 10, 5)
    return model.eval()


def centred_images(n: int = 3, seed: int = 1) -> torch.Tensor:
    """(n, 1, 20, 20) images: random content in rows/cols 5..14, zero border of 5 pixels."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 20, 20)
    images[:, :, 5:15, 5:15] = torch.rand(n, 1, 10, 10, generator=g) + 0.1
    return images


def test_identity_parameters_give_zero_distance_and_direct_softmax():
    model, images = small_cnn(), centred_images()
    labels = torch.tensor([0, 3, 4])
    result = invariance_curves(
        model,
        images,
        labels,
        [model.conv1, "fc"],
        transforms={"translation": [0], "scale": [1.0], "rotation": [0, 360]},
    )
    expected = model(images).softmax(1)[torch.arange(3), labels]
    for curve in result.curves.values():
        for layer in ("conv1", "fc"):
            assert torch.all(curve.distances[layer] == 0)
        for column in curve.probability.T:
            torch.testing.assert_close(column, expected)


@pytest.mark.parametrize("shift", [-3, 2, 4])
def test_translation_matches_rolled_features(shift):
    # zero borders wider than the shift: the conv (padding 1) commutes with the shift, so the
    # conv1 output of the shifted image is the rolled conv1 output of the original
    model, images = small_cnn(), centred_images()
    labels = torch.tensor([1, 2, 0])
    result = invariance_curves(
        model, images, labels, ["pixels", model.conv1], transforms={"translation": [shift]}
    )
    curve = result.curves["translation"]
    pixels = (images - images.roll(shift, dims=2)).flatten(1).norm(dim=1)
    with torch.no_grad():
        conv = model.conv1(images)
    features = (conv - conv.roll(shift, dims=2)).flatten(1).norm(dim=1)
    torch.testing.assert_close(curve.distances["pixels"][:, 0], pixels, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(curve.distances["conv1"][:, 0], features, atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        direct = model(images.roll(shift, dims=2)).softmax(1)[torch.arange(3), labels]
    torch.testing.assert_close(curve.probability[:, 0], direct, atol=1e-5, rtol=1e-4)


def test_rotation_by_right_angles_matches_rot90_and_direct_softmax():
    model = small_cnn()
    images = torch.rand(2, 1, 20, 20, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([2, 4])
    result = invariance_curves(
        model, images, labels, ["pixels"], transforms={"rotation": [90, 180, 270]}
    )
    curve = result.curves["rotation"]
    for t, k in enumerate((1, 2, 3)):  # counter-clockwise: torch.rot90 with k > 0 on (H, W)
        rotated = torch.rot90(images, k, dims=(2, 3))
        expected = (images - rotated).flatten(1).norm(dim=1)
        torch.testing.assert_close(curve.distances["pixels"][:, t], expected, atol=1e-4, rtol=1e-5)
        with torch.no_grad():
            direct = model(rotated).softmax(1)[torch.arange(2), labels]
        torch.testing.assert_close(curve.probability[:, t], direct, atol=1e-5, rtol=1e-4)


def test_fill_paints_uncovered_pixels():
    # a black image moved by 3 rows uncovers 3 rows painted with the fill: distance 0.5·√(3·20)
    model, images = small_cnn(), torch.zeros(1, 1, 20, 20)
    result = invariance_curves(
        model, images, torch.tensor([0]), ["pixels"], transforms={"translation": [3, -3]}, fill=0.5
    )
    expected = torch.full((1, 2), 0.5 * math.sqrt(3 * 20))
    torch.testing.assert_close(
        result.curves["translation"].distances["pixels"], expected, atol=1e-4, rtol=1e-5
    )


def test_zooming_into_a_constant_image_changes_nothing_and_shrinking_uncovers_the_border():
    model, images = small_cnn(), torch.full((1, 1, 20, 20), 0.7)
    result = invariance_curves(
        model, images, torch.tensor([0]), ["pixels"], transforms={"scale": [1.5, 2.0, 0.5]}
    )
    distance = result.curves["scale"].distances["pixels"][0]
    assert distance[:2].abs().max() < 1e-4
    # half size: the 10x10 centre keeps the value, the rest (300 pixels) is black, give or take
    # the one-pixel bilinear rim
    assert abs(float(distance[2]) - 0.7 * math.sqrt(300)) < 0.7 * math.sqrt(300) * 0.15


def test_default_grid_and_result_shapes():
    model, images = small_cnn(), centred_images(2)
    result = invariance_curves(model, images, torch.tensor([0, 1]), [model.relu1, model.fc])
    assert result.layers == ("relu1", "fc")
    assert list(result.curves) == ["translation", "scale", "rotation"]
    assert result.curves["translation"].values.tolist() == list(range(-5, 6))  # 0.27 * 20 -> 5
    for curve in result.curves.values():
        t = len(curve.values)
        assert curve.probability.shape == (2, t)
        assert all(d.shape == (2, t) for d in curve.distances.values())


def test_model_is_left_unchanged_and_hooks_removed():
    model = small_cnn(batchnorm=True).train()
    model.fc.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    invariance_curves(
        model,
        centred_images(),
        torch.tensor([0, 1, 2]),
        ["bn", model.fc],
        transforms={"rotation": [0, 45]},
    )
    assert all(m.training for m in model.modules())
    assert not model.fc.weight.requires_grad and model.conv1.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # BatchNorm running stats restored


def test_hooks_removed_when_the_forward_raises():
    model = small_cnn()
    relu = nn.ReLU()
    model.relu1, model.extra = relu, relu  # one module run twice: ambiguous features
    with pytest.raises(RuntimeError, match="more than once"):
        flat_layer_outputs(model, centred_images(), [relu])
    assert all(not m._forward_hooks for m in model.modules())


def test_flat_layer_outputs_match_direct_calls():
    model, images = small_cnn(), centred_images(5)
    feats, out = flat_layer_outputs(model, images, ["conv1"], batch_size=2)
    with torch.no_grad():
        torch.testing.assert_close(feats["conv1"], model.conv1(images).flatten(1))
        torch.testing.assert_close(out, model(images))


def test_bad_inputs_name_the_offending_value():
    model, images, labels = small_cnn(), centred_images(2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="not part of the model"):
        invariance_curves(model, images, labels, [nn.Conv2d(1, 1, 1)])
    with pytest.raises(ValueError, match="'nope'"):
        invariance_curves(model, images, labels, ["nope"])
    with pytest.raises(ValueError, match="more than once"):
        invariance_curves(model, images, labels, ["conv1", model.conv1])
    with pytest.raises(ValueError, match=r"\(1, 20, 20\)"):
        invariance_curves(model, images[0], labels, ["conv1"])
    with pytest.raises(ValueError, match="labels"):
        invariance_curves(model, images, labels.float(), ["conv1"])
    with pytest.raises(ValueError, match="'shear'"):
        invariance_curves(model, images, labels, ["conv1"], transforms={"shear": [1.0]})
    with pytest.raises(ValueError, match="no parameter values"):
        invariance_curves(model, images, labels, ["conv1"], transforms={"scale": []})
    with pytest.raises(ValueError, match="must be > 0, got -1"):
        invariance_curves(model, images, labels, ["conv1"], transforms={"scale": [-1]})
    with pytest.raises(ValueError, match="fill has 2 values"):
        invariance_curves(model, images, labels, ["conv1"], fill=[0.0, 1.0])
    with pytest.raises(ValueError, match="labels 0..7"):
        invariance_curves(
            model, images, torch.tensor([0, 7]), ["conv1"], transforms={"rotation": [0]}
        )


def test_transform_images_per_channel_fill():
    images = torch.zeros(1, 3, 8, 8)
    moved = transform_images(images, "translation", 2, [0.1, 0.2, 0.3])
    torch.testing.assert_close(moved[0, :, 0, 0], torch.tensor([0.1, 0.2, 0.3]))
    assert torch.all(moved[0, :, 2:] == 0)


def test_plot_invariance_layout():
    model, images = small_cnn(), centred_images(2)
    result = invariance_curves(
        model,
        images,
        torch.tensor([0, 1]),
        ["conv1", "fc"],
        transforms={"translation": [-1, 0, 1], "rotation": [0, 90]},
    )
    fig = plot_invariance(result, images, class_names=["a", "b", "c", "d", "e"])
    assert len(fig.axes) == 2 * 4  # columns: transforms; rows: strip, 2 layers, probability
    fig_no_strip = plot_invariance(result)
    assert len(fig_no_strip.axes) == 2 * 3


def test_first_of_classes_picks_the_first_image_of_each_class():
    from deconvnet_attr.analysis.invariance import first_of_classes

    labels = torch.tensor([3, 1, 1, 0, 3, 2, 4, 0])
    assert first_of_classes(labels, [0, 3, 9]).tolist() == [3, 0]  # 9 is absent
    # spread over the classes present (0..4): linspace(0, 4, 3) -> classes 0, 2, 4
    assert first_of_classes(labels, count=3).tolist() == [3, 5, 6]
    assert first_of_classes(labels, count=9).tolist() == [3, 1, 5, 0, 6]
    with pytest.raises(ValueError, match="count"):
        first_of_classes(labels, count=0)


def test_plot_invariance_can_show_a_strip_per_image():
    model, images = small_cnn(), centred_images(2)
    result = invariance_curves(
        model, images, torch.tensor([0, 1]), ["conv1", "fc"], transforms={"rotation": [0, 90]}
    )
    fig = plot_invariance(result, images, class_names=["a", "b"], all_strips=True)
    assert len(fig.axes) == 2 + 3  # one column: 2 strips, 2 layers, probability
    assert [ax.get_ylabel() for ax in fig.axes[:2]] == ["a", "b"]


def _unbatched_curves(model, images, labels, layer, transform, values):
    """The straightforward computation: every transformed copy at once, one forward each for the
    originals and the copies, features read with a plain forward hook."""
    captured = []
    handle = getattr(model, layer).register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        model(images)
        moved = torch.cat([transform_images(images, transform, float(v), [0.0]) for v in values])
        logits = model(moved)
    handle.remove()
    reference, features = captured[0].flatten(1), captured[1].flatten(1)
    t, n = len(values), len(images)
    distance = (features.view(t, n, -1) - reference).norm(dim=2).T
    probability = logits.softmax(1).view(t, n, -1)[:, torch.arange(n), labels].T
    return distance, probability


@pytest.mark.parametrize("batch_size", [1, 4, 7, 64])
def test_batched_curves_equal_the_unbatched_computation_with_bounded_forwards(batch_size):
    model, images = small_cnn(), centred_images(5)
    labels = torch.tensor([0, 1, 2, 3, 4])
    grids = {"translation": [-2, 0, 1, 3], "scale": [0.75, 1.0, 1.25], "rotation": [0, 30, 90]}
    sizes = []
    handle = model.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
    result = invariance_curves(
        model, images, labels, ["conv1", "fc"], transforms=grids, batch_size=batch_size
    )
    handle.remove()
    assert max(sizes) <= batch_size  # each forward holds at most one batch of copies
    assert sum(sizes) == 5 + 5 * sum(len(v) for v in grids.values())
    for name, values in grids.items():
        curve = result.curves[name]
        for layer in ("conv1", "fc"):
            distance, probability = _unbatched_curves(model, images, labels, layer, name, values)
            torch.testing.assert_close(curve.distances[layer], distance, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(curve.probability, probability)
