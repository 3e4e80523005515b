"""Weight files: safetensors with dotted keys, plus the architecture as JSON. No pickle.

A convnet model file is a pair beside each other:
    model.json          {"format": "convnet-model", "architecture": {...}, "input_shape": ...}
    model.safetensors   every parameter and buffer, keyed like "features.0.weight"
The safetensors file is the format PyTorch's ``safetensors.torch.load_file`` reads, so the
weights load into the same torchvision-layout module there.

Every file is written atomically: to a temporary file in the same directory, flushed and
fsynced, then renamed over the target, so a kill at any moment leaves the old file or the
new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

FORMAT = "convnet-model"


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError:
        raise ImportError("weight files need the safetensors package: "
                          "pip install 'convnet[train]' (or pip install safetensors)") from None
    return safetensors.numpy


def atomic_write(path, data: bytes):
    """Write bytes to path atomically: temporary file, fsync, rename, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
    atomic_write(path, _safetensors().save(arrays, metadata=metadata))


def load_tensors(path):
    """Read a safetensors file: (dict of arrays, metadata dict). Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such weight file")
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # the library raises its own error types for bad headers
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    return tensors, metadata


def model_paths(path):
    """'runs/x/model' or 'runs/x/model.json' -> (model.json, model.safetensors) paths."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    return stem.with_suffix(".json"), stem.with_suffix(".safetensors")


def save_model(model, path, **info):
    """Save a model as architecture JSON plus safetensors weights; returns the JSON path.

    Extra keyword arguments (class names, the data it was trained on...) are stored in the
    JSON under "info".
    """
    json_path, weights_path = model_paths(path)
    save_tensors(model.state_dict(), weights_path)
    document = {"format": FORMAT, "version": 1, "architecture": model.get_config(),
                "input_shape": list(getattr(model, "input_shape", None) or []) or None,
                "weights": weights_path.name, "info": info}
    atomic_write(json_path, json.dumps(document, indent=1).encode())
    return json_path


def load_model(path):
    """Load a model saved by save_model: architecture, weights (strictly), input_shape, info."""
    from convnet.models.config import from_config

    json_path, weights_path = model_paths(path)
    if not json_path.is_file():
        raise ValueError(f"{json_path}: no such model file")
    try:
        document = json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{json_path}: not a convnet model file ({err})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{json_path}: not a convnet model file (no format {FORMAT!r})")
    model = from_config(document["architecture"], where=str(json_path))
    tensors, _ = load_tensors(json_path.parent / document.get("weights", weights_path.name))
    try:
        model.load_state_dict(tensors, strict=True)
    except ValueError as err:
        raise ValueError(f"{weights_path}: {err}") from None
    if document.get("input_shape"):
        model.input_shape = tuple(document["input_shape"])
    model.info = document.get("info", {})
    return model
