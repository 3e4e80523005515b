"""AlexNet (Krizhevsky et al., 2012) and the AlexNet family builder, shared with ZF Net.

The family: five CONV layers (with ReLU, optional LRN and overlapping 3x3/2 max pools),
then FC-4096, FC-4096, FC-classes with dropout before the first two FC layers. A variant
is its list of feature layers, written as data:

    Conv(K, F, S, P, groups, fit)   a CONV layer (fit="floor": PyTorch's flooring)
    Pool(F, S, ceil, fit)           a max pool (ceil=True rounds the output size up)
    RELU, LRN                       a ReLU, a local response normalization

and one builder, ``build_alexnet_family``, turns it into a Sequential with torchvision's
stage names: "features", ["avgpool"], "flatten", "classifier" (classifier.1, .4, .6 are
the FC layers, as in torchvision's alexnet, so state dict keys line up).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from convnet.layers.activation import ReLU
from convnet.layers.conv import Conv2d
from convnet.layers.dropout import Dropout
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import LocalResponseNorm
from convnet.layers.pool import AdaptiveAvgPool2d, MaxPool2d
from convnet.models.containers import Sequential, relus_in_place

RELU, LRN = "relu", "lrn"


class Conv(NamedTuple):
    """A CONV layer of a feature list: K filters of extent F, stride S, padding P."""

    k: int
    f: int
    s: int = 1
    p: int = 0
    groups: int = 1
    fit: str = "exact"


class Pool(NamedTuple):
    """A max pool of a feature list: extent F, stride S; ceil rounds the size up."""

    f: int
    s: int
    ceil: bool = False
    fit: str = "exact"


# The paper's net (and the notes'): 227x227x3 -> CONV1 96x11x11/4 -> 55x55x96. CONV2, 4, 5
# are split in two groups, the two GPUs (each filter sees half of the previous depth).
# ReLU, then LRN, then the overlapping pool after CONV1 and CONV2.
ALEXNET = [
    Conv(96, 11, 4), RELU, LRN, Pool(3, 2),                 # 55x55x96 -> 27x27x96
    Conv(256, 5, p=2, groups=2), RELU, LRN, Pool(3, 2),     # 27x27x256 -> 13x13x256
    Conv(384, 3, p=1), RELU,                                # 13x13x384
    Conv(384, 3, p=1, groups=2), RELU,                      # 13x13x384
    Conv(256, 3, p=1, groups=2), RELU, Pool(3, 2),          # 13x13x256 -> 6x6x256
]

# torchvision's single-stream variant (from "One weird trick", Krizhevsky 2014): 64-192-
# 384-256-256 filters, no LRN, no groups. On 224 CONV1 gives (224 - 11 + 4)/4 + 1 = 55.25,
# floored to 55 as PyTorch does; the pools floor too, so other input sizes behave as there.
ALEXNET_TORCHVISION = [
    Conv(64, 11, 4, 2, fit="floor"), RELU, Pool(3, 2, fit="floor"),    # 55 -> 27x27x64
    Conv(192, 5, p=2), RELU, Pool(3, 2, fit="floor"),                   # 27 -> 13x13x192
    Conv(384, 3, p=1), RELU,
    Conv(256, 3, p=1), RELU,
    Conv(256, 3, p=1), RELU, Pool(3, 2, fit="floor"),                   # 13 -> 6x6x256
]


def _check_args(where, num_classes, input_shape):
    """Positive ints, or a ValueError naming the model (before any layer is built)."""
    for arg, value in (("num_classes", num_classes), ("input size", input_shape[1])):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{where}: {arg} must be a positive int, got {value!r}")


def build_alexnet_family(name, spec, num_classes, input_shape, *, avgpool=None, lrn=None,
                         dtype=np.float32, rng=None):
    """Build an AlexNet-like net from a feature list (see the module docstring).

    Args:
        name: the model's name, for error messages ("alexnet").
        spec: list of Conv, Pool, RELU, LRN entries.
        num_classes: outputs of the last FC layer.
        input_shape: the default per-sample input (C, H, W); kept as ``model.input_shape``
            and checked against the layers, so a spec that does not fit fails here.
        avgpool: None, or the side of an AdaptiveAvgPool2d put before the classifier
            (torchvision: 6, so inputs other than 224x224 work too).
        lrn: (size, alpha, beta, k) of the LRN layers.
        dtype, rng: passed to every layer with parameters (and rng to the dropouts).

    The classifier is Dropout, FC-4096, ReLU, Dropout, FC-4096, ReLU, FC-classes.
    """
    _check_args(name, num_classes, input_shape)
    rng = np.random.default_rng() if rng is None else rng
    init = {"dtype": dtype, "rng": rng}
    layers, depth = [], input_shape[0]
    for entry in spec:
        if isinstance(entry, Conv):
            layers.append(Conv2d(depth, entry.k, entry.f, entry.s, entry.p,
                                 groups=entry.groups, fit=entry.fit, **init))
            depth = entry.k
        elif isinstance(entry, Pool):
            layers.append(MaxPool2d(entry.f, entry.s, ceil_mode=entry.ceil, fit=entry.fit))
        elif entry == RELU:
            layers.append(ReLU())
        elif entry == LRN:
            layers.append(LocalResponseNorm(*lrn))
        else:
            raise ValueError(f"{name}: unknown feature entry {entry!r}; use Conv, Pool, "
                             f"RELU or LRN")
    stages = {"features": Sequential(*layers)}
    if avgpool is not None:
        stages["avgpool"] = AdaptiveAvgPool2d(avgpool)
    stages["flatten"] = Flatten()
    # The FC input size, e.g. 6*6*256 = 9216; the named stages make errors say where the
    # sizes do not fit ("features.14 MaxPool2d(...)").
    (features,) = Sequential(stages).output_shape(input_shape)
    stages["classifier"] = Sequential(
        Dropout(0.5, rng=rng), Linear(features, 4096, **init), ReLU(),
        Dropout(0.5, rng=rng), Linear(4096, 4096, **init), ReLU(),
        Linear(4096, num_classes, **init),
    )
    model = Sequential(stages)
    model.input_shape = tuple(input_shape)
    return relus_in_place(model)


def alexnet(num_classes=1000, *, dtype=np.float32, rng=None):
    """AlexNet as in the paper: 227x227x3, CONV1 96x11x11/4, two-GPU groups.

    [227x227x3] -> CONV1 96 11x11/4 -> [55x55x96] -> LRN -> POOL 3x3/2 -> [27x27x96]
    -> CONV2 256 5x5 P2 (2 groups) -> LRN -> POOL -> [13x13x256] -> CONV3 384 3x3 P1
    -> CONV4 384 (2 groups) -> CONV5 256 (2 groups) -> POOL -> [6x6x256]
    -> FC-4096 -> FC-4096 -> FC-1000, ReLU after every CONV and hidden FC, dropout 0.5.

    LRN: n=5, alpha=1e-4, beta=0.75, k=2 with PyTorch's (and Caffe's) alpha/n convention.
    Parameters: 60,965,224 at 1000 classes (the groups halve CONV2, 4 and 5; the notes'
    walk-through counts CONV2 without groups, 614,656 parameters where this has 307,456).

    Args:
        num_classes: outputs of the last FC layer.
        dtype: float32 (default) or float64. rng: np.random.Generator for every init.

    >>> net = alexnet(rng=np.random.default_rng(0))
    >>> net["features"].output_shape((3, 227, 227))
    (256, 6, 6)
    """
    return build_alexnet_family("alexnet", ALEXNET, num_classes, (3, 227, 227),
                                lrn=(5, 1e-4, 0.75, 2.0), dtype=dtype, rng=rng)


def alexnet_torchvision(num_classes=1000, input_size=224, *, dtype=np.float32, rng=None):
    """AlexNet as torchvision builds it: one stream of 64-192-384-256-256, no LRN.

    [224x224x3] -> CONV 64 11x11/4 P2 -> POOL -> CONV 192 5x5 -> POOL -> CONV 384, 256, 256
    3x3 -> POOL -> [6x6x256] -> AdaptiveAvgPool2d(6) -> FC-4096 -> FC-4096 -> FC-classes.

    Keys are torchvision's (features.0.weight, ..., classifier.6.bias), so its weights load
    unchanged. Parameters: 61,100,840 at 1000 classes.

    Args:
        num_classes: outputs of the last FC layer.
        input_size: side of the default square input (the adaptive pool takes any >= 63).
        dtype: float32 (default) or float64. rng: np.random.Generator for every init.
    """
    return build_alexnet_family("alexnet_torchvision", ALEXNET_TORCHVISION, num_classes,
                                (3, input_size, input_size), avgpool=6, dtype=dtype, rng=rng)
