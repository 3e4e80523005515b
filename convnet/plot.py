"""Pictures through matplotlib (an optional extra: pip install 'convnet[plot]').

- ``plot_history``: the training curve, loss and accuracy per epoch.
- ``plot_filters``: the first CONV layer's filters as an image grid, as in the notes'
  picture of AlexNet's 96 first-layer filters (each filter min-max scaled to [0, 1]).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("pictures need matplotlib: pip install 'convnet[plot]'") from None
    matplotlib.use("Agg")  # files only, no screen needed
    import matplotlib.pyplot as plt
    return plt


def plot_history(history, path):
    """Write loss and accuracy per epoch (training and validation) as a PNG; returns path."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [h["loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [h["acc"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["val_acc"] for h in history], "o-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def filter_grid(weight, pad=1):
    """(K, C, FH, FW) filters -> one (rows, cols[, 3]) image, each filter scaled to [0, 1].

    Filters with 3 input channels are shown in colour, others by their first channel.
    """
    k, c, fh, fw = weight.shape
    w = weight[:, :3] if c == 3 else weight[:, :1]
    low = w.min(axis=(1, 2, 3), keepdims=True)
    high = w.max(axis=(1, 2, 3), keepdims=True)
    w = (w - low) / np.where(high > low, high - low, 1)
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    grid = np.ones((rows * (fh + pad) + pad, cols * (fw + pad) + pad, w.shape[1]))
    for i in range(k):  # one small tile per filter: a loop over filters, not pixels
        r, q = divmod(i, cols)
        y, x = pad + r * (fh + pad), pad + q * (fw + pad)
        grid[y:y + fh, x:x + fw] = w[i].transpose(1, 2, 0)
    return grid if grid.shape[2] == 3 else grid[:, :, 0]


def first_conv_weight(model):
    """The weight of the model's first layer with 4-D (CONV) weights."""
    for _, layer in model.named_layers():
        weight = layer.params.get("weight")
        if weight is not None and weight.ndim == 4:
            return weight
    raise ValueError("the model has no CONV layer whose filters could be shown")


def plot_filters(model, path, scale=16, title=None):
    """Write the first CONV layer's filters as an image grid (PNG); returns path.

    title: a line above the grid (the CLI says there when the weights are untrained).
    """
    plt = _pyplot()
    grid = filter_grid(first_conv_weight(model))
    height, width = grid.shape[:2]
    fig_w, fig_h = width * scale / 100, height * scale / 100
    top = 0.0
    if title:
        fig_w, top = max(fig_w, 4.0), 0.4                  # inches for the title line
    fig = plt.figure(figsize=(fig_w, fig_h + top), dpi=100)
    ax = fig.add_axes([0, 0, 1, fig_h / (fig_h + top)])
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, interpolation="nearest")
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8, y=1 - 0.05 / (fig_h + top), va="top", wrap=True)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def stage_activations(model, x):
    """[(stage name, activation (C, H, W))] for one image x (1, C, H, W), per top-level
    stage of a Sequential model (each child; volumes only), in eval mode."""
    model.eval()
    out = []
    for name, stage in model.children():
        x = stage.infer(x)
        if x.ndim == 4:
            out.append((name, x[0].copy()))   # the next stage may ReLU in place
    return out


def plot_activations(model, x, path, max_maps=32, scale=2, title=None):
    """Write each stage's activation maps for one image: one row of up to max_maps
    channels per stage, each map min-max scaled (maps of one value, as after global
    average pooling, on the stage's common scale); returns path. title: a line on top."""
    plt = _pyplot()
    stages = stage_activations(model, x)
    if not stages:
        raise ValueError("the model has no stage with a volume output to show")
    cols = min(max_maps, max(a.shape[0] for _, a in stages))
    fig, axes = plt.subplots(len(stages), cols, squeeze=False,
                             figsize=(cols * 0.4 * scale, len(stages) * 0.45 * scale))
    for row, (name, act) in enumerate(stages):
        single = act.shape[1] * act.shape[2] == 1     # one value a map: compare channels
        common = dict(vmin=act.min(), vmax=act.max()) if single else {}
        for col in range(cols):
            ax = axes[row, col]
            ax.axis("off")
            if col < act.shape[0]:
                ax.imshow(act[col], cmap="viridis", interpolation="nearest", **common)
        axes[row, 0].set_title(f"{name}: {act.shape[2]}x{act.shape[1]}x{act.shape[0]}",
                               fontsize=7, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


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

    for key, child in model.children():
        if isinstance(child, Container):
            yield f"{prefix}{key}", child
            yield from _named_containers(child, f"{prefix}{key}.")


def plot_reuse(model, path, title=None):
    """Write the feature-reuse heat maps (one per dense block) as a PNG; returns path.
    title: a line above the maps."""
    plt = _pyplot()
    maps = feature_reuse(model)
    fig, axes = plt.subplots(1, len(maps), squeeze=False, figsize=(4 * len(maps) + 1, 3.6),
                             layout="constrained")
    for ax, (name, matrix) in zip(axes[0], maps):
        size = len(matrix)
        scaled = matrix / np.nanmax(matrix)  # as in the paper: relative to the block's max
        image = ax.imshow(scaled, cmap="jet", vmin=0, vmax=1,
                          extent=(-0.5, size - 0.5, size + 0.5, 0.5))
        ax.set(title=name, xlabel="source layer (0 = block input)", ylabel="target layer")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
