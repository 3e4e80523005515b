"""Hostile ONNX files: load_onnx refuses each with a one-line ValueError that starts with
the file's path and names the node, attribute or tensor, before allocating for it; no
other exception escapes.

The cases are generated from small valid models: each operator's attributes with values
of another type or out of range, or given twice; each node of an exported model with its
wiring broken; each initializer with wrong dims, element types and data; the graph's
input and output; truncations and seeded byte flips of a serialized model (which may
still parse and load: then the model runs); and bombs (huge declared sizes, tied weights,
deep nesting, long chains), whose peak Python allocation is measured.
"""

import math
import random
import tracemalloc
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convnet.io.onnx_import as onnx_import
from convnet import limits
from convnet.io import export_onnx, load_onnx
from convnet.layers.activation import ReLU
from convnet.layers.conv import Conv2d
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import BatchNorm2d
from convnet.layers.pool import MaxPool2d
from convnet.models.containers import Concat, Residual, Sequential
from tests.utils import peak_bytes

MB = 1 << 20


# -- helpers -------------------------------------------------------------------------------
def graph_model(nodes, inits=(), shape=(1, 2, 6, 6), inputs=None, output="y"):
    """A ModelProto of the nodes, with float32 input "x" of the given shape."""
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              list(inits))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto


def save(proto, path):
    path.write_bytes(proto.SerializeToString())
    return path


def tensor(name, *shape, dtype=np.float32):
    return numpy_helper.from_array(np.ones(shape, dtype), name)


