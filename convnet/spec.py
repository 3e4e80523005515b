"""A model as the command line names it: a zoo name, the notes' arrow notation, or a file.

    resolve_model("vgg16")                                         # the zoo
    resolve_model("INPUT 32x32x3 -> [CONV 32 -> RELU -> POOL]*2 -> FC 10")
    resolve_model("runs/digits/model.json")                        # a saved model
    resolve_model("resnet18.onnx")                                 # an ONNX file
    resolve_model("resnet18.pth", architecture="resnet18")         # weights alone

Every model it returns has ``input_shape`` (per-sample (C, H, W)) and ``trained``: False
for a zoo name or notation (fresh random weights), True for a file's weights.
"""

from __future__ import annotations

import difflib
import re
import warnings
from pathlib import Path

from convnet import limits
from convnet.io import load_model
from convnet.io.weights import check_finite
from convnet.models import from_notation
from convnet.zoo import MODELS, get_model

# A count on the command line: ASCII digits only (int() would also take "3_2", " 3" and
# other scripts' digits), at most 30 of them (each option checks its own range).
DIGITS = re.compile(r"[0-9]{1,30}")
WEIGHTS = (".pt", ".pth", ".safetensors")   # weight files: no architecture inside
FILES = (".json", ".onnx", *WEIGHTS)
# How a command-line user gives the input size of an ONNX file whose graph leaves it open.
OPEN_INPUT_HINT = ("on the command line: --input CxHxW, which summary, eval, predict, report, "
                   "show and convert take; train --from takes --channels C and --image-size "
                   "HxW")


def parse_shape(text):
    """'3x224x224' -> (3, 224, 224): a per-sample C x H x W, as PyTorch orders it."""
    parts = text.lower().split("x")
    shape = tuple(int(p) for p in parts) if all(DIGITS.fullmatch(p) for p in parts) else ()
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ValueError(f"input shape must be C x H x W with positive sizes, e.g. 3x224x224, "
                         f"got {text!r:.40}")
    return shape


def _exists(path):
    """Whether a file or folder is there; False for a name the OS cannot take (too long)."""
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


def is_notation(spec):
    """Whether spec is arrow notation: it has an arrow ("->" or "→") and names no file or
    folder (a run folder named "a->b" holds a model file, not notation)."""
    return ("->" in spec or "→" in spec) and not (len(spec) < 4096 and _exists(spec))


