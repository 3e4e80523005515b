"""Models: Sequential and the graph blocks of the famous nets.

A container holds named child layers; its parameters are the children's, under dotted
PyTorch-style keys (``features.0.weight``), so state dicts line up with torchvision's.

- ``Sequential``: layers one after another (the notes' arrow notation).
- ``Residual``: out = post(body(x) + shortcut(x)), ResNet's skip connection; the shortcut
  is the identity or a projection (1x1 CONV + BN) where the shape changes.
- ``Concat``: parallel branches concatenated along depth (GoogLeNet's Inception module).
- ``DenseBlock``: each layer receives the concatenation of all preceding feature maps
  (DenseNet); its output depth is D0 + L*k for L layers of growth rate k.

Every container: forward, backward, params()/grads()/buffers() as flat dicts,
num_params(), train()/eval(), output_shape(), macs(), and PyTorch's module API
(children(), named_children(), modules(), named_parameters(), ...). A container's
output_shape checks every layer's output volume against ``convnet.limits.MAX_VOLUME``
(values per sample), so a model file cannot ask for activations beyond the cap.
"""

from __future__ import annotations

import math
import weakref

import numpy as np

from convnet import limits
from convnet.functional.activation import relu_forward
from convnet.functional.threads import holding_blas
from convnet.layers.activation import ReLU
from convnet.layers.base import Layer, _first
from convnet.layers.conv import Conv2d
from convnet.layers.norm import BatchNorm2d
from convnet.layers.pool import MaxPool2d


def infer_layers(layers, x):
    """Each layer's ``infer`` in turn, with every CONV -> BN -> RELU run (BN and RELU each
    optional) fused into the CONV's call: it folds an eval-mode BatchNorm2d into its
    filters or its output and applies the RELU to its output as it is finished
    (``Conv2d.infer``). The fused BN and RELU layers are not called; their caches are
    dropped, as ``infer`` does. A BN of another channel count than the CONV's output is
    not fused: its own infer refuses the volume."""
    i = 0
    while i < len(layers):
        layer, i = layers[i], i + 1
        if not isinstance(layer, Conv2d):
            x = layer.infer(x)
            continue
        bn = None
        if (i < len(layers) and isinstance(layers[i], BatchNorm2d)
                and layers[i].num_features == layer.out_channels   # else its own error
                and layers[i].inference_affine() is not None):
            bn, i = layers[i], i + 1
            bn.cache = None
        relu = i < len(layers) and type(layers[i]) is ReLU
        if relu:
            layers[i].cache = None
            i += 1
        x = layer.infer(x, bn=bn, relu=relu)
    return x


def layer_output_shape(layer, shape):
    """``layer.output_shape(shape)``, its volume (values per sample) held to
    limits.MAX_VOLUME: how containers follow shapes through their children."""
    return _check_volume(layer.output_shape(shape), layer, "its output")


def _check_volume(shape, layer, what):
    """shape, if its volume is at most limits.MAX_VOLUME; the error names the layer (a
    container by its name and type: its repr would be the whole subtree)."""
    where = layer.where
    if isinstance(layer, Container):
        where = f"{layer.name} {type(layer).__name__}" if layer.name else type(layer).__name__
    limits.check_count(math.prod(shape), "MAX_VOLUME", f"{what} {shape}: values per sample",
                       where)
    return shape


def _standalone(layer):
    """A layer taken out of a model: no model name, its own children named from it."""
    layer.name = None
    if isinstance(layer, Container):
        layer._set_names()


def _owned(out, x, skip):
    """True when out is a new array that can take skip in place: not a view of the input
    and already of the sum's dtype."""
    return (out.flags.writeable and out.dtype == np.result_type(out, skip)
            and not np.may_share_memory(out, x))


