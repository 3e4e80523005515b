"""Import an ONNX file as a convnet model: the operators convnet has, with their weights.

The graph is read node by node, each node (or a small group of nodes) becoming a layer:

    Conv -> Conv2d                 MaxPool -> MaxPool2d          AveragePool -> AvgPool2d
    LpPool (even p) -> LPPool2d    GlobalAveragePool -> AdaptiveAvgPool2d(1)
    Relu, LeakyRelu, Tanh, Sigmoid -> ReLU, LeakyReLU, Tanh, Sigmoid
    Gemm, MatMul (+ Add of a bias) -> Linear      Flatten(axis=1), Reshape(N, -1) -> Flatten
    BatchNormalization -> BatchNorm2d / BatchNorm1d (running statistics)
    LRN (odd size) -> LocalResponseNorm           Dropout -> Dropout
    Identity -> nothing (a new name for a tensor)  Softmax at the very end -> dropped
    export_onnx's subgraphs for even-size LRN, LPPool2d and ceil-mode AvgPool2d -> one layer

then the graph's shape is read back into convnet's containers: a chain of layers becomes a
Sequential; where a tensor forks, the paths must meet again at one Add (a Residual: body
plus shortcut, the identity when one path is empty) or one Concat along channels (a
Concat of branches; a run of Concat(x, layer(x)) named like one stage becomes a
DenseBlock). A graph that is not nested forks and joins of this kind (a path that leaves
one branch for another) is refused with a ValueError naming the node.

Layer names come from the node names: dotted names (``layer1.0.conv1``, as export_onnx
writes them) and PyTorch's scope names (``/layer1/layer1.0/conv1/Conv``) are rebuilt
into nested containers, so the state-dict keys of an exported convnet model, or of a
PyTorch module exported with torch.onnx.export, come back as they were
(``layer1.0.conv1.weight``; torch folds eval-mode batch norm into the CONV before it
names anything unless exported with training=TrainingMode.PRESERVE). Names that do not
nest are used flat, dots made "_".

ONNX pads each side of a window separately; convnet pads both by P and rounds the output
size down (pools: or up, ceil mode). Uneven pads are read as the convnet setting that
gives the same output size at the graph's input size (the windows then start at the same
places), and refused when there is none. The layers use fit="floor", as ONNX does.

A Softmax at the end of the graph is not imported, since convnet models output class
scores (logits) and leave the softmax to the loss: a warning says so, and
``softmax(model.infer(x))`` gives what the ONNX graph gives.

External data (tensors stored beside the .onnx file) is read only from files inside the
model file's folder: an absolute location, or one that resolves (symlinks followed)
outside that folder, is refused before any external file is read.

>>> model = load_onnx("resnet18.onnx")                        # doctest: +SKIP
>>> model.input_shape, model.infer(x).shape                   # doctest: +SKIP
((3, 224, 224), (8, 1000))
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path, PureWindowsPath

import numpy as np

from convnet.functional.conv import conv_output_size
from convnet.layers.activation import LeakyReLU, ReLU, Sigmoid, Tanh
from convnet.layers.base import Identity
from convnet.layers.conv import Conv2d
from convnet.layers.dropout import Dropout
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from convnet.layers.pool import AdaptiveAvgPool2d, AvgPool2d, LPPool2d, MaxPool2d
from convnet.models.containers import Concat, DenseBlock, Residual, Sequential

__all__ = ["load_onnx"]

SUPPORTED = ("Add", "AveragePool", "BatchNormalization", "Concat", "Constant", "Conv",
             "Dropout", "Flatten", "Gemm", "GlobalAveragePool", "Identity", "LRN",
             "LeakyRelu", "LpPool", "MatMul", "MaxPool", "Relu", "Reshape", "Sigmoid",
             "Softmax", "Tanh")
_NOTES = ("(Add joins two paths or adds MatMul's bias; Reshape must flatten; Softmax only "
          "at the end; Pad, Pow, Mul, Unsqueeze, Squeeze and Div only in export_onnx's "
          "subgraphs for AvgPool2d, LPPool2d and LRN)")
_FLOATS = (np.float32, np.float64)


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("load_onnx needs the onnx package: pip install onnx") from None
    return onnx


def load_onnx(path, input_shape=None):
    """Build a convnet model from an ONNX file, with the weights of its initializers.

    Args:
        path: the .onnx file. Its tensors may sit in external-data files, but only in
            files inside the model file's folder.
        input_shape: per-sample input shape (C, H, W) (or (features,)) for a graph whose
            input has dynamic sizes besides the batch axis; default: the graph's own.

    Returns a Sequential in eval mode (batch norm uses the file's running statistics,
    dropout is off), with ``model.input_shape`` set; ``model.infer(x)`` for x of shape
    (N, *input_shape) computes what the graph computes (a final Softmax excepted: see
    the module notes). The layers' dtype is the initializers' (float32 or float64).

    Raises:
        ValueError naming the file and the node: an operator convnet does not have (with
        the list of those it reads), an attribute it cannot represent (the attribute and
        its value, e.g. asymmetric pads, Gemm's transA or alpha), a graph that is not
        chains with forks rejoined by Add or Concat, or external data outside the folder.

    >>> net = load_onnx("lenet5.onnx")                           # doctest: +SKIP
    >>> net.output_shape(net.input_shape)                        # doctest: +SKIP
    (10,)
    """
    onnx = _onnx()
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:        # protobuf's DecodeError and friends
        raise ValueError(f"{path}: not an ONNX model ({type(err).__name__}: {err})") from None
    _load_external_data(onnx, proto, path)
    return _Importer(onnx, proto, str(path), input_shape).build()


# -- external data ------------------------------------------------------------------------
def _graph_tensors(graph):
    """The main graph's TensorProtos that can hold data: initializers, Constant values."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors


def _read_bytes(file, offset, length):
    """``length`` bytes of ``file`` from ``offset`` (bounds already checked)."""
    with open(file, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _load_external_data(onnx, proto, path):
    """Check every external-data location, then read them into the tensors.

    A location must be relative and resolve (symlinks followed) inside the model file's
    folder; offset and length must lie inside the file and match the tensor's size. All
    tensors are checked before any external file is opened.
    """
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    plan = []
    for tensor in _graph_tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        where = f"{path}: tensor {tensor.name!r}"
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if not location or "\0" in location:
            raise ValueError(f"{where}: external data with no usable location "
                             f"(got {location!r})")
        if os.path.isabs(location) or PureWindowsPath(location).anchor:
            raise ValueError(f"{where}: external data location {location!r} is an absolute "
                             f"path; only files inside the model's folder {folder} are read")
        target = os.path.realpath(os.path.join(folder, location))
        if os.path.commonpath([folder, target]) != folder:
            raise ValueError(f"{where}: external data location {location!r} resolves to "
                             f"{target}, outside the model's folder {folder}; refusing to "
                             "read it")
        if not os.path.isfile(target):
            raise ValueError(f"{where}: external data file {location!r} is not a file in "
                             f"{folder}")
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: external data of element type {tensor.data_type} "
                             "is not supported") from None
        if any(d < 0 for d in tensor.dims):
            raise ValueError(f"{where}: tensor shape {tuple(tensor.dims)} has a negative size")
        need = math.prod(tensor.dims) * itemsize
        try:
            offset = int(info.get("offset", 0))
            length = int(info.get("length", need))
        except ValueError:
            raise ValueError(f"{where}: external data offset/length must be integers, got "
                             f"{info.get('offset')!r}/{info.get('length')!r}") from None
        size = os.path.getsize(target)
        if offset < 0 or length != need or offset + length > size:
            raise ValueError(f"{where}: external data bytes [{offset}, {offset + length}) "
                             f"of {location!r} ({size} bytes) do not hold the tensor's "
                             f"{need} bytes (shape {tuple(tensor.dims)})")
        plan.append((tensor, target, offset, length))
    for tensor, target, offset, length in plan:
        tensor.raw_data = _read_bytes(target, offset, length)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


# -- the graph as units: layers and joins ---------------------------------------------------
class _Unit:
    """One step of the graph: a layer (one data input) or a join (Add, Concat)."""

    def __init__(self, kind, inputs, output, layer, path, fallback, node):
        self.kind, self.inputs, self.output, self.layer = kind, inputs, output, layer
        self.path, self.fallback, self.node = path, fallback, node


class _Block:
    """A fork rejoined: kind "add" or "concat", one item list per join input, the join."""

    def __init__(self, kind, branches, join):
        self.kind, self.branches, self.join, self.post = kind, branches, join, None
        self.path = _common([join.path] + [u.path for u in _leaves(branches)])
        self.fallback = join.fallback

    @property
    def dense(self):
        """Concat(x, layers(x)): one step of a DenseBlock."""
        return self.kind == "concat" and len(self.branches) == 2 and not self.branches[0] \
            and bool(self.branches[1])


def _leaves(branches):
    for items in branches:
        for item in items:
            if isinstance(item, _Unit):
                yield item
            else:
                yield from _leaves(item.branches)
                if item.post is not None:
                    yield item.post


def _common(paths):
    """Longest common list of leading components."""
    out = list(paths[0])
    for path in paths[1:]:
        n = 0
        while n < min(len(out), len(path)) and out[n] == path[n]:
            n += 1
        out = out[:n]
    return out


def _path(name, op, index):
    """(dotted components, fallback key) of a node name.

    "layer1.0.conv1" -> ["layer1", "0", "conv1"]; PyTorch's "/layer1/layer1.0/conv1/Conv"
    -> the module scope ["layer1", "0", "conv1"] (a scope that repeats the end of its
    parent's, "layer1.0" after "layer1", continues it), with "Conv" as the fallback key.
    """
    if name.startswith("/"):
        parts = [part for part in name.split("/") if part]
        path = []
        for scope in parts[:-1]:
            comps = [c for c in scope.split(".") if c]
            # a scope may repeat the end of its parent's ("layer1" then "layer1.0")
            overlap = next((k for k in range(min(len(path), len(comps)), 0, -1)
                            if path[-k:] == comps[:k]), 0)
            path = path[:len(path) - overlap] + comps
        last = parts[-1].replace(".", "_") if parts else op
        return path or [last], last
    comps = [c for c in name.split(".") if c]
    return comps or [f"{op.lower()}{index}"], "_".join(comps) or op.lower()


def _onnx_count(size, kernel, stride, begin, end, dilation, ceil):
    """ONNX's output size along one axis (ceil mode: the last window starts inside)."""
    span = size + begin + end - (dilation * (kernel - 1) + 1)
    if span < 0:
        return None
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + begin:
        out -= 1
    return out


def _f32(value):
    """A float32 number as the shortest decimal that rounds to it (1e-05, not 9.99e-06):
    ONNX stores float attributes in float32, and this is the number that was written."""
    return float(str(np.float32(value)))


def _scalar(value):
    """The one number in a constant, or None; float32 ones as _f32 gives them."""
    value = np.asarray(value)
    if value.size != 1:
        return None
    return _f32(value.reshape(-1)[0]) if value.dtype == np.float32 else float(value.reshape(-1)[0])


class _Importer:
    """One pass over the nodes making units, then the units' nesting made containers."""

    def __init__(self, onnx, proto, file, input_shape):
        self.onnx, self.graph, self.file = onnx, proto.graph, file
        self.consts = {t.name: self._array(t) for t in self.graph.initializer}
        self.alias, self.shapes, self.units, self.done = {}, {}, [], set()
        self.input, self.input_shape, self.batch = self._input(input_shape)
        outputs = [o.name for o in self.graph.output]
        if len(outputs) != 1:
            raise ValueError(f"{file}: a convnet model has one output; the graph has "
                             f"{len(outputs)}: {outputs}")
        self.output = outputs[0]
        self.shapes[self.input] = self.input_shape
        self.nodes = self._live_nodes()
        self.consumers = {}
        for node in self.nodes:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.dropped_softmax = None

    # -- small helpers ---------------------------------------------------------------------
    def _array(self, tensor):
        try:
            return self.onnx.numpy_helper.to_array(tensor)
        except Exception as err:
            raise ValueError(f"{self.file}: tensor {tensor.name!r} cannot be read "
                             f"({type(err).__name__}: {err})") from None

    def error(self, node, message):
        return ValueError(f"{self.file}: node {node.name!r} ({node.op_type}): {message}")

    def resolve(self, name):
        while name in self.alias:
            name = self.alias[name]
        return name

    def const(self, name):
        """The constant array behind a tensor name, or None for data (or no input)."""
        return self.consts.get(self.resolve(name)) if name else None

    def data(self, node, i=0):
        """The data tensor feeding input i of node (checked to be data, not a constant)."""
        name = self.resolve(node.input[i]) if len(node.input) > i else ""
        if name in self.shapes:
            return name
        if name in self.consts:
            raise self.error(node, f"input {i} ({node.input[i]!r}) is a constant; expected "
                                   "the data flowing through the net")
        raise self.error(node, f"input {i} ({name!r}) is not computed from the graph's input "
                               f"{self.input!r}")

    def param(self, node, i, what, ndim=None, optional=False):
        """A float32/float64 constant input (a weight), checked."""
        name = node.input[i] if len(node.input) > i else ""
        if not name:
            if optional:
                return None
            raise self.error(node, f"{what} (input {i}) is missing")
        value = self.const(name)
        if value is None:
            raise self.error(node, f"{what} (input {i}, {name!r}) must be a constant "
                                   "(an initializer), not computed in the graph")
        if value.dtype not in _FLOATS:
            raise self.error(node, f"{what} {name!r} has dtype {value.dtype}; convnet layers "
                                   "hold float32 or float64")
        if ndim is not None and value.ndim != ndim:
            raise self.error(node, f"{what} {name!r} must be {ndim}-D, got shape {value.shape}")
        return value

    def attrs(self, node):
        helper = self.onnx.helper
        out = {}
        for attr in node.attribute:
            value = helper.get_attribute_value(attr)
            out[attr.name] = value.decode() if isinstance(value, bytes) else value
        return out

    def only_consumer(self, node, op):
        """The single live consumer of node's first output, if its type is op."""
        out = node.output[0]
        users = self.consumers.get(out, [])
        if out == self.output or len(users) != 1 or users[0].op_type != op:
            return None
        return users[0]

    def unused_outputs(self, node, what):
        for extra in node.output[1:]:
            if extra and (extra in self.consumers or extra == self.output):
                raise self.error(node, f"its output {extra!r} ({what}) is used; convnet "
                                       "computes only the first output")

    # -- the input, the live nodes ---------------------------------------------------------
    def _input(self, input_shape):
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ValueError(f"{self.file}: a convnet model has one input; the graph has "
                             f"{len(inputs)}: {[i.name for i in inputs]}")
        value = inputs[0]
        tensor = value.type.tensor_type
        if tensor.elem_type not in (self.onnx.TensorProto.FLOAT, self.onnx.TensorProto.DOUBLE):
            raise ValueError(f"{self.file}: input {value.name!r} has element type "
                             f"{tensor.elem_type}; expected float32 or float64")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        static = tuple(dims[1:]) if dims and all(d for d in dims[1:]) else None
        batch = dims[0] if dims and dims[0] else None
        if input_shape is not None:
            shape = tuple(int(s) for s in input_shape)
            if not shape or min(shape) < 1:
                raise ValueError(f"{self.file}: input_shape must be positive sizes such as "
                                 f"(C, H, W), got {tuple(input_shape)}")
            if static is not None and static != shape:
                raise ValueError(f"{self.file}: input_shape {shape} contradicts the graph's "
                                 f"input {value.name!r} of per-sample shape {static}")
        elif static is None or not static:
            shown = ["?" if d is None else d for d in dims] if dims else "unknown"
            raise ValueError(f"{self.file}: input {value.name!r} has shape {shown}, not a "
                             "static per-sample shape; pass input_shape=(C, H, W)")
        else:
            shape = static
        if len(shape) not in (1, 3):
            raise ValueError(f"{self.file}: input {value.name!r} has per-sample shape "
                             f"{shape}; convnet models take (C, H, W) or (features,)")
        return value.name, shape, batch

    def _live_nodes(self):
        """The nodes the output depends on, each after the nodes it reads from."""
        producer = {name: node for node in self.graph.node for name in node.output if name}
        order, state, stack = [], {}, []

        def push(node):
            state[id(node)] = "open"
            stack.append((node, iter(list(node.input))))

        if self.output in producer:
            push(producer[self.output])
        while stack:
            node, inputs = stack[-1]
            for name in inputs:
                dep = producer.get(name)
                if dep is None or state.get(id(dep)) == "done":
                    continue
                if state.get(id(dep)) == "open":
                    raise self.error(dep, "the graph has a cycle through this node")
                push(dep)
                break
            else:
                stack.pop()
                state[id(node)] = "done"
                order.append(node)
        return order

    # -- build -------------------------------------------------------------------------------
    def build(self):
        for node in self.nodes:
            if id(node) in self.done:
                continue
            if node.domain not in ("", "ai.onnx"):
                raise self.error(node, f"operator of domain {node.domain!r} is not supported; "
                                       f"convnet reads the standard operators "
                                       f"{', '.join(SUPPORTED)}")
            if node.op_type in SUPPORTED:
                getattr(self, f"op_{node.op_type}")(node)
            elif not self._fused(node):
                raise self.error(node, f"unsupported operator {node.op_type!r}; convnet "
                                       f"reads {', '.join(SUPPORTED)} {_NOTES}")
        end = self.resolve(self.output)
        if end not in self.shapes:
            raise ValueError(f"{self.file}: the output {self.output!r} does not depend on "
                             f"the input {self.input!r}")
        items = _Structure(self).series(self.input, end, self.units)
        model = Sequential(_Names().assemble(items, [], top=True))
        model.input_shape = self.input_shape
        got = model.output_shape(self.input_shape)
        assert got == self.shapes[end], (got, self.shapes[end])
        if self.dropped_softmax is not None:
            warnings.warn(f"{self.file}: the final Softmax (node {self.dropped_softmax!r}) is "
                          "not imported: convnet models output class scores; apply a "
                          "softmax to model.infer(x) for the probabilities the graph gives",
                          stacklevel=3)
        return model.eval()

    def _fused(self, node):
        """Try export_onnx's subgraphs headed by node; True if one was read."""
        if node.op_type == "Pad":
            return self._pad_avgpool(node)
        if node.op_type == "Pow":
            return self._lppool_subgraph(node)
        if node.op_type == "Mul" and len(node.input) == 2 and node.input[0] == node.input[1]:
            return self._lrn_subgraph(node)
        return False

    def add(self, nodes, x, layer):
        """Append a layer unit: x -> layer -> the last node's first output."""
        last = nodes[-1]
        try:
            shape = layer.output_shape(self.shapes[x])
        except ValueError as err:
            raise self.error(last, str(err)) from None
        out = last.output[0]
        self.shapes[out] = shape
        path, fallback = _path(last.name, last.op_type, len(self.units))
        self.units.append(_Unit("layer", [x], out, layer, path, fallback, last))
        for node in nodes:
            self.done.add(id(node))

    def make(self, node, cls, *args, **kwargs):
        """cls(*args, **kwargs); a ValueError from the constructor names the node."""
        try:
            return cls(*args, **kwargs)
        except ValueError as err:
            raise self.error(node, str(err)) from None

    def window(self, node, op, attrs, hw, kernel, ceil, dilations=(1, 1)):
        """convnet's (padding, ceil_mode, begin pads, end pads, strides) for an ONNX window.

        convnet pads both sides by P and floors (or, for pools, ceils) the output size;
        ONNX pads may differ at the end. They agree when the output sizes agree, since
        the windows then start at the same places.
        """
        strides = list(attrs.get("strides", [1, 1]))
        auto_pad = attrs.get("auto_pad", "NOTSET")
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if len(kernel) != 2 or len(strides) != 2 or len(pads) != 4:
            raise self.error(node, f"only 2-D windows are supported, got kernel_shape "
                                   f"{list(kernel)}, strides {strides}, pads {pads}")
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0] * 4
            for a, (size, k, s, d) in enumerate(zip(hw, kernel, strides, dilations)):
                total = (-(-size // s) - 1) * s + d * (k - 1) + 1 - size
                if total < 0:       # the spec's formula gives negative pads (cropping)
                    raise self.error(node, f"attribute auto_pad={auto_pad!r} gives a "
                                           f"negative total pad {total} (stride {s} > "
                                           f"kernel {k}), which convnet cannot represent")
                small, large = total // 2, total - total // 2
                pads[a], pads[a + 2] = ((small, large) if auto_pad == "SAME_UPPER"
                                        else (large, small))
        elif auto_pad == "VALID":
            pads = [0] * 4
        elif auto_pad != "NOTSET":
            raise self.error(node, f"attribute auto_pad={auto_pad!r} is not supported")
        begin, end = pads[:2], pads[2:]
        counts = [_onnx_count(size, k, s, b, e, d, ceil)
                  for size, k, s, b, e, d in zip(hw, kernel, strides, begin, end, dilations)]
        if None in counts:
            raise self.error(node, f"the window {list(kernel)} is larger than the padded "
                                   f"input {list(hw)} with pads {pads}")
        for mode in ((False, True) if op != "Conv" else (False,)):
            try:
                ours = [conv_output_size(size, k, s, b, d, fit="floor", ceil=mode)
                        for size, k, s, b, d in zip(hw, kernel, strides, begin, dilations)]
            except ValueError:
                continue
            if ours == counts:
                return tuple(begin), mode, begin, end, strides
        shown = f"auto_pad={auto_pad!r} (pads {pads})" if auto_pad != "NOTSET" else f"pads={pads}"
        rounding = "rounded down" if op == "Conv" else "rounded down or, in ceil mode, up"
        raise self.error(node, f"attribute {shown} cannot be represented: convnet pads both "
                               f"ends of an axis by the same P (here the begin pads {begin}), "
                               f"and no output size that gives ({rounding}) is the ONNX "
                               f"output size {counts}")

    # -- operators ---------------------------------------------------------------------------
    def op_Constant(self, node):
        attrs = self.attrs(node)
        if "value" in attrs:
            value = self.onnx.numpy_helper.to_array(attrs["value"])
        elif "value_float" in attrs or "value_int" in attrs:
            value = np.array(attrs.get("value_float", attrs.get("value_int")))
        elif "value_floats" in attrs or "value_ints" in attrs:
            value = np.array(attrs.get("value_floats", attrs.get("value_ints")))
        else:
            raise self.error(node, f"constant of kind {sorted(attrs)} is not supported")
        self.consts[node.output[0]] = value

    def op_Identity(self, node):
        self.alias[node.output[0]] = self.resolve(node.input[0])

    def op_Conv(self, node):
        x = self.data(node)
        w = self.param(node, 1, "weight W")
        b = self.param(node, 2, "bias B", ndim=1, optional=True)
        if w.ndim != 4:
            raise self.error(node, f"only 2-D convolution (a 4-D weight) is supported, got "
                                   f"weight shape {w.shape}")
        attrs = self.attrs(node)
        kernel = list(attrs.get("kernel_shape", w.shape[2:]))
        if kernel != list(w.shape[2:]):
            raise self.error(node, f"attribute kernel_shape={kernel} does not match the "
                                   f"weight's {list(w.shape[2:])}")
        dilations = list(attrs.get("dilations", [1, 1]))
        group = int(attrs.get("group", 1))
        shape = self.shapes[x]
        if len(shape) != 3:
            raise self.error(node, f"expected an (N, C, H, W) input, got per-sample {shape}")
        padding, _, _, _, strides = self.window(node, "Conv", attrs, shape[1:], kernel, False,
                                                dilations)
        layer = self.make(node, Conv2d, w.shape[1] * group, w.shape[0], tuple(kernel),
                          tuple(strides), padding, tuple(dilations), group, bias=b is not None,
                          fit="floor", dtype=w.dtype, rng=np.random.default_rng(0))
        layer.params["weight"][...] = w
        if b is not None:
            layer.params["bias"][...] = b
        self.add([node], x, layer)

    def _pool(self, node):
        x = self.data(node)
        shape = self.shapes[x]
        if len(shape) != 3:
            raise self.error(node, f"expected an (N, C, H, W) input, got per-sample {shape}")
        attrs = self.attrs(node)
        kernel = list(attrs.get("kernel_shape", []))
        dilations = list(attrs.get("dilations", [1] * max(len(kernel), 2)))
        ceil = bool(attrs.get("ceil_mode", 0))
        return x, shape, attrs, kernel, dilations, ceil

    def op_MaxPool(self, node):
        x, shape, attrs, kernel, dilations, ceil = self._pool(node)
        self.unused_outputs(node, "Indices")
        padding, mode, _, _, strides = self.window(node, "MaxPool", attrs, shape[1:], kernel,
                                                   ceil, dilations)
        self.add([node], x, self.make(node, MaxPool2d, tuple(kernel), tuple(strides), padding,
                                      tuple(dilations), ceil_mode=mode, fit="floor"))

    def op_AveragePool(self, node):
        x, shape, attrs, kernel, dilations, ceil = self._pool(node)
        if any(d != 1 for d in dilations):
            raise self.error(node, f"attribute dilations={dilations} is not supported "
                                   "(convnet's AvgPool2d has no dilation)")
        padding, mode, begin, end, strides = self.window(node, "AveragePool", attrs,
                                                         shape[1:], kernel, ceil)
        include = bool(attrs.get("count_include_pad", 0))
        if include and begin != end:
            # ONNX counts a window's pads up to the end pad, convnet up to P: they agree
            # only if no window reaches past the smaller of the two
            for size, k, s, b, e in zip(shape[1:], kernel, strides, begin, end):
                n = conv_output_size(size, k, s, b, fit="floor", ceil=mode)
                if -b + (n - 1) * s + k > size + min(b, e):
                    raise self.error(node, f"attribute pads={begin + end} with "
                                           "count_include_pad=1 cannot be represented: the "
                                           "windows' divisors would differ from convnet's "
                                           "(equal pads on both sides)")
        self.add([node], x, self.make(node, AvgPool2d, tuple(kernel), tuple(strides), padding,
                                      ceil_mode=mode, count_include_pad=include, fit="floor"))

    def op_LpPool(self, node):
        x, shape, attrs, kernel, dilations, ceil = self._pool(node)
        p = attrs.get("p", 2)
        if p < 1 or p % 2:
            raise self.error(node, f"attribute p={p} is not supported: ONNX takes |x|^p, "
                                   "convnet's LPPool2d (as PyTorch's) x^p; they agree for an "
                                   "even p only")
        if any(d != 1 for d in dilations):
            raise self.error(node, f"attribute dilations={dilations} is not supported")
        padding, mode, begin, end, strides = self.window(node, "LpPool", attrs, shape[1:],
                                                         kernel, ceil)
        if any(begin + end) or mode:
            raise self.error(node, f"attribute pads={begin + end} (ceil_mode={int(ceil)}) is "
                                   "not supported: convnet's LPPool2d has no padding, and its "
                                   "ceil mode scales a partial window's sum as PyTorch does")
        self.add([node], x, self.make(node, LPPool2d, p, tuple(kernel), tuple(strides),
                                      fit="floor"))

    def op_GlobalAveragePool(self, node):
        self.add([node], self.data(node), AdaptiveAvgPool2d(1))

    def op_Relu(self, node):
        self.add([node], self.data(node), ReLU())

    def op_Tanh(self, node):
        self.add([node], self.data(node), Tanh())

    def op_Sigmoid(self, node):
        self.add([node], self.data(node), Sigmoid())

    def op_LeakyRelu(self, node):
        alpha = _f32(self.attrs(node).get("alpha", 0.01))
        self.add([node], self.data(node), self.make(node, LeakyReLU, alpha))

    def _linear(self, node, nodes, x, weight, bias):
        """Linear with weight (out, in) and an optional bias (out,)."""
        layer = self.make(node, Linear, weight.shape[1], weight.shape[0], bias=bias is not None,
                          dtype=weight.dtype, rng=np.random.default_rng(0))
        layer.params["weight"][...] = weight
        if bias is not None:
            layer.params["bias"][...] = bias
        self.add(nodes, x, layer)

    def _bias(self, node, c, out):
        """A bias that broadcasts to (out,): (out,), (1, out) or a scalar."""
        if c.size == out and c.shape in ((out,), (1, out)):
            return c.reshape(out)
        if c.size == 1:
            return np.full(out, c.reshape(-1)[0], dtype=c.dtype)
        raise self.error(node, f"bias C of shape {c.shape} does not broadcast to ({out},) "
                               "per sample")

    def op_Gemm(self, node):
        x = self.data(node)
        b = self.param(node, 1, "weight B", ndim=2)
        c = self.param(node, 2, "bias C", optional=True)
        attrs = self.attrs(node)
        for name, ok in (("transA", 0), ("alpha", 1.0), ("beta", 1.0)):
            value = attrs.get(name, ok)
            if value != ok and not (name == "beta" and c is None):
                raise self.error(node, f"attribute {name}={value} is not supported "
                                       f"(convnet's Linear computes x @ W.T + b: {name}={ok})")
        weight = b if attrs.get("transB", 0) else b.T
        bias = None if c is None else self._bias(node, c, weight.shape[0])
        self._linear(node, [node], x, weight, bias)

    def op_MatMul(self, node):
        x = self.data(node)
        w = self.param(node, 1, "weight B", ndim=2)
        nodes, bias = [node], None
        add = self.only_consumer(node, "Add")
        if add is not None:
            other = [name for name in add.input if name != node.output[0]]
            c = self.const(other[0]) if len(other) == 1 else None
            if c is not None and c.dtype in _FLOATS:
                bias = self._bias(add, c, w.shape[1])
                nodes.append(add)
        self._linear(nodes[-1], nodes, x, np.ascontiguousarray(w.T), bias)

    def op_Flatten(self, node):
        x = self.data(node)
        rank = len(self.shapes[x]) + 1
        axis = self.attrs(node).get("axis", 1)
        if (axis + rank if axis < 0 else axis) != 1:
            raise self.error(node, f"attribute axis={axis} is not supported: convnet's "
                                   "Flatten keeps the batch axis (axis=1)")
        self.add([node], x, Flatten())

    def op_Reshape(self, node):
        x = self.data(node)
        target = self.const(node.input[1]) if len(node.input) > 1 else None
        if target is None:
            raise self.error(node, "the target shape must be a constant (export with "
                                   "constant folding, or flatten with torch.flatten)")
        target = [int(v) for v in np.asarray(target).reshape(-1)]
        shape = self.shapes[x]
        if self.attrs(node).get("allowzero", 0) and 0 in target:
            raise self.error(node, f"attribute allowzero=1 with a 0 in shape {target}")
        per_sample = self._reshape_per_sample(node, target, shape)
        for start in range(1, len(shape) + 1):
            layer = Flatten(start)
            if layer.output_shape(shape) == per_sample:
                self.add([node], x, layer)
                return
        raise self.error(node, f"Reshape to {target} (per sample {shape} -> {per_sample}) "
                               "is not a flatten; convnet reads Reshape only as Flatten")

    def _reshape_per_sample(self, node, target, shape):
        full = [None, *shape]
        numel = math.prod(shape)
        if not target or target[0] not in (0, -1) and target[0] != self.batch:
            raise self.error(node, f"Reshape to {target} must keep the batch axis first "
                                   "(0, -1 or the batch size)")
        rest = [full[i] if v == 0 else v for i, v in enumerate(target) if i > 0]
        if None in rest or rest.count(-1) + (target[0] == -1) > 1 or min(rest + [1]) < -1:
            raise self.error(node, f"Reshape to {target} is not a per-sample reshape")
        if -1 in rest:
            known = math.prod(v for v in rest if v != -1)
            if known == 0 or numel % known:
                raise self.error(node, f"Reshape to {target} does not fit {shape}")
            rest[rest.index(-1)] = numel // known
        if math.prod(rest) != numel:
            raise self.error(node, f"Reshape to {target} does not fit per-sample {shape}")
        return tuple(rest)

    def op_BatchNormalization(self, node):
        x = self.data(node)
        attrs = self.attrs(node)
        if attrs.get("training_mode", 0) or not attrs.get("spatial", 1):
            bad = "training_mode=1" if attrs.get("training_mode", 0) else "spatial=0"
            raise self.error(node, f"attribute {bad} is not supported (inference with running "
                                   "statistics per channel only)")
        self.unused_outputs(node, "running statistics")
        scale, bias, mean, var = (self.param(node, i, what, ndim=1) for i, what in
                                  enumerate(("scale", "B", "input_mean", "input_var"), 1))
        shape = self.shapes[x]
        cls = BatchNorm2d if len(shape) == 3 else BatchNorm1d
        layer = self.make(node, cls, scale.size, eps=_f32(attrs.get("epsilon", 1e-5)),
                          dtype=scale.dtype)
        for store, key, value in ((layer.params, "weight", scale), (layer.params, "bias", bias),
                                  (layer.buffers, "running_mean", mean),
                                  (layer.buffers, "running_var", var)):
            if value.shape != store[key].shape:
                raise self.error(node, f"{key} has shape {value.shape}, expected "
                                       f"{store[key].shape}")
            store[key][...] = value
        self.add([node], x, layer)

    def op_LRN(self, node):
        attrs = self.attrs(node)
        size = attrs.get("size")
        if not isinstance(size, int) or size < 1 or size % 2 == 0:
            raise self.error(node, f"attribute size={size} is not supported: for an even "
                                   "size ONNX's window reaches one channel further forward, "
                                   "convnet's (PyTorch's) one further back; export_onnx "
                                   "writes those as a subgraph, which is read")
        layer = self.make(node, LocalResponseNorm, size, _f32(attrs.get("alpha", 1e-4)),
                          _f32(attrs.get("beta", 0.75)), _f32(attrs.get("bias", 1.0)))
        self.add([node], self.data(node), layer)

    def op_Dropout(self, node):
        x = self.data(node)
        self.unused_outputs(node, "mask")
        ratio = _f32(self.attrs(node).get("ratio", 0.5))
        if len(node.input) > 1 and node.input[1]:
            value = self.const(node.input[1])
            ratio = 0.5 if value is None else _scalar(value)
        if len(node.input) > 2 and node.input[2]:
            training = self.const(node.input[2])
            if training is None or bool(np.asarray(training).reshape(-1)[0]):
                raise self.error(node, "input training_mode must be a constant false")
        self.add([node], x, self.make(node, Dropout, ratio))

    def op_Softmax(self, node):
        x = self.data(node)
        if not self._is_final(node.output[0]) or len(self.shapes[x]) != 1:
            raise self.error(node, "Softmax is read only as the last node on class scores "
                                   "(N, K); convnet models output the scores themselves")
        self.alias[node.output[0]] = x
        self.dropped_softmax = node.name

    def _is_final(self, name):
        if name == self.output:
            return True
        users = self.consumers.get(name, [])
        return bool(users) and all(u.op_type == "Identity" and self._is_final(u.output[0])
                                   for u in users)

    def _join(self, node, kind, inputs):
        path, fallback = _path(node.name, node.op_type, len(self.units))
        self.units.append(_Unit(kind, inputs, node.output[0], None, path, fallback, node))

    def op_Add(self, node):
        names = [self.resolve(n) for n in node.input]
        if len(names) != 2 or any(n not in self.shapes for n in names):
            raise self.error(node, "Add is read as the join of two paths (a Residual) or as "
                                   "MatMul's bias; here it adds a constant")
        a, b = (self.shapes[n] for n in names)
        if a != b:
            raise self.error(node, f"the two paths give shapes {a} and {b}; a Residual adds "
                                   "equal shapes (no broadcasting)")
        self.shapes[node.output[0]] = a
        self._join(node, "add", names)

    def op_Concat(self, node):
        names = [self.data(node, i) for i in range(len(node.input))]
        shapes = [self.shapes[n] for n in names]
        axis = self.attrs(node).get("axis")
        rank = len(shapes[0]) + 1
        if axis is None or (axis + rank if axis < 0 else axis) != 1:
            raise self.error(node, f"attribute axis={axis} is not supported: convnet "
                                   "concatenates along channels (axis=1)")
        if any(len(s) != len(shapes[0]) or s[1:] != shapes[0][1:] for s in shapes):
            raise self.error(node, f"inputs of shapes {shapes} do not concatenate along "
                                   "channels")
        self.shapes[node.output[0]] = (sum(s[0] for s in shapes), *shapes[0][1:])
        self._join(node, "concat", names)

    # -- export_onnx's subgraphs -------------------------------------------------------------
    def _consts_of(self, node, data_name):
        """The constant inputs of a binary node whose other input is data_name."""
        if len(node.input) != 2 or data_name not in node.input:
            return None
        other = node.input[1] if node.input[0] == data_name else node.input[0]
        return self.const(other)

    def _pad_avgpool(self, pad):
        """Pad (zeros, equal sides) -> AveragePool(count_include_pad=0): AvgPool2d with
        count_include_pad=True whose ceil-mode window hangs past the padded input."""
        pool = self.only_consumer(pad, "AveragePool")
        x = self.resolve(pad.input[0])
        if pool is None or x not in self.shapes or len(self.shapes[x]) != 3:
            return False
        attrs = self.attrs(pad)
        pads = attrs.get("pads")
        if pads is None and len(pad.input) > 1 and pad.input[1]:
            pads = self.const(pad.input[1])
        value = self.const(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else 0.0
        if (pads is None or attrs.get("mode", "constant") != "constant"
                or (len(pad.input) > 3 and pad.input[3]) or value is None
                or _scalar(value) != 0.0):
            return False
        pads = [int(v) for v in np.asarray(pads).reshape(-1)]
        ph, pw = (pads[2], pads[3]) if len(pads) == 8 else (-1, -1)
        if pads != [0, 0, ph, pw, 0, 0, ph, pw]:
            return False
        pool_attrs = self.attrs(pool)
        kernel = list(pool_attrs.get("kernel_shape", []))
        strides = list(pool_attrs.get("strides", [1, 1]))
        pool_pads = list(pool_attrs.get("pads", [0] * 4))
        ceil = bool(pool_attrs.get("ceil_mode", 0))
        if (pool_attrs.get("count_include_pad", 0) or len(kernel) != 2 or len(strides) != 2
                or any(d != 1 for d in pool_attrs.get("dilations", [1, 1]))
                or pool_attrs.get("auto_pad", "NOTSET") != "NOTSET"
                or len(pool_pads) != 4 or pool_pads[:2] != [0, 0]):
            return False
        # ONNX: windows over the zero-padded input, counting only what lies inside it,
        # which is convnet's count_include_pad=True; find the ceil mode with its sizes
        (_, h, w), mode = self.shapes[x], None
        onnx_sizes = [_onnx_count(size + 2 * p, k, s, 0, e, 1, ceil) for size, k, s, p, e in
                      zip((h, w), kernel, strides, (ph, pw), pool_pads[2:])]
        for ceil_mode in (False, True):
            try:
                ours = [conv_output_size(size, k, s, p, fit="floor", ceil=ceil_mode)
                        for size, k, s, p in zip((h, w), kernel, strides, (ph, pw))]
            except ValueError:
                continue
            if ours == onnx_sizes:
                mode = ceil_mode
                break
        if mode is None:
            return False
        layer = self.make(pool, AvgPool2d, tuple(kernel), tuple(strides), (ph, pw),
                          ceil_mode=mode, count_include_pad=True, fit="floor")
        self.add([pad, pool], x, layer)
        return True

    def _lppool_subgraph(self, power):
        """Pow(x, p) -> AveragePool(count_include_pad=0) -> Mul(FH*FW) -> Pow(1/p)."""
        x = self.resolve(power.input[0])
        p = self.const(power.input[1]) if len(power.input) == 2 else None
        pool = self.only_consumer(power, "AveragePool")
        mul = pool and self.only_consumer(pool, "Mul")
        root = mul and self.only_consumer(mul, "Pow")
        if x not in self.shapes or p is None or root is None or len(self.shapes[x]) != 3:
            return False
        p = _scalar(p)
        attrs = self.attrs(pool)
        kernel = list(attrs.get("kernel_shape", []))
        area = _scalar(self._consts_of(mul, pool.output[0]))
        inv = self.const(root.input[1]) if root.input[0] == mul.output[0] else None
        if (p is None or p <= 0 or inv is None or len(kernel) != 2
                or area != kernel[0] * kernel[1]
                or abs(_scalar(inv) * p - 1) > 1e-6 or attrs.get("count_include_pad", 0)
                or any(d != 1 for d in attrs.get("dilations", [1, 1]))
                or list(attrs.get("pads", [0] * 4))[:2] != [0, 0]):
            return False
        _, mode, _, _, strides = self.window(pool, "AveragePool", attrs, self.shapes[x][1:],
                                             kernel, bool(attrs.get("ceil_mode", 0)))
        layer = self.make(root, LPPool2d, p, tuple(kernel), tuple(strides), ceil_mode=mode,
                          fit="floor")
        self.add([power, pool, mul, root], x, layer)
        return True

    def _lrn_subgraph(self, square):
        """x*x -> Unsqueeze(1) -> AveragePool(n,1,1) -> Squeeze(1) -> *alpha -> +k -> ^beta,
        then x / that: LocalResponseNorm with an even size, PyTorch's window."""
        x = self.resolve(square.input[0])
        chain, node = [square], square
        for op in ("Unsqueeze", "AveragePool", "Squeeze", "Mul", "Add", "Pow", "Div"):
            node = self.only_consumer(node, op)
            if node is None:
                return False
            chain.append(node)
        _, unsq, pool, sq, mul, add, power, div = chain
        if x not in self.shapes or self.resolve(div.input[0]) != x:
            return False
        for node in (unsq, sq):
            axes = self.attrs(node).get("axes")
            if axes is None and len(node.input) > 1:
                axes = self.const(node.input[1])
            if axes is None or [int(a) for a in np.asarray(axes).reshape(-1)] != [1]:
                return False
        attrs = self.attrs(pool)
        kernel = list(attrs.get("kernel_shape", []))
        n = kernel[0] if len(kernel) == 3 else 0
        alpha = _scalar(self._consts_of(mul, sq.output[0]))
        k = _scalar(self._consts_of(add, mul.output[0]))
        beta = (_scalar(self.const(power.input[1])) if power.input[0] == add.output[0]
                else None)
        if (n < 1 or kernel[1:] != [1, 1] or not attrs.get("count_include_pad", 0)
                or list(attrs.get("pads", [])) != [n // 2, 0, 0, (n - 1) // 2, 0, 0]
                or list(attrs.get("strides", [1, 1, 1])) != [1, 1, 1]
                or attrs.get("ceil_mode", 0) or None in (alpha, k, beta)):
            return False
        layer = self.make(div, LocalResponseNorm, n, alpha, beta, k)
        self.add(chain, x, layer)
        return True


# -- the units' nesting: Sequential, Residual, Concat ---------------------------------------
class _Structure:
    """Series-parallel decomposition of the units into items (units and _Blocks)."""

    def __init__(self, importer):
        self.file = importer.file
        self.producer = {u.output: u for u in importer.units}

    def series(self, start, end, units):
        """The items from tensor start to tensor end; units: those on the paths between."""
        units = self._between(start, end, units)
        count = {}
        for u in units:
            for name in u.inputs:
                count[name] = count.get(name, 0) + 1
        items, segment, current, live = [], [], start, {start}
        for u in units:
            segment.append(u)
            for name in u.inputs:
                count[name] -= 1
                if count[name] == 0:
                    live.discard(name)
            live.add(u.output)
            if live == {u.output}:        # every path passes here: a step of the chain
                items.append(self._step(current, segment))
                segment, current = [], u.output
        assert current == end and not segment, (current, end)
        return _fold_post(items)

    def _between(self, start, end, units):
        """The units on some path from start to end, in order."""
        allowed = {id(u) for u in units}
        keep, stack = set(), [end]
        while stack:
            u = self.producer.get(stack.pop())
            if u is not None and id(u) in allowed and id(u) not in keep:
                keep.add(id(u))
                stack.extend(name for name in u.inputs if name != start)
        return [u for u in units if id(u) in keep]

    def _step(self, start, segment):
        join = segment[-1]
        if len(segment) == 1 and join.kind == "layer":
            return join
        assert join.kind != "layer", join.node.name
        inside = segment[:-1]
        branches, owner = [], {}
        for name in join.inputs:
            part = self._between(start, name, inside) if name != start else []
            for u in part:
                if id(u) in owner:
                    raise ValueError(
                        f"{self.file}: node {u.node.name!r} ({u.node.op_type}) feeds more "
                        f"than one input of node {join.node.name!r} ({join.node.op_type}); "
                        "convnet models are chains whose forks rejoin at one Add (a "
                        "Residual) or Concat with separate paths, and this graph is not")
                owner[id(u)] = True
            branches.append(self.series(start, name, part) if part else [])
        assert len(owner) == len(inside)        # each unit leads to the join's inputs
        return _Block(join.kind, branches, join)


def _fold_post(items):
    """A layer right after a Residual's Add, named inside the block, is its post."""
    out = []
    for item in items:
        last = out[-1] if out else None
        if (isinstance(item, _Unit) and isinstance(last, _Block) and last.kind == "add"
                and last.post is None and last.path and item.path[:-1] == last.path):
            last.post = item
            continue
        out.append(item)
    return out


class _Names:
    """Items -> (key, layer) pairs, nesting containers by the dotted node names."""

    @staticmethod
    def _unique(key, used):
        base, i = key or "layer", 0
        while key in used or not key:
            i += 1
            key = f"{base}_{i}"
        used.add(key)
        return key

    @staticmethod
    def _relative(item, prefix):
        n = len(prefix)
        return item.path[n:] if item.path[:n] == prefix and len(item.path) > n else None

    def assemble(self, items, prefix, top=False):
        """(key, layer) pairs for a chain of items under the dotted prefix."""
        pairs, used, i = [], set(), 0
        while i < len(items):
            item, rel = items[i], self._relative(items[i], prefix)
            if rel is None:
                pairs.append((self._unique(item.fallback, used), self.layer(item)))
                i += 1
                continue
            j = i + 1
            while j < len(items) and (self._relative(items[j], prefix) or [None])[0] == rel[0]:
                j += 1
            group = items[i:j]
            if len(group) == 1 and len(rel) == 1:
                layer = self.layer(item)
            else:
                layer = self.container(group, prefix + [rel[0]])
            pairs.append((self._unique(rel[0], used), layer))
            i = j
        if top and len(pairs) > 1 and all(isinstance(it, _Block) and it.dense for it in items):
            return [("dense", self.container(items, prefix))]
        return pairs

    def container(self, items, prefix):
        """A Sequential of the items, or a DenseBlock if each is one dense step."""
        rels = [self._relative(item, prefix) for item in items]
        if all(isinstance(it, _Block) and it.dense for it in items) and \
                all(r is not None and len(r) == 1 for r in rels) and \
                len({r[0] for r in rels}) == len(rels):
            return DenseBlock({r[0]: self.branch(it.branches[1], it.path)
                               for r, it in zip(rels, items)})
        return Sequential(self.assemble(items, prefix))

    def branch(self, items, prefix):
        """One layer for a path inside a block: the item itself when it alone is there."""
        if len(items) == 1 and items[0].path == prefix:
            return self.layer(items[0])
        pairs = self.assemble(items, prefix)
        return Sequential(pairs)

    def layer(self, item):
        if isinstance(item, _Unit):
            return item.layer
        if item.kind == "concat":
            used, branches = set(), {}
            for i, items in enumerate(item.branches):
                if not items:
                    key, layer = "identity", Identity()
                else:
                    pairs = self.assemble(items, item.path)
                    key, layer = pairs[0] if len(pairs) == 1 else (str(i), Sequential(pairs))
                branches[self._unique(key, used)] = layer
            return Concat(branches)
        # the longer path is the body, the shorter the shortcut (a + b == b + a exactly)
        body_items, short_items = item.branches
        if len(list(_leaves([short_items]))) > len(list(_leaves([body_items]))):
            body_items, short_items = short_items, body_items
        body, used = {}, {"post"} if item.post is not None else set()
        for key, layer in self.assemble(body_items, item.path):
            body[self._unique(key, used)] = layer
        shortcut, name = None, "downsample"
        if short_items:
            pairs = self.assemble(short_items, item.path)
            name, shortcut = pairs[0] if len(pairs) == 1 else ("downsample", Sequential(pairs))
        post = None if item.post is None else item.post.layer
        return Residual(body, shortcut, post, shortcut_name=self._unique(name, used))
