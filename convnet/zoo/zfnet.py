"""ZF Net (Zeiler & Fergus, 2013): AlexNet with a smaller first stride and filter.

The notes: "improved AlexNet by tweaking architecture hyperparams, expanded size of middle
CONV layers and made stride & filter size on 1st layers smaller". CONV1 is 7x7/2 instead of
11x11/4, CONV2 5x5/2, and the middle layers are 384-384-256 in one stream (no groups), as
in the paper's Figure 3; ``zfnet_wide`` expands them to 512-1024-512 (its Table 2). Built
by the AlexNet family builder from its feature list.
"""

from __future__ import annotations

import numpy as np

from convnet.zoo.alexnet import LRN, RELU, Conv, Pool, build_alexnet_family


# Sizes as in the paper's Figure 3, on a 224x224x3 crop. Two of them need PyTorch-style
# rounding: CONV1 (224 - 7 + 2)/2 + 1 = 110.5 is floored to 110, and the pools after CONV1
# and CONV2 round up (Caffe's ceil mode): 110 -> 55 and 26 -> 13.
# ReLU, pool, then LRN ("contrast normalized across feature maps").
def zfnet_features(middle=(384, 384, 256)):
    """ZF Net's feature list, with ``middle`` filters in CONV3, CONV4 and CONV5."""
    c3, c4, c5 = middle
    return [
        Conv(96, 7, 2, 1, fit="floor"), RELU, Pool(3, 2, ceil=True), LRN,  # 110 -> 55x55x96
        Conv(256, 5, 2), RELU, Pool(3, 2, ceil=True), LRN,                 # 26 -> 13x13x256
        Conv(c3, 3, p=1), RELU,                                            # 13x13xc3
        Conv(c4, 3, p=1), RELU,                                            # 13x13xc4
        Conv(c5, 3, p=1), RELU, Pool(3, 2),                                # 13 -> 6x6xc5
    ]


ZFNET = zfnet_features()
# The paper's Table 2 model (b), "layers 3,4,5: 512, 1024, 512 maps": the expanded middle
# CONV layers the notes credit ZF Net with.
ZFNET_WIDE = zfnet_features((512, 1024, 512))


def zfnet(num_classes=1000, *, dtype=np.float32, rng=None):
    """ZF Net: AlexNet with CONV1 7x7/2 and CONV2 5x5/2, on 224x224x3.

    [224x224x3] -> CONV1 96 7x7/2 P1 -> [110x110x96] -> POOL 3x3/2 -> LRN -> [55x55x96]
    -> CONV2 256 5x5/2 -> [26x26x256] -> POOL -> LRN -> [13x13x256] -> CONV3 384 3x3 P1
    -> CONV4 384 -> CONV5 256 -> POOL -> [6x6x256] -> FC-4096 -> FC-4096 -> FC-1000.

    LRN as AlexNet's (n=5, alpha=1e-4, beta=0.75, k=2), ReLU after every CONV and hidden
    FC, dropout 0.5 before the hidden FC layers. Parameters: 62,357,608 at 1000 classes.
    ``zfnet_wide`` is the same net with CONV3-5 expanded to 512-1024-512.

    Args:
        num_classes: outputs of the last FC layer.
        dtype: float32 (default) or float64. rng: np.random.Generator for every init.

    >>> net = zfnet(rng=np.random.default_rng(0))
    >>> net["features"].output_shape((3, 224, 224))
    (256, 6, 6)
    """
    return build_alexnet_family("zfnet", ZFNET, num_classes, (3, 224, 224),
                                lrn=(5, 1e-4, 0.75, 2.0), dtype=dtype, rng=rng)


def zfnet_wide(num_classes=1000, *, dtype=np.float32, rng=None):
    """ZF Net with its middle CONV layers expanded to 512, 1024 and 512 filters.

    The paper's Table 2 model (b), "layers 3,4,5: 512, 1024, 512 maps", which the notes
    describe as ZF Net's "expanded size of middle CONV layers": as ``zfnet`` otherwise,
    with a [6x6x512] volume into FC-4096. Parameters: 107,627,624 at 1000 classes.

    >>> net = zfnet_wide(rng=np.random.default_rng(0))
    >>> net["features"].output_shape((3, 224, 224))
    (512, 6, 6)
    """
    return build_alexnet_family("zfnet_wide", ZFNET_WIDE, num_classes, (3, 224, 224),
                                lrn=(5, 1e-4, 0.75, 2.0), dtype=dtype, rng=rng)
