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


def test_feature_reuse_averages_absolute_weights_per_source():
    from convnet.layers import BatchNorm2d, ReLU
    from convnet.models import DenseBlock
    from convnet.plot import feature_reuse

    k0, growth = 3, 2
    block = DenseBlock({f"denselayer{i + 1}": Sequential({
        "norm1": BatchNorm2d(k0 + i * growth), "relu1": ReLU(),
        "conv1": Conv2d(k0 + i * growth, growth, 3, padding=1)}) for i in range(3)})
    for i, layer in enumerate(block):
        w = layer["conv1"].params["weight"]
        for s in range(i + 1):  # give source s of layer i the weight -(10 i + s)
            lo = 0 if s == 0 else k0 + growth * (s - 1)
            hi = k0 if s == 0 else k0 + growth * s
            w[:, lo:hi] = -(10 * i + s)
    [(name, matrix)] = feature_reuse(Sequential({"block": block}))
    assert name == "block"
    expected = np.array([[0, np.nan, np.nan], [10, 11, np.nan], [20, 21, 22]])
    assert np.array_equal(np.isnan(matrix), np.isnan(expected))
    assert np.allclose(matrix[~np.isnan(matrix)], expected[~np.isnan(expected)])


def test_show_commands_write_pictures(tmp_path):
    from convnet.cli import main
    from convnet.data import load_dataset
    from convnet.io import save_model
    from convnet.models import from_notation

    model = from_notation("INPUT 8x8x1 -> CONV 4 -> RELU -> POOL -> CONV 6 -> RELU -> FC 10",
                          rng=np.random.default_rng(0))
    path = save_model(model, tmp_path / "m", mean=[0.5], std=[0.25])
    x, _ = load_dataset("digits").test
    Image.fromarray((x[0, 0] * 15).astype(np.uint8)).save(tmp_path / "d.png")
    assert main(["show", "filters", str(path), "--out", str(tmp_path / "f.png")]) == 0
    assert main(["show", "activations", str(path), str(tmp_path / "d.png"),
                 "--out", str(tmp_path / "a.png")]) == 0
    assert main(["show", "reuse", "densenet_bc_100", "--out", str(tmp_path / "r.png")]) == 0
    for name in ("f.png", "a.png", "r.png"):
        with Image.open(tmp_path / name) as img:
            assert img.format == "PNG" and min(img.size) > 50
    with Image.open(tmp_path / "a.png") as img:  # 5 volume stages, up to 6 maps each
        assert img.size == (int(6 * 0.4 * 2 * 100), int(5 * 0.45 * 2 * 100))
    assert main(["show", "reuse", str(path)]) == 1  # not a DenseNet: a clear error


def test_maps_of_one_value_share_the_volumes_scale():
    """After global average pooling each map is one value: scaled to its own min..max,
    every one was drawn dark. They share the volume's range instead, in the report's
    grid and in `convnet show activations`."""
    import base64
    import io

    import matplotlib
    from matplotlib import pyplot

    from convnet.models.notation import from_notation
    from convnet.plot import plot_activations
    from convnet.report.pictures import activation_grid

    values = np.linspace(-1.0, 2.0, 16).reshape(16, 1, 1)
    uri, geometry = activation_grid(values, 10_000)
    grid = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    pad = geometry["pad"]
    tiles = [grid[pad + r * 2, pad + c * 2] for r in range(geometry["height"] // 2)
             for c in range(geometry["cols"])][:16]
    assert tiles == sorted(tiles) and tiles[0] == 0 and tiles[-1] == 254
    wide = np.arange(32, dtype=np.float64).reshape(2, 4, 4)     # larger maps: their own
    grid = np.asarray(Image.open(io.BytesIO(base64.b64decode(
        activation_grid(wide, 10_000)[0].split(",", 1)[1]))))
    assert grid[grid != 255].max() == 254 and (grid == 0).sum() == 2     # 255: the gaps

    net = from_notation("INPUT 4x4x1 -> CONV 8 -> GAP -> FC 2", rng=np.random.default_rng(0))
    drawn = []
    real = matplotlib.axes.Axes.imshow
    def spy(ax, data, **kwargs):
        drawn.append((np.asarray(data).shape, kwargs.get("vmin"), kwargs.get("vmax")))
        return real(ax, data, **kwargs)
    matplotlib.axes.Axes.imshow = spy
    try:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            plot_activations(net, np.random.default_rng(1).standard_normal((1, 1, 4, 4)),
                             f"{tmp}/a.png")
    finally:
        matplotlib.axes.Axes.imshow = real
        pyplot.close("all")
    gap = [d for d in drawn if d[0] == (1, 1)]
    assert len(gap) == 8 and len({(lo, hi) for _, lo, hi in gap}) == 1
    assert gap[0][1] is not None and gap[0][1] < gap[0][2]
    assert all(lo is None for shape, lo, _ in drawn if shape != (1, 1))


def history(epochs):
    return [{"epoch": e, "loss": 1 / e, "acc": 1 - 1 / (e + 1), "val_loss": 1.2 / e,
             "val_acc": 1 - 1.2 / (e + 1)} for e in range(1, epochs + 1)]


def test_a_label_smoothed_training_loss_is_labelled_as_such():
    """With label smoothing the training loss is cross-entropy against smoothed targets,
    not the validation loss's plain one: its legend says so."""
    from convnet.plot import history_figure

    def legend(fig):
        return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]

    assert legend(history_figure(history(3), label_smoothing=0.1)) == \
        ["train (label smoothing 0.1)", "validation"]
    assert legend(history_figure(history(3))) == ["train", "validation"]


