"""Pictures through matplotlib (an optional extra: pip install 'convnet[plot]').

- ``plot_history``: the training curve, loss and accuracy per epoch.
- ``plot_filters``: the first CONV layer's filters as an image grid, as in the notes'
  picture of AlexNet's 96 first-layer filters (each filter min-max scaled to [0, 1]).
- ``plot_activations``: every stage's activation maps for one image (``stages``: which
  stages, the report's too).
- ``plot_reuse``: the DenseNet paper's feature-reuse map.

Each picture is drawn on its own matplotlib ``Figure`` with the Agg canvas, never
through pyplot: the backend a user chose (a notebook's inline one) stays as it was.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np

MIN_STAGES = 6          # fewer top-level stages: open the Sequential ones (see stages)
TITLE_POINTS = 8        # font size of a filter grid's title
CHAR_EMS = 0.65         # a title character's width in ems, on the wide side (to wrap it)


def _figure(**kwargs):
    """A matplotlib Figure (kwargs: Figure's) on an Agg canvas, made without pyplot, so
    the process's backend is not switched; an ImportError says how to get matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("pictures need matplotlib: pip install 'convnet[plot]'") from None
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def history_figure(history, label_smoothing=0.0):
    """The training curve as a Figure: loss and accuracy per epoch (whole-epoch ticks),
    training and validation.

    label_smoothing: the run's. Its training loss is the cross-entropy against the
    smoothed targets, its validation loss the plain one; when not 0 the training curve's
    legend says so.
    """
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    train = f"train (label smoothing {label_smoothing:g})" if label_smoothing else "train"
    fig = _figure(figsize=(9, 3.5))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["loss"] for h in history], "o-", label=train)
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [h["acc"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["val_acc"] for h in history], "o-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def _save(fig, path):
    """Write fig to path in the format its suffix names (.png, .svg, .pdf; none: .png is
    added, as matplotlib does), atomically
    (``atomic_write``): a kill leaves the earlier file or none, never half a picture, and
    a link at path is replaced, not written through. Returns path."""
    import io

    from convnet.io.weights import atomic_write
    path = Path(path)
    if not path.suffix:                  # as savefig names it: a PNG
        path = path.with_name(path.name + ".png")
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format=path.suffix[1:].lower())
    atomic_write(path, buffer.getvalue())
    return path


def plot_history(history, path, label_smoothing=0.0):
    """Write loss and accuracy per epoch (training and validation) as a PNG; returns path.
    label_smoothing: the run's, named in the legend (see ``history_figure``)."""
    return _save(history_figure(history, label_smoothing), path)


def unit_range(x, axis):
    """x scaled to [0, 1] over ``axis`` (a tuple) by its finite min..max, without a
    warning: a constant slice is all 0, and so are NaN and infinite values."""
    finite = np.isfinite(x)
    low = np.where(finite, x, np.inf).min(axis=axis, keepdims=True)
    high = np.where(finite, x, -np.inf).max(axis=axis, keepdims=True)
    low = np.where(np.isfinite(low), low, 0)                  # no finite value at all
    with np.errstate(over="ignore", invalid="ignore"):        # spans past the float max
        span = high - low
        scaled = (np.where(finite, x, low) - low) / np.where(span > 0, span, np.inf)
    return np.nan_to_num(scaled, nan=0.0)


def filter_grid(weight, pad=1):
    """(K, C, FH, FW) filters -> one (rows, cols[, 3]) image, each filter scaled to [0, 1].

    Filters with 3 input channels are shown in colour, others by their first channel;
    weights that are NaN or infinite are drawn as 0 (black).
    """
    k, c, fh, fw = weight.shape
    w = unit_range(weight[:, :3] if c == 3 else weight[:, :1], axis=(1, 2, 3))
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    grid = np.ones((rows * (fh + pad) + pad, cols * (fw + pad) + pad, w.shape[1]))
    for i in range(k):  # one small tile per filter: a loop over filters, not pixels
        r, q = divmod(i, cols)
        y, x = pad + r * (fh + pad), pad + q * (fw + pad)
        grid[y:y + fh, x:x + fw] = w[i].transpose(1, 2, 0)
    return grid if grid.shape[2] == 3 else grid[:, :, 0]


def first_filters(model):
    """(name, weight (K, C, FH, FW), before) of the model's first layer with 4-D (CONV)
    weights. before: the (name, type) of each weighted layer ahead of it, [] when it is
    the model's first (a LocallyConnected2d, whose filters differ at every position, or
    a Linear is not drawn as a filter grid). No CONV layer: a ValueError."""
    before = []
    for name, layer in model.named_layers():
        weight = layer.params.get("weight")
        if weight is None or weight.ndim < 2:             # no weights, or a BN's scale
            continue
        if weight.ndim == 4:
            return name, weight, before
        before.append((name, type(layer).__name__))
    raise ValueError("the model has no CONV layer whose filters could be shown")