def _training_plan(layers):
    """The calls Sequential.forward makes, as (layer, fused RELU or None) pairs (see
    Sequential.forward): each RELU -> MaxPool2d pair runs swapped, and each other CONV ->
    RELU pair is one call, the RELU fused into the CONV (Conv2d.forward with relu=True).
    Only undilated pools swap: a dilated window can fall wholly in the -inf padding,
    where max then RELU gives 0 but RELU then max gives -inf."""
    def swaps(i):   # layers[i] is a RELU that a max POOL follows
        return (i + 1 < len(layers) and type(layers[i]) is ReLU
                and type(layers[i + 1]) is MaxPool2d and layers[i + 1].dilation == (1, 1))

    plan, i = [], 0
    while i < len(layers):
        if swaps(i):
            plan += [(layers[i + 1], None), (layers[i], None)]
            i += 2
        elif (type(layers[i]) is Conv2d and i + 1 < len(layers)
              and type(layers[i + 1]) is ReLU and not swaps(i + 1)):
            plan.append((layers[i], layers[i + 1]))
            i += 2
        else:
            plan.append((layers[i], None))
            i += 1
    return plan


def _trains(layer):
    """Whether layer (a leaf or a block) holds a parameter that is not frozen."""
    leaves = ([leaf for _, leaf in layer.named_layers()] if isinstance(layer, Container)
              else [layer])
    return any(leaf.params and not leaf.frozen for leaf in leaves)


def relus_in_place(model):
    """Make every RELU that directly follows a CONV, FC or batch norm layer (whose
    backward passes read their input, not their output) write into that output
    (``inplace=True``), as from_notation and torchvision's nets do: one activation buffer
    less each, and what ``summary`` counts. "Follows" is within a chain of layers: a
    Sequential, or a Residual's body. Walks the containers of ``model``; returns it.

    >>> net = relus_in_place(Sequential(Conv2d(1, 2, 3), ReLU(), MaxPool2d(2), ReLU()))
    >>> [getattr(layer, "inplace", None) for layer in net]
    [None, True, None, False]
    """
    from convnet.layers.linear import Linear
    from convnet.layers.norm import BatchNorm1d
    kept_input = (Conv2d, Linear, BatchNorm1d, BatchNorm2d)
    stack = [model]
    while stack:
        container = stack.pop()
        children = list(container.children())
        if isinstance(container, Sequential):
            chain = children
        elif isinstance(container, Residual):
            chain = [container[key] for key in container.body_keys]
        else:               # Concat's branches, DenseBlock's layers: no chain
            chain = []
        for before, layer in zip(chain, chain[1:]):
            if type(layer) is ReLU and isinstance(before, kept_input):
                layer.inplace = True
        stack.extend(child for child in children if isinstance(child, Container))
    return model


MAX_NAME = 200   # characters in a child's name (torchvision's longest is 15)


