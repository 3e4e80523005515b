"""Import an ONNX file as a convnet model: the operators convnet has, with their weights.

The graph is read node by node, each node (or a small group of nodes) becoming a layer:

    Conv -> Conv2d                 MaxPool -> MaxPool2d          AveragePool -> AvgPool2d
    Pad (reflect, edge, wrap; constant pads) -> Conv without pads -> Conv2d with
        padding_mode reflect, replicate, circular (PyTorch's padding, or "same")
    LpPool (even p) -> LPPool2d    GlobalAveragePool -> AdaptiveAvgPool2d(1)
    GlobalMaxPool -> AdaptiveMaxPool2d(1)
    ReduceMean over H and W -> AdaptiveAvgPool2d(1) (and Flatten without keepdims)
    Relu, LeakyRelu, Tanh, Sigmoid -> ReLU, LeakyReLU, Tanh, Sigmoid
    Clip(0, 6) -> ReLU6              Clip(0, no max) -> ReLU
    Gemm, MatMul (+ Add of a bias) -> Linear      Flatten(axis=1), Reshape(N, -1) -> Flatten
    Squeeze of size-1 axes -> Flatten
    BatchNormalization -> BatchNorm2d / BatchNorm1d (running statistics)
    LRN (odd size) -> LocalResponseNorm           Dropout -> Dropout
    Identity -> nothing (a new name for a tensor)
    Softmax or LogSoftmax at the very end -> dropped
    export_onnx's subgraphs for even-size LRN, LPPool2d, ceil-mode AvgPool2d and
    AdaptiveAvgPool2d (MatMul by its averaging matrices) -> one layer
    PyTorch's LPPool2d (Pow, AveragePool, Sign * Relu(Abs), Mul, Pow) and, from
    torch.onnx.export(dynamo=True), LocalResponseNorm (Mul, Reshape, Pad, AveragePool,
    Squeeze, Mul, Add, Pow, Div) -> one layer

A Reshape's target shape may be computed from the input's shape (Shape, Gather,
Unsqueeze, Squeeze, Concat, Cast, Slice, Mul: torch's x.view(x.size(0), -1), or
x.view(-1, x.size(1) * x.size(2) * x.size(3)), with a dynamic batch axis); those nodes
are read only as far as the Reshape needs them.

then the graph's shape is read back into convnet's containers: a chain of layers becomes a
Sequential; where a tensor forks, the paths must meet again at one Add (a Residual: body
plus shortcut, the identity when one path is empty) or one Concat along channels (a
Concat of branches; a run of Concat(x, layer(x)) named like one stage becomes a
DenseBlock, and so does torchvision's DenseNet, whose Concat(x0, f1, ..., fk) of all
features so far is read as Concat(the Concat before, fk)). A graph that is not nested
forks and joins of this kind (a path that leaves one branch for another) is refused with
a ValueError naming the node.

Layer names come from the node names: dotted names (``layer1.0.conv1``, as export_onnx
writes them) and PyTorch's scope names (``/layer1/layer1.0/conv1/Conv``) are rebuilt
into nested containers, so the state-dict keys of an exported convnet model, or of a
PyTorch module exported with torch.onnx.export, come back as they were
(``layer1.0.conv1.weight``; torch folds eval-mode batch norm into the CONV before it
names anything unless exported with training=TrainingMode.PRESERVE). A node named by its
operator alone (torch's newer exporter: ``node_Conv_28``) takes its module's name from
its weight's name or its name-scope metadata. Names that do not nest are used flat, dots
made "_".

ONNX pads each side of a window separately; convnet pads both by P and rounds the output
size down (pools: or up, ceil mode). Uneven pads are read as the convnet setting that
gives the same output size at the graph's input size (the windows then start at the same
places), a Conv's at stride 1 with one more after than before as PyTorch's padding="same"
for an even extent, and refused when there is none. The layers use fit="floor", as ONNX
does.

A Softmax (or LogSoftmax) at the end of the graph is not imported, since convnet models
output class scores (logits) and leave the softmax to the loss: a warning says so, and
``softmax(model.infer(x))`` gives what the ONNX graph gives.

External data (tensors stored beside the .onnx file) is read only from files inside the
model file's folder: an absolute location, or one that resolves (symlinks followed)
outside that folder, is refused before any external file is read.

A file is checked before anything is allocated for it, and anything wrong is a one-line
ValueError that starts with the file's path and names the node, attribute or tensor, what
was expected and what was found. First, before protobuf parses the file, its repeated
fields that hold messages or strings are counted in its bytes (_check_wire: an empty
field takes 2 bytes there and about 120 once parsed). Then, in order: the number of
nodes and Concat branches
(convnet.limits.MAX_LAYERS), of each node's inputs, outputs and attributes, and of the
initializers; every name is text; each tensor's element type (float32, float64, int64,
bool), dims, and data length or external extent, and their sums (MAX_PARAMS values,
MAX_ARRAY_BYTES bytes);
the wiring (initializers and outputs named and written once, inputs that exist, each
operator's number of inputs, no cycles); the input's per-sample shape (MAX_VOLUME); the
values the layers would copy out of the initializers, each use counting, so tied weights
too (MAX_PARAMS). Then, as each node is read: each attribute it uses, by type and range
(given once); the shapes of its weights; the per-sample volume of its output and of its
padded input (MAX_VOLUME). Blocks and dotted names nest at most MAX_DEPTH deep, and no
step recurses per node. The caps are read at each call, so a user can raise them.

>>> model = load_onnx("resnet18.onnx")                        # doctest: +SKIP
>>> model.input_shape, model.infer(x).shape                   # doctest: +SKIP
((3, 224, 224), (8, 1000))
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from pathlib import Path, PureWindowsPath

import numpy as np

from convnet import limits
from convnet.functional.conv import conv_output_size
from convnet.io.onnx_export import PAD_MODES, averaging_matrix
from convnet.io.weights import (
    INFO_KEY,
    check_class_count,
    check_finite,
    is_file,
    not_a_file,
    read_info,
)
from convnet.layers.activation import LeakyReLU, ReLU, ReLU6, Sigmoid, Tanh
from convnet.layers.base import Identity
from convnet.layers.conv import Conv2d
from convnet.layers.dropout import Dropout
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from convnet.layers.pool import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    LPPool2d,
    MaxPool2d,
)
from convnet.models.config import MAX_NAME
from convnet.models.containers import (
    Concat,
    DenseBlock,
    Residual,
    Sequential,
    relus_in_place,
)

__all__ = ["load_onnx"]

SUPPORTED = ("Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Constant", "Conv",
             "Dropout", "Flatten", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Identity",
             "LRN",
             "LeakyRelu", "LogSoftmax", "LpPool", "MatMul", "MaxPool", "ReduceMean", "Relu",
             "Reshape", "Sigmoid", "Softmax", "Squeeze", "Tanh")
_NOTES = ("(Add joins two paths or adds MatMul's bias; Reshape and Squeeze must flatten; "
          "ReduceMean must average over H and W; Softmax and LogSoftmax only at the end; "
          "Pad, Pow, Mul, Unsqueeze, Div, Sign and Abs only in the subgraphs that export_onnx "
          "writes for AvgPool2d (not with a divisor_override), AdaptiveAvgPool2d, LPPool2d "
          "and LRN, and torch.onnx.export "
          "for LPPool2d and, with dynamo=True, LocalResponseNorm)")
_FLOATS = (np.float32, np.float64)
# The names export_onnx gives BatchNormalization's scale and bias when the layer has none
# (affine=False): "<layer>.ones" and "<layer>.zeros", made unique by a suffix "_1", ...
_EXPORTED_ONES = re.compile(r"\.ones(_[0-9]+)?\Z")
_EXPORTED_ZEROS = re.compile(r"\.zeros(_[0-9]+)?\Z")

# Element types read from tensors (TensorProto.DataType): the typed field that holds the
# values when raw_data is absent, and bytes per element in raw_data.
_ELEMENT_TYPES = {1: ("float32", "float_data", 4),      # weights and scalars
                  11: ("float64", "double_data", 8),
                  7: ("int64", "int64_data", 8),        # shapes, axes, pads
                  9: ("bool", "int32_data", 1)}         # Dropout's training_mode
_MAX_RANK = 8                   # dims of one tensor
# Operators read on small integer tensors computed from the input's shape, as a flatten's
# target shape (torch's x.view(x.size(0), -1) with a dynamic batch axis), and the longest
# chain of them read.
_SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice", "Mul")
_MAX_SHAPE_CHAIN = 64
# Operators through which an unsupported node is followed to a Pad whose pads it computes
_PAD_SHAPE_OPS = (*_SHAPE_OPS, "ConstantOfShape", "Constant", "Reshape", "Transpose")
_MAX_LAYER_CHAIN = 64   # nodes of one dense layer that _running_concats follows back
# torch's newer exporter's metadata: each node's module scopes, outermost first.
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"
_MAX_SCOPES_TEXT = 4096
_MAX_WIRES = 4096               # inputs, outputs or attributes of a node (DenseNet-201: 49)
_MAX_FILE_BYTES = 2 << 30       # protobuf's limit on one message
# (fewest, most) inputs of each operator read, None for no most; Pad, Pow, Mul, Div,
# Unsqueeze and Squeeze occur in export_onnx's subgraphs
_ARITY = {"Add": (2, 2), "AveragePool": (1, 1), "BatchNormalization": (5, 5), "Clip": (1, 3),
          "Concat": (1, None), "Constant": (0, 0), "Conv": (2, 3), "Dropout": (1, 3),
          "Flatten": (1, 1), "Gemm": (2, 3), "GlobalAveragePool": (1, 1),
          "GlobalMaxPool": (1, 1), "Identity": (1, 1),
          "LRN": (1, 1), "LeakyRelu": (1, 1), "LpPool": (1, 1), "MatMul": (2, 2),
          "MaxPool": (1, 1), "Relu": (1, 1), "Reshape": (1, 2), "Sigmoid": (1, 1),
          "Softmax": (1, 1), "Tanh": (1, 1), "Pad": (1, 4), "Pow": (2, 2), "Mul": (2, 2),
          "Div": (2, 2), "Unsqueeze": (1, 2), "Squeeze": (1, 2), "Shape": (1, 1),
          "Gather": (2, 2), "Cast": (1, 1), "Slice": (3, 5), "ReduceMean": (1, 2),
          "LogSoftmax": (1, 1)}
_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
# AttributeProto.AttributeType: the kinds of attribute the operators read
_A_FLOAT, _A_INT, _A_STRING, _A_TENSOR, _A_FLOATS, _A_INTS = 1, 2, 3, 4, 6, 7


def _show(text, limit=60):
    """A name or value for an error message: quoted, escaped, cut to about limit chars."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}...' ({len(text):,} chars)"


def _node(node):
    """How errors name a node: its name and operator, both shown safely."""
    op = node.op_type if node.op_type.isidentifier() else _show(node.op_type, 40)
    return f"node {_show(node.name)} ({op})"


def _names(names, limit=4):
    """': 'a', 'b'" for an error message, the first ``limit`` names; "" for none."""
    shown = ", ".join(_show(name) for name in names[:limit])
    return f": {shown}{', ...' if len(names) > limit else ''}" if names else ""


def _show_list(values, limit=8):
    """A list or tuple for an error message, its first ``limit`` items if longer."""
    if len(values) <= limit:
        return str(values)
    return f"[{', '.join(map(str, values[:limit]))}, ...] ({len(values):,} values)"


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("load_onnx needs the onnx package: pip install onnx") from None
    return onnx


class OpenInputError(ValueError):
    """The graph leaves its input's size open and no input_shape was given."""