def resolve_model(spec, input_shape=None, num_classes=None, rng=None, architecture=None,
                  input_name="--input"):
    """Build or load the model that ``spec`` names.

    Args:
        spec: a zoo name (see ``convnet zoo``), arrow notation (it contains "->"), a saved
            model (model.json, with model.safetensors beside it), an ONNX file (.onnx), or
            a weights file (.pt/.pth from torch.save, .safetensors) with ``architecture``.
        input_shape: per-sample (C, H, W) overriding the model's default (for an ONNX
            file: its input's size where the graph leaves it open).
        num_classes: for zoo models, the size of the last FC layer; other models fix
            their own (the CLI's --classes checks them against it).
        rng: np.random.Generator for fresh weights (zoo and notation).
        architecture: for a weights file, the zoo name or notation its weights fit (a
            .safetensors file with a convnet model .json beside it needs none).

    Errors name the file the user gave and the fix (``--model`` for a weights file);
    input_name names where input_shape came from in them.
    """
    kwargs = {} if rng is None else {"rng": rng}
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"the model is empty: give a zoo name, arrow notation or a model "
                         f"file, got {spec!r:.40}")
    suffix = Path(spec).suffix.lower() if not is_notation(spec) else ""
    if architecture is not None and suffix not in WEIGHTS:
        raise ValueError(f"{spec}: --model names the architecture of a weights file "
                         f"(.pt, .pth, .safetensors); {spec!r} is not one")
    if spec in MODELS:
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        model, trained = get_model(spec, **kwargs), False
    elif is_notation(spec):
        model, trained = from_notation(spec, input_shape=input_shape, **kwargs), False
    elif suffix == ".onnx":
        from convnet.io.onnx_import import load_onnx
        model, trained = load_onnx(spec, input_shape=input_shape,
                                   input_hint=OPEN_INPUT_HINT), True
    elif suffix in WEIGHTS and architecture is None and not (
            suffix == ".safetensors" and Path(spec).with_suffix(".json").is_file()):
        if suffix == ".safetensors" and _exists(spec):
            _not_a_checkpoint(spec)
        raise ValueError(f"{spec}: a weights file holds no architecture: name it with "
                         f"--model (a zoo name such as resnet18, or arrow notation in quotes)")
    elif suffix in WEIGHTS and architecture is not None:
        state, info = _read_weights(spec, with_info=True)
        if num_classes is None and architecture in MODELS:   # the head the file has
            num_classes = _head_size(architecture, state)
        model = resolve_model(architecture, input_shape, num_classes, rng)
        _load_weights(model, spec, state)
        if info is not None:      # what `convnet convert` keeps beside the weights
            model.info = _weights_info(info, spec, model)
        trained = True
    elif suffix in (".json", ".safetensors"):
        model, trained = load_model(spec), True
    elif _exists(Path(spec) / "model.json"):
        raise ValueError(f"{spec}: a folder (a training run's?): give its model, "
                         f"{Path(spec) / 'model.json'}"
                         + (f" (or {Path(spec) / 'best.json'}, the best by validation)"
                            if _exists(Path(spec) / "best.json") else ""))
    elif _exists(Path(spec) / "best.json") or _exists(Path(spec) / "checkpoint.safetensors"):
        raise ValueError(f"{spec}: a training run's folder without its final model (a run "
                         f"that stopped early?): {_run_models(Path(spec))}")
    elif _exists(spec):
        raise ValueError(f"{spec}: unknown model format; expected a convnet model (.json), "
                         f"an ONNX file (.onnx), or weights (.pt, .pth, .safetensors) with "
                         f"--model naming the architecture")
    else:
        dash = next((c for c in "\u2013\u2014\u2212\u2010\u2011" if c + ">" in spec), None)
        close = difflib.get_close_matches(spec.strip().lower()[:100], MODELS, n=3)
        hint = (f"; its arrows are written with {dash!r} (U+{ord(dash):04X}), not the "
                f"hyphen-minus of '->'" if dash else
                f"; did you mean {' or '.join(close)}?" if close else "")
        raise ValueError(f"model {spec!r:.200} is not a zoo name ({', '.join(MODELS)}), not a "
                         f"file, and not arrow notation (e.g. 'INPUT 28x28x1 -> CONV 8 -> "
                         f"RELU -> POOL -> FC 10'){hint}")
    if input_shape is not None:
        own = getattr(model, "input_shape", None)
        if own is not None and tuple(own) != tuple(input_shape):
            try:
                model.output_shape(tuple(input_shape))
            except ValueError as err:
                size = "x".join(map(str, input_shape))
                raise ValueError(f"{spec:.200}: it takes {'x'.join(map(str, own))} (C x H x "
                                 f"W), and {input_name} {size} does not fit it: {err}") \
                    from None
        model.input_shape = tuple(input_shape)
    # a file convert wrote from a zoo name or notation records that its weights are fresh
    model.trained = trained and (getattr(model, "info", None) or {}).get("trained", True)
    return model


def check_open_input(spec, input_shape, architecture=None):
    """input_shape for eval, predict, show, report and convert: a model file (.json) that
    records its own input size takes none (one saved without an input_shape does); an
    ONNX file (the size its graph leaves open), weights (.pt, .pth, .safetensors: their
    --model architecture's size, which resolve_model checks they fit), a zoo name or
    notation (which resolve_model builds at it) do. Returns it."""
    path = Path(str(spec))
    suffix = path.suffix.lower()
    if suffix == ".safetensors" and architecture is None and path.with_suffix(
            ".json").is_file():        # a model file's weights half, read with its .json
        path, suffix = path.with_suffix(".json"), ".json"
    if input_shape is None or suffix != ".json":   # weights: --model's size
        return input_shape
    if suffix == ".json" and not _exists(path):     # for the loader to say it is missing
        return input_shape
    if suffix == ".json":
        from convnet.io.weights import _read_json
        if _read_json(path).get("input_shape") is None:
            return input_shape
    raise ValueError(f"{spec}: --input (input_shape) sets the input size of an ONNX file "
                     f"whose graph leaves it open, of weights, a zoo name, notation, or a "
                     f"model file that records none; this model file records its own")


def check_classes(model, num_classes, spec, architecture=None):
    """The model resolve_model made of ``spec`` (and ``architecture``), checked against
    the --classes a user gave: num_classes set a zoo architecture's classes; any other
    model fixes its own and must give that many scores (counted at its input_shape, or
    without one, the outputs of its last layer when that is an FC layer), or a
    ValueError says so."""
    if num_classes is None or (architecture or spec) in MODELS:
        return model
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        scores = model.output_shape(shape)[0]
    else:       # no input size: the last layer's outputs when it is an FC layer
        leaves = [layer for _, layer in model.named_layers()]
        scores = getattr(leaves[-1], "out_features", num_classes) if leaves else num_classes
    if scores != num_classes:
        raise ValueError(f"{spec} gives {scores} scores per image, not the --classes "
                         f"{num_classes}: --classes sets the classes of a zoo architecture "
                         f"(train --from the model makes a new head for other classes)")
    return model


