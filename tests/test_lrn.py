"""ZFNet's contrast normalisation against Krizhevsky et al.'s formula, written out by hand."""

from __future__ import annotations

import torch

from deconvnet_attr.data import load_eval_subset
from deconvnet_attr.models import load_reference, zfnet, zfnet_fashion


def krizhevsky_lrn(a: torch.Tensor, alpha: float, k: float = 2.0, beta: float = 0.75, n: int = 5):
    """b_c = a_c / (k + alpha * sum_{c' = max(0, c - n//2)}^{min(C-1, c + n//2)} a_c'^2) ** beta."""
    channels = a.shape[1]
    out = torch.empty_like(a)
    for c in range(channels):
        lo, hi = max(0, c - n // 2), min(channels - 1, c + n // 2)
        out[:, c] = a[:, c] / (k + alpha * (a[:, lo : hi + 1] ** 2).sum(1)) ** beta
    return out


def test_imagenet_zfnet_normalises_with_krizhevskys_alpha():
    model = zfnet(num_classes=10)
    a = 30 * torch.rand(2, 12, 5, 5, dtype=torch.float64)
    for layer in (model.norm1, model.norm2):
        expected = krizhevsky_lrn(a, alpha=1e-4)
        torch.testing.assert_close(layer(a), expected)
        # and not PyTorch's alpha / size reading of the same constant
        assert not torch.allclose(layer(a), krizhevsky_lrn(a, alpha=1e-4 / 5))


def test_fashion_models_keep_their_trained_normalisation():
    for model in (zfnet_fashion(), load_reference()):
        assert model.norm1.alpha == model.norm2.alpha == 1e-4  # bit-identical to training
    a = torch.rand(3, 16, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(zfnet_fashion().norm1(a), krizhevsky_lrn(a, alpha=2e-5))


def test_reference_normalisation_is_nearly_the_constant_2_to_minus_0_75():
    model = load_reference()
    x, _ = load_eval_subset()
    with torch.no_grad():
        h = model.pool1(model.relu1(model.conv1(model.normalize(x[:200]))))
        ratio = model.norm1(h)[h > 0] / h[h > 0]
    assert abs(2**-0.75 - 0.5946) < 5e-5
    assert ratio.min() > 0.5946 * 0.99 and ratio.max() <= 2**-0.75 + 1e-6
