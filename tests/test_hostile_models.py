"""Hostile model descriptions: model JSON, notation text and weight files, generated.

Every case is refused with a ValueError that names the file (or the notation), quickly and
without a large allocation: never another exception, a hang or gigabytes of memory.

- The JSON sweep takes a real saved model that uses every layer and container type and
  replaces each of its fields, one at a time, by each value of BAD. A few replacements
  are valid settings (any finite LeakyReLU slope, say); ACCEPTED lists them, and they
  must load.
- Notation texts are built with huge counts, deep brackets, huge sizes, long words and
  random garbage.
- Weight files are the saved model's safetensors with relabelled dtypes, truncations,
  header lengths out of range and broken headers.

``refused`` runs each case under tracemalloc (NumPy's allocations are traced) with a clock.
"""

import copy
import json
import math
import random
import struct
import time
import tracemalloc
from functools import partial

import numpy as np
import pytest

from convnet import limits
from convnet.io.weights import ITEMSIZE, load_model, load_tensors, save_model, save_tensors
from convnet.layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Identity,
    LeakyReLU,
    Linear,
    LocallyConnected2d,
    LocalResponseNorm,
    LPPool2d,
    MaxPool2d,
    ReLU,
    Sigmoid,
    Tanh,
)
from convnet.models import Concat, DenseBlock, Residual, Sequential, from_config, from_notation
from convnet.models.notation import KEYWORDS

MAX_PEAK = 16 << 20      # bytes a refused case may allocate at its peak
MAX_SECONDS = 1.0        # and the time it may take

BAD = [5, -1, 0, "abc", None, [], {}, True, 1e308, 2**63, [2**40, 2**40]]

INFO = {"classes": ["zero", "one", "two"], "channels": "L", "mean": [0.5], "std": [0.25],
        "scale": 255, "brightness": [0.1, 0.9], "border": [0.0, 0.2], "data": "digits",
        "resize": "bilinear"}
INPUT_SHAPE = (1, 8, 8)


def make_model():
    """A small net with every layer type and every container: 1x8x8 -> 3 scores."""
    rng = np.random.default_rng(0)

    def conv(*args, **kwargs):
        return Conv2d(*args, rng=rng, **kwargs)

    return Sequential({
        "stem": Sequential(conv(1, 4, 3, padding=1), BatchNorm2d(4), LeakyReLU(0.1),
                           LocalResponseNorm(3)),
        "block": Residual({"conv1": conv(4, 4, 3, padding=1, bias=False),
                           "bn1": BatchNorm2d(4), "relu": ReLU()},
                          shortcut=Sequential(conv(4, 4, 1)), post=ReLU()),
        "branches": Concat({"a": conv(4, 2, 1),
                            "b": Sequential(MaxPool2d(3, 1, 1), conv(4, 2, 1))}),
        "dense": DenseBlock({"d1": Sequential(BatchNorm2d(4), conv(4, 2, 3, padding=1))}),
        "pool": AvgPool2d(2),
        "lc": LocallyConnected2d(6, 2, 4, 3, padding=1, rng=rng),
        "lp": LPPool2d(2, 2),
        "gap": AdaptiveAvgPool2d(2),
        "flat": Flatten(),
        "fc1": Linear(8, 6, rng=rng), "bn": BatchNorm1d(6), "tanh": Tanh(),
        "drop": Dropout(0.5, rng=rng), "fc": Linear(6, 3, rng=rng), "sig": Sigmoid(),
        "id": Identity()})


def document():
    """The model file save_model writes for make_model(), as JSON data."""
    return json.loads(json.dumps({
        "format": "convnet-model", "version": 1, "architecture": make_model().get_config(),
        "input_shape": list(INPUT_SHAPE), "weights": "model.safetensors", "info": INFO}))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A folder with the real model file (model.json, model.safetensors)."""
    folder = tmp_path_factory.mktemp("hostile")
    model = make_model()
    model.input_shape = INPUT_SHAPE
    json_path = save_model(model, folder / "model", **INFO)
    assert json.loads(json_path.read_text()) == document()
    assert load_model(json_path).output_shape(INPUT_SHAPE) == (3,)
    return folder


def refused(call, *names):
    """call() raises a ValueError whose message names one of ``names``, within MAX_PEAK
    bytes and MAX_SECONDS; returns the message."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError) as info:
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    seconds = time.perf_counter() - start
    message = str(info.value)
    assert any(str(name) in message for name in names), message
    assert peak < MAX_PEAK, f"{peak:,} bytes at the peak: {message[:200]}"
    assert seconds < MAX_SECONDS, f"{seconds:.2f} s: {message[:200]}"
    return message


def write_json(folder, data, name="case.json"):
    """data (a JSON value, a str or bytes) as the model file folder/name."""
    path = folder / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


# -- the JSON sweep: every field x every bad value -----------------------------------------

def leaf_paths(node, path=()):
    """Every path into a JSON document (dict keys and list indices), parents first."""
    if path:
        yield path
    items = node.items() if isinstance(node, dict) else (
        enumerate(node) if isinstance(node, list) else ())
    for key, child in items:
        yield from leaf_paths(child, (*path, key))


def field_name(doc, path):
    """How ACCEPTED names the field at ``path``: the type of the layer that holds it and
    the rest of the path, list indices as [] ('Conv2d.kernel_size[]', 'info.mean[]')."""
    owner, rest, node = "", "", doc
    for key in path:
        if isinstance(node, dict) and "type" in node:
            owner, rest = node["type"], ""
        rest += "[]" if isinstance(key, int) else f".{key}"
        node = node[key]
    return owner + rest if owner else rest.lstrip(".")


