"""Conversion between weight and model formats, as `convnet convert IN OUT` does it.

In:  a convnet model (model.json + model.safetensors); an ONNX file (.onnx: architecture
     and weights, read by load_onnx); weights alone — a PyTorch checkpoint (.pt, .pth)
     or a safetensors file — with the architecture named by ``model`` (a zoo name or
     arrow notation), since weights files carry no architecture; or a zoo name or arrow
     notation alone, a new net with fresh weights.
Out: a convnet model (.json), plain weights (.safetensors, loadable in PyTorch with
     safetensors.torch.load_file), or ONNX (.onnx).
"""

from __future__ import annotations

from pathlib import Path

from convnet.io.weights import (
    INFO_KEY,
    check_new_file,
    json_text,
    model_paths,
    save_model,
    save_tensors,
)

OUT = (".json", ".safetensors", ".onnx")


def read_any(path, model=None, num_classes=None, input_shape=None):
    """A model from a convnet model file, an ONNX file, or weights plus ``model``; or a
    new net (fresh weights) from a zoo name or arrow notation. input_shape (C, H, W): the
    size of an ONNX file whose graph leaves it open."""
    from convnet.spec import (
        FILES,
        check_classes,
        check_open_input,
        is_notation,
        resolve_model,
    )
    from convnet.zoo import MODELS

    if str(path) in MODELS or is_notation(str(path)):   # a new net, as summary takes it
        net = resolve_model(str(path), num_classes=num_classes, architecture=model,
                            input_shape=input_shape)
        return check_classes(net, num_classes, str(path), model)
    path = Path(path)
    if path.suffix.lower() not in FILES:
        raise ValueError(f"{path}: unknown input format; expected a convnet model (.json), "
                         f"an ONNX file (.onnx), a PyTorch checkpoint (.pt, .pth), "
                         f"safetensors weights, a zoo name or arrow notation")
    if path.suffix.lower() == ".onnx" and model is not None:
        raise ValueError(f"{path}: an ONNX file carries its own architecture and "
                         "classifier; --model does not apply to it")
    net = resolve_model(str(path), num_classes=num_classes, architecture=model,
                        input_shape=check_open_input(path, input_shape, model))
    return check_classes(net, num_classes, str(path), model)


def convert(src, dst, model=None, num_classes=None, overwrite=False, input_shape=None,
            log=None):
    """Convert ``src`` to ``dst`` (formats by suffix, in any case); returns the written
    path. A file it would write (for .json, the model's .safetensors too) that exists
    already is a ValueError unless overwrite=True. input_shape: as read_any's. What the
    model read records besides the net (class names, preprocessing: a convnet model's
    "info") goes with it: into the .json, or as JSON into a .safetensors or .onnx file's
    metadata under INFO_KEY; log is then called with a note (a str) saying so."""
    if isinstance(dst, str) and not dst:       # Path("") would be "."
        raise ValueError(f"an empty output file name: give one ending in {', '.join(OUT)}")
    dst = Path(dst)
    suffix = dst.suffix.lower()
    if suffix not in OUT:
        raise ValueError(f"{dst}: unknown output format; expected one of {', '.join(OUT)}")
    targets = model_paths(dst) if suffix == ".json" else (dst,)
    for target in targets:
        check_new_file(target, overwrite, "choose another OUT")
    net = read_any(src, model, num_classes, input_shape)
    info = getattr(net, "info", None) or {}
    if getattr(net, "trained", True) is False:   # a zoo name's or notation's fresh weights
        info = {**info, "trained": False}
        if log is not None:
            log(f"{dst} holds fresh random weights (from {src}), and records so: eval, "
                f"predict and report say it is untrained, and train --from refuses it")
    if suffix == ".json":
        return save_model(net, dst, **info)
    if suffix == ".safetensors":
        save_tensors(net.state_dict(), dst,
                     metadata={INFO_KEY: json_text(info)} if info else None)
    else:
        from convnet.io.onnx_export import export_onnx
        export_onnx(net, dst, info=info)
    if set(info) - {"trained"} and log is not None:
        log(f"{dst} keeps the preprocessing and class names that {src} records in its "
            f"metadata ({INFO_KEY}), where convnet's eval and predict read them; another "
            f"program must normalize its input as they say")
    return dst