def check_child_name(name, where):
    """A child's name: a non-empty string of at most MAX_NAME printable characters (a
    summary prints it), without dots (they separate the names in a dotted key such as
    ``features.0.weight``); else a ValueError naming ``where``. Returns it."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or "." in name \
            or not name.isprintable():
        raise ValueError(f"{where}: a child name must be a non-empty string of at most "
                         f"{MAX_NAME} printable characters without dots, got {name!r:.80}")
    return name


class Container(Layer):
    """A layer made of named child layers. Subclasses define forward and backward.

    children: (name, layer) pairs; each name as ``check_child_name`` takes it, each once.
    """

    holds_layers = True

    def __init__(self, children):
        super().__init__()
        del self.params, self.grads, self.buffers  # a container's come from its children
        self._children = {}
        where = type(self).__name__
        for pair in children:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                hint = (f"; for layers in order: {where}(*layers)"
                        if isinstance(pair, Layer) else "")
                raise ValueError(f"{where}: children must be (name, layer) pairs, got "
                                 f"{pair!r:.80}{hint}")
            key, layer = pair
            check_child_name(key, where)
            self._check_layer(key, layer)
            if key in self._children:
                raise ValueError(f"{where}: child names must be unique, got {key!r} twice")
            self._children[key] = layer
        self._check_distinct()
        self._set_names()

    def _check_layer(self, key, layer):
        """A child must be a Layer; the error names the container and the child."""
        if not isinstance(layer, Layer):
            raise ValueError(f"{type(self).__name__}: child {key!r} must be a Layer, got "
                             f"{type(layer).__name__}")

    def _check_distinct(self):
        """Each layer object at one place only: a layer keeps the cache of its last
        forward and its gradients, so one object at two places gives wrong gradients."""
        seen = {}
        for name, layer in self.named_layers():
            if id(layer) in seen:
                raise ValueError(
                    f"{type(self).__name__}: one {layer!r} object is at both "
                    f"{seen[id(layer)]!r} and {name!r}; a layer keeps the cache of its last "
                    f"forward and its gradients, so each place needs its own (make a new "
                    f"{type(layer).__name__}(...) for each)")
            seen[id(layer)] = name

    def output_shape(self, input_shape):
        """A container's output comes from how its forward joins the children: each kind
        says (a subclass of Container defines it, as Sequential and Residual do)."""
        raise NotImplementedError(f"{type(self).__name__} must define output_shape (and "
                                  f"macs): a Container's forward joins its children its "
                                  f"own way")

    def macs(self, input_shape):
        raise NotImplementedError(f"{type(self).__name__} must define macs (and "
                                  f"output_shape): a Container's forward joins its "
                                  f"children its own way")

    # -- structure ---------------------------------------------------------------------
    def named_children(self):
        """(name, layer) pairs of the direct children, in order, as PyTorch's
        ``named_children()`` (``children()`` yields the layers alone)."""
        yield from list(self._children.items())

    def named_layers(self, prefix=""):
        """(dotted name, layer) for every leaf layer, depth first."""
        for key, layer in self._children.items():
            name = f"{prefix}{key}"
            if isinstance(layer, Container):
                yield from layer.named_layers(name + ".")
            else:
                yield name, layer

    def _set_names(self, prefix=None):
        """Give every descendant its dotted name, used in error messages, and its
        container (``_root`` follows them up)."""
        if prefix is None:
            prefix = self.name
        for key, layer in self._children.items():
            layer.name = f"{prefix}.{key}" if prefix else key
            object.__setattr__(layer, "_parent", weakref.ref(self))
            if isinstance(layer, Container):
                layer._set_names(layer.name)

    @property
    def where(self):
        """How errors name a container: its model name and type (its repr spans lines)."""
        return f"{self.name} {type(self).__name__}" if self.name else type(self).__name__

    def __setstate__(self, state):
        """A copy (copy.deepcopy, pickle) of a container: its children linked to it."""
        self.__dict__.update(state)
        for child in self._children.values():
            object.__setattr__(child, "_parent", weakref.ref(self))

    def _root(self):
        """The outermost container this one is in (itself when in none), through the
        containers that last named it and hold it still."""
        node = self
        for _ in range(limits.MAX_DEPTH + 1):
            ref = node.__dict__.get("_parent")
            parent = ref() if ref is not None else None
            if parent is None or not any(child is node for child in parent._children.values()):
                return node
            node = parent
        return node

    def __getitem__(self, key):
        """A child by name (``model["features"]``), or by position as in PyTorch
        (``model[0]``, ``model[-1]``); a Sequential also takes a slice (``model[1:3]``,
        a Sequential of those children, under their names)."""
        if isinstance(key, slice):
            if not isinstance(self, Sequential):
                raise TypeError(f"{type(self).__name__} cannot be sliced (a Sequential can)")
            part = Sequential(dict(list(self._children.items())[key]))
            self._set_names()        # the layers keep their names in this model
            return part
        return self._children[self._key(key)]

    # What a model may carry (spec.resolve_model, the zoo, load_model): read with
    # getattr(model, name, None), never a child's name, whatever a file calls its layers.
    MODEL_ATTRIBUTES = ("info", "input_shape", "trained")

    def __getattr__(self, name):
        """A child by name as an attribute, as in PyTorch (``model.features``,
        ``model.fc``). Called only where no attribute has the name."""
        children = self.__dict__.get("_children")
        if isinstance(children, dict) and name in children and (
                name not in self.MODEL_ATTRIBUTES):
            return children[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        """``model.fc = Linear(...)`` replaces the child, as in PyTorch (a new head for
        fine-tuning); other attributes are set as usual."""
        children = self.__dict__.get("_children")
        if not (isinstance(children, dict) and name in children
                and name not in self.MODEL_ATTRIBUTES and name not in self.__dict__):
            if isinstance(value, Layer) and isinstance(children, dict) and (
                    name not in self.__dict__):
                raise AttributeError(
                    f"{type(self).__name__}: {name}: a layer set as an attribute is not one "
                    f"of the model's children (it would not run, train or be saved): give it "
                    f"among the children"
                    + (", or add it with append or insert" if isinstance(self, Sequential)
                       else ""))
            super().__setattr__(name, value)
            return
        self._put(name, value)

    def __setitem__(self, key, layer):
        """Replace a child, by position as in PyTorch (``model.classifier[6] =
        Linear(4096, 10)``, ``model[-1] = ...``) or by name (``model["fc"] = ...``); the
        new layer takes the old one's name. Each layer object may be at one place only."""
        if isinstance(key, slice):
            raise TypeError(f"{type(self).__name__}: assign one child at a time, by position "
                            f"or name, got a slice {key}")
        self._put(self._key(key), layer)

    def _key(self, key):
        """The name of the child at ``key``, a position (negative from the end) or a name;
        IndexError or KeyError as ``__getitem__`` raises them."""
        if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
            keys = list(self._children)
            if not -len(keys) <= key < len(keys):
                raise IndexError(f"{type(self).__name__} index {key} is out of range for "
                                 f"its {len(keys)} children")
            return keys[key]
        if key not in self._children:
            raise KeyError(f"{type(self).__name__} has no child named {key!r}; its children "
                           f"are {_first(list(self._children), ', ')}")
        return key

    def _put(self, key, layer):
        """Make ``layer`` the child named ``key`` (an existing one keeps its place, a new
        one goes last); returns the layer it replaced (None: a new name). Checked as the
        constructor checks, and undone where the check fails."""
        self._check_layer(key, layer)
        old = self._children.get(key)
        self._set_children([*self._children.items(), (key, layer)])
        return old

    def _set_children(self, items):
        """Make ``items`` ((name, layer) pairs; a repeated name replaces the earlier
        layer in its place) the children, each layer object at one place (else nothing
        changes); names are set again, and the layers no longer here become standalone
        (no model name)."""
        before = self._children
        self._children = dict(items)
        try:
            self._check_distinct()
            root = self._root()
            if root is not self:         # a layer of another branch of the same model
                root._check_distinct()
        except ValueError:
            self._children = before
            raise
        kept = {id(layer) for layer in self._children.values()}
        for layer in before.values():
            if id(layer) not in kept:
                _standalone(layer)
        self._set_names()

    def __iter__(self):
        return iter(self._children.values())

    def __len__(self):
        return len(self._children)

    # -- parameters ----------------------------------------------------------------------
    def _flat(self, attribute):
        out = {}
        for name, layer in self.named_layers():
            for key, value in getattr(layer, attribute).items():
                out[f"{name}.{key}"] = value
        return out

    def params(self):
        """Every parameter under its dotted key, e.g. {'features.0.weight': array}."""
        return self._flat("params")

    def grads(self):
        """The gradients of the last backward, with the same keys as params(); a frozen
        layer's are None (PyTorch's grad of a parameter with requires_grad=False), which
        an optimizer's step leaves alone."""
        return {f"{name}.{key}": None if layer.frozen else value
                for name, layer in self.named_layers() for key, value in layer.grads.items()}

    def trainable_params(self):
        """params() without the frozen layers': what an optimizer should update."""
        return {f"{name}.{key}": value for name, layer in self.named_layers()
                if not layer.frozen for key, value in layer.params.items()}

    def freeze(self, *stages, frozen=True):
        """Freeze the layers under the named stages (dotted names, e.g. "features" or
        "layer1.0", or a range of top-level stages "FIRST-LAST" with both ends included,
        e.g. "conv1-layer3" or "0-7"); with no names, the whole model. Returns the model."""
        prefixes = [prefix for stage in stages for prefix in self._stages(str(stage))]
        for name, layer in self.named_layers():
            if not stages or any(name == p or name.startswith(p + ".") for p in prefixes):
                layer.frozen = frozen
        return self

    def _stages(self, stage):
        """The dotted prefixes a freeze argument names: itself, or a range's stages."""
        names = [name for name, _ in self.named_layers()]
        if any(n == stage or n.startswith(stage + ".") for n in names):
            return [stage]
        keys = list(self._children)
        for i, char in enumerate(stage):   # FIRST-LAST, where either may hold a "-"
            first, last = stage[:i], stage[i + 1:]
            if char == "-" and first in keys and last in keys \
                    and keys.index(first) <= keys.index(last):
                return keys[keys.index(first): keys.index(last) + 1]
        raise ValueError(f"{type(self).__name__}.freeze: no stage named {stage!r}; top-level "
                         f"stages are {', '.join(keys)} (a range is FIRST-LAST, e.g. "
                         f"{keys[0]}-{keys[min(1, len(keys) - 1)]})")

    def replace(self, name, layer):
        """Put ``layer`` where the dotted ``name`` is (e.g. "classifier.6"); returns the old."""
        *path, last = str(name).split(".")
        parent = self
        for key in path:
            parent = parent[key] if isinstance(parent, Container) else None
            if parent is None:
                break
        if not isinstance(parent, Container) or last not in parent._children:
            raise ValueError(f"{type(self).__name__}.replace: no layer named {name!r}")
        old = parent._put(last, layer)
        try:
            self._check_distinct()
        except ValueError:
            parent._put(last, old)
            self._set_names()           # the layer refused is still in its first place
            raise
        self._set_names()
        return old

    def unfreeze(self, *stages):
        """Undo freeze() for the named stages (all if none are named)."""
        return self.freeze(*stages, frozen=False)

    def buffers(self):
        """Non-trainable state (batch norm's running statistics), dotted keys."""
        return self._flat("buffers")

    def num_params(self):
        return sum(layer.num_params() for layer in self)

    def state_dict(self):
        """Parameters and buffers under dotted keys, layer by layer in the model's order
        (the order of PyTorch's state_dict, except where a module is declared out of
        execution order, such as torchvision GoogLeNet's aux heads); load by key."""
        out = {}
        for name, layer in self.named_layers():
            for key, value in {**layer.params, **layer.buffers}.items():
                out[f"{name}.{key}"] = value
        return out

    def zero_grad(self):
        for layer in self:
            layer.zero_grad()

    def train(self, mode=True):
        super().train(mode)
        for layer in self:
            layer.train(mode)
        return self

    @holding_blas
    def infer(self, x):
        """Forward without keeping caches (blocks free theirs once their output exists)."""
        out = self.forward(x)
        self.clear_cache()
        return out

    def clear_cache(self):
        """Drop every cached forward (the activations kept for backward)."""
        self.cache = None
        for layer in self:
            if isinstance(layer, Container):
                layer.clear_cache()
            else:
                layer.cache = None

    def get_config(self):
        return {"type": type(self).__name__,
                "children": [[key, layer.get_config()]
                             for key, layer in self.named_children()]}

    def __repr__(self):
        lines = [f"{type(self).__name__}("]
        for key, layer in self.named_children():
            body = repr(layer).replace("\n", "\n  ")
            lines.append(f"  ({key}): {body}")
        return "\n".join(lines) + "\n)"


