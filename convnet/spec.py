"""A model as the command line names it: a zoo name, the notes' arrow notation, or a file.

    resolve_model("vgg16")                                         # the zoo
    resolve_model("INPUT 32x32x3 -> [CONV 32 -> RELU -> POOL]*2 -> FC 10")
    resolve_model("runs/digits/model.json")                        # a saved model
    resolve_model("resnet18.onnx")                                 # an ONNX file
"""

from __future__ import annotations

from pathlib import Path

from convnet.io import load_model
from convnet.models import from_notation
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
            "->"), a saved model (model.json with model.safetensors beside it), or an
            ONNX file (.onnx, read by ``convnet.io.load_onnx``).
        input_shape: per-sample (C, H, W) overriding the model's default (for an ONNX
            file: its input's size where the graph leaves it open; it must agree with a
            static one).
        num_classes: for zoo models, the size of the last FC layer.
    """
    kwargs = {} if rng is None else {"rng": rng}
    if spec in MODELS:
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        model = get_model(spec, **kwargs)
    elif "->" in spec or "→" in spec:
        model = from_notation(spec, input_shape=input_shape, **kwargs)
    elif Path(spec).suffix == ".onnx":
        from convnet.io.onnx_import import load_onnx
        model = load_onnx(spec, input_shape=input_shape)
    elif Path(spec).suffix in (".json", ".safetensors") or Path(spec).exists():
        model = load_model(spec)
    else:
        raise ValueError(f"model {spec!r} is not a zoo name ({', '.join(MODELS)}), not a file, "
                         f"and not arrow notation (e.g. 'INPUT 28x28x1 -> CONV 8 -> RELU -> "
                         f"POOL -> FC 10')")
    if input_shape is not None:
        model.input_shape = tuple(input_shape)
    return model