def load_onnx(path, input_shape=None, input_hint=None):
    """Build a convnet model from an ONNX file, with the weights of its initializers.

    Args:
        path: the .onnx file. Its tensors may sit in external-data files, but only in
            files inside the model file's folder.
        input_shape: per-sample input shape (C, H, W) (or (features,)) for a graph whose
            input has dynamic sizes besides the batch axis; default: the graph's own.
        input_hint: how the caller's user gives input_shape, added to the error for a
            graph whose input size is open and no input_shape (a command line's option);
            default: none, the error names the argument input_shape alone.

    Returns a Sequential in eval mode (batch norm uses the file's running statistics,
    dropout is off), with ``model.input_shape`` set; ``model.infer(x)`` for x of shape
    (N, *input_shape) computes what the graph computes (a final Softmax excepted: see
    the module notes). The layers' dtype is the initializers' (float32 or float64). A
    RELU right after a CONV, FC or batch norm works in place (``relus_in_place``), as in
    a model built from notation.

    Raises:
        ValueError naming the file and the node: an operator convnet does not have (with
        the list of those it reads), an attribute it cannot represent (the attribute and
        its value, e.g. asymmetric pads, Gemm's transA or alpha), a graph that is not
        chains with forks rejoined by Add or Concat, or external data outside the folder;
        and for a malformed or hostile file (see the module notes): a wrong type, range,
        size, dtype or wiring, or a size over a cap of convnet.limits, before allocating.

    >>> net = load_onnx("lenet5.onnx")                           # doctest: +SKIP
    >>> net.output_shape(net.input_shape)                        # doctest: +SKIP
    (10,)
    """
    onnx = _onnx()
    path = Path(path)
    if not is_file(path):
        raise ValueError(f"{path}: {not_a_file(path, 'ONNX file')}")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes), not an ONNX model")
    if size > _MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size:,} bytes is over protobuf's limit of "
                         f"{_MAX_FILE_BYTES:,} for one model; keep the weights in external data")
    data = path.read_bytes()
    _check_wire(data, str(path))
    try:
        proto = onnx.load_model_from_string(data, format="protobuf")
        del data                    # the parsed model holds what the import reads
    except Exception as err:        # protobuf's DecodeError and friends
        raise ValueError(f"{path}: not an ONNX model ({type(err).__name__}: "
                         f"{_show(str(err), 200)})") from None
    file = str(path)
    _check_counts(proto.graph, file)
    _check_text(proto.graph, file)
    _check_tensors(onnx, proto.graph, file)
    _load_external_data(onnx, proto, path)
    model = relus_in_place(_Importer(onnx, proto, file, input_shape, input_hint).build())
    check_finite(model.state_dict(), file)     # as every other file's weights are
    info = _model_info(proto, file, model)
    if info is not None:
        model.info = info
    return model


def _model_info(proto, file, model):
    """The info (class names, preprocessing) that export_onnx keeps in the file's
    metadata_props under INFO_KEY, checked (as many class names as the model gives
    scores); None where the file has none."""
    props = proto.metadata_props
    if len(props) > _MAX_WIRES:
        raise ValueError(f"{file}: {len(props):,} metadata entries, more than the "
                         f"{_MAX_WIRES:,} convnet reads")
    texts = [prop.value for prop in props if prop.key == INFO_KEY]
    if not texts:
        return None
    if len(texts) > 1:
        raise ValueError(f"{file}: metadata {INFO_KEY} is given {len(texts)} times; one "
                         f"record is expected")
    shape = model.input_shape
    info = read_info(texts[0], file, channels=shape[0] if len(shape) == 3 else None)
    check_class_count(info, model.output_shape(shape), f"{file}: metadata {INFO_KEY}")
    return info


# -- the file's fields, counted in its bytes before protobuf parses it -----------------
# Parsed, every field is an object (an empty attribute, 2 bytes in the file, took about
# 120 bytes: a 120 MB file of them, 7 GB), so the repeated fields that hold messages or
# strings are counted in the wire format first, against the caps below; the count stops
# at the first one over its cap. (field number: (what, cap, what its entries are)).
# Where a check after parsing holds the same field to a cap (and says by how much it is
# over), these caps are 4 times it: they only bound what parsing may take.
_ENTRIES = 1 << 10      # string-to-string entries (metadata, bindings) of one message
# Integers stored as varints (a tensor's dims and integer data, an attribute's ints): a
# 1-byte value is parsed into 8 bytes, so their bytes in the whole file are held to this
# (the integers convnet reads are shapes, axes and pads: a few each).
_VARINT_BYTES = 4 << 20
_VARINTS = "varints"
_TENSOR = {6: ("string_data entries", 1 << 16, None), 3: ("segment", 1, None),
           13: ("external_data entries", 64, None), 16: ("metadata entries", 64, None),
           1: ("dims", _MAX_WIRES, _VARINTS), 5: ("int32_data", _VARINT_BYTES, _VARINTS),
           7: ("int64_data", _VARINT_BYTES, _VARINTS),
           11: ("uint64_data", _VARINT_BYTES, _VARINTS)}
_SPARSE = {1: ("values", 1, _TENSOR), 2: ("indices", 1, _TENSOR)}
_SHAPE = {1: ("dims", 1 << 10, None)}
_TENSOR_TYPE = {2: ("shape", 1, _SHAPE)}
_TYPE = {1: ("tensor type", 1, _TENSOR_TYPE), 8: ("sparse tensor type", 1, _TENSOR_TYPE)}
_TYPE.update({4: ("sequence type", 1, {1: ("element type", 1, _TYPE)}),    # nested types
              9: ("optional type", 1, {1: ("element type", 1, _TYPE)}),
              5: ("map type", 1, {2: ("value type", 1, _TYPE)})})
_VALUE_INFO = {2: ("type", 1, _TYPE), 4: ("metadata entries", 64, None)}
_ATTRIBUTE = {5: ("tensor", 1, _TENSOR), 9: ("strings", 1 << 16, None),
              10: ("tensors", 1 << 10, _TENSOR), 11: ("graphs", 64, "graph"),
              6: ("graph", 1, "graph"), 22: ("sparse tensor", 1, _SPARSE),
              23: ("sparse tensors", 1 << 10, _SPARSE), 14: ("type proto", 1, _TYPE),
              15: ("type protos", 1 << 10, _TYPE), 8: ("ints", _VARINT_BYTES, _VARINTS)}
_NODE = {1: ("inputs", 4 * _MAX_WIRES, None), 2: ("outputs", 4 * _MAX_WIRES, None),
         5: ("attributes", 4 * _MAX_WIRES, _ATTRIBUTE), 9: ("metadata entries", 64, None),
         10: ("device configurations", 64, None)}
_MAX_TYPE_DEPTH = 64    # messages within messages, whatever they are (nested types)


def _graph_fields():   # read at each call: the caps of convnet.limits may be raised
    layers = limits.MAX_LAYERS
    return {1: ("nodes", 4 * layers, _NODE), 5: ("initializers", 16 * layers, _TENSOR),
            15: ("sparse initializers", 4 * layers, _SPARSE),
            11: ("inputs", 4 * _MAX_WIRES, _VALUE_INFO),
            12: ("outputs", 4 * _MAX_WIRES, _VALUE_INFO),
            13: ("value infos", 8 * layers, _VALUE_INFO),
            14: ("quantization annotations", 4 * layers, {2: ("entries", _ENTRIES, None)}),
            16: ("metadata entries", _ENTRIES, None)}


def _model_fields():
    layers = limits.MAX_LAYERS
    function = {4: ("inputs", 4 * _MAX_WIRES, None), 5: ("outputs", 4 * _MAX_WIRES, None),
                6: ("attributes", 4 * _MAX_WIRES, None), 7: ("nodes", 4 * layers, _NODE),
                9: ("opset imports", _ENTRIES, None),
                11: ("attribute protos", 4 * _MAX_WIRES, _ATTRIBUTE),
                12: ("value infos", 8 * layers, _VALUE_INFO),
                14: ("metadata entries", _ENTRIES, None)}
    training = {1: ("initialization", 1, "graph"), 2: ("algorithm", 1, "graph"),
                3: ("initialization bindings", _ENTRIES, None),
                4: ("update bindings", _ENTRIES, None)}
    return {7: ("graph", 1, "graph"), 8: ("opset imports", _ENTRIES, None),
            14: ("metadata entries", _MAX_WIRES, None), 20: ("training infos", 16, training),
            25: ("functions", layers, function)}


def _check_wire(data, file):
    """Count the repeated message and string fields of the ONNX file ``data`` (bytes) in
    protobuf's wire format, in every message that holds such fields (graphs, nodes,
    attributes, tensors, types, functions), subgraphs at most MAX_DEPTH deep, and the
    bytes of its varint integers, against the caps above; a ValueError naming the file
    and the field over its cap, or bytes that are not protobuf's wire format."""
    budget = [16 * limits.MAX_LAYERS * 64]  # fields read in all, whatever their counts
    varints = _VARINT_BYTES                 # bytes of varint integers in all
    stack = [(0, len(data), _model_fields(), "the model", 0, 0)]
    while stack:
        start, end, fields, where, depth, graphs = stack.pop()
        counts = {}
        for number, begin, stop in _wire(data, start, end, file, budget):
            entry = fields.get(number)
            if entry is None:
                continue
            what, cap, inner = entry
            # integers count their bytes (packed: one field of many; else one each)
            used = stop - begin if inner == _VARINTS and begin is not None else 1
            counts[number] = counts.get(number, 0) + used
            varints -= used if inner == _VARINTS else 0
            if counts[number] > cap or varints < 0:
                unit = " bytes of" if inner == _VARINTS else ""
                raise ValueError(
                    f"{file}: {where} has more than {cap:,}{unit} {what}, more than "
                    f"convnet reads" if varints >= 0 else
                    f"{file}: more than {_VARINT_BYTES:,} bytes of integers in all (dims, "
                    f"integer tensors, attributes' ints), more than convnet reads")
            if inner in (None, _VARINTS) or begin is None:
                continue
            nested = graphs
            if inner == "graph":
                nested += 1
                if nested > limits.MAX_DEPTH:
                    raise ValueError(f"{file}: subgraphs nest more than "
                                     f"{limits.MAX_DEPTH} deep (convnet.limits.MAX_DEPTH)")
                inner = _graph_fields()
            if depth + 1 > _MAX_TYPE_DEPTH + 4 * limits.MAX_DEPTH:
                raise ValueError(f"{file}: messages nest more than "
                                 f"{_MAX_TYPE_DEPTH + 4 * limits.MAX_DEPTH} deep")
            label = (f"{where} > {what.rstrip('s')} #{counts[number]}" if cap > 1
                     else f"{where} > {what}")
            stack.append((begin, stop, inner, label, depth + 1, nested))


def _wire(data, start, end, file, budget):
    """(field number, start, end) of each field of the message data[start:end]; start
    and end of a length-delimited field's bytes, None for the others."""
    i = start
    while i < end:
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError(f"{file}: more fields than a model of convnet.limits."
                             f"MAX_LAYERS ({limits.MAX_LAYERS:,}) layers can hold")
        key, i = _varint(data, i, end, file)
        number, kind = key >> 3, key & 7
        if kind == 0:
            _, i = _varint(data, i, end, file)
            yield number, None, None
            continue
        if kind == 2:
            size, i = _varint(data, i, end, file)
            begin, i = i, i + size
        elif kind in (1, 5):
            begin, i = None, i + (8 if kind == 1 else 4)
        else:
            raise ValueError(f"{file}: not an ONNX model (wire type {kind} at byte {i:,})")
        if i > end:
            raise ValueError(f"{file}: not an ONNX model (a field runs past its message's "
                             f"end at byte {end:,}: truncated?)")
        yield number, begin, (i if begin is not None else None)


def _varint(data, i, end, file):
    """The varint at data[i] and the index after it."""
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise ValueError(f"{file}: not an ONNX model (a bad varint at byte {i:,})")
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return value, i
        shift += 7


# -- tensors: declared sizes, then external data ----------------------------------------
def _graph_tensors(graph):
    """(label, TensorProto) of the main graph's tensors that can hold data: initializers
    and node attributes (Constant's value)."""
    for tensor in graph.initializer:
        yield f"tensor {_show(tensor.name)}", tensor
    for node in graph.node:
        for attr in node.attribute:
            label = f"{_node(node)}: attribute {_show(attr.name)}"
            if attr.HasField("t"):
                yield label, attr.t
            for tensor in attr.tensors:
                yield label, tensor


