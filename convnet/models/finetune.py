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