def sweep_fields():
    """One path for each distinct field name of the document, in document order."""
    doc, fields = document(), {}
    for path in leaf_paths(doc):
        fields.setdefault(field_name(doc, path), path)
    return fields


FIELDS = sweep_fields()

ANY_NUMBER = (5, -1, 0, 1e308, 2**63)     # any finite number is a valid choice here
ACCEPTED = {
    "LeakyReLU.negative_slope": ANY_NUMBER, "LocalResponseNorm.alpha": (5, 0, 1e308, 2**63),
    "LocalResponseNorm.beta": ANY_NUMBER, "LocalResponseNorm.k": (5, 0, 1e308, 2**63),
    "info.mean[]": ANY_NUMBER,
    "BatchNorm2d.eps": (5, 0, 1e308, 2**63), "BatchNorm1d.eps": (5, 0, 1e308, 2**63),
    "LPPool2d.norm_type": (5, 1e308, 2**63), "info.std[]": (5, 1e308, 2**63),
    "info.scale": (5, 1e308, 2**63),
    "BatchNorm2d.momentum": (0, None), "BatchNorm1d.momentum": (0, None),  # None: average
    "Dropout.p": (0,), "LocalResponseNorm.size": (5,),
    # flags the saved model has True already, or that change no shape
    "Conv2d.bias": (True,), "LocallyConnected2d.bias": (True,), "Linear.bias": (True,),
    "BatchNorm2d.affine": (True,), "BatchNorm2d.track_running_stats": (True,),
    "BatchNorm1d.affine": (True,), "BatchNorm1d.track_running_stats": (True,),
    "ReLU.inplace": (True,), "MaxPool2d.ceil_mode": (True,), "AvgPool2d.ceil_mode": (True,),
    "LPPool2d.ceil_mode": (True,), "AvgPool2d.count_include_pad": (True,),
    # the defaults: stride = the kernel size, no padding, no input shape, no info
    "AvgPool2d.stride": (None,), "LPPool2d.stride": (None,), "AvgPool2d.padding": (0,),
    "AvgPool2d.padding[]": (0,), "input_shape": (None,), "info": ({},),
    "info.resize": (None,), "info.classes[]": ("abc",), "info.data": ("abc",),
    "info.brightness[]": (0,), "info.border[]": (0,),
    "AdaptiveAvgPool2d.output_size[]": (None,),    # None: the input's side, here 2 too
}


def listed(value, values):
    """value is one of values, type and all (True is not 1, 0 is not False)."""
    return any(type(v) is type(value) and v == value for v in values)


def with_value(doc, path, value):
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def test_the_sweep_covers_every_field_and_every_accepted_name_exists():
    names = set(FIELDS)
    assert len(FIELDS) > 100
    assert {"format", "version", "architecture", "input_shape", "weights", "info"} <= names
    assert {"Conv2d.kernel_size[]", "Residual.shortcut_name", "Concat.children[][]",
            "DenseBlock.children", "LocallyConnected2d.input_size"} <= names
    assert set(ACCEPTED) <= names, set(ACCEPTED) - names


@pytest.mark.parametrize("name", list(FIELDS))
def test_every_model_json_field_refuses_bad_values(saved, name):
    """Each bad value in the field: a ValueError naming the file, or, for a valid setting
    that ACCEPTED lists, a model that loads."""
    path, doc = FIELDS[name], document()
    for value in BAD:
        json_path = write_json(saved, with_value(doc, path, value))
        if listed(value, ACCEPTED.get(name, ())):
            assert load_model(json_path).output_shape(INPUT_SHAPE) == (3,)
        else:
            refused(partial(load_model, json_path), json_path, saved / "model.safetensors")


def test_a_field_deleted_is_refused_or_defaulted(saved):
    """Every field of a layer deleted in turn: a required one is named, an optional one
    takes its default (and the model still loads its weights, or says why not)."""
    doc = document()
    deletable = [path for path in leaf_paths(doc) if isinstance(path[-1], str)]
    for path in deletable:
        trimmed = copy.deepcopy(doc)
        node = trimmed
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        json_path = write_json(saved, trimmed)
        try:
            load_model(json_path)
        except ValueError as err:
            assert str(json_path) in str(err) or "model.safetensors" in str(err), str(err)


# -- model JSON: hostile documents ---------------------------------------------------------

def nested_containers(depth):
    config = {"type": "ReLU"}
    for _ in range(depth):
        config = {"type": "Sequential", "children": [["0", config]]}
    return config


def model_file(architecture, **fields):
    return {"format": "convnet-model", "version": 1, "architecture": architecture,
            "weights": "model.safetensors", **fields}


def linears(count, width):
    return {"type": "Sequential", "children": [
        [str(i), {"type": "Linear", "in_features": width, "out_features": width}]
        for i in range(count)]}


