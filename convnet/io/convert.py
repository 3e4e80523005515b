"""Conversion between weight and model formats, as `convnet convert IN OUT` does it.

In:  a convnet model (model.json + model.safetensors); an ONNX file (.onnx: architecture
     and weights, read by load_onnx); or weights alone — a PyTorch checkpoint (.pt, .pth)
     or a safetensors file — with the architecture named by ``model`` (a zoo name or
     arrow notation), since weights files carry no architecture.
Out: a convnet model (.json), plain weights (.safetensors, loadable in PyTorch with
     safetensors.torch.load_file), or ONNX (.onnx).
"""

from __future__ import annotations

import json
from pathlib import Path

from convnet.io.weights import FORMAT, load_model, load_tensors, save_model, save_tensors

WEIGHTS_IN = (".pt", ".pth", ".safetensors")
OUT = (".json", ".safetensors", ".onnx")


def _is_model_file(path):
    if path.suffix != ".json":
        return False
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_any(path, model=None, num_classes=None):
    """A model from a convnet model file, an ONNX file, or weights plus ``model``."""
    from convnet.spec import resolve_model

    path = Path(path)
    if path.suffix == ".onnx":
        if model is not None or num_classes is not None:
            raise ValueError(f"{path}: an ONNX file carries its own architecture and "
                             "classifier; --model and --classes do not apply to it")
        from convnet.io.onnx_import import load_onnx
        return load_onnx(path)
    if _is_model_file(path) or (path.suffix == ".safetensors" and model is None
                                and path.with_suffix(".json").is_file()):
        return load_model(path)
    if path.suffix not in WEIGHTS_IN:
        raise ValueError(f"{path}: unknown input format; expected a convnet model (.json), "
                         f"an ONNX file (.onnx), a PyTorch checkpoint (.pt, .pth) or "
                         f"safetensors weights")
    if model is None:
        raise ValueError(f"{path}: a weights file holds no architecture: name it with "
                         f"--model (a zoo name such as resnet18, or arrow notation)")
    if path.suffix == ".safetensors":
        state, _ = load_tensors(path)
    else:
        from convnet.io.torch_file import load_torch
        state = load_torch(path)
    net = resolve_model(model, num_classes=num_classes)
    try:
        net.load_state_dict(state, strict=True)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return net


def convert(src, dst, model=None, num_classes=None):
    """Convert ``src`` to ``dst`` (formats by suffix); returns the written path."""
    dst = Path(dst)
    if dst.suffix not in OUT:
        raise ValueError(f"{dst}: unknown output format; expected one of {', '.join(OUT)}")
    net = read_any(src, model, num_classes)
    if dst.suffix == ".json":
        return save_model(net, dst, **getattr(net, "info", {}))
    if dst.suffix == ".safetensors":
        save_tensors(net.state_dict(), dst)
        return dst
    from convnet.io.onnx_export import export_onnx
    export_onnx(net, dst)
    return dst
