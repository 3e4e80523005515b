"""Weight files: safetensors with dotted keys, plus the architecture as JSON. No pickle.

A convnet model file is a pair beside each other:
    model.json          {"format": "convnet-model", "architecture": {...}, "input_shape": ...}
    model.safetensors   every parameter and buffer, keyed like "features.0.weight"
The safetensors file is the format PyTorch's ``safetensors.torch.load_file`` reads, so the
weights load into the same torchvision-layout module there.

Every file is written atomically: to a temporary file in the same directory, flushed and
fsynced, then renamed over the target, so a kill at any moment leaves the old file or the
new one, never half of one.

Reading trusts nothing in a file: the JSON's size (``convnet.limits.MAX_JSON_BYTES``), the
values it could hold (MAX_JSON_VALUES), its nesting and every field are checked, the
weights must sit in the JSON's folder, the bytes a safetensors header declares are held to
MAX_ARRAY_BYTES before a tensor is read, and each array's dtype must fit the parameter it
fills. Errors are ValueErrors that name the file and the field.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path, PureWindowsPath

import numpy as np

from convnet import limits
from convnet.data.files import umask

FORMAT = "convnet-model"
VERSION = 1
# Bytes per element of the safetensors dtypes, as headers name them.
ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2,
            "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}


# The NumPy type of each safetensors dtype NumPy has (those it has not are widened to
# float32: _WIDENED).
_NUMPY = {"BOOL": "?", "U8": "u1", "I8": "i1", "U16": "u2", "I16": "i2", "F16": "f2",
          "U32": "u4", "I32": "i4", "F32": "f4", "U64": "u8", "I64": "i8", "F64": "f8"}

# The safetensors dtypes NumPy has no type for, read as their bits (a NumPy type of
# their size) and widened exactly to float32, as load_torch widens bfloat16.
_WIDENED = {"BF16": np.dtype("<u2"), "F8_E4M3": np.dtype("u1"), "F8_E5M2": np.dtype("u1")}


def _e4m3_values():
    """float8 e4m3fn's 256 values as float32, by bit pattern: sign, 4 exponent bits
    (bias 7), 3 mantissa bits; exponent 0 is subnormal (m/8 * 2^-6), S.1111.111 is NaN,
    and there are no infinities."""
    bits = np.arange(256)
    exponent, mantissa = (bits >> 3) & 15, bits & 7
    value = np.where(exponent == 0, mantissa / 8 * 2.0 ** -6,
                     (1 + mantissa / 8) * 2.0 ** (exponent - 7))
    value[(exponent == 15) & (mantissa == 7)] = np.nan
    return np.where(bits >> 7, -value, value).astype(np.float32)


def widen(bits, dtype):
    """The float32 values of a safetensors tensor of ``dtype`` (a key of _WIDENED) read
    as its bits: bfloat16 is the top half of a float32 (a shift by 16), float8 e5m2 the
    top byte of a float16 (a shift by 8), float8 e4m3fn a table of its 256 values; all
    exact."""
    if dtype == "BF16":
        return (bits.astype(np.uint32) << 16).view(np.float32)
    if dtype == "F8_E5M2":
        return (bits.astype(np.uint16) << 8).view(np.float16).astype(np.float32)
    return _e4m3_values()[bits]


def safetensors_module():
    """safetensors.numpy, or an ImportError that says how to install it: every weights
    file convnet writes (a model's, a checkpoint) is a .safetensors file."""
    try:
        import safetensors.numpy
    except ImportError:
        raise ImportError("weight files need the safetensors package: "
                          "pip install 'convnet[train]' (or pip install safetensors)") from None
    return safetensors.numpy


def finite_or_null(value):
    """value with each float that is NaN or infinite, in lists, tuples and dicts too,
    replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    return value


# The key under which a .safetensors or .onnx file that convnet writes keeps the model's
# info (class names, preprocessing) as JSON: safetensors' metadata, ONNX's metadata_props.
INFO_KEY = "convnet.info"


def read_info(text, where, channels=None):
    """A model's info from the JSON text a file keeps under INFO_KEY, checked as a model
    file's (``check_info``; channels: the model's input depth, when known). Errors name
    ``where`` and the key."""
    from convnet.data.preprocess import check_info
    where = f"{where}: metadata {INFO_KEY}"
    if not isinstance(text, str):
        raise ValueError(f"{where}: expected JSON text, got {type(text).__name__}")
    limits.check_json(text, where)
    try:
        info = json.loads(text)
    except ValueError as err:
        raise ValueError(f"{where}: not JSON ({err})") from None
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply to read") from None
    return check_info(info, where, channels=channels)


def json_text(value, **kwargs):
    """Strict JSON for a file or a pipe that others read: NaN and infinities (which
    json.dumps writes as NaN and Infinity, and JSON.parse, jq and most other parsers
    refuse) become null. kwargs: json.dumps's."""
    return json.dumps(finite_or_null(value), allow_nan=False, **kwargs)