HOSTILE_DOCUMENTS = {
    "not JSON": "{\"format\": ",
    "empty": "",
    "a list": "[1, 2]",
    "a number": "5",
    "null": "null",
    "not UTF-8": b"{\"format\": \"\xff\xfe\"}",
    "an int of 5000 digits": "{\"format\": " + "9" * 5000 + "}",
    "15,000 nested lists": "[" * 15000 + "]" * 15000,
    "15,000 nested objects": "{\"a\": " * 15000 + "1" + "}" * 15000,
    "15,000 nested containers": "{\"format\": \"convnet-model\", \"architecture\": "
    + "{\"type\": \"Sequential\", \"children\": [[\"0\", " * 15000 + "{\"type\": \"ReLU\"}"
    + "]]}" * 15000 + "}",
    "no architecture": {"format": "convnet-model", "version": 1, "input_shape": [1, 8, 8]},
    "architecture null": model_file(None),
    "40 nested containers": model_file(nested_containers(40)),
    "20,000 layers": model_file({"type": "Sequential", "children": [
        [str(i), {"type": "ReLU"}] for i in range(20_000)]}),
    "CONV 999999999": model_file({"type": "Conv2d", "in_channels": 3,
                                  "out_channels": 999999999, "kernel_size": 3}),
    "FC 999999999999": model_file({"type": "Linear", "in_features": 3072,
                                   "out_features": 999999999999}),
    "INPUT 100000x100000x3": model_file({"type": "ReLU"}, input_shape=[3, 100000, 100000]),
    "a LocallyConnected2d over 100000x100000": model_file({
        "type": "LocallyConnected2d", "in_channels": 1, "out_channels": 1,
        "input_size": [100000, 100000], "kernel_size": 1}),
    "an adaptive pool to 8192x8192 with 64 channels": model_file(
        {"type": "AdaptiveAvgPool2d", "output_size": 8192}, input_shape=[64, 8, 8]),
    "a stride of 2**40": model_file({"type": "MaxPool2d", "kernel_size": 1,
                                     "stride": 2**40}, input_shape=[1, 7, 7]),
    "a dotted child name": model_file({"type": "Sequential", "children": [
        ["a.b", {"type": "ReLU"}]]}),
    "a child name with terminal escapes": model_file({"type": "Sequential", "children": [
        ["\x1b]0;title\x07\x1b[2J", {"type": "ReLU"}]]}),
    "a duplicated child name": model_file({"type": "Sequential", "children": [
        ["a", {"type": "ReLU"}], ["a", {"type": "ReLU"}]]}),
    "an unknown layer type": model_file({"type": "Conv3d"}),
    "a type that is a list": model_file({"type": ["Conv2d"]}),
    "an unknown field": model_file({"type": "ReLU", "inplace": False, "exec": "rm -rf"}),
    "a weights path outside": model_file({"type": "ReLU"}) | {"weights": "/etc/passwd"},
    "a weights path up": model_file({"type": "ReLU"}) | {"weights": "../model.safetensors"},
    "a weights path in a subfolder": model_file({"type": "ReLU"}) | {"weights": "a/b"},
    "a weights file that is missing": model_file({"type": "ReLU"}) | {"weights": "no"},
    "a weights name with a NUL": model_file({"type": "ReLU"}) | {"weights": "a\0b"},
    "input_shape 3 channels for a 1-channel CONV": model_file(
        {"type": "Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 3},
        input_shape=[3, 8, 8]),
    "info.mean for 3 channels of a 1-channel input": model_file(
        {"type": "ReLU"}, input_shape=[1, 8, 8], info={"mean": [0.5, 0.5, 0.5]}),
    "version 2": model_file({"type": "ReLU"}) | {"version": 2},
    "another format": model_file({"type": "ReLU"}) | {"format": "keras"},
}


@pytest.mark.parametrize("name", list(HOSTILE_DOCUMENTS))
def test_hostile_model_documents_are_refused_by_name(saved, name):
    json_path = write_json(saved, HOSTILE_DOCUMENTS[name])
    refused(lambda: load_model(json_path), json_path)


def test_weights_linked_out_of_the_folder_are_refused(saved, tmp_path):
    """A weights name inside the folder that is a symbolic link to a file elsewhere."""
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes((saved / "model.safetensors").read_bytes())
    link = saved / "link.safetensors"
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    json_path = write_json(saved, document() | {"weights": "link.safetensors"})
    assert "outside the model's folder" in refused(lambda: load_model(json_path), json_path)


def test_a_json_file_over_the_cap_is_not_read(saved, monkeypatch):
    json_path = write_json(saved, document())
    monkeypatch.setattr(limits, "MAX_JSON_BYTES", 1000)
    assert "MAX_JSON_BYTES" in refused(lambda: load_model(json_path), json_path)


def test_a_json_file_of_more_values_than_the_cap_is_not_parsed(saved):
    """3.3 MB of empty lists would parse to 70 MB of Python objects (64 MB of them, to
    1.4 GB): refused before json.loads, within MAX_PEAK."""
    json_path = write_json(saved, '{"format": "convnet", "x": [' + "[]," * 1_100_000 + "[]]}")
    assert "MAX_JSON_VALUES" in refused(lambda: load_model(json_path), json_path)


def test_the_running_total_refuses_the_layer_that_would_pass_the_cap(monkeypatch):
    """Four FC layers of 250,500 parameters under a cap of 600,000: the third is refused
    before it allocates, so the peak holds two layers (their weights and gradients)."""
    monkeypatch.setattr(limits, "MAX_PARAMS", 600_000)
    config = linears(4, 500)
    message = refused(lambda: from_config(config, where="four.json"), "four.json")
    assert "layer 2" in message and "MAX_PARAMS" in message
    tracemalloc.start()
    try:
        from_config(linears(2, 500))
        two_layers = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        with pytest.raises(ValueError):
            from_config(config)
        assert tracemalloc.get_traced_memory()[1] < 1.2 * two_layers
    finally:
        tracemalloc.stop()


def test_layers_larger_than_their_weights_file_are_refused_before_they_allocate(saved):
    """A model.json whose FC layer asks for 6 x 16M weights, beside the real (small)
    weights file: the header's count of values refuses the layer before its 384 MB."""
    data = document()
    children = data["architecture"]["children"]
    fc = next(config for name, config in children if name == "fc")
    fc["out_features"] = 16_000_000
    json_path = write_json(saved, data)
    message = refused(lambda: load_model(json_path), json_path)
    assert "layer fc" in message and "model.safetensors" in message


def test_a_cyclic_config_stops_at_the_depth_cap():
    config = {"type": "Sequential", "children": []}
    config["children"].append(["0", config])
    assert "MAX_DEPTH" in refused(lambda: from_config(config, where="cycle"), "cycle")


def test_raised_caps_let_a_trusted_model_through(monkeypatch):
    config = nested_containers(40)
    refused(lambda: from_config(config), "model config")
    monkeypatch.setattr(limits, "MAX_DEPTH", 64)
    assert isinstance(from_config(config), Sequential)


# -- weight files ----------------------------------------------------------------------------

def split(data):
    """A safetensors file's bytes -> (header dict, the bytes after the header)."""
    size = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + size]), data[8 + size:]