@pytest.mark.parametrize("epochs", [1, 3, 12])
def test_epoch_axes_have_whole_number_ticks(epochs):
    """A 1-epoch run had ticks 0.96, 0.98, ... on its epoch axes."""
    from convnet.plot import history_figure

    fig = history_figure(history(epochs))
    fig.canvas.draw()
    for ax in fig.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(t == int(t) for t in ticks), ticks


def test_a_long_title_is_kept_above_the_filter_grid(tmp_path):
    """A title that wraps to several lines had 0.4 inches and covered the grid: the
    space above the grid now fits its lines, and the grid is drawn as without a title."""
    from convnet.plot import filters_figure

    model = Sequential(Conv2d(3, 96, 11, stride=4), Linear(4, 2))
    title = "INPUT 224x224x3 -> " + " -> ".join(["[CONV 64 -> RELU]*2 -> POOL"] * 12) + \
        ": untrained (random initial weights, nothing learned)"
    plot_filters(model, tmp_path / "plain.png", scale=4)
    plot_filters(model, tmp_path / "titled.png", scale=4, title=title)
    plain = np.asarray(Image.open(tmp_path / "plain.png").convert("RGB"))
    titled = np.asarray(Image.open(tmp_path / "titled.png").convert("RGB"))
    assert plain.shape[1] == titled.shape[1] and titled.shape[0] > plain.shape[0] + 50
    assert np.array_equal(titled[-plain.shape[0]:], plain)   # no title pixel on the grid
    fig = filters_figure(model, scale=4, title=title)
    renderer = fig.canvas.get_renderer()
    text = fig.get_suptitle()
    assert text.count("\n") >= 3                               # wrapped to several lines
    box = fig._suptitle.get_window_extent(renderer)
    grid = fig.axes[0].get_window_extent(renderer)
    assert box.y0 >= grid.y1 and box.y1 <= fig.bbox.y1
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1               # no line cut at the sides


def test_filters_of_a_layer_after_a_locally_connected_one_say_which_layer():
    """The first weighted layer is LocallyConnected2d (no filter grid): the CONV layer
    after it is drawn, and the picture names it and says it is not the first layer."""
    from convnet.models import from_notation
    from convnet.plot import filters_figure, first_filters

    net = from_notation("INPUT 12x12x1 -> LC 4 -> RELU -> CONV 6 -> RELU -> FC 10",
                        rng=np.random.default_rng(0))
    name, weight, before = first_filters(net)
    assert (name, weight.shape, before) == ("2", (6, 4, 3, 3), [("0", "LocallyConnected2d")])
    title = " ".join(filters_figure(net).get_suptitle().split())
    assert ("the filters of layer 2, not of the first layer: the first weighted layer, 0 "
            "(LocallyConnected2d), is not a CONV layer") in title
    plain = Sequential(Conv2d(1, 4, 3), Linear(4, 2))
    assert first_filters(plain)[2] == [] and filters_figure(plain).get_suptitle() == ""


