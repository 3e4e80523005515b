"""The zoo: the famous ConvNets of the notes' case studies, as plain functions.

Each function builds a Sequential with named stages ("features", "avgpool", "classifier",
or ResNet's "conv1" .. "layer4", "fc") and torchvision's state dict keys where torchvision
has the net, so its weights load unchanged. Every model carries ``model.input_shape``, its
default per-sample input (C, H, W). All take ``num_classes`` and the keywords ``dtype``
and ``rng`` (an np.random.Generator given to every layer with parameters). ResNet, VGG,
DenseNet and torchvision's GoogLeNet start from the weights torchvision draws for them
(``convnet.zoo.init``), the others from PyTorch's default per layer.

    >>> import numpy as np
    >>> from convnet.zoo import get_model
    >>> net = get_model("resnet18", num_classes=10, rng=np.random.default_rng(0))
    >>> net.output_shape(net.input_shape)
    (10,)

``MODELS`` is the registry (name -> function), ``get_model(name, **kwargs)`` looks a name
up, and ``describe()`` / ``listing()`` give the table that ``convnet zoo`` prints.
"""

from __future__ import annotations

import difflib

from convnet.zoo.alexnet import alexnet, alexnet_torchvision
from convnet.zoo.densenet import densenet121, densenet169, densenet201, densenet_bc_100
from convnet.zoo.googlenet import googlenet, googlenet_torchvision
from convnet.zoo.lenet import lenet5
from convnet.zoo.resnet import resnet18, resnet34, resnet50, resnet101, resnet152
from convnet.zoo.vgg import vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn
from convnet.zoo.zfnet import zfnet, zfnet_wide

MODELS = {
    "lenet5": lenet5,
    "alexnet": alexnet,
    "alexnet_torchvision": alexnet_torchvision,
    "zfnet": zfnet, "zfnet_wide": zfnet_wide,
    "vgg11": vgg11, "vgg13": vgg13, "vgg16": vgg16, "vgg19": vgg19,
    "vgg11_bn": vgg11_bn, "vgg13_bn": vgg13_bn, "vgg16_bn": vgg16_bn, "vgg19_bn": vgg19_bn,
    "googlenet": googlenet,
    "googlenet_torchvision": googlenet_torchvision,
    "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50,
    "resnet101": resnet101, "resnet152": resnet152,
    "densenet121": densenet121, "densenet169": densenet169, "densenet201": densenet201,
    "densenet_bc_100": densenet_bc_100,
}

# name: (default per-sample input (C, H, W), parameters at the default num_classes).
# Building VGG-19 to count its parameters takes half a gigabyte, so the listing reads
# them from here; tests/test_zoo.py builds every model and checks each row.
CARDS = {
    "lenet5": ((1, 32, 32), 61_706),
    "alexnet": ((3, 227, 227), 60_965_224),
    "alexnet_torchvision": ((3, 224, 224), 61_100_840),
    "zfnet": ((3, 224, 224), 62_357_608),
    "zfnet_wide": ((3, 224, 224), 107_627_624),
    "vgg11": ((3, 224, 224), 132_863_336),
    "vgg13": ((3, 224, 224), 133_047_848),
    "vgg16": ((3, 224, 224), 138_357_544),
    "vgg19": ((3, 224, 224), 143_667_240),
    "vgg11_bn": ((3, 224, 224), 132_868_840),
    "vgg13_bn": ((3, 224, 224), 133_053_736),
    "vgg16_bn": ((3, 224, 224), 138_365_992),
    "vgg19_bn": ((3, 224, 224), 143_678_248),
    "googlenet": ((3, 224, 224), 6_998_552),
    "googlenet_torchvision": ((3, 224, 224), 6_624_904),
    "resnet18": ((3, 224, 224), 11_689_512),
    "resnet34": ((3, 224, 224), 21_797_672),
    "resnet50": ((3, 224, 224), 25_557_032),
    "resnet101": ((3, 224, 224), 44_549_160),
    "resnet152": ((3, 224, 224), 60_192_808),
    "densenet121": ((3, 224, 224), 7_978_856),
    "densenet169": ((3, 224, 224), 14_149_480),
    "densenet201": ((3, 224, 224), 20_013_928),
    "densenet_bc_100": ((3, 32, 32), 769_162),
}


def get_model(name, **kwargs):
    """Build the zoo model ``name`` with the given arguments (num_classes, dtype, rng, ...).

    >>> get_model("lenet5").num_params()
    61706
    """
    if name not in MODELS:
        close = difflib.get_close_matches(str(name), MODELS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"convnet.zoo: unknown model {name!r}.{hint} "
                         f"Valid names: {', '.join(MODELS)}")
    if "rng" in kwargs:           # said once for the model, not by its first layer
        from convnet.layers.base import generator
        generator(kwargs["rng"], f"convnet.zoo: {name}")
    return MODELS[name](**kwargs)


def describe():
    """One dict per model: name, description, input_shape (C, H, W), num_params."""
    rows = []
    for name, factory in MODELS.items():
        input_shape, count = CARDS[name]
        summary = (factory.__doc__ or "").strip().splitlines()[0]
        rows.append({"name": name, "description": summary, "input_shape": input_shape,
                     "num_params": count})
    return rows


def listing():
    """The zoo as a text table: name, default input (W x H x D, as the notes write it),
    parameters at the default number of classes, and a one-line description."""
    rows = describe()
    width = max(len(row["name"]) for row in rows)
    lines = [f"{'name':<{width}}  {'input':>11}  {'params':>11}  description"]
    for row in rows:
        c, h, w = row["input_shape"]
        lines.append(f"{row['name']:<{width}}  {f'{w}x{h}x{c}':>11}  "
                     f"{row['num_params']:>11,}  {row['description']}")
    return "\n".join(lines)


__all__ = ["MODELS", "CARDS", "get_model", "describe", "listing", *MODELS]