def join(header, body):
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + body


RELABELLED = ["stem.0.weight", "fc.bias", "stem.1.running_var", "lc.weight"]
NUMPY_NAMES = {"I32": "int32", "U32": "uint32", "BOOL": "bool", "U8": "uint8", "I8": "int8",
               "I16": "int16", "F64": "float64"}


def relabel(header, key, dtype):
    """The header with tensor ``key`` relabelled as ``dtype``, its bytes kept: the shape
    becomes flat where the element count changes."""
    entry = header[key]
    begin, end = entry["data_offsets"]
    entry["dtype"] = dtype
    count = (end - begin) // ITEMSIZE[dtype]
    if count != math.prod(entry["shape"]):
        entry["shape"] = [count]
    return header


def relabel_cases():
    for key in RELABELLED:                                 # float32 -> integers
        for dtype in ("I32", "U32", "BOOL", "U8", "I8", "I16"):
            yield key, dtype
    yield "bn.num_batches_tracked", "F64"                  # an int64 count -> a float


@pytest.mark.parametrize("key, dtype", list(relabel_cases()))
def test_a_relabelled_dtype_is_refused(saved, key, dtype):
    """A float32 weight relabelled as integers (or an int64 count as float64): named with
    the model's dtype and the file's, never loaded as integer bits."""
    header, body = split((saved / "model.safetensors").read_bytes())
    (saved / "relabelled.safetensors").write_bytes(join(relabel(header, key, dtype), body))
    json_path = write_json(saved, document() | {"weights": "relabelled.safetensors"})
    message = refused(lambda: load_model(json_path), "relabelled.safetensors")
    model_dtype = "int64" if key.endswith("num_batches_tracked") else "float32"
    assert f"{key}: model {model_dtype}, file {NUMPY_NAMES[dtype]}" in message, message


def test_a_tensor_the_model_has_no_place_for_is_refused_from_the_header(saved,
                                                                        monkeypatch):
    """An extra tensor of 3.6 GB (a sparse file: it took 264 KB on disk) had been read
    before the keys were compared; the header's keys and shapes are now compared first,
    and no tensor is read."""
    import convnet.io.weights as weights
    header, body = split((saved / "model.safetensors").read_bytes())
    header["junk"] = {"dtype": "F32", "shape": [900_000_000],
                      "data_offsets": [len(body), len(body) + 3_600_000_000]}
    folder = saved / "junk"
    folder.mkdir(exist_ok=True)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(join(header, body))
        f.truncate(f.tell() + 3_600_000_000)
    (folder / "model.json").write_text(json.dumps(document()))

    def unread(*args):
        raise AssertionError("a tensor was read")
    monkeypatch.setattr(weights, "load_tensors", unread)
    message = refused(lambda: load_model(folder / "model.json"), "model.safetensors")
    assert "model.safetensors: Sequential.load_state_dict: unexpected keys: junk" in message
    header, body = split((saved / "model.safetensors").read_bytes())
    header["junk"] = {"dtype": "F32", "shape": [0, 2 ** 40, 2 ** 40],
                      "data_offsets": [len(body), len(body)]}   # no bytes, no array either
    (folder / "model.safetensors").write_bytes(join(header, body))
    refused(lambda: load_model(folder / "model.json"), "model.safetensors")
    header, body = split((saved / "model.safetensors").read_bytes())
    header["fc.weight"]["shape"] = header["fc.weight"]["shape"][::-1]   # same bytes
    (folder / "model.safetensors").write_bytes(join(header, body))
    message = refused(lambda: load_model(folder / "model.json"), "model.safetensors")
    assert "mis-shaped keys: fc.weight: model" in message, message


def test_a_header_of_too_many_values_is_refused_before_it_is_parsed(saved, monkeypatch):
    """1.5 million empty tensors (an 89 MB header), or one shape of 40 million sizes,
    took about 2 GB in the library's parser: the header is held to the caps of a JSON
    file first (here made small, the file being small)."""
    header, body = split((saved / "model.safetensors").read_bytes())
    header["fc.weight"]["shape"] = [1] * 400 + header["fc.weight"]["shape"]
    (saved / "dims.safetensors").write_bytes(join(header, body))
    monkeypatch.setattr(limits, "MAX_JSON_VALUES", 300)
    message = refused(lambda: load_tensors(saved / "dims.safetensors"), "dims.safetensors")
    assert "safetensors header values" in message, message
    monkeypatch.setattr(limits, "MAX_JSON_BYTES", 100)
    message = refused(lambda: load_tensors(saved / "model.safetensors"), "model.safetensors")
    assert "a header of" in message and "MAX_JSON_BYTES" in message, message