def test_show_activations_opens_a_features_stage_as_the_report_does():
    """LeNet-5's children are features, flatten, classifier: `show activations` had
    drawn one row (features' output); it now draws the stages the report draws."""
    from convnet.plot import stage_activations, stages
    from convnet.report import build
    from convnet.zoo import get_model

    assert build._stages is stages                       # one rule, not two
    net = get_model("lenet5")
    x = np.random.default_rng(0).standard_normal((1, *net.input_shape))
    names = [name for name, *_ in stage_activations(net, x)]
    assert names == ["features.0", "features.1", "features.2", "features.3", "features.4",
                     "features.5"]


def test_show_activations_keeps_only_what_it_draws():
    """Every stage's whole volume had been kept: a 4096x4096 image through 12 CONV
    layers took 7.6 GB, where inference needs 576 MB."""
    from convnet.models import from_notation
    from convnet.plot import MAP_SIDE, stage_activations
    net = from_notation("INPUT 1000x600x1 -> CONV 40 -> RELU -> CONV 40 -> GAP -> FC 2",
                        rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((1, 1, 600, 1000)).astype(np.float32)
    maps = stage_activations(net, x, max_maps=8)
    for name, act, shape in maps:
        assert act.shape[0] == min(8, shape[0]) and max(act.shape[1:]) <= MAP_SIDE, name
    full = net[0].infer(x)[0]
    np.testing.assert_array_equal(maps[0][1], full[:8, ::3, ::4])
    assert maps[0][2] == (40, 600, 1000)


def test_filter_grid_draws_weights_that_are_not_finite_black_without_a_warning():
    import warnings

    w = np.random.default_rng(0).standard_normal((3, 1, 3, 3))
    w[0, 0, 0, 0], w[1, 0, 1, 1], w[2] = np.nan, np.inf, np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grid = filter_grid(w)
    assert np.isfinite(grid).all() and grid.min() == 0 and grid.max() == 1
    assert grid[1, 1] == 0 and grid[1 + 4 + 1, 1 + 1] == 0          # NaN, inf: black
    assert (grid[1:4, 9:12] == 0).all()                              # all NaN: black


def test_pictures_leave_the_users_matplotlib_backend_alone(tmp_path):
    """Every picture had called matplotlib.use("Agg"), switching a notebook's backend
    for the whole process; they now draw on their own Agg canvas."""
    import matplotlib

    from convnet.layers import BatchNorm2d, ReLU
    from convnet.models import DenseBlock
    from convnet.plot import plot_activations, plot_reuse

    block = DenseBlock({f"denselayer{i + 1}": Sequential({
        "norm1": BatchNorm2d(3 + i * 2), "relu1": ReLU(),
        "conv1": Conv2d(3 + i * 2, 2, 3, padding=1)}) for i in range(2)})
    net = Sequential({"conv": Conv2d(1, 3, 3, padding=1), "block": block})
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        plot_history(history(2), tmp_path / "h.png")
        plot_filters(net, tmp_path / "f.png", title="a title")
        plot_activations(net, np.ones((1, 1, 6, 6)), tmp_path / "a.png")
        plot_reuse(net, tmp_path / "r.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    for name in ("h", "f", "a", "r"):
        with Image.open(tmp_path / f"{name}.png") as img:
            assert img.format == "PNG"


def test_pictures_are_written_atomically_and_replace_a_link(tmp_path):
    """savefig had written straight onto the final name: a kill left half a PNG, and a
    resumed run wrote its curve through a link planted at curve.png."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "curve.png").symlink_to(victim)
    history = [{"epoch": e, "loss": 1.0 / e, "acc": 0.5, "val_loss": 1.1 / e,
                "val_acc": 0.4} for e in (1, 2)]
    plot_history(history, tmp_path / "curve.png")
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "curve.png").is_symlink()
    assert Image.open(tmp_path / "curve.png").format == "PNG"
    plot_history(history, tmp_path / "curve.svg")
    assert (tmp_path / "curve.svg").read_text().lstrip().startswith("<?xml")
    assert plot_history(history, tmp_path / "plain") == tmp_path / "plain.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png", "curve.svg",
                                                          "plain.png", "victim.txt"]


def test_layer_names_with_dollar_signs_are_drawn_as_given(tmp_path):
    """matplotlib reads $...$ as math: a model file's layer named "$\\frac{a}{b$" had
    ended `show activations` in a ParseSyntaxException naming neither file nor layer."""
    from convnet.layers import Flatten, ReLU
    from convnet.models.containers import Sequential as Seq
    from convnet.plot import plot_activations

    model = Seq({"$\\frac{a}{b$": Conv2d(1, 2, 3), "$x$": ReLU(), "flat": Flatten(),
                 "fc": Linear(2 * 6 * 6, 3)})
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8))
    plot_activations(model, x, tmp_path / "a.png", title="$y$ and $\\frac{")
    with Image.open(tmp_path / "a.png") as img:
        assert img.format == "PNG"


def test_show_activations_says_where_a_stage_has_more_maps_than_it_draws(tmp_path,
                                                                          monkeypatch):
    """`convnet show activations` draws up to 32 maps a stage: a stage of 64 had been cut
    to 32 without a word."""
    pytest.importorskip("matplotlib")
    import matplotlib

    from convnet.models.notation import from_notation
    from convnet.plot import plot_activations
    titles = []
    real = matplotlib.axes.Axes.set_title

    def spy(ax, label, *args, **kwargs):
        titles.append(label)
        return real(ax, label, *args, **kwargs)
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", spy)
    net = from_notation("INPUT 4x4x1 -> CONV 64 -> RELU -> CONV 8 -> FC 2",
                        rng=np.random.default_rng(0))
    plot_activations(net, np.ones((1, 1, 4, 4)), tmp_path / "a.png")
    assert any(t.endswith("4x4x64 (its first 32 maps)") for t in titles), titles
    assert any(t.endswith("4x4x8") for t in titles), titles


def test_a_title_over_few_activation_maps_is_wrapped_within_the_picture(tmp_path,
                                                                         monkeypatch):
    """`convnet show activations` on a net of 2 channels made a 160-pixel-wide picture
    whose title (with its "untrained" warning) was cut at both ends."""
    pytest.importorskip("matplotlib")
    import convnet.plot as plot
    from convnet.models.notation import from_notation
    figures = []
    real = plot._save

    def kept(fig, path):
        figures.append(fig)
        return real(fig, path)
    monkeypatch.setattr(plot, "_save", kept)
    text = "INPUT 8x8x1 -> CONV 2 -> RELU -> POOL -> CONV 2 -> FC 10"
    net = from_notation(text, rng=np.random.default_rng(0))
    title = f"{text}: untrained (random initial weights, nothing learned)"
    plot.plot_activations(net, np.ones((1, 1, 8, 8)), tmp_path / "a.png", title=title)
    fig = figures[0]
    renderer = fig.canvas.get_renderer()
    box = fig._suptitle.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
    assert " ".join(fig.get_suptitle().split()) == title            # all of it, wrapped
    top_row = max(ax.get_window_extent(renderer).y1 for ax in fig.axes)
    assert box.y0 >= top_row                                         # above the maps


def test_show_activations_without_an_image_says_so_before_anything_else(tmp_path,
                                                                        monkeypatch, capsys):
    """With activations.png already there, a missing IMAGE had been reported as the file
    being in the way."""
    from convnet.cli import main
    monkeypatch.chdir(tmp_path)
    (tmp_path / "activations.png").write_bytes(b"an earlier picture")
    assert main(["show", "activations", "lenet5"]) == 1
    err = capsys.readouterr().err
    assert "show activations needs an IMAGE" in err and "already there" not in err, err


def test_a_picture_of_many_large_filters_is_held_to_a_pixel_budget(tmp_path):
    """100 filters of 32x32 (a converted MLP's first layer) at 16 pixels a weight had made
    a 28-megapixel picture and 2.4 GB; the scale shrinks to keep it within the budget,
    while a small layer keeps its 16 pixels a weight."""
    from convnet.plot import MAX_FIGURE_PIXELS
    big = Sequential(Conv2d(3, 100, 32, rng=np.random.default_rng(0)))
    with Image.open(plot_filters(big, tmp_path / "big.png")) as picture:
        assert picture.width * picture.height <= MAX_FIGURE_PIXELS
        assert picture.width >= filter_grid(big[0].weight).shape[1]      # 1+ px a weight
    small = Sequential(Conv2d(1, 4, 3, rng=np.random.default_rng(0)))
    with Image.open(plot_filters(small, tmp_path / "small.png")) as picture:
        assert picture.width == 16 * filter_grid(small[0].weight).shape[1]