class Sequential(Container):
    """Layers applied one after another: INPUT -> CONV -> RELU -> POOL -> ... -> FC.

    ``Sequential(*layers)`` names the children "0", "1", ...; ``Sequential(dict)`` (or a
    list of (name, layer) pairs) names them, which makes named stages that can be looked up
    (``model["features"]``), summarized, or cut at (``model.cut("features")``).

    >>> from convnet.layers import Conv2d, ReLU
    >>> net = Sequential(Conv2d(3, 8, 3, padding=1), ReLU())
    >>> net.output_shape((3, 32, 32))
    (8, 32, 32)
    """

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], dict):
            children = list(layers[0].items())
        elif len(layers) == 1 and isinstance(layers[0], list):
            children = [tuple(pair) if isinstance(pair, (tuple, list)) else pair
                        for pair in layers[0]]
        else:
            children = [(str(i), layer) for i, layer in enumerate(layers)]
        super().__init__(children)

    @holding_blas
    def forward(self, x):
        """The layers in order, with two shortcuts that give the same values and
        gradients: RELU -> max POOL runs as POOL -> RELU (max commutes with the monotone
        RELU, and a window whose max is <= 0 passes no gradient either way), the RELU then
        on a volume F*F times smaller; and a RELU right after a CONV and not before such
        a POOL is fused into the CONV (applied as its output is finished, and its
        backward masks the gradient in its first pass: no pass of the RELU's own either
        way; the RELU keeps no cache). backward follows the plan this forward ran, and
        reads the layers' inputs and weights as they are then: neither x nor a weight may
        change in place in between (PyTorch would raise; this is not checked)."""
        self._plan = _training_plan(list(self))
        for layer, relu in self._plan:
            if relu is None:
                x = layer.forward(x)
            else:
                x = layer.forward(x, relu=True)
                relu.cache = None
        return x

    skips_input_grad = True

    @holding_blas
    def backward(self, dout, input_grad=True):
        """Gradients back through the layers; returns dx (N, *input), or None when
        ``input_grad=False`` and the first layer can skip it (the training loop's call:
        the data needs no gradient). With ``input_grad=False`` the pass also stops at the
        first layer from the input that has parameters to train: the frozen layers before
        it (``freeze``) get no backward pass at all, and None is returned."""
        layers = list(self)
        plan = getattr(self, "_plan", None)
        ran = [a for step in plan or () for a in step if a is not None]
        if plan and len(ran) == len(layers) and {id(a) for a in ran} == set(map(id, layers)):
            layers = [layer for layer, _ in plan]    # the calls the last forward made
        if not layers:
            return dout
        cut = False
        if not input_grad:      # the first layer that trains (usually the first: one look)
            start = next((i for i, layer in enumerate(layers) if _trains(layer)), None)
            if start is None:
                return None
            cut, layers = start > 0, layers[start:]
        for layer in reversed(layers[1:]):
            dout = layer.backward(dout)
        first = layers[0]
        if not input_grad and first.skips_input_grad:
            dx = first.backward(dout, input_grad=False)
        else:
            dx = first.backward(dout)
        return None if cut else dx

    @holding_blas
    def infer(self, x):
        """Forward layer by layer, each dropping its cache: only current activations live.
        CONV -> BN -> RELU runs are fused into one pass (see ``infer_layers``)."""
        return infer_layers(list(self), x)

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self:
            shape = layer_output_shape(layer, shape)
        return shape

    def macs(self, input_shape):
        total, shape = 0, tuple(input_shape)
        for layer in self:
            total += layer.macs(shape)
            shape = layer.output_shape(shape)
        return total

    # -- PyTorch's list API ---------------------------------------------------------------
    def _numbered(self):
        """Whether the children are named by position, "0", "1", ..., as PyTorch names
        those of a Sequential made from a list."""
        return list(self._children) == [str(i) for i in range(len(self._children))]

    def _set_listed(self, items, renumber):
        """_set_children, the children named by position again where ``renumber``."""
        if renumber:
            items = [(str(i), layer) for i, (_, layer) in enumerate(items)]
        self._set_children(items)

    def __delitem__(self, key):
        """Remove a child by position (negative from the end), a slice of positions, or
        name, as PyTorch's ``del model[i]``. Children named by position are numbered
        again, as PyTorch does; named ones ("features", "fc") keep their names."""
        keys = list(self._children)[key] if isinstance(key, slice) else [self._key(key)]
        self._set_listed([(k, layer) for k, layer in self._children.items() if k not in keys],
                         self._numbered())

    def pop(self, key=-1):
        """Remove and return the child at ``key`` (a position, by default the last, a
        slice: a Sequential of those children, or a name), as PyTorch's ``pop``."""
        taken = self[key]
        del self[key]
        if isinstance(taken, Sequential) and isinstance(key, slice):
            taken._set_names()
        return taken

    def append(self, layer):
        """Add ``layer`` at the end, as PyTorch's ``append``, under the next free integer
        name (PyTorch's ``str(len(model))`` when that is free); returns the model."""
        return self.insert(len(self), layer)

    def insert(self, index, layer):
        """Put ``layer`` before position ``index`` (negative from the end; len(model):
        at the end), as PyTorch's ``insert``: children named by position are numbered
        again; among named ones the layer takes the next free integer name from
        ``str(len(model))`` on. Returns the model."""
        n = len(self)
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"{type(self).__name__}.insert: index must be an int, got "
                            f"{type(index).__name__}")
        if not -n <= index <= n:
            raise IndexError(f"{type(self).__name__}.insert: index {index} is out of range "
                             f"for its {n} children (-{n} to {n})")
        name = self._free_name()
        self._check_layer(name, layer)
        items = list(self._children.items())
        items.insert(int(index) + n if index < 0 else int(index), (name, layer))
        self._set_listed(items, self._numbered())
        return self

    def extend(self, layers):
        """Append each layer of ``layers`` (a Sequential or any iterable of layers) in
        turn, as PyTorch's ``extend``; returns the model."""
        for layer in list(layers):
            self.append(layer)
        return self

    def _free_name(self):
        """str(len(self)), PyTorch's name for an appended layer, or the next integer
        above it that no child has."""
        i = len(self)
        while str(i) in self._children:
            i += 1
        return str(i)

    def cut(self, name):
        """A Sequential of the children up to and including ``name`` (layers shared)."""
        keys = list(self._children)
        if str(name) not in self._children:
            raise ValueError(f"Sequential: no stage named {name!r}; stages are {keys}")
        kept = keys[: keys.index(str(name)) + 1]
        part = Sequential({key: self._children[key] for key in kept})
        self._set_names()        # the layers keep their names (and links) in this model
        return part


