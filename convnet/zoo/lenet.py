"""LeNet-5 (LeCun et al., 1998), the first successful ConvNet, in its modern textbook form.

INPUT [32x32x1] -> CONV5-6 -> TANH -> POOL2 -> CONV5-16 -> TANH -> POOL2
-> FC-120 -> TANH -> FC-84 -> TANH -> FC-10

Modern means: C3 connects all 6 input maps to all 16 filters (the paper used a sparse
connection table), the subsampling layers are plain 2x2 average pools (the paper's had a
trainable coefficient and bias per map), and the output is an FC layer (the paper's were
Gaussian RBF units). Tanh and average pooling are kept, as in the paper.
"""

from __future__ import annotations

import numpy as np

from convnet.layers.activation import Tanh
from convnet.layers.conv import Conv2d
from convnet.layers.linear import Flatten, Linear
from convnet.layers.pool import AvgPool2d
from convnet.models.containers import Sequential


def _check_num_classes(num_classes, where):
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) \
            or num_classes < 1:
        raise ValueError(f"{where}: num_classes must be a positive int, got {num_classes!r}")


def lenet5(num_classes=10, *, dtype=np.float32, rng=None):
    """LeNet-5: CONV5-6, POOL, CONV5-16, POOL, FC-120, FC-84, FC, tanh, on 32x32x1 digits.

    Args:
        num_classes: outputs of the last FC layer (10 digits by default).
        dtype: float32 (default) or float64. rng: np.random.Generator for every init.

    Volumes: 1x32x32 -> 6x28x28 -> 6x14x14 -> 16x10x10 -> 16x5x5 -> 400 -> 120 -> 84 -> 10.
    Parameters: 156 + 2,416 + 48,120 + 10,164 + 850 = 61,706 at 10 classes.
    Stages: "features", "flatten", "classifier".

    >>> net = lenet5(rng=np.random.default_rng(0))
    >>> net.input_shape, net.output_shape(net.input_shape), net.num_params()
    ((1, 32, 32), (10,), 61706)
    """
    _check_num_classes(num_classes, "lenet5")
    rng = np.random.default_rng() if rng is None else rng
    init = {"dtype": dtype, "rng": rng}
    model = Sequential({
        "features": Sequential(
            Conv2d(1, 6, 5, **init), Tanh(), AvgPool2d(2),       # C1, S2: 6x28x28 -> 6x14x14
            Conv2d(6, 16, 5, **init), Tanh(), AvgPool2d(2),      # C3, S4: 16x10x10 -> 16x5x5
        ),
        "flatten": Flatten(),
        "classifier": Sequential(
            Linear(16 * 5 * 5, 120, **init), Tanh(),             # C5 (an FC on 5x5 maps)
            Linear(120, 84, **init), Tanh(),                     # F6
            Linear(84, num_classes, **init),                     # output
        ),
    })
    model.input_shape = (1, 32, 32)
    return model
