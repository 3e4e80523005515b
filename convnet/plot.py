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


def plot_filters(model, path, scale=16):
    """Write the first CONV layer's filters as an image grid (PNG); returns path."""
    plt = _pyplot()
    grid = filter_grid(first_conv_weight(model))
    height, width = grid.shape[:2]
    fig = plt.figure(figsize=(width * scale / 100, height * scale / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, interpolation="nearest")
    ax.axis("off")
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