class Residual(Container):
    """ResNet's block: out = post(body(x) + shortcut(x)).

    Args:
        body: the main path, a dict of named layers applied in order (torchvision's
            BasicBlock: conv1, bn1, relu, conv2, bn2).
        shortcut: None for the identity, or a layer (a 1x1 CONV + BN projection) where
            the body changes the volume's size or depth.
        post: a layer applied after the addition (ReLU), or None.
        shortcut_name: the shortcut's key ("downsample", as in torchvision).
    """

    def __init__(self, body, shortcut=None, post=None, shortcut_name="downsample"):
        children = list(body.items())
        self._body_keys = [key for key, _ in children]
        self._shortcut_key = shortcut_name if shortcut is not None else None
        self._post_key = None
        if shortcut is not None:
            children.append((shortcut_name, shortcut))
        if post is not None:
            self._post_key = "post"
            children.append(("post", post))
        super().__init__(children)

    @property
    def body_keys(self):
        """The main path's child names, in order."""
        return list(self._body_keys)

    @property
    def shortcut_key(self):
        """The projection shortcut's child name, or None for the identity."""
        return self._shortcut_key

    @property
    def post_key(self):
        """The name of the layer applied after the addition, or None."""
        return self._post_key

    @holding_blas
    def forward(self, x):
        return self._run(x, "forward")

    @holding_blas
    def infer(self, x):
        """Forward with every child's infer: no caches, bounded im2col memory."""
        return self._run(x, "infer")

    def _run(self, x, how):
        """Body, shortcut, add, post: each child called through ``how`` (forward or infer)."""
        body = [self._children[key] for key in self._body_keys]
        if how == "infer":
            out = infer_layers(body, x)
        else:
            out = x
            for layer in body:
                out = layer.forward(out)
        skip = x
        if self._shortcut_key is not None:
            skip = getattr(self._children[self._shortcut_key], how)(x)
        if out.shape != skip.shape:
            raise ValueError(f"{self.where}: body gives {out.shape[1:]} but the shortcut gives "
                             f"{skip.shape[1:]}; add a projection shortcut")
        if how == "infer" and _owned(out, x, skip):
            out += skip              # at inference no cache holds the body's output
        else:
            out = out + skip
        if self._post_key:
            post = self._children[self._post_key]
            if how == "infer" and type(post) is ReLU:   # out is this block's own array
                post.cache = None
                return relu_forward(out, inplace=True)[0]
            out = getattr(post, how)(out)
        return out

    @holding_blas
    def backward(self, dout):
        if self._post_key:
            dout = self._children[self._post_key].backward(dout)
        dx = dout
        for key in reversed(self._body_keys):
            dx = self._children[key].backward(dx)
        if self._shortcut_key is None:
            return dx + dout
        return dx + self._children[self._shortcut_key].backward(dout)

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for key in self._body_keys:
            shape = layer_output_shape(self._children[key], shape)
        skip = (tuple(input_shape) if self._shortcut_key is None
                else layer_output_shape(self._children[self._shortcut_key], input_shape))
        if shape != skip:
            raise ValueError(f"{self.where}: body gives volume {shape} but the shortcut gives "
                             f"{skip}; add a projection shortcut (1x1 CONV, stride S)")
        if self._post_key:
            shape = layer_output_shape(self._children[self._post_key], shape)
        return shape

    def macs(self, input_shape):
        total, shape = 0, tuple(input_shape)
        for key in self._body_keys:
            total += self._children[key].macs(shape)
            shape = self._children[key].output_shape(shape)
        if self._shortcut_key:
            total += self._children[self._shortcut_key].macs(input_shape)
        if self._post_key:
            total += self._children[self._post_key].macs(shape)     # on the sum
        return total

    def get_config(self):
        body = [[key, self._children[key].get_config()] for key in self._body_keys]
        config = {"type": "Residual", "body": body}
        if self._shortcut_key:
            config["shortcut_name"] = self._shortcut_key
            config["shortcut"] = self._children[self._shortcut_key].get_config()
        if self._post_key:
            config["post"] = self._children[self._post_key].get_config()
        return config


