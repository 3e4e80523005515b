"""DenseNet (Huang et al., 2016): every layer sees the feature maps of all layers before it.

Inside a dense block, layer l computes k new maps (the growth rate) from the concatenation
[x_0, x_1, ..., x_{l-1}], so a block of L layers turns k0 maps into k0 + L*k. Each layer is
DenseNet-B's bottleneck, BN-ReLU-CONV1x1(4k)-BN-ReLU-CONV3x3(k); between blocks a
transition BN-ReLU-CONV1x1-AVGPOOL2x2 halves H x W and, with compression theta = 0.5
(DenseNet-C), halves the depth. DenseNet-BC is both.

A variant is data (growth rate, layers per block, stem width, stem kind); one builder makes
the net with torchvision's names and keys:

    features: conv0, norm0, relu0, pool0 (ImageNet stem), denseblock1, transition1, ...,
              norm5 (torchvision's name for the final BN, whatever the number of blocks)
    relu, avgpool, flatten, classifier

so keys read features.denseblock1.denselayer1.norm1.weight, features.transition1.conv.weight
and classifier.weight as in torchvision. The CIFAR stem of DenseNet-BC-100 is a single
3x3 CONV with 2k filters, without norm0, relu0 and pool0.
"""

from __future__ import annotations

import numpy as np

from convnet.layers.activation import ReLU
from convnet.layers.conv import Conv2d
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import BatchNorm2d
from convnet.layers.pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from convnet.models.containers import DenseBlock, Sequential, relus_in_place
from convnet.zoo.init import torchvision_init

# name: (growth rate k, layers per block, stem depth, stem: "imagenet" | "cifar",
#        default num_classes, default input side)
CONFIGS = {
    "densenet121": (32, (6, 12, 24, 16), 64, "imagenet", 1000, 224),
    "densenet169": (32, (6, 12, 32, 32), 64, "imagenet", 1000, 224),
    "densenet201": (32, (6, 12, 48, 32), 64, "imagenet", 1000, 224),
    # L = 100 = 3 blocks * 16 layers * 2 CONVs + conv0 + 2 transitions + classifier
    "densenet_bc_100": (12, (16, 16, 16), 24, "cifar", 10, 32),
}
BN_SIZE = 4         # the bottleneck 1x1 CONV gives BN_SIZE * k maps
COMPRESSION = 0.5   # theta: a transition keeps floor(theta * m) of its m maps


