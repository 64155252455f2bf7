"""Correspondence analysis (Sec. 5.3) against brute force and constructed cases with known Δ."""

import itertools

import matplotlib
import pytest
import torch
from torch import nn

from deconvnet_attr.analysis.correspondence import (
    FASHION_MNIST_PARTS,
    Part,
    correspondence,
    correspondence_markdown,
    correspondence_table,
    hamming_delta,
    occlude,
    part_images,
)
from deconvnet_attr.viz import plot_correspondence

matplotlib.use("Agg")


def small_cnn(seed: int = 0) -> nn.Sequential:
    """A random CNN with an identity 'pixels' layer (features = the image itself)."""
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.pixels = nn.Identity()
    model.conv1 = nn.Conv2d(1, 4, 3, padding=1)
    model.relu1 = nn.ReLU()
    model.pool = nn.MaxPool2d(2)
    model.flatten = nn.Flatten()
    model.fc = nn.Linear(4 * 6 * 6, 8)
    model.relu2 = nn.ReLU()
    model.out = nn.Linear(8, 3)
    return model.eval()


def brute_force_delta(signs: list[list[int]]) -> float:
    """Mean over ordered pairs i != j of the fraction of positions where the signs differ."""
    n, d = len(signs), len(signs[0])
    total = 0.0
    for i, j in itertools.permutations(range(n), 2):
        total += sum(a != b for a, b in zip(signs[i], signs[j], strict=True)) / d
    return total / (n * (n - 1))


def test_hamming_delta_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    signs = torch.randint(-1, 2, (3, 5, 7), generator=g)
    delta = hamming_delta(signs)
    assert delta.shape == (3,)
    for b in range(3):
        assert abs(float(delta[b]) - brute_force_delta(signs[b].tolist())) < 1e-6


def test_hamming_delta_extremes():
    same = torch.tensor([[1, 0, -1, 1]] * 4)
    assert float(hamming_delta(same)) == 0.0
    opposite = torch.tensor([[1, 1, 1], [-1, -1, -1]])
    assert float(hamming_delta(opposite)) == 1.0
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        hamming_delta(torch.ones(1, 3))


def test_hand_computed_delta_on_pixels():
    # identity features, fill 0: ε_i = the image inside the box, 0 elsewhere (D = 12 * 12).
    # Box pixels (row 0, cols 0-1): image 0 (+, +), image 1 (+, −), image 2 (−, −)
    # → H01 = 1/D, H02 = 2/D, H12 = 1/D; Δ = 2·(1 + 2 + 1)/D / (3·2) = 4 / (3·144)
    images = torch.full((3, 1, 12, 12), 0.5)
    images[:, 0, 0, :2] = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    result = correspondence(
        small_cnn(),
        images,
        (0, 0, 2, 1),
        ["pixels"],
        n_random=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert abs(float(result.part[0]) - 4 / (3 * 144)) < 1e-7


def test_consistent_feature_change_gives_zero_delta_for_different_images():
    # a non-negative kernel on positive images: ε = conv(image · box mask) has the support of the
    # box dilated by the kernel and is positive there, whatever the image content → Δ = 0
    model = small_cnn()
    with torch.no_grad():
        model.conv1.weight.uniform_(0.1, 1.0)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 1, 12, 12, generator=g) + 0.2
    result = correspondence(
        model, images, (3, 4, 7, 8), ["conv1", "pixels"], generator=torch.Generator().manual_seed(0)
    )
    assert torch.all(result.part == 0)
    assert torch.all(result.random.mean(0) > 0)  # boxes at different places disagree


def test_identical_images_give_zero_part_delta_at_every_layer():
    image = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(2)) + 0.1
    result = correspondence(
        small_cnn(),
        image.expand(5, 1, 12, 12).clone(),
        (2, 2, 6, 6),
        ["conv1", "fc", "relu2"],
        n_random=4,
        generator=torch.Generator().manual_seed(0),
    )
    assert result.layers == ("conv1", "fc", "relu2")
    assert torch.all(result.part == 0)
    assert result.random.shape == (4, 3) and result.shared.shape == (4, 3)
    assert torch.all(result.shared == 0)  # same image, same shared box: same change


