"""A model as the command line names it: a zoo name, the notes' arrow notation, or a file.

    resolve_model("vgg16")                                         # the zoo
    resolve_model("INPUT 32x32x3 -> [CONV 32 -> RELU -> POOL]*2 -> FC 10")
    resolve_model("runs/digits/model.json")                        # a saved model
"""

from __future__ import annotations

import json
from pathlib import Path

from convnet.models import from_config, from_notation
from convnet.zoo import MODELS, get_model


def parse_shape(text):
    """'3x224x224' -> (3, 224, 224): a per-sample C x H x W, as PyTorch orders it."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ValueError(f"input shape must be C x H x W with positive sizes, e.g. 3x224x224, "
                         f"got {text!r}")
    return shape


def resolve_model(spec, input_shape=None, num_classes=None, rng=None):
    """Build the model that ``spec`` names; returns it with ``model.input_shape`` set.

    Args:
        spec: a zoo name (see ``convnet zoo``), an arrow-notation string (it contains
            "->"), or the path of a model file (its .json architecture; weights, if a
            .safetensors file sits beside it, are loaded by convnet.io).
        input_shape: per-sample (C, H, W) overriding the model's default.
        num_classes: for zoo models, the size of the last FC layer.
    """
    kwargs = {} if rng is None else {"rng": rng}
    if spec in MODELS:
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        model = get_model(spec, **kwargs)
    elif "->" in spec or "→" in spec:
        model = from_notation(spec, input_shape=input_shape, **kwargs)
    elif Path(spec).suffix == ".json" or Path(spec).exists():
        model = _load_json(Path(spec), rng)
    else:
        raise ValueError(f"model {spec!r} is not a zoo name ({', '.join(MODELS)}), not a file, "
                         f"and not arrow notation (e.g. 'INPUT 28x28x1 -> CONV 8 -> RELU -> "
                         f"POOL -> FC 10')")
    if input_shape is not None:
        model.input_shape = tuple(input_shape)
    return model


def _load_json(path, rng):
    if not path.is_file():
        raise ValueError(f"{path}: no such model file")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON model file ({err})") from None
    if not isinstance(data, dict) or "architecture" not in data:
        raise ValueError(f"{path}: expected a convnet model file with an 'architecture' key")
    model = from_config(data["architecture"], rng=rng, where=str(path))
    if "input_shape" in data:
        model.input_shape = tuple(data["input_shape"])
    return model
