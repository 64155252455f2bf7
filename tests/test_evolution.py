"""Fig. 4's measured statistics: filter cosine to the final checkpoint, top-image stability."""

from __future__ import annotations

import math

import pytest
import torch

from deconvnet_attr.analysis.evolution import (
    FeatureEvolution,
    filter_similarity,
    top_image_stability,
)
from deconvnet_attr.models import zfnet_fashion


def _checkpoints() -> dict[int, torch.nn.Module]:
    torch.manual_seed(0)
    final = zfnet_fashion().eval()
    early, middle = zfnet_fashion().eval(), zfnet_fashion().eval()
    middle.load_state_dict(final.state_dict())
    with torch.no_grad():
        middle.conv1.weight[0].neg_()  # filter 0 reversed: cosine -1, the other 15: 1
        middle.conv1.weight[1].mul_(3.0)  # scaled: cosine still 1
    return {5: middle, 1: early, 12: final}  # out of order on purpose


def test_filter_similarity_matches_a_hand_written_cosine():
    checkpoints = _checkpoints()
    got = filter_similarity(checkpoints, "conv1")
    final = checkpoints[12].conv1.weight.detach()
    early = checkpoints[1].conv1.weight.detach()
    cosines = []
    for c in range(16):  # written out: dot / (|a| |b|) per filter
        a, b = early[c].flatten().tolist(), final[c].flatten().tolist()
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        cosines.append(dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b)))
    want = [sum(cosines) / 16, (15 * 1 + (-1)) / 16, 1.0]  # middle: 15 filters at 1, one at -1
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-6, rtol=0)
    before = {k: v.clone() for k, v in checkpoints[5].state_dict().items()}
    filter_similarity(checkpoints, "fc6")  # linear layers too; nothing changes
    assert all(torch.equal(v, checkpoints[5].state_dict()[k]) for k, v in before.items())


def test_filter_similarity_errors_name_the_layer():
    with pytest.raises(ValueError, match="'relu1' has no weight"):
        filter_similarity(_checkpoints(), "relu1")
    with pytest.raises(ValueError, match="empty"):
        filter_similarity({}, "conv1")


def test_top_image_stability_counts_unchanged_strongest_images():
    indices = torch.tensor([[3, 3, 3, 3], [1, 2, 2, 2], [7, 8, 9, 9]])  # 3 channels, 4 epochs
    evolution = FeatureEvolution(
        epochs=torch.tensor([1, 2, 5, 12]),
        channels=torch.tensor([0, 4, 9]),
        values=torch.zeros(3, 4),
        indices=indices,
        locations=torch.zeros(3, 4, 2, dtype=torch.long),
        projections=torch.zeros(3, 4, 1, 2, 2),
    )
    # by hand: 1->2: ch0 same, ch4 changed, ch9 changed; 2->5: 0, 4 same; 5->12: all same
    torch.testing.assert_close(top_image_stability(evolution), torch.tensor([1 / 3, 2 / 3, 1.0]))
