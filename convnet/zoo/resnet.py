"""ResNet (He et al., 2015): residual blocks, out = ReLU(body(x) + shortcut(x)).

A variant is its block type and the number of blocks in each of the four stages (the
paper's Table 1); one builder makes the net with torchvision's names and keys:

    conv1, bn1, relu, maxpool            the stem, 224 -> 112 -> 56
    layer1 .. layer4                     stages of Residual blocks, layer2.0 halves H x W
    avgpool, flatten, fc                 global average pool and the classifier

A block is a ``Residual`` whose body is conv1, bn1, relu, conv2, bn2 (basic, two 3x3
CONVs) or conv1, bn1, relu, conv2, bn2, relu2, conv3, bn3 (bottleneck: 1x1 reduce,
3x3, 1x1 expand by 4; the stride sits on the 3x3, torchvision's "v1.5"). Where the block
changes the volume, the shortcut is a 1x1 CONV (stride S) + BN under "downsample", so
state dict keys read layer2.0.downsample.0.weight exactly as in torchvision.

Strided layers floor their output size, as in PyTorch: on 224 the 7x7/2 P3 stem gives
(224 - 7 + 6)/2 + 1 = 112.5 -> 112, and the 3x3/2 P1 max pool (112 - 3 + 2)/2 + 1 = 56.5
-> 56, which the notes would call invalid; fit="floor" says we mean it.
"""

from __future__ import annotations

import numpy as np

from convnet.layers.activation import ReLU
from convnet.layers.conv import Conv2d
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import BatchNorm2d
from convnet.layers.pool import AdaptiveAvgPool2d, MaxPool2d
from convnet.models.containers import Residual, Sequential, relus_in_place
from convnet.zoo.init import torchvision_init

# name: (block type, blocks per stage), the paper's Table 1.
CONFIGS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}  # output depth = width * expansion


def _check_args(where, num_classes, input_size):
    """Positive ints, or a ValueError naming the model (before any layer is built)."""
    for arg, value in (("num_classes", num_classes), ("input_size", input_size)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{where}: {arg} must be a positive int, got {value!r}")


def _block(kind, depth, width, stride, init):
    """One residual block from ``depth`` input channels; returns (block, output depth)."""
    out = width * EXPANSION[kind]
    fit = "floor" if stride > 1 else "exact"
    if kind == "basic":
        body = {
            "conv1": Conv2d(depth, width, 3, stride, 1, bias=False, fit=fit, **init),
            "bn1": BatchNorm2d(width, dtype=init["dtype"]),
            "relu": ReLU(),
            "conv2": Conv2d(width, width, 3, 1, 1, bias=False, **init),
            "bn2": BatchNorm2d(width, dtype=init["dtype"]),
        }
    else:
        body = {
            "conv1": Conv2d(depth, width, 1, bias=False, **init),                # reduce
            "bn1": BatchNorm2d(width, dtype=init["dtype"]),
            "relu": ReLU(),
            "conv2": Conv2d(width, width, 3, stride, 1, bias=False, fit=fit, **init),
            "bn2": BatchNorm2d(width, dtype=init["dtype"]),
            "relu2": ReLU(),
            "conv3": Conv2d(width, out, 1, bias=False, **init),                  # expand
            "bn3": BatchNorm2d(out, dtype=init["dtype"]),
        }
    shortcut = None
    if stride != 1 or depth != out:  # projection: 1x1 CONV with the body's stride, + BN
        shortcut = Sequential(Conv2d(depth, out, 1, stride, bias=False, fit=fit, **init),
                              BatchNorm2d(out, dtype=init["dtype"]))
    return Residual(body, shortcut=shortcut, post=ReLU()), out


def build_resnet(name, num_classes=1000, input_size=224, *, dtype=np.float32, rng=None):
    """Build a ResNet from its config: ``name`` is a key of CONFIGS ("resnet50").

    Args:
        name: "resnet18", "resnet34", "resnet50", "resnet101" or "resnet152".
        num_classes: outputs of the fc layer.
        input_size: side of the default square input (224; with the global average pool
            and floored strides any size works, 32x32 CIFAR images included).
        dtype: float32 (default) or float64. rng: np.random.Generator for every init.
    """
    if name not in CONFIGS:
        raise ValueError(f"build_resnet: unknown config {name!r}; valid: {sorted(CONFIGS)}")
    _check_args(name, num_classes, input_size)
    rng = np.random.default_rng() if rng is None else rng
    init = {"dtype": dtype, "rng": rng}
    kind, counts = CONFIGS[name]
    stages = {
        "conv1": Conv2d(3, 64, 7, 2, 3, bias=False, fit="floor", **init),  # 224 -> 112
        "bn1": BatchNorm2d(64, dtype=dtype),
        "relu": ReLU(),
        "maxpool": MaxPool2d(3, 2, 1, fit="floor"),                           # 112 -> 56
    }
    depth = 64
    for i, count in enumerate(counts):
        width = 64 * 2**i                      # 64, 128, 256, 512 (x4 out for bottleneck)
        blocks = []
        for j in range(count):
            stride = 2 if i > 0 and j == 0 else 1
            block, depth = _block(kind, depth, width, stride, init)
            blocks.append(block)
        stages[f"layer{i + 1}"] = Sequential(*blocks)
    stages["avgpool"] = AdaptiveAvgPool2d(1)
    stages["flatten"] = Flatten()
    stages["fc"] = Linear(depth, num_classes, **init)
    model = Sequential(stages)
    model.input_shape = (3, input_size, input_size)
    model.output_shape(model.input_shape)  # a clear error now if the input is too small
    return relus_in_place(torchvision_init(model, "resnet", rng))


def resnet18(num_classes=1000, input_size=224, *, dtype=np.float32, rng=None):
    """ResNet-18: basic blocks (2, 2, 2, 2).

    11,689,512 parameters at 1000 classes.

    [224x224x3] -> CONV 64 7x7/2 -> POOL 3x3/2 -> [56x56x64] -> layer1 [56x56x64]
    -> layer2 [28x28x128] -> layer3 [14x14x256] -> layer4 [7x7x512] -> avg -> FC-1000.

    >>> net = resnet18(rng=np.random.default_rng(0))
    >>> net["layer4"].output_shape((256, 14, 14)), net.num_params()
    ((512, 7, 7), 11689512)
    """
    return build_resnet("resnet18", num_classes, input_size, dtype=dtype, rng=rng)


def resnet34(num_classes=1000, input_size=224, *, dtype=np.float32, rng=None):
    """ResNet-34: basic blocks (3, 4, 6, 3).

    21,797,672 parameters at 1000 classes.
    """
    return build_resnet("resnet34", num_classes, input_size, dtype=dtype, rng=rng)


def resnet50(num_classes=1000, input_size=224, *, dtype=np.float32, rng=None):
    """ResNet-50: bottleneck blocks (3, 4, 6, 3).

    25,557,032 parameters at 1000 classes.
    """
    return build_resnet("resnet50", num_classes, input_size, dtype=dtype, rng=rng)


def resnet101(num_classes=1000, input_size=224, *, dtype=np.float32, rng=None):
    """ResNet-101: bottleneck blocks (3, 4, 23, 3).

    44,549,160 parameters at 1000 classes.
    """
    return build_resnet("resnet101", num_classes, input_size, dtype=dtype, rng=rng)


def resnet152(num_classes=1000, input_size=224, *, dtype=np.float32, rng=None):
    """ResNet-152: bottleneck blocks (3, 8, 36, 3).

    60,192,808 parameters at 1000 classes.
    """
    return build_resnet("resnet152", num_classes, input_size, dtype=dtype, rng=rng)