class Concat(Container):
    """Parallel branches on the same input, concatenated along depth (Inception).

    Args:
        branches: a dict of named branches (torchvision: branch1 .. branch4). Every branch
            must give the same H x W; the output depth is the sum of the branches' depths.
    """

    def __init__(self, branches):
        super().__init__(list(branches.items()))

    @holding_blas
    def forward(self, x):
        outs = [branch.forward(x) for branch in self]
        self.cache = [out.shape[1] for out in outs]  # the depth of each branch
        return np.concatenate(outs, axis=1)

    @holding_blas
    def infer(self, x):
        """The branches' infer outputs, concatenated; no caches kept."""
        return np.concatenate([branch.infer(x) for branch in self], axis=1)

    @holding_blas
    def backward(self, dout):
        depths = self._cached()
        splits = np.split(dout, np.cumsum(depths)[:-1], axis=1)
        dx = None
        for branch, d in zip(self, splits):
            g = branch.backward(d)
            dx = g if dx is None else dx + g
        return dx

    def output_shape(self, input_shape):
        shapes = [(key, layer_output_shape(branch, input_shape))
                  for key, branch in self.named_children()]
        sizes = {shape[1:] for _, shape in shapes}
        if len(sizes) != 1:
            raise ValueError(f"{self.where}: branches give different H x W and cannot be "
                             f"concatenated along depth: {dict(shapes)}")
        out = (sum(shape[0] for _, shape in shapes), *shapes[0][1][1:])
        return _check_volume(out, self, "its output")

    def macs(self, input_shape):
        return sum(branch.macs(input_shape) for branch in self)