def first_conv_weight(model):
    """The weight of the model's first layer with 4-D (CONV) weights."""
    return first_filters(model)[1]


def not_first_layer(name, before):
    """"" when the filters of layer ``name`` are the first layer's (``before`` empty, as
    first_filters gives it); else a sentence saying they are not, and why."""
    if not before:
        return ""
    first, kind = before[0]
    return (f"the filters of layer {name}, not of the first layer: the first weighted "
            f"layer, {first} ({kind}), is not a CONV layer")


MAX_FIGURE_PIXELS = 4_000_000   # a filter picture's pixels, at most (memory: ~85 B each)


def filters_figure(model, scale=16, title=None):
    """The first CONV layer's filters as a Figure: the grid, ``scale`` pixels a weight
    (fewer where the grid would pass MAX_FIGURE_PIXELS: 100 filters of 32x32 had made a
    28-megapixel picture and 2.4 GB; at least one pixel a weight), under the title (if
    any) and a line naming the layer when it is not the model's first; the space above
    the grid fits the wrapped lines."""
    name, weight, before = first_filters(model)
    grid = filter_grid(weight)
    height, width = grid.shape[:2]
    scale = max(1, min(scale, int((MAX_FIGURE_PIXELS / (height * width)) ** 0.5)))
    fig_w, fig_h = width * scale / 100, height * scale / 100
    texts = [text for text in (title, not_first_layer(name, before)) if text]
    if texts:
        fig_w = max(fig_w, 4.0)
    chars = max(1, int(fig_w * 72 / (TITLE_POINTS * CHAR_EMS)))    # per line, at 72 pt/in
    lines = [line for text in texts for line in textwrap.wrap(text, chars)]
    line_h = 1.2 * TITLE_POINTS / 72                     # inches: matplotlib's spacing
    top = len(lines) * line_h + 0.15 if lines else 0.0   # and 0.05 in above, 0.1 below
    fig = _figure(figsize=(fig_w, fig_h + top), dpi=100)
    ax = fig.add_axes((0, 0, 1, fig_h / (fig_h + top)))
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, interpolation="nearest")
    ax.axis("off")
    if lines:
        fig.suptitle("\n".join(lines), fontsize=TITLE_POINTS, y=1 - 0.05 / (fig_h + top),
                     va="top", parse_math=False)
    return fig


def plot_filters(model, path, scale=16, title=None):
    """Write the first CONV layer's filters as an image grid (PNG); returns path.

    title: a line above the grid (the CLI says there when the weights are untrained).
    A first weighted layer that is not a CONV layer (LocallyConnected2d) is skipped and
    the picture says which layer it shows instead (``filters_figure``).
    """
    return _save(filters_figure(model, scale, title), path)


def stages(model):
    """The stages whose activations are drawn, [(name, layer)]: the model's top-level
    children; where there are fewer than MIN_STAGES, each plain Sequential among them is
    opened one level (the features of LeNet-5, AlexNet, VGG). A lone layer is one stage."""
    from convnet.models.containers import Container, Sequential

    if not isinstance(model, Container):
        return [(type(model).__name__, model)]
    top = list(model.named_children())
    if len(top) >= MIN_STAGES:
        return top
    out = []
    for key, child in top:
        if type(child) is Sequential:
            out += [(f"{key}.{k}", c) for k, c in child.named_children()]
        else:
            out.append((key, child))
    return out


MAP_SIDE = 256    # pixels on a side of a map kept for drawing (a figure draws it smaller)


