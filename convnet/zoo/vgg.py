"""VGGNet (Simonyan & Zisserman, 2014): only 3x3 CONV (S=1, P=1) and 2x2 POOL (S=2).

A variant is a list of filter counts with "M" for a max pool (torchvision's config lists,
the paper's columns A, B, D, E); one builder turns a list into the net. With batch_norm
each CONV is followed by BatchNorm2d before its ReLU. Stages and keys are torchvision's:
"features" (features.0.weight, ...), "avgpool" (AdaptiveAvgPool2d(7)), "flatten",
"classifier" (classifier.0, .3, .6 are the FC layers), so its weights load unchanged.

As the notes say, most of the memory is in the early CONV layers and most parameters in
the first FC layer: 7*7*512*4096 = 102,760,448 of VGG-16's 138,357,544.
"""

from __future__ import annotations

import numpy as np

from convnet.layers.activation import ReLU
from convnet.layers.conv import Conv2d
from convnet.layers.dropout import Dropout
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import BatchNorm2d
from convnet.layers.pool import AdaptiveAvgPool2d, MaxPool2d
from convnet.models.containers import Sequential, relus_in_place
from convnet.zoo.init import torchvision_init

# Filter counts of the 3x3 CONV layers, "M" for a 2x2/2 max pool: the paper's Table 1.
CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],           # A
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # B
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],                                                        # D
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],                                                   # E
}


def _check_args(where, num_classes, input_size):
    """Positive ints, or a ValueError naming the model (before any layer is built)."""
    for arg, value in (("num_classes", num_classes), ("input_size", input_size)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{where}: {arg} must be a positive int, got {value!r}")


def build_vgg(name, num_classes=1000, input_size=224, *, batch_norm=False, dtype=np.float32,
              rng=None):
    """Build a VGG net from its config: ``name`` is a key of CONFIGS ("vgg16").

    Args:
        name: "vgg11", "vgg13", "vgg16" or "vgg19".
        num_classes: outputs of the last FC layer.
        input_size: side of the default square input (224; the adaptive pool takes any
            input of at least 32x32).
        batch_norm: put BatchNorm2d between every CONV and its ReLU (the "_bn" variants).
        dtype: float32 (default) or float64. rng: np.random.Generator for every init and
            for the dropout masks.
    """
    where = name + ("_bn" if batch_norm else "")
    if name not in CONFIGS:
        raise ValueError(f"build_vgg: unknown config {name!r}; valid: {sorted(CONFIGS)}")
    _check_args(where, num_classes, input_size)
    rng = np.random.default_rng() if rng is None else rng
    init = {"dtype": dtype, "rng": rng}
    layers, depth = [], 3
    for v in CONFIGS[name]:
        if v == "M":
            layers.append(MaxPool2d(2, 2, fit="floor"))  # floor, as torchvision, for odd sizes
            continue
        layers.append(Conv2d(depth, v, 3, padding=1, **init))
        if batch_norm:
            layers.append(BatchNorm2d(v, dtype=dtype))
        layers.append(ReLU())
        depth = v
    model = Sequential({
        "features": Sequential(*layers),
        "avgpool": AdaptiveAvgPool2d(7),
        "flatten": Flatten(),
        "classifier": Sequential(
            Linear(depth * 7 * 7, 4096, **init), ReLU(), Dropout(0.5, rng=rng),
            Linear(4096, 4096, **init), ReLU(), Dropout(0.5, rng=rng),
            Linear(4096, num_classes, **init),
        ),
    })
    model.input_shape = (3, input_size, input_size)
    model.output_shape(model.input_shape)  # a clear error now if the input is too small
    return relus_in_place(torchvision_init(model, "vgg", rng))


def vgg11(num_classes=1000, input_size=224, *, dtype=np.float32, rng=None):
    """VGG-11 (config A): 8 CONV + 3 FC layers.

    132,863,336 parameters at 1000 classes.
    """
    return build_vgg("vgg11", num_classes, input_size, dtype=dtype, rng=rng)


def vgg13(num_classes=1000, input_size=224, *, dtype=np.float32, rng=None):
    """VGG-13 (config B): 10 CONV + 3 FC layers.

    133,047,848 parameters at 1000 classes.
    """
    return build_vgg("vgg13", num_classes, input_size, dtype=dtype, rng=rng)


def vgg16(num_classes=1000, input_size=224, *, dtype=np.float32, rng=None):
    """VGG-16 (config D): 13 CONV + 3 FC layers.

    138,357,544 parameters at 1000 classes.

    [224x224x3] -> 2x CONV3-64 -> POOL -> 2x CONV3-128 -> POOL -> 3x CONV3-256 -> POOL
    -> 3x CONV3-512 -> POOL -> 3x CONV3-512 -> POOL -> [7x7x512] -> FC-4096 -> FC-4096
    -> FC-1000.

    >>> net = vgg16(rng=np.random.default_rng(0))
    >>> net["features"].output_shape((3, 224, 224)), net.num_params()
    ((512, 7, 7), 138357544)
    """
    return build_vgg("vgg16", num_classes, input_size, dtype=dtype, rng=rng)


def vgg19(num_classes=1000, input_size=224, *, dtype=np.float32, rng=None):
    """VGG-19 (config E): 16 CONV + 3 FC layers.

    143,667,240 parameters at 1000 classes.
    """
    return build_vgg("vgg19", num_classes, input_size, dtype=dtype, rng=rng)


def vgg11_bn(num_classes=1000, input_size=224, *, dtype=np.float32, rng=None):
    """VGG-11 with batch norm after every CONV.

    132,868,840 parameters at 1000 classes.
    """
    return build_vgg("vgg11", num_classes, input_size, batch_norm=True, dtype=dtype, rng=rng)


def vgg13_bn(num_classes=1000, input_size=224, *, dtype=np.float32, rng=None):
    """VGG-13 with batch norm after every CONV.

    133,053,736 parameters at 1000 classes.
    """
    return build_vgg("vgg13", num_classes, input_size, batch_norm=True, dtype=dtype, rng=rng)


def vgg16_bn(num_classes=1000, input_size=224, *, dtype=np.float32, rng=None):
    """VGG-16 with batch norm after every CONV.

    138,365,992 parameters at 1000 classes.
    """
    return build_vgg("vgg16", num_classes, input_size, batch_norm=True, dtype=dtype, rng=rng)


def vgg19_bn(num_classes=1000, input_size=224, *, dtype=np.float32, rng=None):
    """VGG-19 with batch norm after every CONV.

    143,678,248 parameters at 1000 classes.
    """
    return build_vgg("vgg19", num_classes, input_size, batch_norm=True, dtype=dtype, rng=rng)