class DenseBlock(Container):
    """DenseNet's block: layer l sees the concatenation of the input and all earlier outputs.

    x_l = H_l([x_0, x_1, ..., x_{l-1}]); the block returns [x_0, x_1, ..., x_L], so with
    input depth k0 and growth rate k the output depth is k0 + L*k.

    Args:
        layers: a dict of named layers (torchvision: denselayer1 ..), each H_l mapping the
            running concatenation to k new feature maps of the same H x W.
    """

    def __init__(self, layers):
        super().__init__(list(layers.items()))

    @holding_blas
    def forward(self, x):
        features, self.cache = self._run(x, "forward")  # cache: each layer's input depth
        return features

    @holding_blas
    def infer(self, x):
        """The running concatenation through each layer's infer; no caches kept."""
        return self._run(x, "infer")[0]

    def _run(self, x, how):
        """Each layer (through ``how``: forward or infer) on the running concatenation."""
        features, depths = x, []
        for layer in self:
            new = getattr(layer, how)(features)
            depths.append(features.shape[1])
            features = np.concatenate([features, new], axis=1)
        return features, depths

    @holding_blas
    def backward(self, dout):
        depths = self._cached()
        dfeatures = dout
        for layer, depth in zip(reversed(list(self)), reversed(depths)):
            dprev, dnew = dfeatures[:, :depth], dfeatures[:, depth:]
            dfeatures = dprev + layer.backward(dnew)
        return dfeatures

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self:
            new = layer_output_shape(layer, shape)
            if new[1:] != shape[1:]:
                raise ValueError(f"{layer.where}: a dense layer must keep H x W to be "
                                 f"concatenated, got {shape} -> {new}")
            shape = _check_volume((shape[0] + new[0], *shape[1:]), self, "the concatenation")
        return shape

    def macs(self, input_shape):
        total, shape = 0, tuple(input_shape)
        for layer in self:
            total += layer.macs(shape)
            shape = (shape[0] + layer.output_shape(shape)[0], *shape[1:])
        return total