def atomic_write(path, data: bytes):
    """Write bytes to path atomically: temporary file, fsync, rename, fsync the directory.

    The file gets the permissions open() would give it (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name: a dot, at most 100 characters of the name, 8 random, ".tmp"
    # (a name of 255 characters, the most a file system takes, has room for none)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:100]}.",
                                   suffix=".tmp")
    except OSError as err:              # named by the file the caller asked for
        raise type(err)(err.errno, err.strerror, str(path)) from None
    try:
        os.fchmod(fd, 0o666 & ~umask())     # mkstemp makes 0600; open() would honour umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):    # a full disk: the file, not its temporary name
            raise type(err)(err.errno, err.strerror, str(path)) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_tensors(tensors, path, metadata=None):
    """Save a dict of arrays as a safetensors file (atomically); metadata is str -> str."""
    # np.require keeps 0-d arrays 0-d (ascontiguousarray would make them 1-d)
    arrays = {key: np.require(value, requirements="C") for key, value in tensors.items()}
    atomic_write(path, safetensors_module().save(arrays, metadata=metadata))


def load_tensors(path, max_bytes=None):
    """Read a safetensors file: (dict of arrays, metadata dict). Errors name the file.

    The header is read first: the bytes its tensors will take together are held to
    ``max_bytes`` (default ``convnet.limits.MAX_ARRAY_BYTES``) before any tensor is read.
    bfloat16 and float8 (e4m3fn, e5m2) tensors, which NumPy has no type for, become
    float32, exactly (``widen``), as load_torch reads bfloat16.
    """
    path = Path(path)
    declared = _declared(path, max_bytes)
    wide = [key for key, (dtype, _) in declared.items() if dtype in _WIDENED]
    tensors, metadata = _read(path, lambda f: (
        {key: None if key in wide else f.get_tensor(key) for key in f.keys()},
        f.metadata() or {}))
    if wide:
        for key, bits in _read_bits(path, {key: declared[key] for key in wide}).items():
            tensors[key] = widen(bits, declared[key][0])
    return tensors, metadata


def tensor_shapes(path):
    """A safetensors file's header: {key: shape} of its tensors, read without reading a
    tensor, their dtypes known and their bytes together held to
    ``convnet.limits.MAX_ARRAY_BYTES``. Errors name the file."""
    return {key: tuple(shape) for key, (_, shape) in _declared(Path(path)).items()}


def _declared(path, max_bytes=None):
    """{key: (dtype, shape)} from a safetensors file's header, checked (see tensor_shapes;
    max_bytes as load_tensors')."""
    if not is_file(path):
        raise ValueError(f"{path}: {not_a_file(path, 'weight file')}")
    _check_header(path)
    declared = _read(path, lambda f: {key: (f.get_slice(key).get_dtype(),
                                            f.get_slice(key).get_shape()) for key in f.keys()})
    _check_declared_bytes(declared, path, max_bytes)
    return declared