def _check_counts(graph, file):
    """The graph's nodes, and the layers its Concat nodes would add (a branch per input),
    against MAX_LAYERS; each node's inputs, outputs and attributes, and the graph's inputs
    and outputs, at most _MAX_WIRES each; initializers at most 4 * MAX_LAYERS. Counted
    from the lengths protobuf keeps, before any list of names is made."""
    where = f"{file}: the graph"
    nodes = graph.node
    limits.check_count(len(nodes), "MAX_LAYERS", "nodes", where)
    limits.check_count(len(nodes) + sum(len(n.input) for n in nodes if n.op_type == "Concat"),
                       "MAX_LAYERS", "nodes and the Concat nodes' branches", where)
    owners = [(f"node #{i}'s", node, ("input", "output", "attribute"))
              for i, node in enumerate(nodes)]
    owners.append(("the graph's", graph, ("input", "output")))
    for owner, proto, fields in owners:
        for field in fields:
            count = len(getattr(proto, field))
            if count > _MAX_WIRES:
                raise ValueError(f"{file}: {owner} {field}s: {count:,}, more than the "
                                 f"{_MAX_WIRES:,} convnet reads")
    if len(graph.initializer) > 4 * limits.MAX_LAYERS:
        raise ValueError(f"{file}: {len(graph.initializer):,} initializers, more than 4 per "
                         f"layer of convnet.limits.MAX_LAYERS ({limits.MAX_LAYERS:,})")


def _check_text(graph, file):
    """Every name the import reads is text: protobuf hands out invalid UTF-8 as bytes."""
    named = [("the graph's input", value.name) for value in graph.input]
    named += [("the graph's output", value.name) for value in graph.output]
    for i, node in enumerate(graph.node):
        where = f"node #{i}"
        named += [(f"{where}'s name", node.name), (f"{where}'s operator", node.op_type),
                  (f"{where}'s domain", node.domain)]
        named += [(f"{where}'s input", name) for name in node.input]
        named += [(f"{where}'s output", name) for name in node.output]
        named += [(f"{where}'s attribute name", attr.name) for attr in node.attribute]
        named += [(f"{where}'s metadata", text) for prop in node.metadata_props
                  for text in (prop.key, prop.value)]      # torch's module name scopes
    _refuse_bytes(named, file)
    named = []
    for label, tensor in _graph_tensors(graph):
        named.append((f"{label}: a tensor name", tensor.name))
        for entry in tensor.external_data:
            named += [(f"{label}: an external data key", entry.key),
                      (f"{label}: an external data value", entry.value)]
    _refuse_bytes(named, file)


def _refuse_bytes(named, file):
    for what, text in named:
        if not isinstance(text, str):
            raise ValueError(f"{file}: {what} {_show(text)} is not UTF-8 text")


def _type_name(onnx, data_type):
    try:
        return onnx.TensorProto.DataType.Name(data_type)
    except ValueError:
        return "unknown"


def _declared_size(onnx, tensor, where):
    """(elements, bytes) of a tensor from its element type and dims, both checked."""
    kind = _ELEMENT_TYPES.get(tensor.data_type)
    if kind is None:
        raise ValueError(f"{where}: element type {tensor.data_type} "
                         f"({_type_name(onnx, tensor.data_type)}) is not read by convnet; "
                         "expected FLOAT, DOUBLE, INT64 or BOOL")
    dims = list(tensor.dims)
    if len(dims) > _MAX_RANK or any(d < 0 or d > limits.MAX_PARAMS for d in dims):
        raise ValueError(f"{where}: dims {_show_list(dims)} must be at most {_MAX_RANK} sizes "
                         f"in [0, {limits.MAX_PARAMS:,}] (convnet.limits.MAX_PARAMS)")
    count = math.prod(dims)
    limits.check_count(count, "MAX_PARAMS", f"values of shape {tuple(dims)}", where)
    return count, count * kind[2]


def _check_data(tensor, count, where):
    """The tensor's stored data holds exactly its declared ``count`` values."""
    name, field, itemsize = _ELEMENT_TYPES[tensor.data_type]
    if tensor.HasField("segment"):
        raise ValueError(f"{where}: tensor segments are not supported")
    if tensor.HasField("raw_data"):
        got, need, unit = len(tensor.raw_data), count * itemsize, "bytes of raw_data"
    else:
        got, need, unit = len(getattr(tensor, field)), count, f"values in {field}"
    if got != need:
        raise ValueError(f"{where}: holds {got:,} {unit}; its dims {tuple(tensor.dims)} of "
                         f"{name} need {need:,}")


def _check_tensors(onnx, graph, file):
    """Before any tensor is read: each tensor's element type, dims and data length
    (external extents are checked against their files when read), and the file's totals
    against the caps."""
    if graph.sparse_initializer:
        raise ValueError(f"{file}: sparse initializers are not supported (got "
                         f"{len(graph.sparse_initializer)}); store the weights dense")
    values = size = 0
    for label, tensor in _graph_tensors(graph):
        where = f"{file}: {label}"
        count, nbytes = _declared_size(onnx, tensor, where)
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            _check_data(tensor, count, where)
        values, size = values + count, size + nbytes
    limits.check_count(values, "MAX_PARAMS", "values in all the tensors", file)
    limits.check_count(size, "MAX_ARRAY_BYTES", "bytes in all the tensors", file)


