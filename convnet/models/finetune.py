"""Fine-tuning: a new head for a new number of classes.

The notes' practical advice: take a pretrained model, replace its last FC layer, freeze
the early stages (``model.freeze("features")``), train the head, then unfreeze.
"""

from __future__ import annotations

import numpy as np

from convnet.layers.linear import Linear


def head_name(model):
    """The dotted name of the model's head, its last FC (Linear) layer; None without one."""
    heads = [name for name, layer in model.named_layers() if isinstance(layer, Linear)]
    return heads[-1] if heads else None


def reorder_head(model, order):
    """Reorder the outputs of the model's head (its last FC layer) so that output i is
    the old output order[i]: the same classes, in another order. Returns the head's
    dotted name, or None where a reorder would not reorder the scores (no FC layer, or a
    layer with parameters after it, such as a batch norm of the outputs)."""
    name = head_name(model)
    if name is None:
        return None
    names = [n for n, _ in model.named_layers()]
    if any(layer.params for n, layer in model.named_layers() if names.index(n) >
           names.index(name)):
        return None
    head = dict(model.named_layers())[name]
    order = np.asarray(order)
    for key in head.params:                          # weight (K, in), bias (K,)
        head.params[key][...] = head.params[key][order]
    return name


def replace_head(model, num_classes, rng=None):
    """Replace the model's last FC layer by a fresh Linear(in_features, num_classes).

    Returns the dotted name of the new head. The new layer is trainable (not frozen) and
    initialized like PyTorch's Linear from ``rng``.
    """
    name = head_name(model)
    if name is None:
        raise ValueError("replace_head: the model has no FC (Linear) layer to replace")
    old = dict(model.named_layers())[name]
    dtype = old.params["weight"].dtype
    model.replace(name, Linear(old.in_features, num_classes, bias="bias" in old.params,
                               dtype=dtype, rng=rng if rng is not None else
                               np.random.default_rng()))
    return name
