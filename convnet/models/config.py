"""Models as JSON: get_config() describes a model, from_config() builds it again.

The configuration is plain data (no pickle, no code): every layer's constructor arguments
under its type name, containers with their named children. Weights travel separately
(safetensors files with dotted keys), so a model file is readable and safe to load.
"""

from __future__ import annotations

from convnet.layers.activation import LeakyReLU, ReLU, Sigmoid, Tanh
from convnet.layers.base import Identity
from convnet.layers.conv import Conv2d, LocallyConnected2d
from convnet.layers.dropout import Dropout
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from convnet.layers.pool import AdaptiveAvgPool2d, AvgPool2d, LPPool2d, MaxPool2d
from convnet.models.containers import Concat, DenseBlock, Residual, Sequential

LAYERS = {cls.__name__: cls for cls in (
    Conv2d, LocallyConnected2d, MaxPool2d, AvgPool2d, LPPool2d, AdaptiveAvgPool2d, ReLU,
    LeakyReLU, Tanh, Sigmoid, Linear, Flatten, BatchNorm1d, BatchNorm2d, LocalResponseNorm,
    Dropout, Identity)}
CONTAINERS = {"Sequential": Sequential, "Concat": Concat, "DenseBlock": DenseBlock}


def from_config(config, rng=None, where="model config"):
    """Build a layer or model from the dict that its get_config() returned.

    Parameters get a fresh initialization from ``rng``; load weights afterwards.
    """
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(f"{where}: expected a dict with a 'type', got {config!r:.80}")
    kind = config["type"]
    args = {key: value for key, value in config.items() if key != "type"}
    try:
        if kind in CONTAINERS:
            children = {key: from_config(child, rng, f"{where}.{key}")
                        for key, child in args["children"]}
            return CONTAINERS[kind](children)
        if kind == "Residual":
            body = {key: from_config(child, rng, f"{where}.{key}") for key, child in args["body"]}
            name = args.get("shortcut_name", "downsample")
            shortcut = (from_config(args["shortcut"], rng, f"{where}.{name}")
                        if "shortcut" in args else None)
            post = from_config(args["post"], rng, f"{where}.post") if "post" in args else None
            return Residual(body, shortcut, post, shortcut_name=name)
        if kind not in LAYERS:
            raise ValueError(f"{where}: unknown layer type {kind!r}; known types: "
                             f"{', '.join(sorted([*LAYERS, *CONTAINERS, 'Residual']))}")
        cls = LAYERS[kind]
        if "rng" in cls.__init__.__code__.co_varnames:
            args["rng"] = rng
        return cls(**args)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{where}: malformed {kind} config ({err})") from None