def refused(path, *parts):
    """load_onnx(path) raises one line that starts with the path and holds each part."""
    with pytest.raises(ValueError) as info:
        load_onnx(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message and len(message) < 1000, message
    for part in parts:
        assert part in message, (part, message)
    return message


def loads_or_refused(path):
    """A named ValueError, or a model that runs on a zero input with the right shape."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_onnx(path)
    except ValueError as err:
        message = str(err)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        return "refused"
    x = np.zeros((1, *model.input_shape), np.float32)
    with np.errstate(all="ignore"):
        out = model.infer(x)
    assert out.shape == (1, *model.output_shape(model.input_shape))
    return "loaded"



def exported(path):
    """A small convnet model exported: CONV, BN, a Residual, a Concat, POOL, FC."""
    rng = np.random.default_rng(0)
    model = Sequential([
        ("conv", Conv2d(2, 3, 3, padding=1, rng=rng)), ("bn", BatchNorm2d(3)),
        ("block", Residual({"a": Conv2d(3, 3, 3, padding=1, rng=rng), "r": ReLU()})),
        ("cat", Concat({"x": ReLU(), "y": MaxPool2d(3, 1, 1)})), ("pool", MaxPool2d(2, 2)),
        ("flat", Flatten()), ("fc", Linear(6 * 2 * 2, 4, rng=rng))])
    return export_onnx(model, path, (2, 4, 4))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    proto = exported(tmp_path_factory.mktemp("base") / "base.onnx")
    assert [n.op_type for n in proto.graph.node][:3] == ["Conv", "BatchNormalization", "Conv"]
    return proto


def copy(proto):
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def test_the_base_model_loads(tmp_path, base):
    assert loads_or_refused(save(base, tmp_path / "base.onnx")) == "loaded"


# -- attributes: each of another type, out of range, or given twice ------------------------
# op -> (inputs, initializers, input shape, valid attributes); each node loads as it is
OPS = {
    "Conv": (["x", "W", "B"], [tensor("W", 4, 2, 3, 3), tensor("B", 4)], (1, 2, 6, 6),
             {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1],
              "dilations": [1, 1], "group": 1, "auto_pad": "NOTSET"}),
    "MaxPool": (["x"], [], (1, 2, 6, 6),
                {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0],
                 "dilations": [1, 1], "ceil_mode": 0}),
    "AveragePool": (["x"], [], (1, 2, 6, 6),
                    {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1],
                     "ceil_mode": 0, "count_include_pad": 1}),
    "LpPool": (["x"], [], (1, 2, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2], "p": 2}),
    "LRN": (["x"], [], (1, 4, 3, 3), {"size": 3, "alpha": 1e-4, "beta": 0.75, "bias": 1.0}),
    "LeakyRelu": (["x"], [], (1, 2, 3, 3), {"alpha": 0.1}),
    "BatchNormalization": (["x", "s", "b", "m", "v"], [tensor(k, 2) for k in "sbmv"],
                           (1, 2, 3, 3), {"epsilon": 1e-5, "training_mode": 0}),
    "Gemm": (["x", "W", "B"], [tensor("W", 3, 5), tensor("B", 3)], (1, 5),
             {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1}),
    "Flatten": (["x"], [], (1, 2, 3, 3), {"axis": 1}),
    "Concat": (["x", "x"], [], (1, 2, 3, 3), {"axis": 1}),
    "Dropout": (["x"], [], (1, 5), {"ratio": 0.5}),
}
INT_ATTRS = {"group", "ceil_mode", "count_include_pad", "p", "size", "transA", "transB",
             "axis", "training_mode"}
INTS_ATTRS = {"kernel_shape", "strides", "pads", "dilations"}
FLOAT_ATTRS = {"alpha", "beta", "bias", "epsilon", "ratio"}
A_TENSOR = numpy_helper.from_array(np.ones(2, np.int64), "t")
WRONG_TYPES = {"int": [1.5, "3", [1, 1], A_TENSOR], "ints": ["abc", 2, [1.0, 1.0], A_TENSOR],
               "float": ["abc", 3, [1.0, 2.0], A_TENSOR], "string": [1, [1, 2], 1.5]}
OUT_OF_RANGE = {
    "kernel_shape": [[0, 0], [-3, 3], [3], [3, 3, 3], [2**40, 2**40]],
    "strides": [[0, 0], [-1, 1], [1], [2**62, 2**62]],
    "pads": [[-1, 0, 0, 0], [0, 0], [1, 1, 1, 1, 1, 1], [2**40] * 4],
    "dilations": [[0, 0], [-2, 1], [1, 1, 1], [2**40, 2**40]],
    "group": [0, -1, 3, 2**62], "ceil_mode": [2, -1], "count_include_pad": [5],
    "p": [0, 3, -2], "size": [0, 4, -1, 2**40], "axis": [5, -7, 2**62],
    "transA": [1, 2], "transB": [7], "training_mode": [1, 3],
    "alpha": [float("nan"), float("inf")], "beta": [float("-inf"), float("nan")],
    "bias": [float("nan")], "epsilon": [-1.0, float("nan")], "ratio": [-0.5, 1.5],
    "auto_pad": ["BOGUS", ""],
    ("Gemm", "alpha"): [2.0, float("nan")], ("Gemm", "beta"): [0.5, float("inf")],
}


def attr_kind(name):
    return ("int" if name in INT_ATTRS else "ints" if name in INTS_ATTRS
            else "float" if name in FLOAT_ATTRS else "string")


def op_model(op, **attrs):
    inputs, inits, shape, valid = OPS[op]
    node = helper.make_node(op, inputs, ["y"], name=f"the.{op.lower()}",
                            **{**valid, **attrs})
    return graph_model([node], inits, shape)


def attribute_cases():
    for op, (_, _, _, valid) in OPS.items():
        for name in valid:
            for value in WRONG_TYPES[attr_kind(name)]:
                yield pytest.param(op, name, value, True,
                                   id=f"{op}-{name}-{type(value).__name__}")
            for value in OUT_OF_RANGE.get((op, name), OUT_OF_RANGE.get(name, [])):
                yield pytest.param(op, name, value, False, id=f"{op}-{name}={value}"[:60])


def test_every_op_model_loads(tmp_path):
    for op in OPS:
        assert loads_or_refused(save(op_model(op), tmp_path / f"{op}.onnx")) == "loaded", op


@pytest.mark.parametrize("op, name, value, wrong_type", list(attribute_cases()))
def test_bad_attribute_is_named(tmp_path, op, name, value, wrong_type):
    """Each refusal names the node; one of a wrong type says what type was expected."""
    proto = op_model(op)
    node = proto.graph.node[0]
    attr = next(a for a in node.attribute if a.name == name)
    node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute(name, value))
    path = save(proto, tmp_path / "bad.onnx")
    message = refused(path, f"node 'the.{op.lower()}' ({op})")
    if wrong_type:
        assert f"attribute {name} must be {'an' if name in INT_ATTRS else 'a'} " in message


@pytest.mark.parametrize("op", list(OPS))
def test_attribute_given_twice(tmp_path, op):
    proto = op_model(op)
    node = proto.graph.node[0]
    first = node.attribute[0]
    node.attribute.append(helper.make_attribute(first.name, helper.get_attribute_value(first)))
    refused(save(proto, tmp_path / "twice.onnx"), f"node 'the.{op.lower()}' ({op})",
            f"attribute '{first.name}' is given twice")


def test_the_issues_three(tmp_path):
    """Strides [0, 0] (was ZeroDivisionError), strides as a string, an attribute twice."""
    refused(save(op_model("Conv", strides=[0, 0]), tmp_path / "a.onnx"),
            "node 'the.conv' (Conv): attribute strides=[0, 0] must be >= 1 each")
    refused(save(op_model("Conv", strides="2,2"), tmp_path / "b.onnx"),
            "node 'the.conv' (Conv): attribute strides must be a list of ints (INTS), got "
            "a string b'2,2'")
    proto = op_model("MaxPool")
    proto.graph.node[0].attribute.append(helper.make_attribute("strides", [1, 1]))
    refused(save(proto, tmp_path / "c.onnx"), "attribute 'strides' is given twice")


def test_pool_without_kernel_shape(tmp_path):
    proto = op_model("MaxPool")
    node = proto.graph.node[0]
    node.attribute.remove(next(a for a in node.attribute if a.name == "kernel_shape"))
    refused(save(proto, tmp_path / "k.onnx"), "node 'the.maxpool' (MaxPool): attribute "
            "kernel_shape is missing")


# -- nodes of an exported model, each with its wiring broken -------------------------------
def break_node(proto, i, how):
    graph = proto.graph
    node = graph.node[i]
    if how == "no inputs":
        del node.input[:]
    elif how == "no outputs":
        del node.output[:]
    elif how == "empty output":
        node.output[0] = ""
    elif how == "dangling input":
        node.input[0] = "nowhere"
    elif how == "self loop":
        node.input[0] = node.output[0]
    elif how == "writes the input":
        node.output[0] = graph.input[0].name
    elif how == "writes an initializer":
        node.output[0] = graph.initializer[0].name
    elif how == "unknown operator":
        node.op_type = "Elu"
    elif how == "foreign domain":
        node.domain = "com.example.evil"
    elif how == "too many inputs":
        node.input.extend([graph.input[0].name] * 6)
    return node


NODE_BREAKS = ["no inputs", "no outputs", "empty output", "dangling input", "self loop",
               "writes the input", "writes an initializer", "unknown operator",
               "foreign domain", "too many inputs"]


@pytest.mark.parametrize("how", NODE_BREAKS)
def test_every_node_broken(tmp_path, base, how):
    for i, original in enumerate(base.graph.node):
        proto = copy(base)
        if how == "too many inputs" and original.op_type == "Concat":
            continue                        # Concat takes any number
        node = break_node(proto, i, how)
        path = save(proto, tmp_path / f"node{i}.onnx")
        if how == "no outputs":
            refused(path, f"node {original.name!r} ({original.op_type}): it has no output")
        elif how == "dangling input":
            refused(path, f"node {original.name!r}", "input 'nowhere' is not the graph's input")
        elif how in ("no inputs", "empty output", "self loop", "writes the input",
                     "writes an initializer", "too many inputs", "foreign domain"):
            refused(path, f"node {node.name!r}")
        else:
            refused(path, f"node {original.name!r} (Elu): unsupported operator 'Elu'")


@pytest.mark.parametrize("i", range(11))
def test_node_writes_another_nodes_output(tmp_path, base, i):
    proto = copy(base)
    proto.graph.node[i].output[0] = proto.graph.node[i + 1].output[0]
    refused(save(proto, tmp_path / "dup.onnx"), f"its output {proto.graph.node[i].output[0]!r} "
            "is already the graph's input, an initializer or another node's output")


def test_cycle(tmp_path):
    nodes = [helper.make_node("Relu", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Relu", ["b"], ["y"], name="last")]
    path = save(graph_model(nodes), tmp_path / "cycle.onnx")
    refused(path, "Relu takes 1 input(s), got 2")
    nodes[0] = helper.make_node("Sigmoid", ["b"], ["a"], name="first")
    refused(save(graph_model(nodes), path), "the graph has a cycle through this node")


def test_graph_shapes_that_do_not_nest_or_fit(tmp_path):
    """Add of three inputs, a Concat of nothing, an Add of data and a constant."""
    cases = [([helper.make_node("Add", ["x", "x", "x"], ["y"], name="add3")], [],
              "Add takes 2 input(s), got 3"),
             ([helper.make_node("Concat", [], ["y"], name="cat", axis=1)], [],
              "Concat takes 1 to any input(s), got 0"),
             ([helper.make_node("Add", ["x", "c"], ["y"], name="bias")], [tensor("c", 1)],
              "Add is read as the join of two paths")]
    for nodes, inits, says in cases:
        refused(save(graph_model(nodes, inits), tmp_path / "g.onnx"), says)


# -- initializers: dims, element types, data -----------------------------------------------
def break_tensor(proto, t, how):
    graph = proto.graph
    tensor = graph.initializer[t]
    if how == "negative dim":
        tensor.dims[0] = -tensor.dims[0]
    elif how == "huge dims, tiny data":
        tensor.dims[:] = [1 << 20, 1 << 20]
    elif how == "dim over the cap":
        tensor.dims[:] = [0, 1 << 40]
    elif how == "raw data short":
        tensor.raw_data = tensor.raw_data[:-4]
    elif how == "raw data long":
        tensor.raw_data = tensor.raw_data + b"\0" * 8
    elif how == "typed data, wrong count":
        tensor.ClearField("raw_data")
        tensor.float_data.extend([1.0] * (math.prod(tensor.dims) + 1))
    elif how == "rank 9":
        tensor.dims.extend([1] * 9)
    elif how == "int8":
        tensor.data_type = TensorProto.INT8
    elif how == "string":
        tensor.data_type = TensorProto.STRING
    elif how == "float16":
        tensor.data_type = TensorProto.FLOAT16
    elif how == "undefined":
        tensor.data_type = 0
    elif how == "unknown type":
        tensor.data_type = 99
    elif how == "segment":
        tensor.segment.begin, tensor.segment.end = 0, 1
    elif how == "no name":
        tensor.name = ""
    elif how == "twice":
        tensor.name = graph.initializer[(t + 1) % len(graph.initializer)].name
    return tensor


TENSOR_BREAKS = {"negative dim": "must be at most 8 sizes in [0",
                 "huge dims, tiny data": "is over the cap",
                 "dim over the cap": "must be at most 8 sizes in [0",
                 "raw data short": "bytes of raw_data", "raw data long": "bytes of raw_data",
                 "typed data, wrong count": "values in float_data",
                 "rank 9": "must be at most 8 sizes", "int8": "element type 3 (INT8)",
                 "string": "element type 8 (STRING)", "float16": "element type 10 (FLOAT16)",
                 "undefined": "element type 0 (UNDEFINED)", "unknown type": "element type 99",
                 "segment": "segments are not supported", "no name": "has no name",
                 "twice": "is given twice"}


@pytest.mark.parametrize("how", list(TENSOR_BREAKS))
def test_every_initializer_broken(tmp_path, base, how):
    for t in range(len(base.graph.initializer)):
        proto = copy(base)
        tensor = break_tensor(proto, t, how)
        path = save(proto, tmp_path / f"t{t}.onnx")
        refused(path, f"{tensor.name!r}", TENSOR_BREAKS[how])


@pytest.mark.parametrize("dtype", [np.int64, bool, np.float64])
def test_weights_of_another_dtype(tmp_path, base, dtype):
    """An int64 or bool weight is refused by the layer reading it; float64 loads."""
    proto = copy(base)
    weight = proto.graph.initializer[0]
    array = numpy_helper.to_array(weight).astype(dtype)
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    path = save(proto, tmp_path / "dtype.onnx")
    if dtype is np.float64:
        assert loads_or_refused(path) == "loaded"
    else:
        refused(path, "node 'conv' (Conv): weight W 'conv.weight' has dtype")


def test_reshape_target_of_another_type(tmp_path):
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="flat")]
    for value, says in [(np.array([0, -1.0]), "must be integers (int64), got dtype float64"),
                        (np.array([0, 0, 0, 0, 0, 0], np.int64), "copies (0) an axis"),
                        (np.array([5, -1], np.int64), "must keep the batch axis first")]:
        path = save(graph_model(nodes, [numpy_helper.from_array(value, "s")]),
                    tmp_path / "r.onnx")
        refused(path, "node 'flat' (Reshape)", says)


# -- the graph's input and output ------------------------------------------------------------
def break_io(proto, how):
    graph = proto.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    if how.startswith("dim "):
        axis, value = how[4:].split("=")
        dims[int(axis)].ClearField("dim_param")
        dims[int(axis)].dim_value = int(value)
    elif how == "rank 5":
        dims.add().dim_value = 2
    elif how == "int64 input":
        graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    elif how == "no element type":
        graph.input[0].type.tensor_type.elem_type = 0
    elif how == "two inputs":
        graph.input.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2]))
    elif how == "no input":
        del graph.input[:]
    elif how == "input without a name":
        graph.input[0].name = ""
    elif how == "two outputs":
        graph.output.append(graph.output[0])
    elif how == "no output":
        del graph.output[:]
    elif how == "output of nothing":
        graph.output[0].name = "nowhere"
    elif how == "output is a weight":
        graph.output[0].name = graph.initializer[0].name


IO_BREAKS = {"dim 1=0": "has size 0 on axis 1", "dim 2=-4": "has size -4 on axis 2",
             "dim 0=-1": "has size -1 on axis 0",
             "dim 3=1099511627776": "is over the cap", "rank 5": "per-sample shape",
             "int64 input": "element type 7", "no element type": "element type 0",
             "two inputs": "one input; the graph has 2: 'input', 'z'",
             "no input": "input 'input' is not the graph's input",
             "input without a name": "input 'input' is not the graph's input",
             "two outputs": "one output; the graph has 2",
             "no output": "one output; the graph has 0",
             "output of nothing": "the output 'nowhere' does not depend on the input",
             "output is a weight": "does not depend on the input"}


@pytest.mark.parametrize("how", list(IO_BREAKS))
def test_graph_input_and_output(tmp_path, base, how):
    proto = copy(base)
    break_io(proto, how)
    refused(save(proto, tmp_path / "io.onnx"), IO_BREAKS[how])


# -- truncations and byte flips of a serialized model --------------------------------------
def test_truncations(tmp_path, base):
    data = base.SerializeToString()
    outcomes = set()
    path = tmp_path / "cut.onnx"
    for end in np.linspace(0, len(data) - 1, 60).astype(int):
        path.write_bytes(data[:end])
        outcomes.add(loads_or_refused(path))
    assert "refused" in outcomes


@pytest.mark.parametrize("seed", range(12))
def test_byte_flips(tmp_path, base, seed):
    """Seeded flips of 1 to 8 bytes, ten files a seed: each loads and runs, or is refused."""
    data = base.SerializeToString()
    rng = random.Random(seed)
    path = tmp_path / "flip.onnx"
    for _ in range(10):
        flipped = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 4, 8])):
            i = rng.randrange(len(flipped))
            flipped[i] = rng.randrange(256) if rng.random() < 0.5 else flipped[i] ^ 1
        path.write_bytes(bytes(flipped))
        loads_or_refused(path)


def test_names_that_are_not_text(tmp_path, base):
    """Protobuf hands out a name with invalid UTF-8 as bytes."""
    data = base.SerializeToString()
    name = b"block.a.weight"
    flipped = data.replace(name, b"block.\xff.weight", 1)
    assert flipped != data
    path = tmp_path / "utf8.onnx"
    path.write_bytes(flipped)
    refused(path, "is not UTF-8 text")
    # a node's metadata, where torch's exporter writes the module's name scopes (it had
    # reached a regular expression as bytes: a TypeError naming neither file nor node)
    conv = helper.make_node("Conv", ["input", "w"], ["output"], name="node_Conv_0",
                            kernel_shape=[3, 3])
    prop = conv.metadata_props.add()
    prop.key, prop.value = "pkg.torch.onnx.name_scopes", "['', 'c\u00e9']"
    graph = helper.make_graph(
        [conv], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString().replace("c\u00e9".encode(), b"c\xff\xfe"))
    refused(path, "node #0's metadata", "is not UTF-8 text")


# -- bombs and deep or long graphs -----------------------------------------------------------
def relu_chain(n):
    return [helper.make_node("Relu", ["x" if i == 0 else f"t{i - 1}"],
                             ["y" if i == n - 1 else f"t{i}"], name=f"r{i}") for i in range(n)]


def nested_blocks(depth):
    """relu -> (relu -> (... ) + .) + x: blocks nested ``depth`` deep."""
    nodes, add_inputs = [], []
    current = "x"
    for d in range(depth):
        nodes.append(helper.make_node("Relu", [current], [f"r{d}"], name=f"relu{d}"))
        add_inputs.append((current, d))
        current = f"r{d}"
    for outer, d in reversed(add_inputs):
        out = "y" if d == 0 else f"o{d}"
        nodes.append(helper.make_node("Add", [outer, current], [out], name=f"add{d}"))
        current = out
    return nodes


def test_2000_nested_residual_blocks_are_refused_by_the_depth_cap(tmp_path):
    path = save(graph_model(nested_blocks(2000), shape=(1, 2, 3, 3)), tmp_path / "deep.onnx")
    refused(path, "nesting of blocks 33 is over the cap of 32 (convnet.limits.MAX_DEPTH)")
    shallow = save(graph_model(nested_blocks(30), shape=(1, 2, 3, 3)), tmp_path / "ok.onnx")
    assert loads_or_refused(shallow) == "loaded"


def test_long_chains_load_or_meet_the_layer_cap(tmp_path):
    """No step recurses per node: 5,000 RELUs load; 20,000 meet MAX_LAYERS."""
    path = save(graph_model(relu_chain(5000), shape=(1, 2, 2, 2)), tmp_path / "long.onnx")
    model = load_onnx(path)
    assert len(list(model.named_layers())) == 5000
    path = save(graph_model(relu_chain(20_000), shape=(1, 2, 2, 2)), tmp_path / "longer.onnx")
    refused(path, "the graph: nodes 20,000 is over the cap of 10,000 "
                  "(convnet.limits.MAX_LAYERS)")


def test_a_long_identity_tail_after_the_softmax(tmp_path):
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("Softmax", ["f"], ["i0"], name="softmax")]
    nodes += [helper.make_node("Identity", [f"i{i}"], ["y" if i == 2999 else f"i{i + 1}"])
              for i in range(3000)]
    with pytest.warns(UserWarning, match="the final Softmax"):
        model = load_onnx(save(graph_model(nodes), tmp_path / "tail.onnx"))
    assert model.output_shape(model.input_shape) == (72,)


@pytest.mark.parametrize("counts, says", [
    ([4000] * 3, "nodes and the Concat nodes' branches 12,003 is over the cap of 10,000"),
    ([9000], "node #0's inputs: 9,000, more than the 4,096 convnet reads"),
])
def test_a_concat_of_many_inputs_is_refused_before_its_branches(tmp_path, counts, says):
    """Each input of a Concat becomes a branch, a layer: a 3 MB file of one Concat with
    1,000,000 inputs had made 1,000,000 layers in 14 s and 0.9 GB."""
    nodes = [helper.make_node("Concat", ["x"] * count, [f"c{i}"], axis=1)
             for i, count in enumerate(counts)]
    refused(save(graph_model(nodes, output="c0"), tmp_path / "fan.onnx"), says)


@pytest.mark.parametrize("axis, ok", [(None, True), (-1, True), (1, True), (0, False)])
def test_softmax_is_left_to_apply_only_over_the_classes(tmp_path, axis, ok):
    extra = {} if axis is None else {"axis": axis}
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Softmax", ["f"], ["y"], **extra)]
    path = save(graph_model(nodes), tmp_path / "soft.onnx")
    if ok:
        with pytest.warns(UserWarning, match="the final Softmax"):
            assert load_onnx(path).output_shape((2, 6, 6)) == (72,)
    else:
        refused(path, "attribute axis=0 is not supported")


@pytest.mark.parametrize("count", [5, 2_000_000])
def test_int_lists_are_counted_before_they_are_read(tmp_path, count):
    """2,000,000 strides had become a Python list (72 MB here; 2.9 GB from a 143 MB
    file) before their length was found wrong."""
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2],
                              strides=list(range(1, count + 1)))]
    path = save(graph_model(nodes), tmp_path / "ints.onnx")
    tracemalloc.start()
    try:
        refused(path, "attribute strides=[1, 2, 3, 4, 5", f"must have 2 values, got {count:,}")
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()


def test_many_branches_with_one_name(tmp_path):
    """2,000 branches named alike: unique keys without a quadratic search."""
    n = 2000
    nodes = [helper.make_node("Relu", ["x"], [f"t{i}"], name="same") for i in range(n)]
    nodes.append(helper.make_node("Concat", [f"t{i}" for i in range(n)], ["y"], axis=1))
    model = load_onnx(save(graph_model(nodes, shape=(1, 1, 2, 2)), tmp_path / "wide.onnx"))
    assert model.output_shape((1, 2, 2)) == (n, 2, 2)


@pytest.mark.parametrize("name, deep", [
    ("a." * 5000 + "relu", True),
    ("/" + ".".join(["a"] * 50_000) + "/Relu", True),
    ("/" + "/".join(["a.b"] * 5000) + "/Relu", False),     # each scope repeats its parent's
])
def test_names_nested_too_deep(tmp_path, name, deep):
    nodes = [helper.make_node("Relu", ["x"], ["y"], name=name)]
    path = save(graph_model(nodes), tmp_path / "name.onnx")
    if deep:
        refused(path, "its name nests more than 32 levels deep (convnet.limits.MAX_DEPTH)")
    else:
        assert loads_or_refused(path) == "loaded"


def test_huge_declared_dims_allocate_nothing(tmp_path):
    big = tensor("W", 4)
    big.dims[:] = [1 << 15, 1 << 15, 64]
    path = save(graph_model([helper.make_node("Relu", ["x"], ["y"])], [big]),
                tmp_path / "bomb.onnx")
    assert peak_bytes(lambda: refused(path, "tensor 'W': values of shape (32768, 32768, 64)",
                                      "convnet.limits.MAX_PARAMS")) < MB


def test_tied_weights_are_counted_per_use(tmp_path):
    """One 4 MB weight read by 2,000 CONVs would be 8 GB of layers: refused before any."""
    nodes = [helper.make_node("Conv", ["x" if i == 0 else f"t{i - 1}", "W"],
                              ["y" if i == 1999 else f"t{i}"], name=f"c{i}", pads=[1, 1, 1, 1])
             for i in range(2000)]
    path = save(graph_model(nodes, [tensor("W", 64, 64, 16, 16)], shape=(1, 64, 1, 1)),
                tmp_path / "tied.onnx")
    assert peak_bytes(lambda: refused(path, "values copied into layers from constants",
                                      "convnet.limits.MAX_PARAMS")) < 16 * MB


@pytest.mark.parametrize("op, attrs, says", [
    ("Conv", {"pads": [1 << 40] * 4}, "values per sample in the padded input"),
    ("MaxPool", {"kernel_shape": [1 << 31] * 2, "pads": [1 << 30] * 4},
     "values per sample in the padded input"),
    ("LRN", {"size": (1 << 31) + 1}, "the input padded for an LRN window"),
    ("Concat", {}, None),
])
def test_sizes_that_would_blow_up_are_refused_small(tmp_path, op, attrs, says):
    if op == "Concat":
        nodes = [helper.make_node("Concat", ["x"] * 4000, ["y"], name="cat", axis=1)]
        proto = graph_model(nodes, shape=(1, 9, 128, 128))
        says = "values per sample in its output (36000, 128, 128)"
    else:
        proto = op_model(op, **attrs)
    path = save(proto, tmp_path / "big.onnx")
    assert peak_bytes(lambda: refused(path, says, "convnet.limits.MAX_VOLUME")) < 4 * MB


def test_input_volume_is_capped(tmp_path):
    path = save(graph_model([helper.make_node("Relu", ["x"], ["y"])],
                            shape=(1, 3, 1 << 20, 1 << 20)), tmp_path / "huge.onnx")
    assert peak_bytes(lambda: refused(path, "input 'x': values per sample")) < MB
    ok = save(graph_model([helper.make_node("Relu", ["x"], ["y"])], shape=("N", 3, "H", "W")),
              tmp_path / "dyn.onnx")
    with pytest.raises(ValueError, match=r"input 'x': values per sample \(3, 65536, 65536\)"):
        load_onnx(ok, input_shape=(3, 1 << 16, 1 << 16))


def test_caps_are_read_when_loading(tmp_path, base, monkeypatch):
    path = save(base, tmp_path / "base.onnx")
    monkeypatch.setattr(limits, "MAX_PARAMS", 100)
    refused(path, "(convnet.limits.MAX_PARAMS)")
    monkeypatch.setattr(limits, "MAX_PARAMS", 1 << 30)
    monkeypatch.setattr(limits, "MAX_LAYERS", 5)
    refused(path, "nodes 12 is over the cap of 5 (convnet.limits.MAX_LAYERS)")
    monkeypatch.setattr(limits, "MAX_LAYERS", 100)
    monkeypatch.setattr(limits, "MAX_ARRAY_BYTES", 1000)
    refused(path, "bytes in all the tensors", "(convnet.limits.MAX_ARRAY_BYTES)")
    monkeypatch.setattr(limits, "MAX_ARRAY_BYTES", 1 << 30)
    monkeypatch.setattr(limits, "MAX_VOLUME", 20)
    refused(path, "input 'input': values per sample (2, 4, 4)")
    monkeypatch.setattr(limits, "MAX_VOLUME", 1 << 28)
    assert loads_or_refused(path) == "loaded"


# -- external data: extents checked against the file before reading --------------------------
@pytest.mark.parametrize("change, says", [
    ({"length": "999999999"}, "do not hold the tensor's"),
    ({"offset": "400000"}, "do not hold the tensor's"),
    ({"offset": "-8"}, "do not hold the tensor's"),
    ({"offset": "1e3"}, "offset/length must be integers"),
    ({"location": ""}, "no usable location"),
    ({"location": "missing.bin"}, "is not a file"),
    ({"dims": [1 << 30, 1 << 30]}, "is over the cap"),
    ({"dims": [-1, 4]}, "must be at most 8 sizes"),
])
def test_external_data_extents(tmp_path, base, monkeypatch, change, says):
    reads = []
    monkeypatch.setattr(onnx_import, "_read_bytes", lambda *args: reads.append(args))
    path = tmp_path / "ext.onnx"
    onnx.save_model(copy(base), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    proto = onnx.load(str(path), load_external_data=False)
    weight = proto.graph.initializer[0]
    if "dims" in change:
        weight.dims[:] = change["dims"]
    entries = {e.key: e for e in weight.external_data}
    for key, value in change.items():
        if key == "dims":
            continue
        if key not in entries:
            entries[key] = weight.external_data.add()
            entries[key].key = key
        entries[key].value = value
    refused(save(proto, path), f"tensor {weight.name!r}", says)
    assert reads == []


def test_bomb_sizes_are_checked_before_the_arrays_exist(tmp_path):
    """A 4-byte tensor declaring 1 GiB of values, under the caps: refused for its data
    length before NumPy sees it."""
    t = tensor("W", 1)
    t.dims[:] = [1 << 28]
    path = save(graph_model([helper.make_node("Relu", ["x"], ["y"])], [t]), tmp_path / "d.onnx")
    peak = peak_bytes(lambda: refused(path, "holds 4 bytes of raw_data", "need 1,073,741,824"))
    assert peak < MB


def test_external_data_shared_by_many_tensors_is_refused(tmp_path, base):
    """Every initializer pointed at the same region: each was read and converted, 2 GB
    from a 1 MB file. The tensors may read no more bytes of a file than it holds."""
    path = tmp_path / "ext.onnx"
    onnx.save_model(copy(base), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    assert loads_or_refused(path) == "loaded"
    proto = onnx.load(str(path), load_external_data=False)
    first = proto.graph.initializer[0]
    for i in range(3):                       # unused copies of the first tensor's region
        twin = proto.graph.initializer.add()
        twin.CopyFrom(first)
        twin.name = f"twin{i}"
    refused(save(proto, path), "tensor 'twin", "more than its", "tensors share its bytes")


def _varint(n):
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([low])
        out += bytes([low | 0x80])


def _field(number, payload=b""):
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _model_bytes(graph):
    """An ONNX ModelProto (IR 8, opset 13) around the GraphProto bytes ``graph``."""
    return (_varint(1 << 3) + _varint(8) + _field(7, graph)
            + _field(8, _varint(2 << 3) + _varint(13)))


@pytest.mark.parametrize("case, says", [
    ("attributes", "the model > graph > node #1 has more than 16,384 attributes"),
    ("nodes", "the model > graph has more than 40,000 nodes"),
    ("initializers", "the model > graph has more than 160,000 initializers"),
    ("strings", "> attribute #1 has more than 65,536 strings"),
    ("nesting", "subgraphs nest more than"),
    ("function", "the model > function #1 has more than 40,000 nodes"),
    ("dims", "the model > graph > input #1 > type > tensor type > shape has more than 1,024 "
             "dims"),
    # packed integers: each 1-byte varint is parsed into 8 bytes (50 MB had taken 1 GB)
    ("int64_data", "more than 4,194,304 bytes of integers in all"),
    ("ints", "more than 4,194,304 bytes of integers in all"),
    ("many int64_data", "more than 4,194,304 bytes of integers in all"),
    ("tensor dims", "> initializer #1 has more than 4,096 bytes of dims"),
])
def test_a_file_of_many_empty_fields_is_refused_before_protobuf_parses_it(tmp_path, case,
                                                                          says, monkeypatch):
    """Parsed, every empty field is an object of about 120 bytes: a 120 MB file of one
    node with 60 million empty attributes took 7.4 GB (and the error path then ran out
    of memory, a traceback). The fields are counted in the file's bytes first."""
    if case == "attributes":
        graph = _field(1, _field(5) * 20_000)
    elif case == "nodes":
        graph = _field(1) * 50_000
    elif case == "initializers":
        graph = _field(5) * 170_000
    elif case == "strings":
        graph = _field(1, _field(5, _field(9) * 70_000))
    elif case == "nesting":
        graph = _field(1)
        for _ in range(limits.MAX_DEPTH + 2):      # a node whose attribute is a graph
            graph = _field(1, _field(5, _field(6, graph)))
    elif case == "dims":                            # the graph's input's shape
        graph = _field(11, _field(2, _field(1, _field(2, _field(1) * 2000))))
    elif case == "int64_data":                      # one initializer's packed int64_data
        graph = _field(5, _field(7, b"\x01" * (5 << 20)))
    elif case == "ints":                            # a node's attribute's packed ints
        graph = _field(1, _field(5, _field(8, b"\x01" * (5 << 20))))
    elif case == "many int64_data":                 # 1 MB in each of 5 initializers
        graph = _field(5, _field(7, b"\x01" * (1 << 20))) * 5
    elif case == "tensor dims":
        graph = _field(5, _field(1, b"\x01" * 5000))
    path = tmp_path / "bomb.onnx"
    data = _model_bytes(graph if case != "function" else _field(1))
    if case == "function":                          # a local function of empty nodes
        data += _field(25, _field(7) * 50_000)
    path.write_bytes(data)

    def unparsed(*args, **kwargs):
        raise AssertionError("protobuf parsed the file")
    for name in ("load", "load_model", "load_model_from_string"):
        monkeypatch.setattr(onnx, name, unparsed)
    refused(path, says)


@pytest.mark.parametrize("data, says", [
    (b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "a bad varint"),
    (b"\x0a\x05ab", "runs past its message's end"),
    (b"\x0b", "wire type 3"),
])
def test_bytes_that_are_not_protobufs_wire_format_are_named(tmp_path, data, says):
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    refused(path, "not an ONNX model", says)