def test_random_boxes_same_size_inside_and_covering_content():
    images = torch.zeros(3, 1, 12, 12)
    images[0, :, :6, :6] = 1  # content only in one quadrant per image
    images[1, :, 6:, 6:] = 1
    images[2, :, :6, 6:] = 1
    images[:, :, 5:7, 5:7] = 1  # and the common centre, the part
    result = correspondence(
        small_cnn(),
        images,
        (5, 5, 7, 7),
        ["conv1"],
        n_random=20,
        min_changed=0.75,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(result.boxes, torch.tensor([[5, 5, 7, 7]] * 3))
    for draws in (result.random_boxes, result.shared_boxes):
        assert draws.shape == (20, 3, 4)
        sizes = draws[..., 2:] - draws[..., :2]
        assert torch.all(sizes == 2)
        assert torch.all(draws[..., :2] >= 0) and torch.all(draws[..., 2:] <= 12)
        for r, i in itertools.product(range(20), range(3)):
            x0, y0, x1, y1 = draws[r, i].tolist()
            assert float(images[i, 0, y0:y1, x0:x1].ne(0).float().mean()) >= 0.75
    assert torch.all(result.shared_boxes == result.shared_boxes[:, :1])
    again = correspondence(
        small_cnn(),
        images,
        (5, 5, 7, 7),
        ["conv1"],
        n_random=20,
        min_changed=0.75,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(again.random_boxes, result.random_boxes)
    assert torch.equal(again.random, result.random)


def test_occlude_paints_half_open_xyxy_boxes():
    images = torch.ones(2, 2, 5, 6)
    out = occlude(images, torch.tensor([[1, 2, 4, 3], [0, 0, 6, 5]]), [0.0, 0.5])
    expected = images.clone()
    expected[0, 0, 2, 1:4], expected[0, 1, 2, 1:4] = 0.0, 0.5
    expected[1, 0], expected[1, 1] = 0.0, 0.5
    assert torch.equal(out, expected)
    assert torch.all(images == 1)


def test_model_is_left_unchanged_and_hooks_removed_also_on_error():
    model = small_cnn().train()
    model.fc.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(3, 1, 12, 12) + 0.1
    correspondence(model, images, (0, 0, 3, 3), [model.conv1, "relu2"], n_random=2)
    assert all(m.training for m in model.modules())
    assert not model.fc.weight.requires_grad and model.conv1.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    model.relu1, model.relu2 = model.relu2, model.relu2  # one module run twice
    with pytest.raises(RuntimeError, match="more than once"):
        correspondence(model, images, (0, 0, 3, 3), [model.relu2], n_random=2)
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize(
    ("boxes", "match"),
    [
        ((10, 10, 13, 12), r"box 0 .*\(10, 10, 13, 12\) is empty or outside the 12x12 image"),
        ((3, 3, 3, 5), r"\(3, 3, 3, 5\) is empty"),
        ((-1, 0, 2, 2), r"\(-1, 0, 2, 2\)"),
        ((0.0, 0.0, 0.5, 0.5), "integer pixel coordinates"),
        ([[0, 0, 2, 2]] * 2, r"shape \(4,\) or \(3, 4\), got \(2, 4\)"),
        ([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 3, 3]], "one size"),
    ],
)
def test_bad_boxes(boxes, match):
    with pytest.raises(ValueError, match=match):
        correspondence(small_cnn(), torch.rand(3, 1, 12, 12), boxes, ["conv1"])


def test_bad_arguments():
    model, images = small_cnn(), torch.rand(3, 1, 12, 12) + 0.1
    with pytest.raises(ValueError, match="not part of the model"):
        correspondence(model, images, (0, 0, 2, 2), [nn.ReLU()])
    with pytest.raises(ValueError, match="'conv9'"):
        correspondence(model, images, (0, 0, 2, 2), ["conv9"])
    with pytest.raises(ValueError, match=r"n >= 2, got \(1, 1, 12, 12\)"):
        correspondence(model, images[:1], (0, 0, 2, 2), ["conv1"])
    with pytest.raises(ValueError, match="baseline has 3 values"):
        correspondence(model, images, (0, 0, 2, 2), ["conv1"], baseline=[0, 0, 0])
    with pytest.raises(ValueError, match="n_random must be >= 1, got 0"):
        correspondence(model, images, (0, 0, 2, 2), ["conv1"], n_random=0)
    with pytest.raises(ValueError, match="min_changed"):
        correspondence(model, torch.zeros(3, 1, 12, 12), (0, 0, 2, 2), ["conv1"])


def labelled_set() -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of 12x12 images: class 0 with content in the top half, class 1 everywhere."""
    g = torch.Generator().manual_seed(5)
    images = torch.rand(16, 1, 12, 12, generator=g) + 0.1
    labels = torch.arange(16) % 2
    images[labels == 0, :, 6:] = 0
    return images, labels


def test_table_collects_parts_and_is_reproducible():
    images, labels = labelled_set()
    parts = (Part("top", 0, (0.25, 0.0, 0.5, 0.25)), Part("middle", 1, (0.5, 0.5, 0.75, 0.75)))
    model = small_cnn()
    table = correspondence_table(
        model,
        images,
        labels,
        ["conv1", "fc"],
        parts=parts,
        n_images=3,
        n_sets=4,
        n_random=2,
        seed=7,
    )
    assert table.part.shape == (2, 4, 2)
    assert table.random.shape == (2, 8, 2) and table.shared.shape == (2, 8, 2)
    again = correspondence_table(
        model,
        images,
        labels,
        ["conv1", "fc"],
        parts=parts,
        n_images=3,
        n_sets=4,
        n_random=2,
        seed=7,
    )
    assert torch.equal(table.part, again.part) and torch.equal(table.random, again.random)
    text = correspondence_markdown(table)
    assert text.count("\n") == 4 and "| top |" in text and "conv1 shared random" in text
    values = table.part[0, :, 0]
    assert f"{values.mean():.3f} ± {values.std(correction=0):.3f}" in text
    fig = plot_correspondence(table, images, labels)
    assert len(fig.axes) == 2 + 2  # one image per part, one bar chart per layer


def test_table_needs_images_showing_the_part():
    images, labels = labelled_set()
    bottom = Part("bottom", 0, (0.0, 0.75, 0.25, 1.0))  # class 0 is black there
    with pytest.raises(ValueError, match="'bottom' needs 3 images of class 0 showing the part"):
        correspondence_table(small_cnn(), images, labels, ["conv1"], parts=[bottom], n_images=3)


def test_part_images_by_brute_force():
    images, labels = labelled_set()
    images[4, :, :3, 3:6] = 0.0  # image 4 (class 0): the part box is fully black
    images[6, :, 1:3, 3:6] = 0.0  # image 6: 3 of 9 pixels left, below 0.5
    images[8, :, 2:3, 3:5] = 0.0  # image 8: 7 of 9 left, kept
    part = Part("top", 0, (0.25, 0.0, 0.5, 0.25))  # pixels (3, 0, 6, 3)
    expected = [
        i
        for i in range(len(images))
        if labels[i] == 0 and float((images[i, 0, 0:3, 3:6] != 0).float().mean()) >= 0.5
    ]
    assert part_images(images, labels, part).tolist() == expected
    assert 4 not in expected and 6 not in expected and 8 in expected


def test_part_pixels_round_normalised_coordinates():
    assert Part("p", 0, (0.1, 0.25, 0.5, 1.0)).pixels(28, 20) == (2, 7, 10, 28)
    assert FASHION_MNIST_PARTS[0].pixels(28, 28) == (11, 0, 17, 6)


def test_fashion_mnist_protocol_on_the_bundled_subset():
    from deconvnet_attr.data import FASHION_MNIST_CLASSES, load_eval_subset

    images, labels = load_eval_subset()
    for part in FASHION_MNIST_PARTS:
        assert FASHION_MNIST_CLASSES[part.label].split("/")[0].lower() in part.name.lower()
        x0, y0, x1, y1 = part.pixels(28, 28)
        assert (x1 - x0, y1 - y0) == (6, 6)
        assert len(part_images(images, labels, part)) >= 50, part.name  # in most of the 100
