"""The initial weights torchvision gives its nets, for the zoo's builds of them.

Every convnet layer starts with PyTorch's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
(``layers.base.uniform_init``). That keeps the variance of a plain stack of CONV -> RELU
layers shrinking by about a third a layer: thirteen of them (VGG-16 without batch norm)
leave the last activations a hundredth of the input's, and training from scratch barely
starts. torchvision's model builders therefore re-draw their nets' weights; the zoo does
as they do, per family:

    "resnet"     CONV weights N(0, 2 / fan_out) (He et al.'s init for a RELU net, counted
                 on the outputs); FC layers keep PyTorch's default
    "vgg"        CONV weights N(0, 2 / fan_out), CONV biases 0; FC weights N(0, 0.01^2),
                 FC biases 0
    "densenet"   CONV weights N(0, 2 / fan_in); FC biases 0
    "googlenet"  CONV and FC weights N(0, 0.01^2) (torchvision's truncation at +-2 never
                 acts at that spread); FC biases keep PyTorch's default

fan_in = C/groups * FH * FW, fan_out = K * FH * FW, as PyTorch counts them for a weight
(K, C/groups, FH, FW). Batch norm starts at weight 1, bias 0 in every family, as
convnet's BatchNorm2d does. Inside ``counting_only`` nothing is drawn or written.
"""

from __future__ import annotations

import math

from convnet.layers.base import counting_only_active
from convnet.layers.conv import Conv2d
from convnet.layers.linear import Linear

FAMILIES = ("resnet", "vgg", "densenet", "googlenet")


def _normal(rng, array, std):
    """Fill ``array`` in place with N(0, std^2) draws (no temporary as large as it)."""
    rng.standard_normal(dtype=array.dtype, out=array)
    array *= std


def torchvision_init(model, family, rng):
    """Re-draw the weights of ``model``'s CONV and FC layers as torchvision initializes
    the ``family`` (see the module docstring), from ``rng``; returns model."""
    if family not in FAMILIES:
        raise ValueError(f"torchvision_init: family must be one of {FAMILIES}, got "
                         f"{family!r}")
    if counting_only_active():
        return model
    for _, layer in model.named_layers():
        params = layer.params
        if isinstance(layer, Conv2d):
            k, c, fh, fw = params["weight"].shape
            fan = {"resnet": k * fh * fw, "vgg": k * fh * fw, "densenet": c * fh * fw}
            std = math.sqrt(2.0 / fan[family]) if family in fan else 0.01
            _normal(rng, params["weight"], std)
            if family == "vgg" and "bias" in params:
                params["bias"][...] = 0
        elif isinstance(layer, Linear):
            if family in ("vgg", "googlenet"):
                _normal(rng, params["weight"], 0.01)
            if family in ("vgg", "densenet") and "bias" in params:
                params["bias"][...] = 0
    return model