# The prefix PyTorch's wrappers put before every key of the module they wrap, and who
# puts it there (torch.compile of a DataParallel module: "_orig_mod.module.").
WRAPPER_PREFIXES = {"module.": "nn.DataParallel or DistributedDataParallel",
                    "_orig_mod.": "torch.compile"}
MAX_WRAPPERS = 4       # prefixes peeled at most (torch.compile of DataParallel has 2)


def _not_a_checkpoint(path):
    """Refuse a training run's checkpoint given as weights, from its header alone (its
    size held to the caps first)."""
    from convnet.io.weights import _check_header, _read
    from convnet.train.checkpoint import KEY
    _check_header(path)
    if KEY in _read(path, lambda f: f.metadata() or {}):
        raise ValueError(f"{path}: a training run's checkpoint, not a model's weights: "
                         f"{_run_models(Path(path).parent)}")


def _run_models(run):
    """What to give instead of a run's folder or checkpoint: the model files it has (its
    final model.json, its best.json), and how to continue the run."""
    models = [str(run / name) for name in ("model.json", "best.json") if _exists(run / name)]
    given = (f"give the run's model, {' or '.join(models)}, or " if models else
             "it has no model file yet; ")
    return f"{given}continue the run with convnet train --resume --out {run}"


def _read_weights(path, with_info=False):
    """The tensors of a .pt/.pth/.safetensors file, {key: array}; with_info=True,
    (tensors, the JSON text of a model's info that a .safetensors file keeps in its
    metadata (INFO_KEY), or None)."""
    from convnet.io import load_tensors, load_torch
    from convnet.io.weights import INFO_KEY

    info = None
    if Path(path).suffix.lower() == ".safetensors":
        _not_a_checkpoint(path)
        tensors, metadata = load_tensors(path)
        info = metadata.get(INFO_KEY)
    else:
        tensors = load_torch(path)
    return (tensors, info) if with_info else tensors


def _weights_info(text, path, model):
    """A weights file's recorded info (read_info), checked against ``model``: as many
    class names as it gives scores."""
    from convnet.io.weights import INFO_KEY, check_class_count, read_info

    shape = getattr(model, "input_shape", None)
    info = read_info(text, path, channels=shape[0] if shape and len(shape) == 3 else None)
    if shape is not None:
        check_class_count(info, model.output_shape(shape), f"{path}: metadata {INFO_KEY}")
    return info


def _head_size(architecture, state):
    """The classes a zoo architecture's weights file was saved for: the rows of the
    file's weight for the architecture's last FC layer (None where the file has no such
    2-D weight; the load then names what does not fit)."""
    from convnet.layers.base import counting_only
    from convnet.models.finetune import head_name

    with counting_only():                 # the names only: no weights are written
        model = get_model(architecture)
    head = head_name(model)
    if head is None:
        return None
    state, _, _ = _unwrap(state, model.state_dict())
    weight = state.get(f"{head}.weight")
    shape = getattr(weight, "shape", ())
    # a head of no inputs, or of more classes than the cap, is no head to build: the
    # load then names what does not fit (an 86-byte file had built a 2,000,000-class FC)
    fits = len(shape) == 2 and shape[1] > 0 and 0 < shape[0] <= limits.MAX_CLASSES
    return int(shape[0]) if fits else None


# torchvision's DenseNet files name a dense layer's parts "norm.1", "conv.2" (the names of
# old PyTorch releases); its loader reads them as "norm1", "conv2", and so does this one.
DENSE_LAYER_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                             r"((?:[12])\.(?:weight|bias|running_mean|running_var))$")
# GoogLeNet's auxiliary classifiers: torchvision saves them (its default aux_logits=True).
AUX_HEADS = ("aux1.", "aux2.")


def _current_key(key):
    """A key of torchvision's old DenseNet files in today's form: 'features.denseblock1.
    denselayer1.norm.1.weight' -> '...denselayer1.norm1.weight'; any other key as it is."""
    match = DENSE_LAYER_KEY.match(key) if isinstance(key, str) else None
    return match.group(1) + match.group(2) if match else key


