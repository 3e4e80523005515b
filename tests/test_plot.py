"""Pictures: the training curve and the first layer's filter grid are real PNG files."""

import numpy as np
import pytest
from PIL import Image

from convnet.layers import Conv2d, Linear
from convnet.models import Sequential
from convnet.plot import filter_grid, plot_filters, plot_history


def test_filter_grid_tiles_every_filter_scaled_to_unit_range():
    w = np.random.default_rng(0).standard_normal((10, 3, 5, 5))
    grid = filter_grid(w)
    assert grid.shape == (3 * 6 + 1, 4 * 6 + 1, 3)  # 10 filters: 3 rows of 4, 1-pixel gaps
    tile = grid[1:6, 1:6]
    assert tile.min() == 0 and tile.max() == 1
    scaled = (w[0] - w[0].min()) / (w[0].max() - w[0].min())
    assert np.allclose(tile, scaled.transpose(1, 2, 0))
    assert filter_grid(np.ones((4, 1, 3, 3))).shape == (9, 9)  # gray, constant filters


def test_pictures_are_pngs_of_the_expected_size(tmp_path):
    history = [{"epoch": e, "loss": 1 / e, "acc": 1 - 1 / (e + 1), "val_loss": 1.2 / e,
                "val_acc": 1 - 1.2 / (e + 1)} for e in range(1, 6)]
    curve = plot_history(history, tmp_path / "curve.png")
    with Image.open(curve) as img:
        assert img.format == "PNG" and img.size == (900, 350)
    model = Sequential(Conv2d(3, 96, 11, stride=4), Linear(4, 2))
    filters = plot_filters(model, tmp_path / "filters.png", scale=4)
    with Image.open(filters) as img:  # 96 filters: 10x10 grid of 11x11 tiles, x4 pixels
        assert img.format == "PNG" and img.size == (121 * 4, 121 * 4)
    with pytest.raises(ValueError, match="no CONV layer"):
        plot_filters(Sequential(Linear(4, 2)), tmp_path / "none.png")
