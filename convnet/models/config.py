"""Models as JSON: get_config() describes a model, from_config() builds it again.

The configuration is plain data (no pickle, no code): every layer's constructor arguments
under its type name, containers with their named children. Weights travel separately
(safetensors files with dotted keys), so a model file is readable and safe to load.

A configuration may come from a hostile file, so from_config checks it before it builds:
the shape of every node (a dict with a known "type", only that type's fields), container
nesting (``convnet.limits.MAX_DEPTH``), the layer count (MAX_LAYERS) and the parameters,
each layer's and the model's running total (MAX_PARAMS), counted before they are
allocated. Each layer's constructor checks its own fields' types and ranges.
"""

from __future__ import annotations

import inspect

from convnet import limits
from convnet.layers.activation import LeakyReLU, ReLU, ReLU6, Sigmoid, Tanh
from convnet.layers.base import Identity, counting_only, counting_params
from convnet.layers.conv import Conv2d, LocallyConnected2d
from convnet.layers.dropout import Dropout, Dropout2d
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from convnet.layers.pool import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    LPPool2d,
    MaxPool2d,
)
from convnet.models.containers import (  # noqa: F401  MAX_NAME: the importers' cap
    MAX_NAME,
    Concat,
    DenseBlock,
    Residual,
    Sequential,
    check_child_name,
)

LAYERS = {cls.__name__: cls for cls in (
    Conv2d, LocallyConnected2d, MaxPool2d, AvgPool2d, LPPool2d, AdaptiveAvgPool2d,
    AdaptiveMaxPool2d, ReLU, ReLU6, LeakyReLU, Tanh, Sigmoid, Linear, Flatten, BatchNorm1d,
    BatchNorm2d, LocalResponseNorm, Dropout, Dropout2d, Identity)}
CONTAINERS = {"Sequential": Sequential, "Concat": Concat, "DenseBlock": DenseBlock}
# Each layer's constructor arguments: the fields its config may have.
_ARGUMENTS = {name: inspect.signature(cls).parameters for name, cls in LAYERS.items()}
# The fields of each container's config: name -> required.
_CONTAINER_FIELDS = {
    "Sequential": {"children": True}, "Concat": {"children": True},
    "DenseBlock": {"children": True},
    "Residual": {"body": True, "shortcut": False, "shortcut_name": False, "post": False},
}
# *args and **kwargs (Identity's, which ignores them) are no config fields
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def register_container(cls):
    """Let from_config build ``cls``, a container defined above the models (GoogLeNet's
    AuxClassifier, in the zoo): a Sequential of named children under its own type name,
    as Sequential.get_config writes it, built as ``cls(children)``. Returns cls.

    The module that defines cls registers it when imported; load_model imports the zoo.
    """
    if not (isinstance(cls, type) and issubclass(cls, Sequential)):
        raise ValueError(f"register_container: expected a subclass of Sequential, got "
                         f"{cls!r:.80}")
    CONTAINERS[cls.__name__] = cls
    _CONTAINER_FIELDS[cls.__name__] = {"children": True}
    return cls


def _kinds():
    return ", ".join(sorted([*LAYERS, *_CONTAINER_FIELDS]))


def from_config(config, rng=None, where="model config", max_params=None,
                weights="the weights file"):
    """Build a layer or model from the dict that its get_config() returned.

    Parameters get a fresh initialization from ``rng``; load weights afterwards.
    ``where`` names the source (the model file) in errors. Every problem is a ValueError
    naming ``where``, the layer's dotted path (``features.0``), the field, what it must be
    and what it is, raised before any layer over the caps is allocated. With
    ``max_params`` (the number of values in ``weights``, the file the model will load), a
    model whose parameters and buffers would be more is refused the same way: its
    weights could not fit it.

    >>> net = from_config({"type": "Sequential", "children": [["0", {"type": "ReLU"}]]})
    >>> net[0]
    ReLU()
    """
    with counting_params(max_params, weights), counting_only():   # before any is written
        _Builder(rng, where).build(config, "", 0)
    with counting_params(max_params, weights):
        return _Builder(rng, where).build(config, "", 0)