def _read_bytes(file, offset, length):
    """``length`` bytes of ``file`` from ``offset`` (bounds already checked)."""
    with open(file, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _load_external_data(onnx, proto, path):
    """Check every external-data location, then read them into the tensors.

    A location must be relative and resolve (symlinks followed) inside the model file's
    folder; offset and length must lie inside the file and match the tensor's size, and
    the tensors together may read no more bytes of a file than it holds (one region
    shared by 1,000 tensors had made 2 GB of a 1 MB file). All tensors are checked before
    any external file is opened.
    """
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    plan, taken = [], {}                # taken: bytes read from each external file
    for label, tensor in _graph_tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        where = f"{path}: {label}"
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if not location or "\0" in location:
            raise ValueError(f"{where}: external data with no usable location "
                             f"(got {_show(location)})")
        if os.path.isabs(location) or PureWindowsPath(location).anchor:
            raise ValueError(f"{where}: external data location {location!r} is an absolute "
                             f"path; only files inside the model's folder {folder} are read")
        target = os.path.realpath(os.path.join(folder, location))
        if os.path.commonpath([folder, target]) != folder:
            raise ValueError(f"{where}: external data location {location!r} resolves to "
                             f"{target}, outside the model's folder {folder}; refusing to "
                             "read it")
        if not os.path.isfile(target):
            raise ValueError(f"{where}: external data file {_show(location)} is not a file "
                             f"in {folder}")
        # element type and dims were checked by _check_tensors
        need = math.prod(tensor.dims) * _ELEMENT_TYPES[tensor.data_type][2]
        try:
            offset = int(info.get("offset", 0))
            length = int(info.get("length", need))
        except ValueError:
            raise ValueError(f"{where}: external data offset/length must be integers, got "
                             f"{_show(info.get('offset'))}/{_show(info.get('length'))}") from None
        size = os.path.getsize(target)
        if offset < 0 or length != need or offset + length > size:
            raise ValueError(f"{where}: external data bytes [{offset}, {offset + length}) "
                             f"of {location!r} ({size} bytes) do not hold the tensor's "
                             f"{need} bytes (shape {tuple(tensor.dims)})")
        plan.append((tensor, target, offset, length))
        taken[target] = taken.get(target, 0) + length
        if taken[target] > size:
            raise ValueError(f"{where}: the tensors read from {location!r} come to "
                             f"{taken[target]:,} bytes, more than its {size:,}: tensors "
                             "share its bytes; refusing to read them")
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
    A name that nests deeper than limits.MAX_DEPTH gives (None, None). Characters that
    are not printable become "_" (a model file's child names are printable).
    """
    depth = limits.MAX_DEPTH
    if not name.isprintable():
        name = "".join(c if c.isprintable() else "_" for c in name)
    if len(name) > MAX_NAME:      # a component may be as long: shortened, kept distinct
        name = "/".join(_short(part) for part in name.split("/"))
    if name.startswith("/"):
        parts = [part for part in name.split("/") if part]
        path = []
        for scope in parts[:-1]:
            comps = [c for c in scope.split(".") if c]
            if len(comps) > depth:
                return None, None
            # a scope may repeat the end of its parent's ("layer1" then "layer1.0")
            overlap = next((k for k in range(min(len(path), len(comps)), 0, -1)
                            if path[-k:] == comps[:k]), 0)
            path = path[:len(path) - overlap] + comps
            if len(path) > depth:       # the path never gets shorter: stop here
                return None, None
        last = parts[-1].replace(".", "_") if parts else op
        return path or [last], last
    comps = [c for c in name.split(".") if c]
    if len(comps) > depth:
        return None, None
    return comps or [f"{op.lower()}{index}"], "_".join(comps) or op.lower()


def _short(part):
    """A name part of at most MAX_NAME characters (a model file's cap on a child name):
    a longer one is cut, each dot-separated piece, and ends in 8 hex digits of its hash
    so that two long names stay two."""
    pieces = part.split(".")
    if all(len(piece) <= MAX_NAME for piece in pieces):
        return part
    digest = hashlib.sha256(part.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return ".".join(piece if len(piece) <= MAX_NAME else f"{piece[:MAX_NAME - 9]}_{digest}"
                    for piece in pieces)


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
    """The one finite number in a constant, or None; float32 ones as _f32 gives them."""
    if value is None or value.size != 1 or value.dtype.kind not in "biuf":
        return None
    number = value.reshape(-1)[0]
    if not np.isfinite(number):
        return None
    return _f32(number) if value.dtype == np.float32 else float(number)


def _same_pads(kernel, dilations):
    """PyTorch's padding="same" at stride 1: (before, after) on each axis, the odd pixel
    after."""
    return [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2)
            for k, d in zip(kernel, dilations)]


def _ints(value):
    """The numbers of an integer constant as a list of ints, or None."""
    if value is None or value.dtype.kind not in "iu":
        return None
    return [int(v) for v in value.reshape(-1)]


class _Attributes:
    """One node's attributes, read through typed getters: an attribute given twice, of
    another type than ONNX defines, or out of range is a ValueError naming the node, the
    attribute, what was expected and what was given. Absent ones give the default."""

    _KINDS = {_A_FLOAT: "a float (FLOAT)", _A_INT: "an int (INT)", _A_STRING: "a string (STRING)",
              _A_TENSOR: "a tensor (TENSOR)", _A_FLOATS: "a list of floats (FLOATS)",
              _A_INTS: "a list of ints (INTS)"}

    def __init__(self, error, node):
        self.error, self.by_name = error, {}
        for attr in node.attribute:
            if attr.name in self.by_name:
                raise error(f"attribute {_show(attr.name)} is given twice")
            self.by_name[attr.name] = attr

    def __contains__(self, name):
        return name in self.by_name

    def _get(self, name, kind):
        attr = self.by_name.get(name)
        if attr is not None and attr.type != kind:
            raise self.error(f"attribute {name} must be {self._KINDS[kind]}, got "
                             f"{self._describe(attr)}")
        return attr

    def _describe(self, attr):
        shown = {_A_FLOAT: lambda: repr(attr.f), _A_INT: lambda: repr(attr.i),
                 _A_STRING: lambda: _show(attr.s), _A_FLOATS: lambda: _show_list(attr.floats),
                 _A_INTS: lambda: _show_list(attr.ints)}
        kind = self._KINDS.get(attr.type, f"an attribute of type {attr.type}")
        return f"{kind.split(' (')[0]} {shown[attr.type]()}" if attr.type in shown else kind

    def _range(self, name, value, low, high):
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = (f"in [{low}, {high}]" if low is not None and high is not None
                      else f">= {low}" if low is not None else f"<= {high}")
            raise self.error(f"attribute {name}={value} must be {bounds}")

    def int(self, name, default=None, low=None, high=None):
        attr = self._get(name, _A_INT)
        if attr is None:
            return default
        self._range(name, attr.i, low, high)
        return attr.i

    def flag(self, name, default=0):
        """A 0/1 attribute as a bool."""
        return bool(self.int(name, default, 0, 1))

    def ints(self, name, default=None, length=None, low=None):
        """A short list of ints (a window's sizes, pads, axes): ``length`` of them, or at
        most 2 * _MAX_RANK, counted before a Python list of them is made."""
        attr = self._get(name, _A_INTS)
        if attr is None:
            return default
        count = len(attr.ints)
        if count != length if length is not None else count > 2 * _MAX_RANK:
            expected = length if length is not None else f"at most {2 * _MAX_RANK}"
            head = list(attr.ints[:8])
            shown = str(head) if count <= 8 else f"[{', '.join(map(str, head))}, ...]"
            raise self.error(f"attribute {name}={shown} must have {expected} values, got "
                             f"{count:,}")
        values = list(attr.ints)
        if low is not None and any(v < low for v in values):
            raise self.error(f"attribute {name}={_show_list(values)} must be >= {low} each")
        return values

    def float(self, name, default=None, low=None, high=None):
        """A finite float attribute, as the float32 ONNX stores (see _f32)."""
        attr = self._get(name, _A_FLOAT)
        if attr is None:
            return default
        if not math.isfinite(attr.f):
            raise self.error(f"attribute {name}={attr.f} must be a finite number")
        value = _f32(attr.f)
        self._range(name, value, low, high)
        return value

    def floats(self, name):
        attr = self._get(name, _A_FLOATS)
        return None if attr is None else np.fromiter(attr.floats, np.float32,
                                                     len(attr.floats))

    def int_array(self, name):
        """A list of ints of any length (a Constant's value_ints) as an int64 array, made
        without a Python list of them."""
        attr = self._get(name, _A_INTS)
        return None if attr is None else np.fromiter(attr.ints, np.int64, len(attr.ints))

    def string(self, name, default, choices):
        """A string attribute, one of choices (any, if choices is None)."""
        attr = self._get(name, _A_STRING)
        if attr is None:
            return default
        value = attr.s.decode("utf-8", "replace")
        if choices is not None and value not in choices:
            raise self.error(f"attribute {name}={_show(value)} must be one of {choices}")
        return value

    def tensor(self, name):
        attr = self._get(name, _A_TENSOR)
        return None if attr is None else attr.t


class _Importer:
    """One pass over the nodes making units, then the units' nesting made containers."""

    def __init__(self, onnx, proto, file, input_shape, input_hint=None):
        self.onnx, self.graph, self.file = onnx, proto.graph, file
        self.alias, self.shapes, self.units, self.done = {}, {}, [], set()
        self.inits = self._check_wiring()
        self.input, self.input_shape, self.batch = self._input(input_shape, input_hint)
        outputs = [o.name for o in self.graph.output]
        if len(outputs) != 1:
            raise ValueError(f"{file}: a convnet model has one output; the graph has "
                             f"{len(outputs)}{_names(outputs)}")
        self.output = outputs[0]
        self.shapes[self.input] = self.input_shape
        self.nodes = self._live_nodes()
        self._check_copies()
        self.step_names = {}    # _running_concats' names of its rewritten Concats
        self._running_concats()
        self.consts = {t.name: self._array(t) for t in self.graph.initializer}
        self.consumers = {}
        for node in self.nodes:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.dropped_softmax = None
        self.deferred = {}      # shape arithmetic, by output name: read by a Reshape
        self.shape_values = {}  # what _shape_value found, by tensor name: each read once

    # -- small helpers ---------------------------------------------------------------------
    def _array(self, tensor):
        try:
            return self.onnx.numpy_helper.to_array(tensor)
        except Exception as err:
            raise ValueError(f"{self.file}: tensor {_show(tensor.name)} cannot be read "
                             f"({type(err).__name__}: {_show(str(err), 200)})") from None

    def error(self, node, message):
        return ValueError(f"{self.file}: {_node(node)}: {message}")

    def cap(self, node, value, cap_name, what):
        """limits.check_count, naming the node."""
        return limits.check_count(value, cap_name, what, f"{self.file}: {_node(node)}")

    def attrs(self, node):
        """The node's attributes, read through typed getters (see _Attributes)."""
        return _Attributes(lambda message: self.error(node, message), node)

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
            raise self.error(node, f"input {i} ({_show(node.input[i])}) is a constant; "
                                   "expected the data flowing through the net")
        raise self.error(node, f"input {i} ({_show(name)}) is not computed from the graph's "
                               f"input {_show(self.input)}")

    def param(self, node, i, what, ndim=None, optional=False):
        """A float32/float64 constant input (a weight), checked."""
        name = node.input[i] if len(node.input) > i else ""
        if not name:
            if optional:
                return None
            raise self.error(node, f"{what} (input {i}) is missing")
        value = self.const(name)
        if value is None:
            raise self.error(node, f"{what} (input {i}, {_show(name)}) must be a constant "
                                   "(an initializer), not computed in the graph")
        if value.dtype not in _FLOATS:
            raise self.error(node, f"{what} {_show(name)} has dtype {value.dtype}; convnet "
                                   "layers hold float32 or float64")
        if ndim is not None and value.ndim != ndim:
            raise self.error(node, f"{what} {_show(name)} must be {ndim}-D, got shape "
                                   f"{value.shape}")
        if value.size == 0:
            raise self.error(node, f"{what} {_show(name)} is empty, shape {value.shape}")
        return value

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

    def _running_concats(self):
        """torchvision's DenseNet concatenates all the features so far before each layer
        and at the block's end: Concat(x0, f1, ..., fk) after Concat(x0, ..., fk-1), fk
        computed from that earlier Concat by a chain of layers. Each such Concat is read
        as Concat(the one before, fk), and a Concat of one tensor as that tensor: the
        running Concat(x, layer(x)) of convnet's DenseBlock, the same values. The step is
        named as its layer is (the common path of the chain's first and last node)."""
        earlier, producer = {}, {}
        for node in self.nodes:
            producer.update((name, node) for name in node.output)
        for node in self.nodes:
            if node.op_type != "Concat" or [(a.name, a.i) for a in node.attribute] != [
                    ("axis", 1)]:
                continue
            inputs = tuple(node.input)
            # torch's newer exporter drops the one-input Concat(x0): Concat(x0, f1) starts
            start = earlier.get(inputs[:-1], inputs[0] if len(inputs) == 2 else None)
            chain = self._chain(producer, inputs[-1], start)
            if len(inputs) == 1:
                self.alias[node.output[0]] = inputs[0]
                self.done.add(id(node))
            elif chain:
                del node.input[:]
                node.input.extend([start, inputs[-1]])
                a, b = (_path(self._module_name(n) or n.name, n.op_type, 0)[0] or []
                        for n in (chain[-1], chain[0]))
                common = a[:next((i for i, (x, y) in enumerate(zip(a, b)) if x != y),
                                 min(len(a), len(b)))]
                if common:
                    self.step_names[id(node)] = ".".join(common)
            earlier.setdefault(inputs, node.output[0])

    def _chain(self, producer, end, start):
        """The nodes from tensor ``start`` to tensor ``end``, last first, when ``end`` is
        computed from ``start`` alone by at most _MAX_LAYER_CHAIN nodes that each read one
        tensor that is not a constant; else []."""
        chain, name = [], end
        while start is not None and name != start and len(chain) < _MAX_LAYER_CHAIN:
            node = producer.get(name)
            data = [] if node is None else [
                n for n in node.input if n and not self._constant(producer, n)]
            if node is None or len(data) != 1:
                return []
            chain.append(node)
            name = data[0]
        return chain if start is not None and name == start and chain else []

    def _constant(self, producer, name):
        """Whether tensor ``name`` is a constant: an initializer, a Constant node's, or
        either through Identity nodes (torch's exporter shares equal initializers, batch
        norm's ones and zeros, through Identity)."""
        for _ in range(_MAX_LAYER_CHAIN):
            if name in self.inits:
                return True
            node = producer.get(name)
            if node is None or node.op_type != "Identity":
                return getattr(node, "op_type", None) == "Constant"
            name = node.input[0]
        return False

    # -- the wiring, the input, the live nodes -------------------------------------------------
    def _check_wiring(self):
        """Initializers and node outputs named and written once, node inputs that exist,
        each operator's number of inputs. Returns the initializers' names."""
        inits = set()
        for tensor in self.graph.initializer:
            if not tensor.name or tensor.name in inits:
                problem = "has no name" if not tensor.name else "is given twice"
                raise ValueError(f"{self.file}: initializer {_show(tensor.name)} {problem}")
            inits.add(tensor.name)
        written = inits | {value.name for value in self.graph.input}
        for node in self.graph.node:
            if not node.output or not node.output[0]:
                raise self.error(node, "it has no output (an empty first output name)")
            for name in node.output:
                if name in written:
                    raise self.error(node, f"its output {_show(name)} is already the graph's "
                                           "input, an initializer or another node's output")
                written.add(name)
            fewest, most = _ARITY.get(node.op_type, (0, None))
            if len(node.input) < fewest or most is not None and len(node.input) > most:
                expected = fewest if fewest == most else f"{fewest} to {most or 'any'}"
                raise self.error(node, f"{node.op_type} takes {expected} input(s), got "
                                       f"{len(node.input)}")
        for node in self.graph.node:
            for name in node.input:
                if name and name not in written:
                    raise self.error(node, f"input {_show(name)} is not the graph's input, an "
                                           "initializer or any node's output")
        return inits

    def _check_copies(self):
        """The values the layers would copy out of constants, before any is read: every
        use of an initializer (or a Constant) by a live node counts, tied weights too."""
        sizes = {t.name: (math.prod(t.dims), math.prod(t.dims) * _ELEMENT_TYPES[t.data_type][2])
                 for t in self.graph.initializer}
        values = nbytes = 0
        for node in self.nodes:
            if node.op_type == "Constant":
                tensors = [attr.t for attr in node.attribute if attr.HasField("t")]
                count = sum(math.prod(t.dims) for t in tensors) + sum(
                    len(attr.floats) + len(attr.ints) for attr in node.attribute)
                sizes[node.output[0]] = (count, 8 * count)
            elif node.op_type == "Identity" and node.input[0] in sizes:
                sizes[node.output[0]] = sizes[node.input[0]]
            else:
                for name in node.input:
                    count, size = sizes.get(name, (0, 0))
                    values, nbytes = values + count, nbytes + size
        what = "values copied into layers from constants (each use counts)"
        limits.check_count(values, "MAX_PARAMS", what, self.file)
        limits.check_count(nbytes, "MAX_ARRAY_BYTES", f"bytes of {what}", self.file)

    def _input(self, input_shape, input_hint):
        inputs = [i for i in self.graph.input if i.name not in self.inits]
        if len(inputs) != 1:
            raise ValueError(f"{self.file}: a convnet model has one input; the graph has "
                             f"{len(inputs)}{_names([i.name for i in inputs])}")
        value = inputs[0]
        if not value.name:
            raise ValueError(f"{self.file}: the graph's input has no name")
        tensor = value.type.tensor_type
        if tensor.elem_type not in (self.onnx.TensorProto.FLOAT, self.onnx.TensorProto.DOUBLE):
            raise ValueError(f"{self.file}: input {_show(value.name)} has element type "
                             f"{tensor.elem_type}; expected float32 or float64")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        bad = [(a, d) for a, d in enumerate(dims) if d is not None and (d < 0 or d == 0 and a)]
        if bad:
            raise ValueError(f"{self.file}: input {_show(value.name)} has size {bad[0][1]} on "
                             f"axis {bad[0][0]} (shape {_show_list(dims)}); sizes must be "
                             "positive")
        static = tuple(dims[1:]) if dims and all(d for d in dims[1:]) else None
        batch = dims[0] if dims and dims[0] else None
        name = _show(value.name)
        if input_shape is not None:
            shape = tuple(int(s) for s in input_shape)
            if not shape or min(shape) < 1:
                raise ValueError(f"{self.file}: input_shape must be positive sizes such as "
                                 f"(C, H, W), got {tuple(input_shape)}")
            if static is not None and static != shape:
                raise ValueError(f"{self.file}: input_shape {shape} contradicts the graph's "
                                 f"input {name} of per-sample shape {_show_list(static)}")
        elif static is None or not static:
            shown = _show_list(["?" if d is None else d for d in dims]) if dims else "unknown"
            hint = f" ({input_hint})" if input_hint else ""
            raise OpenInputError(f"{self.file}: input {name} has shape {shown}, not a "
                                 f"static per-sample shape; pass input_shape=(C, H, W)"
                                 f"{hint}")
        else:
            shape = static
        if len(shape) not in (1, 3):
            raise ValueError(f"{self.file}: input {name} has per-sample shape "
                             f"{_show_list(shape)}; convnet models take (C, H, W) or "
                             "(features,)")
        limits.check_count(math.prod(shape), "MAX_VOLUME", f"values per sample {shape}",
                           f"{self.file}: input {name}")
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
        for node in self.nodes:     # every constant first: a subgraph read at its head
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):  # reads them
                self.op_Constant(node)
                self.done.add(id(node))
        for node in self.nodes:
            if id(node) in self.done:
                continue
            if node.domain not in ("", "ai.onnx"):
                raise self.error(node, f"operator of domain {_show(node.domain)} is not "
                                       f"supported; convnet reads the standard operators "
                                       f"{', '.join(SUPPORTED)}")
            if self._shape_arithmetic(node):
                self.deferred[node.output[0]] = node
            elif node.op_type in SUPPORTED:
                getattr(self, f"op_{node.op_type}")(node)
            elif not self._fused(node):
                raise self._unsupported(node)
        unread = next((n for n in self.deferred.values() if id(n) not in self.done), None)
        if unread is not None:
            raise self.error(unread, f"{unread.op_type} on shapes or constants is read only "
                                     f"as part of a Reshape's target shape (a flatten), and "
                                     f"this one feeds something else")
        end = self.resolve(self.output)
        if end not in self.shapes:
            raise ValueError(f"{self.file}: the output {_show(self.output)} does not depend "
                             f"on the input {_show(self.input)}")
        items = _Structure(self).series(self.input, end, self.units)
        try:        # the nesting cap, and the containers' own checks of what was checked
            model = Sequential(_Names().assemble(items, [], top=True))
            got = model.output_shape(self.input_shape)
        except ValueError as err:
            raise ValueError(f"{self.file}: {err}") from None
        assert got == self.shapes[end], (got, self.shapes[end])
        model.input_shape = self.input_shape
        if self.dropped_softmax is not None:
            op = self.dropped_softmax.op_type
            gives = "probabilities" if op == "Softmax" else "log-probabilities"
            warnings.warn(f"{self.file}: the final {op} (node "
                          f"{_show(self.dropped_softmax.name)}) is not imported: convnet "
                          f"models output class scores; apply a {op.lower()} to "
                          f"model.infer(x) for the {gives} the graph gives",
                          stacklevel=3)
        return model.eval()

    def _unsupported(self, node):
        pad = self._pad_ahead(node)
        if pad is not None:
            mode = self.attrs(pad).string("mode", "constant", None)
            return self.error(pad, f"padding mode {_show(mode)} is read only as a Pad with "
                                   "constant pads of H and W, and only a Conv after it "
                                   "(PyTorch's Conv2d padding_mode as "
                                   "torch.onnx.export(dynamo=True) and export_onnx write it)")
        return self.error(node, f"unsupported operator {_show(node.op_type)}; convnet reads "
                                f"{', '.join(SUPPORTED)} {_NOTES}")

    def _pad_ahead(self, node):
        """The Pad with a mode other than "constant" that node is, or that node's outputs
        reach through at most _MAX_SHAPE_CHAIN nodes of _PAD_SHAPE_OPS (torch's older
        exporter computes a reflect or replicate Pad's pads with ConstantOfShape, Slice,
        Concat, Transpose and Reshape); None if there is none."""
        seen, frontier = set(), [node]
        for _ in range(_MAX_SHAPE_CHAIN):
            following = []
            for current in frontier:
                if current.op_type == "Pad" and \
                        self.attrs(current).string("mode", "constant", None) != "constant":
                    return current
                if current.op_type not in _PAD_SHAPE_OPS:
                    continue
                for out in current.output:
                    for user in self.consumers.get(out, []):
                        if id(user) not in seen:
                            seen.add(id(user))
                            following.append(user)
            if not following:
                return None
            frontier = following
        return None

    def _shape_arithmetic(self, node):
        """Whether node computes on shapes rather than data: a Shape, or one of _SHAPE_OPS
        of which no input is data. Such nodes are read only when a Reshape's target
        shape needs them (_shape_value)."""
        if node.op_type == "Shape":
            return True
        return node.op_type in _SHAPE_OPS and len(node.output) == 1 and not any(
            self.resolve(name) in self.shapes for name in node.input if name)

    def _shape_value(self, reshape, name, depth=0):
        """The integer values of tensor ``name`` (a list, or an int for a scalar), None
        standing for the batch size, computed from constants and the per-sample shapes of
        data tensors through _SHAPE_OPS; the nodes read are marked done."""
        name = self.resolve(name)
        if name in self.shape_values:       # a tensor read twice is worked out once
            return self.shape_values[name]
        self.shape_values[name] = found = self._shape_of(reshape, name, depth)
        return found

    def _shape_of(self, reshape, name, depth):
        """_shape_value's work for one tensor."""
        value = self.consts.get(name)
        if value is not None:
            if value.dtype.kind not in "iu" or value.ndim > 1 or value.size > _MAX_RANK:
                raise self.error(reshape, f"its target shape reads {_show(name)}, which is "
                                          f"not a short list of integers")
            return int(value) if value.ndim == 0 else [int(v) for v in value]
        node = self.deferred.get(name)
        if node is None or depth > _MAX_SHAPE_CHAIN:
            raise self.error(reshape, "the target shape must be a constant, or computed "
                                      f"from the input's shape by {', '.join(_SHAPE_OPS)} "
                                      "(export with constant folding, or flatten with "
                                      "torch.flatten)")
        self.done.add(id(node))
        op, attrs = node.op_type, self.attrs(node)

        def arg(i):
            return self._shape_value(reshape, node.input[i], depth + 1)

        def axes():
            given = attrs.ints("axes", None)
            return given if given is not None else (arg(1) if len(node.input) > 1 else [0])
        if op == "Shape":
            x = self.resolve(node.input[0])
            if x not in self.shapes:
                raise self.error(node, "Shape reads a tensor that is not the data")
            full = [None, *self.shapes[x]]
            return full[attrs.int("start", 0): attrs.int("end", len(full))]
        if op == "Cast":
            return arg(0)
        if op == "Concat":
            parts = [arg(i) for i in range(len(node.input))]
            if any(not isinstance(p, list) for p in parts) or \
                    sum(map(len, parts)) > _MAX_RANK:
                raise self.error(node, "concatenates more than a shape")
            return [v for p in parts for v in p]
        data = arg(0)
        if op == "Gather" and isinstance(data, list) and attrs.int("axis", 0) == 0:
            index = arg(1)
            picks = index if isinstance(index, list) else [index]
            if all(isinstance(i, int) and -len(data) <= i < len(data) for i in picks):
                got = [data[i] for i in picks]
                return got if isinstance(index, list) else got[0]
        if op == "Unsqueeze" and not isinstance(data, list) and axes() in ([0], [-1]):
            return [data]
        if op == "Squeeze" and isinstance(data, list) and len(data) == 1 and \
                axes() in ([0], [-1]):
            return data[0]
        if op == "Mul" and len(node.input) == 2:   # sizes multiplied: a flatten's count
            other = arg(1)
            pairs = (list(zip(data, other)) if isinstance(data, list) and isinstance(
                other, list) and len(data) == len(other) else [(data, other)])
            if all(isinstance(a, int) and isinstance(b, int) for a, b in pairs):
                products = [a * b for a, b in pairs]
                if any(abs(v) > limits.MAX_VOLUME for v in products):   # no size is larger
                    raise self.error(node, f"multiplies sizes to {max(products, key=abs):.3g}"
                                           f", more than the {limits.MAX_VOLUME:,} values a "
                                           f"sample may have (convnet.limits.MAX_VOLUME)")
                return products if isinstance(data, list) else products[0]
        if op == "Slice" and isinstance(data, list) and len(node.input) >= 3:
            starts, ends = arg(1), arg(2)
            step = arg(4) if len(node.input) > 4 and node.input[4] else [1]
            if all(isinstance(v, list) and len(v) == 1 and isinstance(v[0], int)
                   for v in (starts, ends, step)) \
                    and step[0] != 0 and (len(node.input) < 4 or not node.input[3]
                                          or arg(3) in ([0], [-1])):
                return data[starts[0]: ends[0]: step[0]]
        shown = _show_list(data) if isinstance(data, list) else data
        raise self.error(node, f"{op} on the shape {shown} is not read (convnet follows only "
                               "the shape arithmetic of a flatten)")

    def _fused(self, node):
        """Try export_onnx's subgraphs headed by node; True if one was read."""
        if node.op_type == "Pad":
            return self._pad_conv(node) or self._pad_avgpool(node)
        if node.op_type == "Pow":
            return self._lppool_subgraph(node)
        if node.op_type == "Mul" and len(node.input) == 2 and node.input[0] == node.input[1]:
            return self._lrn_subgraph(node)
        return False

    def add(self, nodes, x, layer, out=None):
        """Append a layer unit: x -> layer -> ``out`` (default: the last node's first
        output)."""
        last = nodes[-1]
        try:
            shape = layer.output_shape(self.shapes[x])
        except ValueError as err:
            raise self.error(last, str(err)) from None
        self.cap(last, math.prod(shape), "MAX_VOLUME", f"values per sample in its output {shape}")
        out = last.output[0] if out is None else out
        self.shapes[out] = shape
        self.units.append(_Unit("layer", [x], out, layer, *self.path(last), last))
        for node in nodes:
            self.done.add(id(node))

    def path(self, node):
        """_path of the node's name (or of its PyTorch module's, _module_name), refused
        when it nests deeper than MAX_DEPTH."""
        name = self.step_names.get(id(node)) or self._module_name(node) or node.name
        path, fallback = _path(name, node.op_type, len(self.units))
        if path is None:
            raise self.error(node, f"its name nests more than {limits.MAX_DEPTH} levels deep "
                                   "(convnet.limits.MAX_DEPTH)")
        return path, fallback

    def _module_name(self, node):
        """For a node named by its operator alone, as torch's newer exporter names them
        ("node_Conv_28"): the PyTorch module it came from ("features.0"), so that the
        layers get the module's state-dict keys. That is its weight initializer's name
        less ".weight", else the innermost module of the exporter's name-scope metadata;
        None for a node whose name already nests (dots or a "/" path) or says nothing."""
        if node.name.startswith("/") or "." in node.name:
            return None
        weight = node.input[1] if len(node.input) > 1 else ""
        if weight in self.inits and weight.endswith(".weight") and len(weight) > 7:
            return weight[:-len(".weight")]
        for prop in node.metadata_props:
            if prop.key == _NAME_SCOPES and len(prop.value) <= _MAX_SCOPES_TEXT:
                scopes = re.findall(r"'([^']*)'", prop.value)      # "['', 'features', ...]"
                if len(scopes) >= 2 and scopes[-2]:
                    return scopes[-2]
        return None

    def make(self, node, cls, *args, **kwargs):
        """cls(*args, **kwargs); a ValueError from the constructor names the node."""
        try:
            return cls(*args, **kwargs)
        except ValueError as err:
            raise self.error(node, str(err)) from None

    def window(self, node, op, attrs, shape, kernel, ceil, dilations=(1, 1)):
        """convnet's (padding, ceil_mode, begin pads, end pads, strides) for an ONNX window
        over a per-sample (C, H, W) shape; kernel and dilations are checked by the caller.

        convnet pads both sides by P and floors (or, for pools, ceils) the output size;
        ONNX pads may differ at the end. They agree when the output sizes agree, since
        the windows then start at the same places.
        """
        hw = shape[1:]
        strides = attrs.ints("strides", [1, 1], length=2, low=1)
        auto_pad = attrs.string("auto_pad", "NOTSET", _AUTO_PADS)
        pads = attrs.ints("pads", [0, 0, 0, 0], length=4, low=0)
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0] * 4
            for a, (size, k, s, d) in enumerate(zip(hw, kernel, strides, dilations)):
                # A stride wider than the window (a 1x1/2 "same" shortcut) gives a negative
                # total: a Conv pads 0 (the spec's max(0, .), as onnxruntime); onnxruntime's
                # pools refuse it ("padding values must be non-negative"), and so do we.
                total = (-(-size // s) - 1) * s + d * (k - 1) + 1 - size
                if total < 0 and op == "Conv":
                    total = 0
                if total < 0:
                    raise self.error(node, f"attribute auto_pad={auto_pad!r} gives a "
                                           f"negative total pad {total} (stride {s} > "
                                           f"window {d * (k - 1) + 1}), which onnxruntime's "
                                           f"{op} refuses too")
                small, large = total // 2, total - total // 2
                pads[a], pads[a + 2] = ((small, large) if auto_pad == "SAME_UPPER"
                                        else (large, small))
        elif auto_pad == "VALID":
            pads = [0] * 4
        self.cap(node, shape[0] * (hw[0] + pads[0] + pads[2]) * (hw[1] + pads[1] + pads[3]),
                 "MAX_VOLUME", f"values per sample in the padded input (pads {pads})")
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
        if op == "Conv" and strides == [1, 1] and \
                list(zip(begin, end)) == _same_pads(kernel, dilations):
            return "same", False, begin, end, strides    # PyTorch's uneven padding="same"
        shown = f"auto_pad={auto_pad!r} (pads {pads})" if auto_pad != "NOTSET" else f"pads={pads}"
        rounding = "rounded down" if op == "Conv" else "rounded down or, in ceil mode, up"
        same = " (a Conv at stride 1: or PyTorch's padding='same')" if op == "Conv" else ""
        raise self.error(node, f"attribute {shown} cannot be represented: convnet pads both "
                               f"ends of an axis by the same P{same} (here the begin pads "
                               f"{begin}), and no output size that gives ({rounding}) is the "
                               f"ONNX output size {counts}")

    # -- operators ---------------------------------------------------------------------------
    def op_Constant(self, node):
        attrs = self.attrs(node)
        kinds = sorted(attrs.by_name)
        if len(kinds) != 1:
            raise self.error(node, f"a Constant has one attribute (its value), got "
                                   f"{_show_list([_show(kind) for kind in kinds])}")
        if "value" in attrs:        # its element type, dims and data are checked
            value = self._array(attrs.tensor("value"))
        elif "value_float" in attrs:
            value = np.array(attrs.float("value_float"), np.float32)
        elif "value_int" in attrs:
            value = np.array(attrs.int("value_int"), np.int64)
        elif "value_floats" in attrs:
            value = attrs.floats("value_floats")
        elif "value_ints" in attrs:
            value = attrs.int_array("value_ints")
        else:
            raise self.error(node, f"a constant of kind {_show(kinds[0])} is not supported")
        self.consts[node.output[0]] = value

    def op_Identity(self, node):
        self.alias[node.output[0]] = self.resolve(node.input[0])

    def op_Conv(self, node, pad=None):
        """A Conv; pad: (the Pad node before it, its (top, left, bottom, right) pads,
        PyTorch's padding_mode) for a Conv of padding_mode reflect, replicate or circular,
        as PyTorch and export_onnx write it (a Pad of that mode, then an unpadded Conv)."""
        x = self.data(pad[0] if pad else node)
        w = self.param(node, 1, "weight W")
        b = self.param(node, 2, "bias B", ndim=1, optional=True)
        if w.ndim != 4:
            raise self.error(node, f"only 2-D convolution (a 4-D weight) is supported, got "
                                   f"weight shape {w.shape}")
        attrs = self.attrs(node)
        kernel = attrs.ints("kernel_shape", list(w.shape[2:]), length=2, low=1)
        if kernel != list(w.shape[2:]):
            raise self.error(node, f"attribute kernel_shape={kernel} does not match the "
                                   f"weight's {list(w.shape[2:])}")
        dilations = attrs.ints("dilations", [1, 1], length=2, low=1)
        group = attrs.int("group", 1, low=1)
        shape = self.shapes[x]
        if len(shape) != 3:
            raise self.error(node, f"expected an (N, C, H, W) input, got per-sample {shape}")
        if pad:         # the window over the padded input; Conv2d pads it itself
            top, left, bottom, right = pad[1]
            shape = (shape[0], shape[1] + top + bottom, shape[2] + left + right)
        if w.shape[0] % group or shape[0] != w.shape[1] * group:
            raise self.error(node, f"attribute group={group} with weight W of shape {w.shape} "
                                   f"needs {w.shape[1] * group} input channels and a multiple "
                                   f"of {group} filters; the input has {shape[0]} channels")
        if b is not None and b.shape != (w.shape[0],):
            raise self.error(node, f"bias B has shape {b.shape}, expected ({w.shape[0]},)")
        padding, _, _, _, strides = self.window(node, "Conv", attrs, shape, kernel, False,
                                                dilations)
        mode = "zeros"
        if pad:
            if any(padding):
                raise self.error(node, f"a Conv with pads {attrs.ints('pads')} after a Pad of "
                                       f"mode {_show(self.attrs(pad[0]).string('mode', '', None))}"
                                       f" is not read: convnet's Conv2d pads once, in one "
                                       f"mode (a padding layer before a padded Conv2d)")
            padding, mode = (top, left), pad[2]
            if (top, left) != (bottom, right):      # PyTorch's uneven padding="same"
                if strides != [1, 1] or [(top, bottom), (left, right)] != _same_pads(
                        kernel, dilations):
                    onnx_mode = self.attrs(pad[0]).string("mode", "", None)
                    raise self.error(pad[0], f"pads {[0, 0, top, left, 0, 0, bottom, right]} "
                                             f"of mode {_show(onnx_mode)} "
                                             "differ at the two sides other than as "
                                             "padding='same' does; convnet's Conv2d pads "
                                             "both sides alike")
                padding = "same"
        layer = self.make(node, Conv2d, w.shape[1] * group, w.shape[0], tuple(kernel),
                          tuple(strides), padding, tuple(dilations), group, bias=b is not None,
                          fit="floor", dtype=w.dtype, rng=np.random.default_rng(0),
                          padding_mode=mode)
        layer.params["weight"][...] = w
        if b is not None:
            layer.params["bias"][...] = b
        self.add([pad[0], node] if pad else [node], x, layer)

    def _pad_conv(self, pad):
        """Pad (mode reflect, edge or wrap; constant pads of H and W) -> Conv without pads:
        a Conv2d of padding_mode reflect, replicate or circular (op_Conv checks that the
        pads are equal on both sides, or padding="same")."""
        conv = self.only_consumer(pad, "Conv")
        attrs = self.attrs(pad)
        mode = {onnx: torch for torch, onnx in PAD_MODES.items()}.get(
            attrs.string("mode", "constant", None))
        if conv is None or mode is None or (len(pad.input) > 3 and pad.input[3]):
            return False
        pads = self._pads(pad)
        if pads is None or len(pads) != 8 or pads[:2] + pads[4:6] != [0, 0, 0, 0] \
                or min(pads) < 0:
            return False
        self.op_Conv(conv, (pad, pads[2:4] + pads[6:], mode))
        return True

    def _pool(self, node):
        x = self.data(node)
        shape = self.shapes[x]
        if len(shape) != 3:
            raise self.error(node, f"expected an (N, C, H, W) input, got per-sample {shape}")
        attrs = self.attrs(node)
        kernel = attrs.ints("kernel_shape", None, length=2, low=1)
        if kernel is None:
            raise self.error(node, "attribute kernel_shape is missing (the window's size)")
        dilations = attrs.ints("dilations", [1, 1], length=2, low=1)
        return x, shape, attrs, kernel, dilations, attrs.flag("ceil_mode")

    def op_MaxPool(self, node):
        x, shape, attrs, kernel, dilations, ceil = self._pool(node)
        self.unused_outputs(node, "Indices")
        padding, mode, _, _, strides = self.window(node, "MaxPool", attrs, shape, kernel,
                                                   ceil, dilations)
        self.add([node], x, self.make(node, MaxPool2d, tuple(kernel), tuple(strides), padding,
                                      tuple(dilations), ceil_mode=mode, fit="floor"))

    def op_AveragePool(self, node):
        x, shape, attrs, kernel, dilations, ceil = self._pool(node)
        if any(d != 1 for d in dilations):
            raise self.error(node, f"attribute dilations={dilations} is not supported "
                                   "(convnet's AvgPool2d has no dilation)")
        padding, mode, begin, end, strides = self.window(node, "AveragePool", attrs,
                                                         shape, kernel, ceil)
        include = attrs.flag("count_include_pad")
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
        p = attrs.int("p", 2)
        if p < 1 or p % 2:
            raise self.error(node, f"attribute p={p} is not supported: ONNX takes |x|^p, "
                                   "convnet's LPPool2d (as PyTorch's) x^p; they agree for an "
                                   "even p only")
        if any(d != 1 for d in dilations):
            raise self.error(node, f"attribute dilations={dilations} is not supported")
        padding, mode, begin, end, strides = self.window(node, "LpPool", attrs, shape,
                                                         kernel, ceil)
        if any(begin + end) or mode:
            raise self.error(node, f"attribute pads={begin + end} (ceil_mode={int(ceil)}) is "
                                   "not supported: convnet's LPPool2d has no padding, and its "
                                   "ceil mode scales a partial window's sum as PyTorch does")
        self.add([node], x, self.make(node, LPPool2d, p, tuple(kernel), tuple(strides),
                                      fit="floor"))

    def op_GlobalAveragePool(self, node):
        self.add([node], self.data(node), AdaptiveAvgPool2d(1))

    def op_GlobalMaxPool(self, node):
        self.add([node], self.data(node), AdaptiveMaxPool2d(1))

    def op_Relu(self, node):
        self.add([node], self.data(node), ReLU())

    def op_Tanh(self, node):
        self.add([node], self.data(node), Tanh())

    def op_Sigmoid(self, node):
        self.add([node], self.data(node), Sigmoid())

    def op_Clip(self, node):
        """Clip to [0, 6] is ReLU6, to [0, no max] ReLU: min and max are inputs from opset
        11 on, attributes before."""
        attrs, bounds = self.attrs(node), []
        for i, end in ((1, "min"), (2, "max")):
            if len(node.input) > i and node.input[i]:
                value = self.const(node.input[i])
                number = _scalar(value)
                if value is None or number is None:
                    raise self.error(node, f"its {end} must be a constant number, got "
                                           f"{'data' if value is None else value.shape}")
            else:
                number = attrs.float(end, None)
            bounds.append(number)
        layer = {(0.0, 6.0): ReLU6, (0.0, None): ReLU}.get(tuple(bounds))
        if layer is None:
            raise self.error(node, f"Clip to [{bounds[0]}, {bounds[1]}] is not read: convnet "
                                   "reads Clip to [0, 6] (ReLU6) and to [0, no max] (ReLU)")
        self.add([node], self.data(node), layer())

    def op_LeakyRelu(self, node):
        alpha = self.attrs(node).float("alpha", 0.01)
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
        for name, value, ok in (("transA", attrs.int("transA", 0), 0),
                                ("alpha", attrs.float("alpha", 1.0), 1.0),
                                ("beta", attrs.float("beta", 1.0), 1.0)):
            if value != ok and not (name == "beta" and c is None):
                raise self.error(node, f"attribute {name}={value} is not supported "
                                       f"(convnet's Linear computes x @ W.T + b: {name}={ok})")
        weight = b if attrs.flag("transB") else b.T
        bias = None if c is None else self._bias(node, c, weight.shape[0])
        self._linear(node, [node], x, weight, bias)

    def op_MatMul(self, node):
        x = self.data(node)
        if len(self.shapes[x]) == 3 and self._adaptive_subgraph(node, x):
            return
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
        axis = self.attrs(node).int("axis", 1)
        if (axis + rank if axis < 0 else axis) != 1:
            raise self.error(node, f"attribute axis={axis} is not supported: convnet's "
                                   "Flatten keeps the batch axis (axis=1)")
        self.add([node], x, Flatten())

    def _axes(self, node):
        """A reduction's or Squeeze's axes, from its attribute (before opset 13 or 18) or
        its second input (after), each as an axis of the whole (N, ...) tensor; None when
        neither gives them."""
        rank = len(self.shapes[self.data(node)]) + 1
        axes = self.attrs(node).ints("axes", None)
        if axes is None and len(node.input) > 1 and node.input[1]:
            value = self.const(node.input[1])
            axes = None if value is None or value.size > rank else _ints(value)
            if axes is None:
                raise self.error(node, f"input axes {_show(node.input[1])} must be at most "
                                       f"{rank} constant integers")
        if axes is None:
            return None
        if any(not -rank <= a < rank for a in axes):
            raise self.error(node, f"axes {_show_list(axes)} out of range for rank {rank}")
        return sorted({a % rank for a in axes})

    def op_ReduceMean(self, node):
        """The mean over H and W (torch's adaptive_avg_pool2d(x, 1) and x.mean((2, 3)) as
        exported): AdaptiveAvgPool2d(1), then Flatten when the axes are not kept."""
        x = self.data(node)
        axes = self._axes(node)
        if len(self.shapes[x]) != 3 or axes != [2, 3]:
            raise self.error(node, f"ReduceMean over axes {axes and _show_list(axes)} of "
                                   f"(N, *{self.shapes[x]}) is not supported: convnet reads "
                                   f"it only as the average over H and W of (N, C, H, W)")
        if self.attrs(node).int("keepdims", 1):
            self.add([node], x, AdaptiveAvgPool2d(1))
            return
        pooled = f"{node.output[0]}:pooled"
        self.add([node], x, AdaptiveAvgPool2d(1), out=pooled)
        self.add([node], pooled, Flatten())

    def op_Squeeze(self, node):
        """Dropping axes of size 1 after the batch axis: a Flatten."""
        x = self.data(node)
        shape, axes = self.shapes[x], self._axes(node)
        full = (None, *shape)
        if axes is None:
            axes = [a for a in range(1, len(full)) if full[a] == 1]
        if 0 in axes or any(full[a] != 1 for a in axes):
            raise self.error(node, f"Squeeze of axes {_show_list(axes)} of (N, *{shape}): "
                                   f"only axes of size 1 after the batch axis can be dropped")
        target = tuple(v for a, v in enumerate(shape, 1) if a not in axes)
        if not self._flatten(node, x, target):
            raise self.error(node, f"Squeeze of axes {_show_list(axes)} of (N, *{shape}) to "
                                   f"(N, *{target}) is not a flatten")

    def _flatten(self, node, x, per_sample):
        """Add the Flatten(start) that takes data x to the per-sample shape ``per_sample``;
        False when none does."""
        shape = self.shapes[x]
        for start in range(1, len(shape) + 1):
            if Flatten(start).output_shape(shape) == per_sample:
                self.add([node], x, Flatten(start))
                return True
        return False

    def op_Reshape(self, node):
        x = self.data(node)
        target = self.const(node.input[1]) if len(node.input) > 1 else None
        if target is None and len(node.input) > 1:    # computed from the input's shape
            value = self._shape_value(node, node.input[1])
            if not isinstance(value, list) or None in value[1:]:
                raise self.error(node, f"the target shape {value} must be a list whose "
                                       f"only unknown is the batch size, first")
            target = np.array([0 if v is None else v for v in value], np.int64)  # 0: copy N
        if target is None:
            raise self.error(node, "the target shape must be a constant (export with "
                                   "constant folding, or flatten with torch.flatten)")
        if _ints(target) is None:
            raise self.error(node, f"the target shape {_show(node.input[1])} must be integers "
                                   f"(int64), got dtype {target.dtype}")
        target = _ints(target)
        shape = self.shapes[x]
        if self.attrs(node).flag("allowzero") and 0 in target:
            raise self.error(node, f"attribute allowzero=1 with a 0 in shape "
                                   f"{_show_list(target)}")
        per_sample = self._reshape_per_sample(node, target, shape)
        if not self._flatten(node, x, per_sample):
            raise self.error(node, f"Reshape to {_show_list(target)} (per sample {shape} -> "
                                   f"{per_sample}) is not a flatten; convnet reads Reshape "
                                   "only as Flatten")

    def _reshape_per_sample(self, node, target, shape):
        full = [None, *shape]
        numel = math.prod(shape)
        shown = _show_list(target)
        if not target or target[0] not in (0, -1) and target[0] != self.batch:
            raise self.error(node, f"Reshape to {shown} must keep the batch axis first "
                                   "(0, -1 or the batch size)")
        if len(target) > len(full) and 0 in target[len(full):]:
            raise self.error(node, f"Reshape to {shown} copies (0) an axis the input "
                                   f"(N, *{shape}) does not have")
        rest = [full[i] if v == 0 else v for i, v in enumerate(target) if i > 0]
        if None in rest or rest.count(-1) + (target[0] == -1) > 1 or min(rest + [1]) < -1:
            raise self.error(node, f"Reshape to {shown} is not a per-sample reshape")
        if -1 in rest:
            known = math.prod(v for v in rest if v != -1)
            if known == 0 or numel % known:
                raise self.error(node, f"Reshape to {shown} does not fit {shape}")
            rest[rest.index(-1)] = numel // known
        if math.prod(rest) != numel:
            raise self.error(node, f"Reshape to {shown} does not fit per-sample {shape}")
        return tuple(rest)

    def op_BatchNormalization(self, node):
        x = self.data(node)
        attrs = self.attrs(node)
        training, spatial = attrs.flag("training_mode"), attrs.flag("spatial", 1)
        if training or not spatial:
            bad = "training_mode=1" if training else "spatial=0"
            raise self.error(node, f"attribute {bad} is not supported (inference with running "
                                   "statistics per channel only)")
        eps = attrs.float("epsilon", 1e-5, low=0.0)
        # ONNX's running = running * momentum + batch * (1 - momentum): PyTorch's momentum
        # is 1 - that (0.9 -> 0.1), to the float32's 7 digits (for training on from here)
        momentum = float(f"{1 - attrs.float('momentum', 0.9, low=0.0, high=1.0):.7g}")
        self.unused_outputs(node, "running statistics")
        scale, bias, mean, var = (self.param(node, i, what, ndim=1) for i, what in
                                  enumerate(("scale", "B", "input_mean", "input_var"), 1))
        shape = self.shapes[x]
        cls = BatchNorm2d if len(shape) == 3 else BatchNorm1d
        # export_onnx's BatchNorm(affine=False): ones and zeros under its own names
        affine = not (_EXPORTED_ONES.search(node.input[1]) and np.all(scale == 1)
                      and _EXPORTED_ZEROS.search(node.input[2]) and np.all(bias == 0)
                      and bias.shape == scale.shape)
        layer = self.make(node, cls, scale.size, eps=eps, momentum=momentum, affine=affine,
                          dtype=scale.dtype)
        copies = [(layer.buffers, "running_mean", mean), (layer.buffers, "running_var", var)]
        if affine:
            copies = [(layer.params, "weight", scale), (layer.params, "bias", bias), *copies]
        for store, key, value in copies:
            if value.shape != store[key].shape:
                raise self.error(node, f"{key} has shape {value.shape}, expected "
                                       f"{store[key].shape}")
            store[key][...] = value
        self.add([node], x, layer)

    def op_LRN(self, node):
        attrs = self.attrs(node)
        size = attrs.int("size")
        if size is None or size < 1 or size % 2 == 0:
            raise self.error(node, f"attribute size={size} is not supported: for an even "
                                   "size ONNX's window reaches one channel further forward, "
                                   "convnet's (PyTorch's) one further back; export_onnx "
                                   "writes those as a subgraph, which is read")
        x = self.data(node)
        self.lrn_window(node, self.shapes[x], size)
        layer = self.make(node, LocalResponseNorm, size, attrs.float("alpha", 1e-4),
                          attrs.float("beta", 0.75), attrs.float("bias", 1.0))
        self.add([node], x, layer)

    def lrn_window(self, node, shape, size):
        """LRN pads the channels by size - 1 in all: that volume against MAX_VOLUME."""
        self.cap(node, (shape[0] + size - 1) * math.prod(shape[1:]), "MAX_VOLUME",
                 f"values per sample in the input padded for an LRN window of {size}")

    def op_Dropout(self, node):
        x = self.data(node)
        self.unused_outputs(node, "mask")
        ratio = self.attrs(node).float("ratio", 0.5, low=0.0, high=1.0)
        if len(node.input) > 1 and node.input[1]:       # no effect at inference if computed
            value = self.const(node.input[1])
            ratio = 0.5 if value is None else _scalar(value)
            if ratio is None or not 0 <= ratio <= 1:
                raise self.error(node, f"input ratio {_show(node.input[1])} must be one number "
                                       f"in [0, 1], got shape {value.shape} of {value.dtype}")
        if len(node.input) > 2 and node.input[2]:
            training = _scalar(self.const(node.input[2]))
            if training is None or training:
                raise self.error(node, "input training_mode must be a constant false")
        self.add([node], x, self.make(node, Dropout, ratio))

    def op_Softmax(self, node):
        x = self.data(node)
        op = node.op_type
        if not self._is_final(node.output[0]) or len(self.shapes[x]) != 1:
            raise self.error(node, f"{op} is read only as the last node on class scores "
                                   "(N, K); convnet models output the scores themselves")
        axis = self.attrs(node).int("axis", -1)
        if axis not in (-1, 1):
            raise self.error(node, f"attribute axis={axis} is not supported: the {op} "
                                   "left to apply is over the classes (axis 1 of (N, K))")
        self.alias[node.output[0]] = x
        self.dropped_softmax = node

    op_LogSoftmax = op_Softmax   # a final log-softmax (pytorch/examples' MNIST net)

    def _is_final(self, name):
        """Whether the tensor reaches the output through Identity nodes only."""
        stack = [name]
        while stack:
            name = stack.pop()
            if name == self.output:
                continue
            users = self.consumers.get(name, [])
            if not users or any(u.op_type != "Identity" for u in users):
                return False
            stack.extend(u.output[0] for u in users)
        return True

    def _join(self, node, kind, inputs):
        self.units.append(_Unit(kind, inputs, node.output[0], None, *self.path(node), node))

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
        axis = self.attrs(node).int("axis")
        rank = len(shapes[0]) + 1
        if axis is None or (axis + rank if axis < 0 else axis) != 1:
            raise self.error(node, f"attribute axis={axis} is not supported: convnet "
                                   "concatenates along channels (axis=1)")
        if any(len(s) != len(shapes[0]) or s[1:] != shapes[0][1:] for s in shapes):
            raise self.error(node, f"inputs of shapes {_show_list(shapes, 4)} do not "
                                   "concatenate along channels")
        shape = (sum(s[0] for s in shapes), *shapes[0][1:])
        self.cap(node, math.prod(shape), "MAX_VOLUME", f"values per sample in its output {shape}")
        self.shapes[node.output[0]] = shape
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
        pads = self._zero_pad(pad, 4)
        if pads is None:
            return False
        ph, pw = pads[2], pads[3]
        if pads != [0, 0, ph, pw, 0, 0, ph, pw]:
            return False
        pool_attrs = self.attrs(pool)
        kernel = pool_attrs.ints("kernel_shape", [], low=1)
        strides = pool_attrs.ints("strides", [1, 1], low=1)
        pool_pads = pool_attrs.ints("pads", [0] * 4, low=0)
        ceil = pool_attrs.flag("ceil_mode")
        if (pool_attrs.flag("count_include_pad") or len(kernel) != 2 or len(strides) != 2
                or pool_attrs.ints("dilations", [1, 1]) != [1, 1]
                or pool_attrs.string("auto_pad", "NOTSET", _AUTO_PADS) != "NOTSET"
                or len(pool_pads) != 4 or pool_pads[:2] != [0, 0]):
            return False
        # ONNX: windows over the zero-padded input, counting only what lies inside it,
        # which is convnet's count_include_pad=True; find the ceil mode with its sizes
        (c, h, w), mode = self.shapes[x], None
        self.cap(pad, c * (h + 2 * ph + pool_pads[2]) * (w + 2 * pw + pool_pads[3]),
                 "MAX_VOLUME", f"values per sample in the padded input (pads {pads})")
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

    def _adaptive_subgraph(self, over_w, x):
        """MatMul(x, cols) -> MatMul(rows, that), cols (W, OW) and rows (OH, H) the
        averaging matrices of AdaptiveAvgPool2d((OH, OW)) (export_onnx's, for an output
        size that does not divide the input): that layer."""
        (_, h, w), cols = self.shapes[x], self.const(over_w.input[1])
        over_h = self.only_consumer(over_w, "MatMul")
        if (cols is None or cols.ndim != 2 or cols.shape[0] != w or over_h is None
                or over_h.input[1] != over_w.output[0]):
            return False
        rows = self.const(over_h.input[0])
        if rows is None or rows.ndim != 2 or rows.shape[1] != h:
            return False
        (oh, ow), close = (rows.shape[0], cols.shape[1]), 1e-6    # float32's rounding
        for value, expected in ((cols, averaging_matrix(w, ow).T),
                                (rows, averaging_matrix(h, oh))):
            if value.dtype not in _FLOATS or not np.allclose(value, expected, rtol=close,
                                                             atol=0):
                return False
        self.add([over_w, over_h], x, self.make(over_h, AdaptiveAvgPool2d, (oh, ow)))
        return True

    def _lppool_subgraph(self, power):
        """LPPool2d written out: Pow(x, p) -> AveragePool -> [Sign * Relu(Abs)] ->
        Mul(FH*FW) -> Pow(1/p). export_onnx's pool counts only what is inside
        (count_include_pad=0, with the ceil-mode pads); PyTorch's exporters add
        sign(a) * relu(abs(a)), which is a, and pool without pads."""
        x = self.resolve(power.input[0])
        p = self.const(power.input[1]) if len(power.input) == 2 else None
        pool = self.only_consumer(power, "AveragePool")
        if x not in self.shapes or p is None or pool is None or len(self.shapes[x]) != 3:
            return False
        chain = [power, pool]
        signed = self._sign_times_relu_abs(pool)
        if signed is not None:
            chain += signed
        mul = self.only_consumer(chain[-1], "Mul")
        root = mul and self.only_consumer(mul, "Pow")
        if root is None:
            return False
        p = _scalar(p)
        attrs = self.attrs(pool)
        kernel = attrs.ints("kernel_shape", [], low=1)
        pads = attrs.ints("pads", [0] * 4)
        area = _scalar(self._consts_of(mul, chain[-1].output[0]))
        inv = _scalar(self.const(root.input[1])) if root.input[0] == mul.output[0] else None
        if (p is None or p <= 0 or inv is None or len(kernel) != 2
                or area != kernel[0] * kernel[1]
                or abs(inv * p - 1) > 1e-6 or len(pads) != 4 or pads[:2] != [0, 0]
                or (attrs.flag("count_include_pad") and any(pads))
                or attrs.ints("dilations", [1, 1]) != [1, 1]):
            return False
        _, mode, _, _, strides = self.window(pool, "AveragePool", attrs, self.shapes[x],
                                             kernel, attrs.flag("ceil_mode"))
        layer = self.make(root, LPPool2d, p, tuple(kernel), tuple(strides), ceil_mode=mode,
                          fit="floor")
        self.add([*chain, mul, root], x, layer)
        return True

    def _sign_times_relu_abs(self, node):
        """[Sign, Abs, Relu, Mul] when node's output a feeds only Sign(a) * Relu(Abs(a))
        (PyTorch's lp_pool2d: the identity for a number), else None."""
        users = self.consumers.get(node.output[0], [])
        if node.output[0] == self.output or sorted(u.op_type for u in users) != ["Abs", "Sign"]:
            return None
        sign, absolute = sorted(users, key=lambda u: u.op_type, reverse=True)
        relu = self.only_consumer(absolute, "Relu")
        mul = relu and self.only_consumer(relu, "Mul")
        if mul is None or sorted(mul.input) != sorted([sign.output[0], relu.output[0]]) or \
                self.only_consumer(sign, "Mul") is not mul:
            return None
        return [sign, absolute, relu, mul]

    def _lrn_subgraph(self, square):
        """LocalResponseNorm written out, PyTorch's window (any size):

            x*x -> (N, 1, C, H, W) -> [Pad channels] -> AveragePool(n,1,1) -> Squeeze(1)
                -> *alpha -> +k -> ^beta, then x / that

        The axis added by Unsqueeze(1) (export_onnx's even sizes) or by Reshape (torch's
        newer exporter, with a Pad of zeros before the pool); the channels padded by
        n//2 before and (n-1)//2 after, in the Pad and the pool together."""
        x = self.resolve(square.input[0])
        if x not in self.shapes or len(self.shapes[x]) != 3:
            return False
        users = self.consumers.get(square.output[0], [])
        added = users[0] if len(users) == 1 and square.output[0] != self.output else None
        if added is None or not self._adds_axis_1(added, self.shapes[x]):
            return False
        chain, node = [square, added], added
        pad = self.only_consumer(added, "Pad")
        pad_pads = [0] * 10
        if pad is not None:
            pad_pads = self._zero_pad(pad, 5)
            if pad_pads is None or any(v for i, v in enumerate(pad_pads) if i not in (2, 7)):
                return False
            chain.append(pad)
            node = pad
        for op in ("AveragePool", "Squeeze", "Mul", "Add", "Pow", "Div"):
            node = self.only_consumer(node, op)
            if node is None:
                return False
            chain.append(node)
        pool, sq, mul, add, power, div = chain[-6:]
        if self.resolve(div.input[0]) != x or self.resolve(div.input[1]) != power.output[0]:
            return False
        axes = self.attrs(sq).ints("axes")
        if axes is None and len(sq.input) > 1:
            axes = _ints(self.const(sq.input[1]))
        if axes != [1]:
            return False
        attrs = self.attrs(pool)
        kernel = attrs.ints("kernel_shape", [], low=1)
        n = kernel[0] if len(kernel) == 3 else 0
        pool_pads = attrs.ints("pads", [0] * 6)
        alpha = _scalar(self._consts_of(mul, sq.output[0]))
        k = _scalar(self._consts_of(add, mul.output[0]))
        beta = (_scalar(self.const(power.input[1])) if power.input[0] == add.output[0]
                else None)
        if (n < 1 or kernel[1:] != [1, 1] or len(pool_pads) != 6
                or any(pool_pads[i] for i in (1, 2, 4, 5))
                or [pool_pads[0] + pad_pads[2], pool_pads[3] + pad_pads[7]] != [n // 2,
                                                                                (n - 1) // 2]
                or (any(pool_pads) and not attrs.flag("count_include_pad"))
                or attrs.ints("strides", [1, 1, 1]) != [1, 1, 1]
                or attrs.string("auto_pad", "NOTSET", None) != "NOTSET"
                or attrs.ints("dilations", [1, 1, 1]) != [1, 1, 1]
                or attrs.flag("ceil_mode") or None in (alpha, k, beta)):
            return False
        self.lrn_window(div, self.shapes[x], n)
        layer = self.make(div, LocalResponseNorm, n, alpha, beta, k)
        self.add(chain, x, layer)
        return True

    def _adds_axis_1(self, node, shape):
        """Whether node takes (N, C, H, W) to (N, 1, C, H, W): Unsqueeze(axes [1]), or a
        Reshape to a constant shape that does (its batch 0, -1 or the graph's)."""
        if node.op_type == "Unsqueeze":
            axes = self.attrs(node).ints("axes")
            if axes is None and len(node.input) > 1:
                axes = _ints(self.const(node.input[1]))
            return axes == [1]
        if node.op_type != "Reshape" or len(node.input) != 2:
            return False
        target = _ints(self.const(node.input[1]))
        if target is None or len(target) != 5 or 0 in target and \
                self.attrs(node).flag("allowzero"):
            return False
        try:
            return self._reshape_per_sample(node, target, shape) == (1, *shape)
        except ValueError:
            return False

    def _pads(self, pad):
        """A Pad's pads: its attribute (opset < 11) or its constant input, else None."""
        pads = self.attrs(pad).ints("pads")
        if pads is None and len(pad.input) > 1 and pad.input[1]:
            pads = _ints(self.const(pad.input[1]))
        return pads

    def _zero_pad(self, pad, rank):
        """A Pad's 2 * rank pads (begin of each axis, then ends) when it pads with zeros
        (constant mode, no fill or 0, every axis), else None."""
        attrs = self.attrs(pad)
        pads = self._pads(pad)
        value = pad.input[2] if len(pad.input) > 2 else ""      # the fill, zero if absent
        if (pads is None or len(pads) != 2 * rank or min(pads) < 0
                or attrs.string("mode", "constant", None) != "constant"
                or (len(pad.input) > 3 and pad.input[3])
                or value and _scalar(self.const(value)) != 0.0):
            return None
        return pads


# -- the units' nesting: Sequential, Residual, Concat ---------------------------------------
class _Structure:
    """Series-parallel decomposition of the units into items (units and _Blocks)."""

    def __init__(self, importer):
        self.file = importer.file
        self.producer = {u.output: u for u in importer.units}

    def series(self, start, end, units, depth=0):
        """The items from tensor start to tensor end; units: those on the paths between;
        depth: the number of blocks this series lies in (at most limits.MAX_DEPTH)."""
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
                items.append(self._step(current, segment, depth))
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

    def _step(self, start, segment, depth):
        join = segment[-1]
        if len(segment) == 1 and join.kind == "layer":
            return join
        assert join.kind != "layer", join.node.name
        limits.check_count(depth + 1, "MAX_DEPTH", "nesting of blocks", f"{self.file}: "
                           f"{_node(join.node)}")
        inside = segment[:-1]
        # each unit inside leads to exactly one input of the join: find which, in one walk
        # back from each input (linear in the segment, however many inputs the join has)
        allowed, owner = {id(u) for u in inside}, {}
        for b, name in enumerate(join.inputs):
            stack = [name] if name != start else []
            while stack:
                u = self.producer.get(stack.pop())
                if u is None or id(u) not in allowed or owner.get(id(u)) == b:
                    continue
                if id(u) in owner:
                    raise ValueError(
                        f"{self.file}: {_node(u.node)} feeds more than one input of "
                        f"{_node(join.node)}; convnet models are chains whose forks rejoin "
                        "at one Add (a Residual) or Concat with separate paths, and this "
                        "graph is not")
                owner[id(u)] = b
                stack.extend(source for source in u.inputs if source != start)
        assert len(owner) == len(inside)        # each unit leads to the join's inputs
        parts = [[] for _ in join.inputs]
        for u in inside:
            parts[owner[id(u)]].append(u)
        branches = [self.series(start, name, part, depth + 1) if part else []
                    for name, part in zip(join.inputs, parts)]
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


class _Keys:
    """Unique child names: a name taken, or empty, gets the first free _1, _2, ... (counted
    on from the last one given for that name, so n equal names cost n steps, not n^2)."""

    def __init__(self, taken=()):
        self.taken, self.last = set(taken), {}

    def __call__(self, key):
        base = key or "layer"
        while key in self.taken or not key:
            self.last[base] = self.last.get(base, 0) + 1
            suffix = f"_{self.last[base]}"
            key = base[:MAX_NAME - len(suffix)] + suffix     # within a child name's cap
        self.taken.add(key)
        return key


class _Names:
    """Items -> (key, layer) pairs, nesting containers by the dotted node names, at most
    limits.MAX_DEPTH containers deep."""

    def __init__(self):
        self.depth = 0

    @staticmethod
    def _relative(item, prefix):
        n = len(prefix)
        return item.path[n:] if item.path[:n] == prefix and len(item.path) > n else None

    def assemble(self, items, prefix, top=False):
        """(key, layer) pairs for a chain of items under the dotted prefix."""
        self.depth += 1
        if self.depth > limits.MAX_DEPTH:
            where = ".".join(prefix) or _show(items[0].fallback)
            raise ValueError(f"the layers at {where} would nest more than "
                             f"{limits.MAX_DEPTH} containers deep (convnet.limits.MAX_DEPTH)")
        pairs = self._pairs(items, prefix, top)
        self.depth -= 1
        return pairs

    def _pairs(self, items, prefix, top):
        pairs, unique, i = [], _Keys(), 0
        while i < len(items):
            item, rel = items[i], self._relative(items[i], prefix)
            if rel is None:
                pairs.append((unique(item.fallback), self.layer(item)))
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
            pairs.append((unique(rel[0]), layer))
            i = j
        # dense steps alone at the top (a DenseBlock exported as the model): one block;
        # steps named inside stages ("0.l1", "1.l1": DenseBlocks in a row) stay theirs
        if top and len(pairs) > 1 and all(isinstance(it, _Block) and it.dense for it in items) \
                and all(len(self._relative(it, prefix) or [None]) == 1 for it in items):
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
            unique, branches = _Keys(), {}
            for i, items in enumerate(item.branches):
                if not items:
                    key, layer = "identity", Identity()
                else:
                    pairs = self.assemble(items, item.path)
                    key, layer = pairs[0] if len(pairs) == 1 else (str(i), Sequential(pairs))
                branches[unique(key)] = layer
            return Concat(branches)
        # the longer path is the body, the shorter the shortcut (a + b == b + a exactly)
        body_items, short_items = item.branches
        if len(list(_leaves([short_items]))) > len(list(_leaves([body_items]))):
            body_items, short_items = short_items, body_items
        body, unique = {}, _Keys(["post"] if item.post is not None else [])
        for key, layer in self.assemble(body_items, item.path):
            body[unique(key)] = layer
        shortcut, name = None, "downsample"
        if short_items:
            pairs = self.assemble(short_items, item.path)
            name, shortcut = pairs[0] if len(pairs) == 1 else ("downsample", Sequential(pairs))
        post = None if item.post is None else item.post.layer
        return Residual(body, shortcut, post, shortcut_name=unique(name))