def _check_args(where, num_classes, input_size):
    """Positive ints, or a ValueError naming the model (before any layer is built)."""
    for arg, value in (("num_classes", num_classes), ("input_size", input_size)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{where}: {arg} must be a positive int, got {value!r}")


def _dense_layer(depth, growth, init):
    """H_l: BN-ReLU-CONV1x1(4k)-BN-ReLU-CONV3x3(k), from ``depth`` maps to k new ones."""
    width = BN_SIZE * growth
    return Sequential({
        "norm1": BatchNorm2d(depth, dtype=init["dtype"]),
        "relu1": ReLU(),
        "conv1": Conv2d(depth, width, 1, bias=False, **init),
        "norm2": BatchNorm2d(width, dtype=init["dtype"]),
        "relu2": ReLU(),
        "conv2": Conv2d(width, growth, 3, padding=1, bias=False, **init),
    })


def _transition(depth, out, init):
    """BN-ReLU-CONV1x1-AVGPOOL 2x2/2: ``depth`` maps to ``out``, H x W halved (floored)."""
    return Sequential({
        "norm": BatchNorm2d(depth, dtype=init["dtype"]),
        "relu": ReLU(),
        "conv": Conv2d(depth, out, 1, bias=False, **init),
        "pool": AvgPool2d(2, 2, fit="floor"),
    })


def build_densenet(name, num_classes=None, input_size=None, *, dtype=np.float32, rng=None):
    """Build a DenseNet from its config: ``name`` is a key of CONFIGS ("densenet121").

    Args:
        name: "densenet121", "densenet169", "densenet201" or "densenet_bc_100".
        num_classes: outputs of the classifier (None: the config's default).
        input_size: side of the default square input (None: the config's default, 224 or
            32; the global average pool takes other sizes: >= 29 for the ImageNet nets,
            >= 4 for DenseNet-BC-100).
        dtype: float32 (default) or float64. rng: np.random.Generator for every init.
    """
    if name not in CONFIGS:
        raise ValueError(f"build_densenet: unknown config {name!r}; valid: {sorted(CONFIGS)}")
    growth, blocks, stem_depth, stem, default_classes, default_size = CONFIGS[name]
    num_classes = default_classes if num_classes is None else num_classes
    input_size = default_size if input_size is None else input_size
    _check_args(name, num_classes, input_size)
    rng = np.random.default_rng() if rng is None else rng
    init = {"dtype": dtype, "rng": rng}
    if stem == "imagenet":
        features = {
            "conv0": Conv2d(3, stem_depth, 7, 2, 3, bias=False, fit="floor", **init),
            "norm0": BatchNorm2d(stem_depth, dtype=dtype),
            "relu0": ReLU(),
            "pool0": MaxPool2d(3, 2, 1, fit="floor"),                # 224 -> 112 -> 56
        }
    else:
        features = {"conv0": Conv2d(3, stem_depth, 3, padding=1, bias=False, **init)}
    depth = stem_depth
    for i, count in enumerate(blocks):
        layers = {}
        for j in range(count):
            layers[f"denselayer{j + 1}"] = _dense_layer(depth + j * growth, growth, init)
        features[f"denseblock{i + 1}"] = DenseBlock(layers)
        depth += count * growth                                    # k0 + L*k
        if i != len(blocks) - 1:
            out = int(COMPRESSION * depth)
            features[f"transition{i + 1}"] = _transition(depth, out, init)
            depth = out
    features["norm5"] = BatchNorm2d(depth, dtype=dtype)
    model = Sequential({
        "features": Sequential(features),
        "relu": ReLU(),
        "avgpool": AdaptiveAvgPool2d(1),
        "flatten": Flatten(),
        "classifier": Linear(depth, num_classes, **init),
    })
    model.input_shape = (3, input_size, input_size)
    model.output_shape(model.input_shape)  # a clear error now if the input is too small
    return relus_in_place(torchvision_init(model, "densenet", rng))


def densenet121(num_classes=1000, input_size=224, *, dtype=np.float32, rng=None):
    """DenseNet-121 (k=32, blocks 6-12-24-16).

    7,978,856 parameters at 1000 classes.

    [224x224x3] -> CONV 64 7x7/2 -> POOL 3x3/2 -> [56x56x64] -> block1 [56x56x256]
    -> transition [28x28x128] -> block2 [28x28x512] -> [14x14x256] -> block3 [14x14x1024]
    -> [7x7x512] -> block4 [7x7x1024] -> BN -> ReLU -> avg -> FC-1000.

    >>> net = densenet121(rng=np.random.default_rng(0))
    >>> net["features"].output_shape((3, 224, 224)), net.num_params()
    ((1024, 7, 7), 7978856)
    """
    return build_densenet("densenet121", num_classes, input_size, dtype=dtype, rng=rng)


def densenet169(num_classes=1000, input_size=224, *, dtype=np.float32, rng=None):
    """DenseNet-169 (k=32, blocks 6-12-32-32).

    14,149,480 parameters at 1000 classes.
    """
    return build_densenet("densenet169", num_classes, input_size, dtype=dtype, rng=rng)


def densenet201(num_classes=1000, input_size=224, *, dtype=np.float32, rng=None):
    """DenseNet-201 (k=32, blocks 6-12-48-32).

    20,013,928 parameters at 1000 classes.
    """
    return build_densenet("densenet201", num_classes, input_size, dtype=dtype, rng=rng)


def densenet_bc_100(num_classes=10, input_size=32, *, dtype=np.float32, rng=None):
    """DenseNet-BC-100 for CIFAR (k=12, 3 blocks of 16 bottleneck layers, theta=0.5).

    [32x32x3] -> CONV 24 3x3 -> block1 [32x32x216] -> transition [16x16x108]
    -> block2 [16x16x300] -> [8x8x150] -> block3 [8x8x342] -> BN -> ReLU -> avg -> FC-10.

    769,162 parameters at 10 classes (the paper's Table 2 rounds it to 0.8M).
    """
    return build_densenet("densenet_bc_100", num_classes, input_size, dtype=dtype, rng=rng)
