"""Figure helpers: display scaling against hand computations, figure layout against inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deconvnet_attr.viz import (
    contrast_stretch,
    feature_block,
    image_display,
    plot_evolution,
    plot_feature_grid,
    tile_grid,
)


def test_contrast_stretch_maps_zero_to_grey_and_percentile_to_extremes():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 6, 5, generator=gen)
    x[1] = 0.0
    got = contrast_stretch(x, percentile=90)
    assert got.shape == (3, 6, 5)
    for n in (0, 2):
        values = x[n, 0].double().numpy()
        scale = np.percentile(np.abs(values), 90)
        np.testing.assert_allclose(got[n], np.clip(0.5 + 0.5 * values / scale, 0, 1))
    np.testing.assert_array_equal(got[1], 0.5)  # an all-zero projection is plain grey
    x[2, 0, 0, 0] = float("nan")  # NaN (outside the image) is ignored and stays NaN
    values = x[2, 0].double().numpy()
    scale = np.nanpercentile(np.abs(values), 90)
    want = np.clip(0.5 + 0.5 * values / scale, 0, 1)
    np.testing.assert_allclose(contrast_stretch(x, 90)[2], want)  # NaN where NaN


def test_contrast_stretch_colour_is_channels_last_with_one_scale_per_image():
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0, 0, 0], x[0, 2, 1, 1] = 4.0, -2.0
    got = contrast_stretch(x, percentile=100)
    assert got.shape == (1, 2, 2, 3)
    assert got[0, 0, 0, 0] == 1.0 and got[0, 1, 1, 2] == 0.25 and got[0, 1, 0, 1] == 0.5


def test_display_inputs_are_checked():
    with pytest.raises(ValueError, match=r"\(2, 2, 4, 4\)"):
        contrast_stretch(torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="percentile"):
        contrast_stretch(torch.zeros(1, 1, 2, 2), percentile=0)
    shown = image_display(torch.tensor([[[[-1.0, 0.25], [2.0, float("nan")]]]]))
    assert shown[0, 0, 0] == 0 and shown[0, 0, 1] == 0.25 and shown[0, 1, 0] == 1
    assert np.isnan(shown[0, 1, 1])


def test_feature_block_places_every_projection_beside_its_patch():
    gen = torch.Generator().manual_seed(1)
    projections = torch.randn(7, 3, 4, 5, generator=gen)
    projections[2, :, 0, 0] = float("nan")  # outside the image
    patches = torch.rand(7, 3, 4, 5, generator=gen)
    block = feature_block(projections, patches)
    side, h, w = 3, 4, 5  # 7 tiles: a 3x3 grid, 1-pixel gaps, then a w-pixel gap
    assert block.shape == (side * (h + 1) - 1, 2 * (side * (w + 1) - 1) + w, 4)
    stretched, shown = contrast_stretch(projections), image_display(patches)
    right = side * (w + 1) - 1 + w
    opaque = np.zeros(block.shape[:2], dtype=bool)
    for j in range(7):
        r, c = divmod(j, side)
        rows = slice(r * (h + 1), r * (h + 1) + h)
        for left, tiles in ((0, stretched), (right, shown)):
            cols = slice(left + c * (w + 1), left + c * (w + 1) + w)
            inside = ~np.isnan(tiles[j]).any(axis=-1)
            np.testing.assert_allclose(block[rows, cols, :3][inside], tiles[j][inside])
            assert np.array_equal(block[rows, cols, 3], inside)
            opaque[rows, cols] = inside
    assert not block[..., 3][~opaque].any()  # everything else is transparent
    assert block[0, 2 * (w + 1), 3] == 0  # the NaN pixel of projection 2


def test_feature_grid_has_a_titled_block_per_channel():
    gen = torch.Generator().manual_seed(2)
    projections = [torch.randn(9, 1, 5, 5, generator=gen) for _ in range(3)]
    patches = [torch.rand(9, 1, 5, 5, generator=gen) for _ in range(3)]
    fig = plot_feature_grid(projections, patches, labels=["a", "b", "c"], blocks_per_row=2)
    shown = [ax for ax in fig.get_axes() if ax.images]
    assert [ax.get_title() for ax in shown] == ["a", "b", "c"]
    # drawn as 8 bits: round(255 * block)
    expected = np.round(feature_block(projections[1], patches[1]) * 255).astype(np.uint8)
    np.testing.assert_array_equal(shown[1].images[0].get_array(), expected)
    with pytest.raises(ValueError, match="2 projections but 3 patches"):
        plot_feature_grid([projections[0][:2]], [patches[0][:3]])
    with pytest.raises(ValueError, match="1 labels for 3 channels"):
        plot_feature_grid(projections, patches, labels=["a"])


def test_evolution_grid_has_a_column_per_epoch():
    projections = torch.randn(2, 3, 1, 4, 4)
    fig = plot_evolution(projections, [1, 5, 20], labels=["ch 0", "ch 7"])
    axes = fig.get_axes()
    assert len(axes) == 6
    assert [ax.get_title() for ax in axes[:3]] == ["epoch 1", "epoch 5", "epoch 20"]
    np.testing.assert_allclose(
        axes[4].images[0].get_array(), contrast_stretch(projections[1, 1:2])[0]
    )
    with pytest.raises(ValueError, match=r"2 epochs"):
        plot_evolution(projections, [1, 2])


def test_tile_grid_places_tiles_row_major_with_white_gaps():
    tiles = np.stack([np.full((2, 3), v / 10) for v in range(5)])  # five 2x3 tiles
    grid = tile_grid(tiles)
    # by hand: ceil(sqrt(5)) = 3 columns, 2 rows of 2x3 tiles, 1-pixel gaps -> (5, 11)
    assert grid.shape == (2 * 2 + 1, 3 * 3 + 2)
    for j in range(5):
        r, c = divmod(j, 3)
        assert (grid[r * 3 : r * 3 + 2, c * 4 : c * 4 + 3] == j / 10).all()
    assert (grid[2] == 1.0).all() and (grid[3:, 8:] == 1.0).all()  # gap row, unused cell
    with pytest.raises(ValueError, match=r"\(0, 2, 3\)"):
        tile_grid(np.zeros((0, 2, 3)))


def test_occlusion_figure_tiles_projections_and_fixes_the_probability_scale():
    from deconvnet_attr.occlusion import OcclusionMaps
    from deconvnet_attr.viz import plot_occlusion_maps

    maps = OcclusionMaps(
        feature=torch.rand(3, 3),
        probability=torch.full((3, 3), 0.9995),  # nearly constant: auto-scaling would stretch it
        label=torch.zeros(3, 3, dtype=torch.long),
        layer="relu5",
        channel=2,
        target=0,
        rows=torch.tensor([0, 4, 8]),
        cols=torch.tensor([0, 4, 8]),
        window=(8, 8),
        clean_feature=1.0,
        clean_probability=1.0,
        clean_label=0,
    )
    fig = plot_occlusion_maps(torch.rand(1, 16, 16), maps, projection=torch.randn(5, 1, 16, 16))
    panel_c, panel_d = fig.axes[2].images[0], fig.axes[3].images[0]
    assert panel_c.get_array().shape == (2 * 17 - 1, 3 * 17 - 1)  # 5 tiles in a 3-column grid
    assert panel_d.get_clim() == (0.0, 1.0)


def test_feature_block_paints_outside_pixels_opaque_in_their_own_colour():
    projections = torch.randn(4, 1, 3, 3)
    projections[1, 0, 0, :] = float("nan")  # outside the image: the top row of tile 1
    patches = torch.rand(4, 1, 3, 3)
    patches[1, 0, 0, :] = float("nan")
    block = feature_block(projections, patches, outside=(1.0, 0.5, 0.0))
    w = 3  # 2x2 tiles of 3x3; tile 1 starts at column w + 1, the patches at 2 * (w + 1) - 1 + w
    np.testing.assert_array_equal(block[0, w + 1 : 2 * w + 1], [[1.0, 0.5, 0.0, 1.0]] * 3)
    right = 2 * (w + 1) - 1 + w + (w + 1)
    np.testing.assert_array_equal(block[0, right : right + w], [[1.0, 0.5, 0.0, 1.0]] * 3)
    assert block[1, w + 1, 3] == 1.0 and block[w, 0, 3] == 0.0  # inside opaque, gap transparent
    fig = plot_feature_grid([projections], [patches], outside="#ff8000")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["outside the image (padding)"]
