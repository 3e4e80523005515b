"""What ``convnet train`` uses when an option is not given: per data set, and per optimizer.

The models follow the notes' pattern INPUT -> [[CONV -> RELU]*N -> POOL]*M -> FC, with
batch norm after each CONV. The named data sets have nets tuned for them; any other data
(an image folder, CIFAR-100) gets ``default_notation``: a net sized for its volume and
class count.
"""

from __future__ import annotations

import math

# What every data set starts from; DEFAULTS and OTHER change some of it.
RECIPE = dict(schedule="cosine", label_smoothing=0.0, ema=0.0, translate=None)

# Per data set: model, epochs, batch size, optimizer, weight decay, augmentation, and the
# recipe's other parts. The learning rate is the data set's with its own optimizer, else
# the optimizer's (convnet.train.optim.DEFAULT_LR); flip TTA follows flip augmentation.
DEFAULTS = {
    "digits": dict(
        model="INPUT 8x8x1 -> [CONV 32 -> BN -> RELU]*2 -> POOL -> [CONV 64 -> BN -> RELU]*2 "
              "-> GAP -> FC 10",
        epochs=25, batch_size=32, optimizer="adam", weight_decay=0.0, augment=True,
        flip=False, label_smoothing=0.1, ema=0.99),
    # 93.5% in under 10 minutes on 2 cores (docs/recipe.md): label smoothing, flips in
    # training and at test time. POOL before BN and RELU (as airbench) does their work on
    # a quarter of the pixels.
    "fashion-mnist": dict(
        model="INPUT 28x28x1 -> CONV 32 -> POOL -> BN -> RELU -> CONV 64 -> POOL -> BN -> RELU "
              "-> CONV 128 -> POOL floor -> BN -> RELU -> FC 256 -> RELU -> FC 10",
        epochs=10, batch_size=128, optimizer="adam", lr=3e-3, weight_decay=0.0,
        label_smoothing=0.1, augment=True, flip=True, translate=0),
    "mnist": dict(
        model="INPUT 28x28x1 -> [CONV 32 -> BN -> RELU -> POOL]*2 -> FC 128 -> RELU -> FC 10",
        epochs=5, batch_size=128, optimizer="adam", weight_decay=0.0, augment=False,
        flip=False),
    "cifar10": dict(
        model="INPUT 32x32x3 -> [[CONV 64 -> BN -> RELU]*2 -> POOL]*3 -> FC 256 -> RELU "
              "-> DROPOUT 0.5 -> FC 10",
        epochs=30, batch_size=128, optimizer="momentum", weight_decay=5e-4, augment=True,
        flip=True),
}
# Any other data: the model comes from default_notation. A run records OTHER_NAME as the
# set whose defaults it took (no data set has that name).
OTHER_NAME = "other"
OTHER = dict(model=None, epochs=30, batch_size=64, optimizer="adam", weight_decay=0.0,
             augment=True, flip=True)


def defaults_for(data_name):
    """The defaults of a data set by name ("digits", ...); OTHER for anything else."""
    return {**RECIPE, **DEFAULTS.get(data_name, OTHER)}


def default_notation(input_shape, num_classes):
    """The default net for images of ``input_shape`` (C, H, W) and ``num_classes`` classes.

    Stages of [CONV -> BN -> RELU]*2 -> POOL with 32, 64, 128, 256 filters halve the
    image until it is about 7 pixels on its shorter side (1 to 4 pools), then one more
    stage, global average pooling and FC: the head does not depend on the image size.
    Images larger than 64 pixels are first halved by stride-2 CONVs (32 filters). POOL
    and the strided CONV take ``floor``, so that odd sizes fit.

    >>> default_notation((1, 8, 8), 10)[:60]
    'INPUT 8x8x1 -> [CONV 32 -> BN -> RELU]*2 -> POOL floor -> [C'
    >>> text = default_notation((3, 40, 30), 2)
    >>> text.count("POOL"), text.endswith("[CONV 128 -> BN -> RELU]*2 -> GAP -> FC 2")
    (2, True)
    """
    c, h, w = input_shape
    side = min(h, w)
    parts = []
    while side > 64:
        parts.append("CONV 32 S2 floor -> BN -> RELU")
        side = (side - 1) // 2 + 1
    pools = 0 if side < 4 else min(4, max(1, round(math.log2(side / 7))))
    width = 32
    for _ in range(pools):
        parts.append(f"[CONV {width} -> BN -> RELU]*2 -> POOL floor")
        width = min(2 * width, 256)
    parts.append(f"[CONV {width} -> BN -> RELU]*2 -> GAP")
    return f"INPUT {w}x{h}x{c} -> " + " -> ".join(parts) + f" -> FC {num_classes}"