class _Builder:
    """One from_config call: the rng, the source's name, and the layers made so far."""

    def __init__(self, rng, where):
        self.rng = rng
        self.where = where
        self.layers = 0

    def place(self, path):
        """The source and the layer's dotted path, as errors begin."""
        return f"{self.where}, layer {path}" if path else self.where

    def build(self, config, path, depth):
        """The layer or container that ``config`` describes, at ``path``."""
        place = self.place(path)
        if not isinstance(config, dict) or not isinstance(config.get("type"), str):
            raise ValueError(f"{place}: expected a dict with a 'type' (a layer or container "
                             f"name), got {config!r:.80}")
        kind = config["type"]
        self.layers += 1
        limits.check_count(self.layers, "MAX_LAYERS", "layers", self.where)
        if kind in _CONTAINER_FIELDS:
            limits.check_count(depth + 1, "MAX_DEPTH", "containers nested", place)
            return self.container(kind, config, path, depth + 1)
        if kind not in LAYERS:
            raise ValueError(f"{place}: unknown layer type {kind!r:.80}; known types: "
                             f"{_kinds()}")
        return self.layer(kind, config, place)

    def layer(self, kind, config, place):
        """A leaf layer: the config's fields are its constructor's arguments."""
        params = _ARGUMENTS[kind]
        fields = [name for name, param in params.items()         # in the signature's order
                  if name != "rng" and param.kind not in _VARIADIC]
        args = _fields(config, fields, place, kind)
        missing = [name for name in fields if name not in args
                   and params[name].default is inspect.Parameter.empty]
        if missing:
            raise ValueError(f"{place}: malformed {kind} config: missing field(s) "
                             f"{', '.join(missing)}")
        if "rng" in params:
            args["rng"] = self.rng
        return self.construct(LAYERS[kind], place, **args)

    def container(self, kind, config, path, depth):
        """A container: its children (or body, shortcut and post) built in turn."""
        place = self.place(path)
        spec = _CONTAINER_FIELDS[kind]
        args = _fields(config, list(spec), place, kind)
        for name, required in spec.items():
            if required and name not in args:
                raise ValueError(f"{place}: malformed {kind} config: missing field {name}")
        if kind != "Residual":
            children = self.children(args["children"], f"{place}: children", path, depth)
            return self.construct(CONTAINERS[kind], place, children)
        body = self.children(args["body"], f"{place}: body", path, depth)
        name = _child_name(args.get("shortcut_name", "downsample"),
                           f"{place}: shortcut_name")
        shortcut = (self.build(args["shortcut"], _join(path, name), depth)
                    if "shortcut" in args else None)
        post = self.build(args["post"], _join(path, "post"), depth) if "post" in args else None
        return self.construct(Residual, place, body, shortcut, post, shortcut_name=name)

    def construct(self, cls, place, *args, **kwargs):
        """cls(*args, **kwargs), its own check's ValueError placed in the source."""
        try:
            return cls(*args, **kwargs)
        except ValueError as err:   # the constructor names the layer's type
            raise ValueError(f"{place}: {err}") from None

    def children(self, pairs, field, path, depth):
        """A list of [name, config] pairs -> {name: layer}, names unique and dot-free."""
        if not isinstance(pairs, (list, tuple)):
            raise ValueError(f"{field} must be a list of [name, layer] pairs, got "
                             f"{pairs!r:.80}")
        limits.check_count(self.layers + len(pairs), "MAX_LAYERS", "layers", self.where)
        out = {}
        for pair in pairs:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"{field}: each child must be a [name, layer] pair, got "
                                 f"{pair!r:.80}")
            name = _child_name(pair[0], field)
            if name in out:
                raise ValueError(f"{field}: the child name {name!r} is given twice")
            out[name] = self.build(pair[1], _join(path, name), depth)
        return out


def _child_name(name, field):
    """A child's name, as containers take it (``check_child_name``)."""
    return check_child_name(name, field)


def _join(path, name):
    return f"{path}.{name}" if path else name


def _fields(config, known, place, kind):
    """The config's fields but "type", each one ``kind`` takes; an unknown one is named."""
    args = {key: value for key, value in config.items() if key != "type"}
    unknown = [key for key in args if key not in known]
    if unknown:
        raise ValueError(f"{place}: malformed {kind} config: unknown field(s) "
                         f"{', '.join(repr(key)[:40] for key in unknown[:5])}; "
                         f"{kind} takes {', '.join(known) or 'no fields'}")
    return args