@pytest.mark.parametrize("rows", [2_000_000, 10 ** 12])
def test_a_weights_files_empty_head_sets_no_giant_classifier(tmp_path, rows):
    """The classes of a zoo architecture's weights file come from its head's rows: an
    86-byte file with an empty head (rows x 0) had built a ResNet-18 of 2,000,000
    classes (4 GB) before the load failed. Now the default head is built (about 90 MB
    with its gradients) and the load names what does not fit."""
    from convnet.spec import resolve_model
    path = tmp_path / "head.safetensors"
    path.write_bytes(join({"fc.weight": {"dtype": "F32", "shape": [rows, 0],
                                         "data_offsets": [0, 0]}}, b""))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"head.safetensors: does not fit the "
                                             r"architecture .*missing keys"):
            resolve_model(str(path), architecture="resnet18")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 300 << 20, f"{peak:,} bytes"


@pytest.mark.parametrize("count", [-1, -3, 2 ** 63 - 1])
def test_a_batch_norm_count_out_of_range_is_refused(saved, count):
    """A negative num_batches_tracked divided by zero in training with momentum=None
    (cumulative averages), or averaged backwards; the largest int64 wrapped around."""
    header, body = split((saved / "model.safetensors").read_bytes())
    begin, end = header["bn.num_batches_tracked"]["data_offsets"]
    body = body[:begin] + np.array(count, dtype=np.int64).tobytes() + body[end:]
    (saved / "count.safetensors").write_bytes(join(header, body))
    json_path = write_json(saved, document() | {"weights": "count.safetensors"})
    message = refused(lambda: load_model(json_path), "count.safetensors")
    assert (f"bn.num_batches_tracked: a count must be a single int from 0 to 2**62, got "
            f"{count}") in message, message


def length(value):
    return struct.pack("<Q", value)


def flipped(data, at):
    return data[:at] + b"\xff" + data[at + 1:]


def with_entry(data, key, field, value):
    """The file with one field of one tensor's header entry replaced."""
    header, body = split(data)
    header[key][field] = value
    return join(header, body)