def _check_header(path):
    """Refuse a safetensors header (JSON, its length in the file's first 8 bytes) longer
    than MAX_JSON_BYTES or of more than MAX_JSON_VALUES values before the library parses
    it: 1.5 million empty tensors, or one shape of 40 million sizes, took 2 GB to read."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if size > limits.MAX_JSON_BYTES:
            raise ValueError(f"{path}: a header of {size:,} bytes is over the cap of "
                             f"{limits.MAX_JSON_BYTES:,} (convnet.limits.MAX_JSON_BYTES)")
        limits.check_json(f.read(size), path, "safetensors header")


def _read_bits(path, declared):
    """The bits of the tensors in ``declared`` ({key: (dtype, shape)}, dtypes of
    _WIDENED), read from the data offsets in the header (which safe_open has checked);
    {key: array of the bits' type}."""
    out = {}
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        for key, (dtype, shape) in declared.items():
            begin, end = header[key]["data_offsets"]
            need = math.prod(shape) * _WIDENED[dtype].itemsize
            f.seek(8 + size + begin)
            data = f.read(need)
            if end - begin != need or len(data) != need:
                raise ValueError(f"{path}: tensor {key!r:.80} ({dtype}, shape {tuple(shape)}) "
                                 f"needs {need:,} bytes; the file holds {len(data):,}")
            try:
                out[key] = np.frombuffer(data, _WIDENED[dtype]).reshape(shape)
            except ValueError as err:     # a shape of 0 x 2**62 x 2**62: "too big"
                raise ValueError(f"{path}: tensor {key!r:.80} ({dtype}, shape "
                                 f"{tuple(shape)}): {err}") from None
    return out


def _read(path, what):
    """what(f) for the open safetensors file f; the library's errors become a ValueError
    that names the file."""
    safetensors_module()
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            return what(f)
    except Exception as err:  # the library raises its own error types for bad headers
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None


def _check_declared_bytes(declared, path, max_bytes=None):
    """The bytes of the tensors a header declares ({key: (dtype, shape)}), against the cap
    (max_bytes, or limits.MAX_ARRAY_BYTES)."""
    total = 0
    for key, (dtype, shape) in declared.items():
        if dtype not in ITEMSIZE:
            raise ValueError(f"{path}: tensor {key!r:.80} has dtype {dtype!r:.20}; expected "
                             f"one of {', '.join(ITEMSIZE)}")
        # bfloat16 and float8 are read as float32: 4 bytes of memory each
        total += math.prod(shape) * (4 if dtype in _WIDENED else ITEMSIZE[dtype])
    if max_bytes is None:
        limits.check_count(total, "MAX_ARRAY_BYTES", "bytes of tensors in the header", path)
    elif total > max_bytes:
        raise ValueError(f"{path}: bytes of tensors in the header {total:,} is over the cap "
                         f"of {max_bytes:,}")


def model_paths(path):
    """'runs/x/model' or 'runs/x/model.json' -> (model.json, model.safetensors) paths.
    Only a final .json or .safetensors (in any case) is replaced: 'lenet.v1.json' pairs
    with 'lenet.v1.safetensors' (with_suffix would have dropped the '.v1'), and 'M.JSON'
    is itself the JSON, beside 'M.safetensors'."""
    path = Path(path)
    suffix = path.suffix.lower()
    stem = path.with_suffix("") if suffix in (".json", ".safetensors") else path
    return (path if suffix == ".json" else stem.with_name(stem.name + ".json"),
            path if suffix == ".safetensors" else stem.with_name(stem.name + ".safetensors"))


def save_model(model, path, **info):
    """Save a model as architecture JSON plus safetensors weights; returns the JSON path.

    Extra keyword arguments (class names, the data it was trained on...) are stored in the
    JSON under "info". What load_model would refuse is refused before either file is
    written (``_check_loadable``: the model a container, its config one that builds again,
    its input_shape one it takes, info's fields, finite weights), and so is a field JSON
    cannot hold; then the weights are written, then the JSON (each atomically).
    """
    json_path, weights_path = model_paths(path)
    shape = getattr(model, "input_shape", None)
    document = {"format": FORMAT, "version": 1, "architecture": model.get_config(),
                "input_shape": [int(v) for v in shape] if shape is not None and len(shape)
                else None,
                "weights": weights_path.name, "info": info}
    text = json_text(document, indent=1).encode()   # a field JSON cannot hold fails here,
    state = model.state_dict()                       # before either file is written
    _check_loadable(model, json.loads(text), state, json_path)     # as it will be read
    save_tensors(state, weights_path)
    atomic_write(json_path, text)
    return json_path


def _check_loadable(model, document, state, json_path):
    """Refuse to save what load_model would refuse to read back, with its message: a
    user's model file must open again."""
    from convnet.data.preprocess import check_info
    from convnet.layers.base import counting_only
    from convnet.models.config import from_config
    from convnet.models.containers import Container

    where = f"save_model: {json_path}"
    if not isinstance(model, Container):
        raise ValueError(f"{where}: a model file holds a container of layers (such as "
                         f"Sequential), got a single {type(model).__name__}: save "
                         f"Sequential(layer)")
    shape = document["input_shape"]
    channels = shape[0] if shape is not None and len(shape) == 3 else None
    info = check_info(document["info"], where, channels=channels)
    with counting_only():             # the layers built again, writing no weights
        from_config(document["architecture"], where=where)
    if shape is not None:
        try:
            out = model.output_shape(tuple(shape))
        except ValueError as err:
            raise ValueError(f"{where}: input_shape {shape} does not fit the model: "
                             f"{err}") from None
        check_class_count(info, out, where)
    check_finite(state, where)


def load_model(path):
    """Load a model saved by save_model: architecture, weights (strictly), input_shape, info.

    Every field of the JSON is checked before the model is built: "format" and "version",
    "input_shape" (1 or 3 positive ints, at most ``convnet.limits.MAX_VOLUME`` values,
    and the architecture must take it), "weights" (a file name in the JSON's folder) and
    "info" (``convnet.data.preprocess.check_info``; with an input_shape, as many class
    names as the model gives scores). The weights file's header is read before the
    layers are built, and a model with more parameters and buffers than it holds values
    is refused before those layers allocate. Returns the model with ``info`` set, and
    ``input_shape`` when the file has one. Any problem is a ValueError naming the file.
    """
    import convnet.zoo  # noqa: F401  registers the zoo's containers (AuxClassifier)
    from convnet.data.preprocess import check_info
    from convnet.models.config import from_config
    from convnet.models.containers import Container

    json_path, default_weights = model_paths(path)
    where = str(json_path)
    document = _read_json(json_path)
    if document.get("format") != FORMAT:
        raise ValueError(f"{where}: not a convnet model file (no format {FORMAT!r})")
    version = document.get("version", VERSION)
    if type(version) is not int or version != VERSION:
        raise ValueError(f"{where}: version must be {VERSION}, got {version!r:.80}")
    if "architecture" not in document:
        raise ValueError(f"{where}: no 'architecture' (the model's layers, as get_config() "
                         "gives them) in the file")
    input_shape = _input_shape(document.get("input_shape"), where)
    weights_path = _weights_path(document.get("weights", default_weights.name), json_path)
    if Path(path).suffix.lower() == ".safetensors" and (
            os.path.realpath(path) != os.path.realpath(weights_path)):
        raise ValueError(f"{path}: the model file beside it, {json_path.name}, reads its "
                         f"weights from {weights_path.name}, not this file: give "
                         f"{json_path.name} for that model, or this file with --model "
                         f"ARCH for these weights")
    channels = input_shape[0] if input_shape is not None and len(input_shape) == 3 else None
    info = check_info(document.get("info", {}), where, channels=channels)
    declared = _declared(weights_path)                   # the header, read once
    values = sum(math.prod(shape) for _, shape in declared.values())
    model = from_config(document["architecture"], where=where, max_params=values,
                        weights=str(weights_path))
    if not isinstance(model, Container):
        raise ValueError(f"{where}: architecture must be a container of layers (such as "
                         f"Sequential), got a single {type(model).__name__}")
    if input_shape is not None:
        try:
            out = model.output_shape(input_shape)
        except ValueError as err:
            raise ValueError(f"{where}: input_shape {list(input_shape)} does not fit the "
                             f"architecture: {err}") from None
        check_class_count(info, out, where)
    _fits_header(model, declared, weights_path)
    tensors, _ = load_tensors(weights_path)
    check_finite(tensors, weights_path)
    try:
        model.load_state_dict(tensors, strict=True)
    except ValueError as err:
        raise ValueError(f"{weights_path}: {err}") from None
    if input_shape is not None:
        model.input_shape = input_shape
    model.info = info
    return model


def check_finite(tensors, where):
    """Refuse tensors ({key: array}) that hold NaN or an infinity, or a batch norm's
    running variance below 0, naming ``where`` and the key: such weights give NaN scores
    (a diverged model's, or damaged bytes), which evaluation would count as one class and
    training would blame on the learning rate. Read in pieces of 1M values."""
    for key, value in tensors.items():
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fc":
            continue
        flat = value.reshape(-1)
        piece = 1 << 20
        if not all(np.isfinite(flat[i:i + piece]).all() for i in range(0, flat.size, piece)):
            raise ValueError(f"{where}: tensor {key!r} holds NaN or infinite values (the "
                             f"weights of a run that diverged, or damaged bytes)")
        if str(key).endswith("running_var") and flat.size and flat.min() < 0:
            raise ValueError(f"{where}: tensor {key!r}, a batch norm's running variance, "
                             f"holds values below 0 ({flat.min():g})")


def check_class_count(info, out, where):
    """Refuse an info whose class names are not as many as the model's scores (its
    output shape ``out``: (K,) or (K, H, W))."""
    names = info.get("classes")
    if names is not None and out and out[0] != len(names):
        raise ValueError(f"{where}: info.classes names {len(names)} classes, but the "
                         f"model gives {out[0]} scores per image")


def _fits_header(model, declared, path):
    """Refuse a weights file whose keys, dtypes or shapes, as its header declares them
    (``declared``: _declared's), are not the model's (load_state_dict's checks, on arrays
    of no memory), before a tensor is read: an extra tensor of 3.6 GB had been read
    first."""
    from numpy.lib.stride_tricks import as_strided
    state = {}
    try:
        for key, (dtype, shape) in declared.items():
            kind = np.dtype(_NUMPY.get(dtype, "f4"))       # the widened ones: float32
            state[key] = as_strided(np.zeros(1, kind), tuple(shape), (0,) * len(shape))
        model.check_state_dict(state, strict=True)
    except ValueError as err:      # as_strided's "array is too big" too
        message = str(err)
        raise ValueError(message if message.startswith(f"{path}: ")
                         else f"{path}: {message}") from None


def is_file(path):
    """Whether ``path`` is a regular file; False for a name the OS cannot take (too long)."""
    try:
        return Path(path).is_file()
    except OSError:
        return False


def not_a_file(path, what="file"):
    """Why ``path`` (not a regular file) cannot be read: there is nothing, a folder, a
    link to nothing, or a FIFO or device, or the OS refuses the name."""
    path = Path(path)
    try:
        path.exists()
    except OSError as err:
        return f"not a name the system takes ({err.strerror})"
    a = "an" if what[0] in "AEIOUaeiou" else "a"
    if path.is_dir():
        return f"a folder, not {a} {what}"
    if path.is_symlink() and not path.exists():
        return "a link to nothing (broken, or a loop)"
    if path.exists():
        return f"not a regular file (a FIFO, socket or device), not {a} {what}"
    return f"no such {what}"


def check_new_file(path, overwrite, hint="--out another file"):
    """Refuse to write ``path`` where a folder, a FIFO or a device is, or where any file
    (a broken link too) is and overwrite is False; ``hint`` says what to do instead."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"{path}: {not_a_file(path, 'file to replace')}; {hint}")
    if os.path.lexists(path) and not overwrite:
        raise ValueError(f"{path}: already there; pass --overwrite to replace it, or {hint}")


def _read_json(json_path):
    """A model file's top-level object: at most ``convnet.limits.MAX_JSON_BYTES`` bytes of
    UTF-8 JSON, at most MAX_JSON_VALUES values, nested no deeper than Python's recursion
    allows; else a ValueError."""
    if not is_file(json_path):
        best = Path(json_path).with_name("best.json")
        checkpoint = Path(json_path).with_name("checkpoint.safetensors")
        ended = Path(json_path).name == "model.json"
        hint = (f" (the run stopped before writing it? {best} is the best model it kept)"
                if ended and is_file(best) else
                f" (the run stopped before writing it? continue it with convnet train "
                f"--resume --out {Path(json_path).parent})" if ended and is_file(checkpoint)
                else "")
        folder = Path(json_path).parent
        # an --overwrite run killed before its first checkpoint (after it, the next run
        # drops the set-aside run as replaced)
        if ended and not is_file(checkpoint) and any(folder.glob(".replaced-*")):
            hint += (f"; an earlier run in {folder} is set aside in "
                     f"{min(folder.glob('.replaced-*')).name}: convnet train --out {folder} "
                     f"puts it back")
        raise ValueError(f"{json_path}: {not_a_file(json_path, 'model file')}{hint}")
    cap = limits.MAX_JSON_BYTES
    with open(json_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(min(size, cap) + 1)     # one byte more shows a file that grew
    if len(data) > cap:
        raise ValueError(f"{json_path}: the file is over the cap of {cap:,} bytes "
                         "(convnet.limits.MAX_JSON_BYTES); refusing to read it")
    limits.check_json(data, json_path)
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:   # ValueError: JSON syntax, huge ints
        raise ValueError(f"{json_path}: not a convnet model file ({err})") from None
    except RecursionError:
        raise ValueError(f"{json_path}: not a convnet model file (JSON nested too deeply "
                         "to read)") from None
    if not isinstance(document, dict):
        raise ValueError(f"{json_path}: not a convnet model file (expected a JSON object, "
                         f"got {type(document).__name__})")
    return document


def _input_shape(value, where):
    """None, or a per-sample shape: (C, H, W) or (features,), of positive ints."""
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) not in (1, 3) or not all(
            type(v) is int and v > 0 for v in value)):
        raise ValueError(f"{where}: input_shape must be null or a list of 1 or 3 positive "
                         f"ints ([C, H, W] or [features]), got {value!r:.80}")
    limits.check_count(math.prod(value), "MAX_VOLUME", f"input_shape {value}: values per "
                       "sample", where)
    return tuple(value)


def _weights_path(name, json_path):
    """The weights file a model JSON names: a file name in the JSON's own folder (as
    load_onnx reads external data only there); absolute paths, other folders and links
    out of the folder are refused before anything is read."""
    folder = os.path.realpath(json_path.parent)
    plain = (isinstance(name, str) and name not in ("", ".", "..") and "\0" not in name
             and Path(name).name == name and PureWindowsPath(name).name == name)
    if not plain:           # an absolute path, a folder, a separator of either system
        raise ValueError(f"{json_path}: weights must be the name of a file in the model's "
                         f"folder {folder}, such as 'model.safetensors', got {name!r:.80}")
    target = os.path.realpath(os.path.join(folder, name))
    if os.path.dirname(target) != folder:
        raise ValueError(f"{json_path}: weights {name!r} resolves to {target}, outside the "
                         f"model's folder {folder}; refusing to read it")
    if not os.path.isfile(target):
        raise ValueError(f"{json_path}: weights {name!r}: no such file in {folder}")
    return Path(json_path.parent, name)