def stage_activations(model, x, max_maps=None):
    """[(stage name, activation (C, H, W), its full shape)] for one image x (1, C, H, W),
    per stage as ``stages`` picks them (volumes only), in eval mode. Only what a picture
    draws is kept of each: the first ``max_maps`` channels (all with None), every k-th row
    and column where a side is over MAP_SIDE (a 4096x4096 image had kept every stage's
    whole volume)."""
    model.eval()
    out = []
    for name, stage in stages(model):
        x = stage.infer(x)
        if x.ndim == 4:
            step = [max(1, -(-side // MAP_SIDE)) for side in x.shape[2:]]
            kept = x[0, :max_maps, ::step[0], ::step[1]].copy()   # the next may ReLU x
            out.append((name, kept, x.shape[1:]))
    return out


def plot_activations(model, x, path, max_maps=32, scale=2, title=None):
    """Write each stage's activation maps for one image: one row of up to max_maps
    channels per stage (its title says so where a stage has more), each map min-max
    scaled (maps of one value, as after global average pooling, on the stage's common
    scale); returns path. title: on top, wrapped to the figure's width (at least 4
    inches with a title)."""
    maps = stage_activations(model, x, max_maps)
    if not maps:
        raise ValueError("the model has no stage with a volume output to show")
    cols = min(max_maps, max(shape[0] for _, _, shape in maps))
    fig_w = max(cols * 0.4 * scale, 4.0 if title else 0.0)   # a title wraps within 4 in
    lines = textwrap.wrap(title, max(1, int(fig_w * 72 / (9 * CHAR_EMS)))) if title else []
    top = len(lines) * 1.2 * 9 / 72 + 0.15 if lines else 0.0      # inches for the title
    fig_h = len(maps) * 0.45 * scale + top
    fig = _figure(figsize=(fig_w, fig_h))
    fig.subplots_adjust(top=min(0.88, 1 - top / fig_h) if lines else 0.88)
    axes = fig.subplots(len(maps), cols, squeeze=False)
    for row, (name, act, (depth, h, w)) in enumerate(maps):
        single = h * w == 1                           # one value a map: compare channels
        common = dict(vmin=act.min(), vmax=act.max()) if single else {}
        for col in range(cols):
            ax = axes[row, col]
            ax.axis("off")
            if col < act.shape[0]:
                ax.imshow(act[col], cmap="viridis", interpolation="nearest", **common)
        shown = f" (its first {cols} maps)" if depth > cols else ""
        axes[row, 0].set_title(f"{name}: {w}x{h}x{depth}{shown}",
                               fontsize=7, loc="left", parse_math=False)   # names as given:
    if lines:                                                      # "$x$" is not math
        fig.suptitle("\n".join(lines), fontsize=9, y=1 - 0.05 / fig_h, va="top",
                     parse_math=False)
    return _save(fig, path)


def feature_reuse(model):
    """The DenseNet paper's feature-reuse map, per dense block.

    For dense layer l (its first CONV), the average absolute weight it gives to the feature
    maps of each earlier source: the block's input (source 0) and the outputs of layers
    1 .. l-1. Returns [(block name, matrix (L, L))] with NaN where a source comes later.
    """
    from convnet.layers.conv import Conv2d
    from convnet.models.containers import Container, DenseBlock

    maps = []
    blocks = [(name, b) for name, b in _named_containers(model) if isinstance(b, DenseBlock)]
    for name, block in blocks:
        layers = list(block)
        convs = []
        for layer in layers:
            leaves = layer.named_layers() if isinstance(layer, Container) else [("", layer)]
            convs.append(next(leaf for _, leaf in leaves if isinstance(leaf, Conv2d)))
        k0 = convs[0].in_channels
        growth = (convs[1].in_channels - k0) if len(convs) > 1 else 0
        matrix = np.full((len(layers), len(layers)), np.nan)
        for target, conv in enumerate(convs):
            w = np.abs(conv.params["weight"])                 # (K, C_in, FH, FW)
            bounds = [0, k0] + [k0 + growth * s for s in range(1, target + 1)]
            for s in range(target + 1):
                matrix[target, s] = w[:, bounds[s]:bounds[s + 1]].mean()
        maps.append((name, matrix))
    if not maps:
        raise ValueError("the model has no DenseBlock: feature reuse is a DenseNet picture")
    return maps


def _named_containers(model, prefix=""):
    from convnet.models.containers import Container

    for key, child in model.named_children():
        if isinstance(child, Container):
            yield f"{prefix}{key}", child
            yield from _named_containers(child, f"{prefix}{key}.")


def plot_reuse(model, path, title=None):
    """Write the feature-reuse heat maps (one per dense block) as a PNG; returns path.
    title: a line above the maps."""
    maps = feature_reuse(model)
    fig = _figure(figsize=(4 * len(maps) + 1, 3.6), layout="constrained")
    axes = fig.subplots(1, len(maps), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], maps):
        size = len(matrix)
        scaled = matrix / np.nanmax(matrix)  # as in the paper: relative to the block's max
        image = ax.imshow(scaled, cmap="jet", vmin=0, vmax=1,
                          extent=(-0.5, size - 0.5, size + 0.5, 0.5))
        ax.set(xlabel="source layer (0 = block input)", ylabel="target layer")
        ax.set_title(name, parse_math=False)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=9, parse_math=False)
    return _save(fig, path)