# Broken safetensors files, each made from the good file's bytes d whose header is n bytes.
DAMAGES = {
    "empty": lambda d, n: b"",
    "cut in the length": lambda d, n: d[:7],
    "only the length": lambda d, n: d[:8],
    "cut in the header": lambda d, n: d[:8 + n // 2],
    "no tensor bytes": lambda d, n: d[:8 + n],
    "one byte short": lambda d, n: d[:-1],
    "header length 0": lambda d, n: length(0) + d[8:],
    "header length one short": lambda d, n: length(n - 1) + d[8:],
    "header length one long": lambda d, n: length(n + 1) + d[8:],
    "header length the file's": lambda d, n: length(len(d)) + d[8:],
    "header length 10**9": lambda d, n: length(10**9) + d[8:],
    "header length 2**63": lambda d, n: length(2**63) + d[8:],
    "header length 2**64 - 1": lambda d, n: length(2**64 - 1) + d[8:],
    "not UTF-8 first": lambda d, n: flipped(d, 8),
    "not UTF-8 inside": lambda d, n: flipped(d, 8 + n // 2),
    "not UTF-8 last": lambda d, n: flipped(d, 8 + n - 1),
    "a header that is a list": lambda d, n: join([], split(d)[1]),
    "a shape of 2**31 x 2**31": lambda d, n: with_entry(d, "fc.bias", "shape", [2**31, 2**31]),
    "a negative shape": lambda d, n: with_entry(d, "fc.bias", "shape", [-3]),
    "a shape that is a string": lambda d, n: with_entry(d, "fc.bias", "shape", "abc"),
    "offsets past the end": lambda d, n: with_entry(d, "fc.bias", "data_offsets", [0, 2**62]),
    "an unknown dtype": lambda d, n: with_entry(d, "fc.bias", "dtype", "F8_E9M9"),
    "a dtype that is a number": lambda d, n: with_entry(d, "fc.bias", "dtype", 5),
    "bfloat16, which NumPy lacks": lambda d, n: with_entry(d, "fc.bias", "dtype", "BF16"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_weight_file_is_refused_by_name(saved, damage):
    data = (saved / "model.safetensors").read_bytes()
    path = saved / "damaged.safetensors"
    path.write_bytes(DAMAGES[damage](data, struct.unpack("<Q", data[:8])[0]))
    refused(lambda: load_tensors(path), path)
    json_path = write_json(saved, document() | {"weights": "damaged.safetensors"})
    refused(lambda: load_model(json_path), path)


@pytest.mark.parametrize("dtype", ["BF16", "F8_E4M3", "F32"])
def test_an_empty_tensor_of_a_huge_shape_is_refused_by_name(tmp_path, dtype):
    """A bfloat16 tensor of shape 0 x 2**62 x 2**62 had raised NumPy's "array is too big"
    without the file's name (float32's went through the library, which names it)."""
    path = tmp_path / "huge.safetensors"
    path.write_bytes(join({"w": {"dtype": dtype, "shape": [0, 2**62, 2**62],
                                 "data_offsets": [0, 0]}}, b""))
    refused(lambda: load_tensors(path), path)


def test_the_declared_bytes_are_capped_before_any_tensor_is_read(saved, monkeypatch):
    path = saved / "model.safetensors"
    monkeypatch.setattr(limits, "MAX_ARRAY_BYTES", 1000)
    assert "MAX_ARRAY_BYTES" in refused(lambda: load_tensors(path), path)


@pytest.mark.parametrize("value", [
    [0.0, 0.0, 0.0], 0.5, None, "abc", np.zeros(3, np.int32), np.zeros(3, np.uint8),
    np.zeros(3, bool), np.zeros(3, complex), np.zeros(3, object), np.array(["a", "b", "c"]),
    np.zeros(3, [("a", "f4")]),
], ids=repr)
def test_load_state_dict_refuses_what_is_not_a_floating_array(value):
    model = Sequential(Linear(2, 3, rng=np.random.default_rng(0)))
    before = model.state_dict()["0.bias"].copy()
    state = {**model.state_dict(), "0.bias": value}
    message = refused(lambda: model.load_state_dict(state), "0.bias: model float32")
    assert "mistyped" in message
    np.testing.assert_array_equal(model.state_dict()["0.bias"], before)


def test_load_state_dict_casts_floats_and_takes_integer_counts():
    model = Sequential(BatchNorm1d(3))
    state = {key: value.astype(np.float16) if value.dtype.kind == "f" else value
             for key, value in model.state_dict().items()}
    state["0.num_batches_tracked"] = np.array(7, np.uint8)
    assert model.load_state_dict(state) == ([], [])
    assert model.buffers()["0.num_batches_tracked"].dtype == np.int64
    state["0.num_batches_tracked"] = np.array(7.0)
    assert "model int64, file float64" in refused(lambda: model.load_state_dict(state),
                                                   "0.num_batches_tracked")


# -- notation ----------------------------------------------------------------------------

HUGE = (10**9, 10**12, 2**63, 10**40)
SIZES = ["INPUT {v}x{v}x3 -> RELU", "INPUT 8x{v} -> RELU", "INPUT {v} -> FC 2",
         "INPUT 8x8x{v} -> BN", "INPUT 8x8x1 -> CONV {v}", "INPUT 8x8x1 -> FC {v}",
         "INPUT 8x8x1 -> LC {v}", "INPUT 8x8x1 -> CONV 2 F{v}", "INPUT 8x8x1 -> CONV 2 S{v}",
         "INPUT 8x8x1 -> CONV 2 P{v}", "INPUT 8x8x1 -> CONV 2 D{v}",
         "INPUT 8x8x1 -> CONV 2 G{v}", "INPUT 8x8x1 -> POOL F{v}", "INPUT 8x8x1 -> POOL S{v}",
         "INPUT 7x7x1 -> POOL F2 S{v}", "INPUT 8x8x1 -> LRN {v}", "INPUT 8x8x1 -> DROPOUT {v}",
         "INPUT 8x8x1 -> CONV 2 F3x{v}"]
COUNTS = ["INPUT 8x8x1 -> [RELU]*{n}", "INPUT 8x8x1 -> RELU*{n}",
          "INPUT 8x8x1 -> [[RELU]*{n}]*{n}", "INPUT 8x8x1 -> [RELU -> [TANH]*{n}]*3"]


def notation_cases():
    for template in SIZES:
        for v in HUGE:
            yield template.format(v=v)
    for template in COUNTS:
        for n in ("10001", "999999999", str(10**30), str(10**63), "9" * 5000):
            yield template.format(n=n)
    for depth in (14, 20, 32):
        yield "INPUT 8x8x1 -> " + "[" * depth + "RELU" + "]*2" * depth
    for depth in (33, 40, 1000, 100_000):
        yield "INPUT 8x8x1 -> " + "[" * depth + "RELU" + "]*2" * depth
        yield "INPUT 8x8x1 -> " + "[" * depth + "RELU" + "]" * depth
        yield "INPUT 8x8x1 -> " + "[" * depth
    yield "INPUT 8x8x1 -> " + "X" * 1_000_000
    yield "INPUT 8x8x1 -> CONV " + "9" * 1_000_000
    yield "INPUT 8x8x1 -> RELU " + "a " * 100_000
    yield "INPUT 8x8x1 -> " + "-> " * 100_000
    yield "INPUT 8x8x1 -> RELU" + "?" * 100_000
    yield "INPUT 8x8x1 -> RELU" + "*2" * 100_000
    yield "]" * 100_000
    yield "INPUT " + "9x" * 100_000 + "9"


GARBAGE_VOCABULARY = [*KEYWORDS, "->", "→", "[", "]", "*", "?", "2", "0", "-1", "3x3", "F3",
                      "S2", "P1", "Psame", "D2", "G2", "floor", "ceil", "N", "1e400", "nan",
                      "x", "\t", "\n", "->->", "[]", "*?", "ÿ", "💥", "8x8x1", "0.5"]
JUNK = ["§", "\x00", "(", ")", "{", "@", "CONVV", "Q2", "F", "S-1", "RELU!"]


def garbage_texts(count=120, seed=17):
    """Random token strings, each with one junk word that no grammar rule accepts."""
    rng = random.Random(seed)
    for _ in range(count):
        words = [rng.choice(GARBAGE_VOCABULARY) for _ in range(rng.randint(0, 30))]
        words.insert(rng.randint(0, len(words)), rng.choice(JUNK))
        yield " ".join(words)


def short_id(text):
    return text if len(text) <= 60 else f"{text[:50]}...({len(text)} chars)"


@pytest.mark.parametrize("text", list(notation_cases()), ids=short_id)
def test_hostile_notation_is_refused_quickly(text):
    message = refused(lambda: from_notation(text), "from_notation")
    assert message.startswith("from_notation: ")
    assert len(message) < 3000


@pytest.mark.parametrize("text", list(garbage_texts()), ids=short_id)
def test_garbage_notation_is_a_named_error(text):
    refused(lambda: from_notation(text, input_shape=(1, 8, 8)), "from_notation")


def test_the_layers_written_out_are_counted_as_they_are_read(monkeypatch):
    """No repetition: the text itself holds one layer more than the cap (the cap lowered
    to keep the case quick; at 10,000 the parse alone takes a few tenths of a second)."""
    monkeypatch.setattr(limits, "MAX_LAYERS", 100)
    text = "INPUT 4 -> " + " -> ".join(["RELU"] * 101)
    assert "more than 100 layers in the text" in refused(lambda: from_notation(text),
                                                          "from_notation")
    assert len(from_notation("INPUT 4 -> " + " -> ".join(["RELU"] * 100))) == 100


@pytest.mark.parametrize("counts", [{"N": 10_001}, {"N": 10**30}, {"N": 100, "M": 101}])
def test_huge_named_counts_are_refused(counts):
    text = "INPUT 8x8x1 -> [RELU]*N" + (" -> [[TANH]*N]*M" if "M" in counts else "")
    assert "MAX_LAYERS" in refused(lambda: from_notation(text, **counts), "from_notation")


@pytest.mark.parametrize("shape", [(3, 100000, 100000), (10**9,), (1, 2**40, 1)])
def test_a_huge_input_shape_is_refused(shape):
    assert "MAX_VOLUME" in refused(lambda: from_notation("RELU", input_shape=shape),
                                   "from_notation")


def test_the_caps_are_exact_boundaries():
    """At the cap a model builds; one past it is refused (the checks can fail both ways)."""
    text = f"INPUT 4 -> [RELU]*{limits.MAX_LAYERS}"
    assert len(from_notation(text)) == limits.MAX_LAYERS
    refused(lambda: from_notation(f"INPUT 4 -> [RELU]*{limits.MAX_LAYERS} -> TANH"),
            "from_notation")
    side = 2**14                                         # side * side = MAX_VOLUME
    assert side * side == limits.MAX_VOLUME
    assert from_notation(f"INPUT {side}x{side} -> RELU").input_shape == (1, side, side)
    refused(lambda: from_notation(f"INPUT {side}x{side}x2 -> RELU"), "from_notation")
    deep = "[" * limits.MAX_DEPTH + "RELU" + "]" * limits.MAX_DEPTH
    assert len(from_notation("INPUT 4 -> " + deep)) == 1
    refused(lambda: from_notation(f"INPUT 4 -> [{deep}]"), "from_notation")


@pytest.mark.parametrize("name", ["\x1b[2J\x1b]0;owned\x07", "cat\ndog: 99.9%", "a\tb", "\x00"])
def test_class_names_that_would_drive_the_terminal_are_refused(saved, name):
    """predict prints the class names: no escape sequences, line breaks or controls."""
    doc = with_value(document(), ("info", "classes"), ["zero", name, "two"])
    json_path = write_json(saved, doc)
    message = refused(partial(load_model, json_path), json_path)
    assert "printable" in message
    doc = with_value(document(), ("info", "classes"), ["zéro", "un deux", "三"])
    assert load_model(write_json(saved, doc)).info["classes"][2] == "三"


def test_class_names_must_match_the_models_scores(saved):
    for names in (["zero", "one"], ["a", "b", "c", "d"]):
        json_path = write_json(saved, with_value(document(), ("info", "classes"), names))
        message = refused(partial(load_model, json_path), json_path)
        assert f"info.classes names {len(names)} classes, but the model gives 3" in message


@pytest.mark.parametrize("build", [
    "from_notation('INPUT 64x64x1 -> FC 16384 -> [FC 16384]*4 -> FC 10')",
    "from_config({'type': 'Sequential', 'children': [[str(i), {'type': 'Linear', "
    "'in_features': 16384, 'out_features': 16384}] for i in range(5)]})"],
    ids=["notation", "model-file"])
def test_a_model_whose_total_is_over_the_cap_writes_no_weight_before_the_refusal(build):
    """Five FC layers each under MAX_PARAMS but over it together: the first four had
    been drawn (3.4 GB) before the fifth was refused. The total is counted first."""
    import subprocess
    import sys
    script = (     # VmHWM: this process's peak; ru_maxrss would count its parent's
        "import numpy as np\n"
        "from convnet.models.notation import from_notation\n"
        "from convnet.models.config import from_config\n"
        "try:\n"
        f"    {build}\n"
        "except ValueError as err:\n"
        "    print('refused' if 'total of parameters' in str(err) else err)\n"
        "status = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"
        "print(int(status) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out[0] == "refused" and int(out[1]) < 400, out    # MB of peak resident memory


def test_counting_first_leaves_the_initial_weights_as_they_were():
    """The counting pass draws nothing from rng: a seed gives the weights it gave."""
    from convnet.layers.base import uniform_init
    from convnet.models.notation import from_notation
    rng = np.random.default_rng(3)
    first = uniform_init(rng, (6, 1, 3, 3), 9, np.float32)
    net = from_notation("INPUT 8x8x1 -> CONV 6 -> FC 2", rng=np.random.default_rng(3))
    assert np.array_equal(net[0].params["weight"], first)


def test_a_save_that_fails_leaves_the_earlier_pair_whole(tmp_path):
    """save_model had written the weights before it made the JSON text: a field JSON
    cannot hold left new weights beside the old JSON (a pair that no longer loads), or
    an orphan weights file in the way of the next save."""
    from convnet.models import from_notation
    old = from_notation("INPUT 8x8x1 -> CONV 2 -> FC 3", rng=np.random.default_rng(0))
    path = save_model(old, tmp_path / "pair")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    new = from_notation("INPUT 8x8x1 -> CONV 4 -> FC 3", rng=np.random.default_rng(1))
    with pytest.raises(TypeError):
        save_model(new, tmp_path / "pair", data=object())
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert load_model(path).state_dict().keys() == old.state_dict().keys()
    new.input_shape = np.array([1, 8, 8])             # NumPy ints are written as ints
    assert load_model(save_model(new, tmp_path / "n")).input_shape == (1, 8, 8)


def test_a_file_name_of_the_longest_length_is_written(tmp_path):
    """The temporary name had added 14 characters to the whole name: a name of 242 to 255
    characters, legal, failed with 'File name too long' naming the temporary file."""
    from convnet.io.weights import atomic_write
    path = tmp_path / ("a" * 250 + ".json")
    atomic_write(path, b"{}")
    assert path.read_bytes() == b"{}" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_full_disk_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    import errno

    from convnet.io import weights

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(weights.os, "fsync", full)
    with pytest.raises(OSError, match=r"No space left on device: '.*model\.json'"):
        weights.atomic_write(tmp_path / "model.json", b"{}")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("what", ["nan", "inf", "negative variance"])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, capsys, what):
    """A NaN weight had loaded silently: predict printed 'nan' scores, eval counted every
    image as class 0, and training from it said to lower the learning rate."""
    import torch

    from convnet.cli import main
    from convnet.models import from_notation
    net = from_notation("INPUT 8x8x1 -> CONV 2 -> BN -> RELU -> FC 3",
                        rng=np.random.default_rng(0))
    key = "1.running_var" if what == "negative variance" else "0.weight"
    path = save_model(net, tmp_path / "m")
    net.state_dict()[key][0] = {"nan": np.nan, "inf": np.inf}.get(what, -1.0)
    message = ("running variance, holds values below 0" if what == "negative variance"
               else "holds NaN or infinite values")
    # save_model refuses what load_model would, before writing (and leaves m as it was)
    with pytest.raises(ValueError, match=rf"save_model: .*m.json: tensor '{key}'.* {message}"):
        save_model(net, tmp_path / "m")
    load_model(path)                                    # the earlier file, untouched
    save_tensors(net.state_dict(), tmp_path / "m.safetensors")     # written by another tool
    with pytest.raises(ValueError, match=rf"m.safetensors: tensor '{key}'.* {message}"):
        load_model(path)
    torch.save({k: torch.from_numpy(v) for k, v in net.state_dict().items()},
               tmp_path / "m.pt")
    assert main(["summary", str(tmp_path / "m.pt"), "--model",
                 "INPUT 8x8x1 -> CONV 2 -> BN -> RELU -> FC 3"]) == 1
    assert f"m.pt: tensor '{key}'" in capsys.readouterr().err
    from convnet.io import export_onnx, load_onnx
    export_onnx(net, tmp_path / "m.onnx")      # (had loaded: predict printed nan scores)
    with pytest.raises(ValueError, match=rf"m.onnx: tensor '[^']*{key[2:]}'.* {message}"):
        load_onnx(tmp_path / "m.onnx")


def test_a_header_of_a_million_tensors_given_as_weights_is_refused_by_its_size(tmp_path):
    """Asking whether a .safetensors file is a checkpoint had parsed its header before
    the caps: a million empty tensors took 990 MB."""
    import struct

    from convnet.spec import resolve_model
    header = json.dumps({f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
                         for i in range(200_000)}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    (tmp_path / "big.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="MAX_JSON_VALUES|MAX_JSON_BYTES"):
            resolve_model(str(tmp_path / "big.safetensors"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak


def test_save_model_refuses_what_load_model_would(tmp_path):
    """From a review of the Python API: each of these saved without a word and then
    could not be loaded (the user's model file opened again only by editing its JSON)."""
    from convnet.layers import Conv2d, CrossEntropyLoss
    from convnet.models import Sequential, from_notation
    rgb = from_notation("INPUT 8x8x1 -> CONV 8 -> FC 10")
    rgb[0] = Conv2d(3, 8, 3, padding=1)            # switched to RGB, input_shape kept
    fc = from_notation("INPUT 8x8x1 -> FC 2")
    for model, info, message in (
            (rgb, {}, r"input_shape \[1, 8, 8\] does not fit the model: 0 Conv2d"),
            (fc, {"classes": ["a", "b", "c"]}, "info.classes names 3 classes, but the "
                                               "model gives 2 scores"),
            (fc, {"channels": "rgb"}, "info.channels must be 'L'"),
            (Conv2d(4, 4, 3), {}, "a model file holds a container of layers .*got a "
                                  "single Conv2d: save Sequential\\(layer\\)"),
            (Sequential(Conv2d(1, 1, 1), CrossEntropyLoss()), {},
             "unknown layer type 'CrossEntropyLoss'")):
        with pytest.raises(ValueError, match=f"^save_model: .*m.json.*{message}"):
            save_model(model, tmp_path / "m", **info)
        assert not list(tmp_path.iterdir())
    # what JSON writes as a list is taken as one (PyTorch's CIFAR tutorial keeps its
    # classes in a tuple): checked as it will be read
    fc.input_shape = (1, 8, 8)
    path = save_model(fc, tmp_path / "m", classes=("cat", "dog"), mean=(0.5,), std=(0.25,))
    assert load_model(path).info["classes"] == ["cat", "dog"]