def _head_hint(model, state, expected):
    """Where only the last FC layer's tensors do not fit: the classes the file has, and
    what to do about it; else ""."""
    from convnet.models.finetune import head_name
    head = head_name(model)
    wrong = {key for key, value in state.items() if key in expected
             and getattr(value, "shape", None) != expected[key].shape}
    weight = state.get(f"{head}.weight") if head is not None else None
    if not wrong or not wrong <= {f"{head}.weight", f"{head}.bias"} \
            or getattr(weight, "ndim", 0) != 2 \
            or weight.shape[0] == expected[f"{head}.weight"].shape[0]:   # its inputs differ
        return ""
    return (f" (the file's last FC layer, {head}, gives {weight.shape[0]} classes and the "
            f"architecture's {expected[f'{head}.weight'].shape[0]}: for a zoo name, give "
            f"--classes {weight.shape[0]} or leave it out; in notation, write FC "
            f"{weight.shape[0]} last; train --from then makes a new head for the data's "
            f"classes)")


def _load_weights(model, path, state=None):
    """Load a .pt/.pth/.safetensors file's tensors (``state``, read from ``path`` when
    None) into ``model`` strictly.

    A file saved from a wrapped module (nn.DataParallel, DistributedDataParallel,
    torch.compile) has each key under the wrapper's prefix (``module.conv1.weight``);
    when every key of the file is one of the model's under such prefixes, they are read
    without them, and a warning says so. As torchvision's loaders do, the dense layers'
    keys of its DenseNet files ("denselayer1.norm.1.weight") are read as today's
    ("denselayer1.norm1.weight"); and a GoogLeNet file's auxiliary classifiers (aux1,
    aux2) are left out, with a warning, where the model has none."""
    if state is None:
        state = _read_weights(path)
    expected = model.state_dict()
    state, prefix, fits = _unwrap(state, expected)
    renamed, origin = {}, {}
    for key, value in state.items():
        new = _current_key(key) if key not in expected else key
        if new in renamed:
            raise ValueError(f"{path}: the keys {origin[new]!r} and {key!r} both name the "
                             f"model's {new!r} (one in torchvision's older spelling): keep "
                             f"one")
        renamed[new], origin[new] = value, key
    state = renamed
    check_finite(state, path)
    aux = [key for key in state if key not in expected and key.startswith(AUX_HEADS)]
    if aux and not any(key.startswith(AUX_HEADS) for key in expected):
        state = {key: value for key, value in state.items() if key not in aux}
        warnings.warn(f"{path}: the file's auxiliary classifiers (aux1, aux2: {len(aux)} "
                      f"tensors) are left out: the model has none (they help only in "
                      f"training)", stacklevel=3)
    try:
        model.load_state_dict(state, strict=True)
    except ValueError as err:
        hint = ""
        if prefix:
            hint = (f" (every key of the file starts with {prefix!r}, as {_wrappers(prefix)} "
                    f"saves them; without it they still do not fit)")
        hint += _head_hint(model, state, expected)
        raise ValueError(f"{path}: does not fit the architecture given by --model: "
                         f"{err}{hint}") from None
    if fits:
        warnings.warn(f"{path}: every key starts with {prefix!r} (saved from "
                      f"{_wrappers(prefix)}); read without it", stacklevel=3)


def _unwrap(state, expected):
    """(state, prefix, fits): ``prefix`` is the wrappers' prefixes that every key of
    ``state`` starts with ("" if none), peeled while the keys are not all ``expected``
    ones (in either form of a DenseNet key, or an auxiliary head's); fits: whether the
    keys without it all are, and then ``state`` is without it."""
    keys, prefix = list(state), ""

    def known(key):
        return isinstance(key, str) and (key in expected or _current_key(key) in expected
                                         or key.startswith(AUX_HEADS))
    for _ in range(MAX_WRAPPERS):      # a file of "module.module.module..." keys: no more
        if not keys or all(known(key) for key in keys):
            break
        head = next((p for p in WRAPPER_PREFIXES if all(
            isinstance(key, str) and key.startswith(p) for key in keys)), None)
        if head is None:
            break
        keys, prefix = [key[len(head):] for key in keys], prefix + head
    fits = bool(prefix) and all(known(key) for key in keys)
    if fits:
        state = dict(zip(keys, state.values()))
    return state, prefix, fits


def _wrappers(prefix):
    """'module.' -> 'nn.DataParallel or DistributedDataParallel'; the wrappers, outermost
    first, that give a key prefix."""
    names = []
    while prefix:
        head = next(p for p in WRAPPER_PREFIXES if prefix.startswith(p))
        names.append(WRAPPER_PREFIXES[head])
        prefix = prefix[len(head):]
    return " of ".join(names)
