"""Checkpoints: everything a resume needs, in one safetensors file, written atomically.

Arrays (model parameters and buffers under "model.", optimizer state under "optim.", the
weights' moving averages under "ema.") are the file's tensors; everything else
(architecture, training configuration, optimizer and schedule settings, epoch and batch
position, RNG states, best metric, history) is JSON in the file's metadata. One file means
one atomic rename: a kill at any moment leaves either the previous checkpoint or the new
one, both loadable. No pickle anywhere. The metadata also holds a SHA-256 of the tensors'
bytes and the JSON ("convnet-checkpoint-sha256"), checked on load, so that bytes damaged
on disk or in a copy are an error rather than a resume from wrong weights.

A data-parallel run (several MPI ranks, convnet.train.distributed) writes one checkpoint,
from rank 0, after checking that every rank holds the same weights; its JSON also holds
every rank's dropout generator states ("dropout_rng_ranks", one dict per rank) and the
number of processes, so that each rank resumes with its own masks.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from convnet import limits
from convnet.io.weights import (
    _declared,
    _fits_header,
    _read,
    check_finite,
    load_tensors,
    save_tensors,
)

KEY = "convnet-checkpoint"
CHECKSUM_KEY = "convnet-checkpoint-sha256"
HISTORY_KEYS = ("epoch", "loss", "acc", "val_loss", "val_acc")   # numbers of every epoch


MAX_EPOCH = 10 ** 9   # what a history's "epoch" may count up to


def is_epoch_record(entry):
    """Whether ``entry`` is one epoch of a training history: a dict with HISTORY_KEYS as
    numbers (NaN and infinities included: a diverged run's curves have gaps), the ints
    ones a float holds exactly (a JSON int of 400 digits could not be plotted), "epoch"
    an int from 1 to MAX_EPOCH."""
    def number(value):
        if isinstance(value, bool):
            return False
        return isinstance(value, float) or isinstance(value, int) and abs(value) <= 2 ** 53
    return (isinstance(entry, dict) and all(number(entry.get(key)) for key in HISTORY_KEYS)
            and isinstance(entry["epoch"], int) and 1 <= entry["epoch"] <= MAX_EPOCH)


def checksum(tensors, text):
    """SHA-256 (hex) of the JSON text and of every tensor's key, dtype, shape and bytes,
    in key order."""
    digest = hashlib.sha256(text.encode())
    for key in sorted(tensors):
        value = np.require(tensors[key], requirements="C")
        digest.update(f"\0{key}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def save_checkpoint(path, model_state, optim_arrays, state, ema_arrays=None):
    """Write model_state (dotted keys), optimizer arrays, the weights' moving averages
    (WeightEMA's, or None) and a JSON-ready state dict."""
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    tensors.update({f"optim.{k}": v for k, v in optim_arrays.items()})
    tensors.update({f"ema.{k}": v for k, v in (ema_arrays or {}).items()})
    text = json.dumps(state)
    save_tensors(tensors, path, metadata={KEY: text, CHECKSUM_KEY: checksum(tensors, text)})


def checkpoint_bytes():
    """The cap on a checkpoint's tensors: a model file's (limits.MAX_ARRAY_BYTES) for each
    of the model, the optimizer's two moments and the weights' moving average, so that a
    run whose model is within the caps can always be resumed."""
    return 4 * limits.MAX_ARRAY_BYTES


def load_checkpoint(path, ema=False):
    """Read a checkpoint: (model_state, optim_arrays, state), and with ema=True the
    moving averages' arrays as a fourth item. Errors name the file; a checkpoint whose
    tensors or JSON no longer match its checksum is refused (one written before there
    was a checksum loads unchecked)."""
    cap = checkpoint_bytes()
    declared = _declared(path, cap)                    # the header, within the caps
    metadata = _read(path, lambda f: f.metadata() or {})
    if KEY not in metadata:
        raise ValueError(f"{path}: not a convnet checkpoint (no {KEY!r} metadata)")
    text = metadata[KEY]
    limits.check_json(text, path, "checkpoint metadata")
    try:
        state = json.loads(text)
    except (ValueError, RecursionError) as err:    # ValueError: JSONDecodeError, or an
        raise ValueError(f"{path}: damaged checkpoint metadata "   # int of 4,300+ digits
                         f"({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: checkpoint metadata must be a JSON object, got "
                         f"{type(state).__name__}")
    _fits_architecture(declared, state.get("architecture"), path)
    tensors, metadata = load_tensors(path, cap)
    if CHECKSUM_KEY in metadata and metadata[CHECKSUM_KEY] != checksum(tensors, text):
        raise ValueError(f"{path}: damaged checkpoint: its bytes no longer match the "
                         f"SHA-256 written with them (a disk or copy error); resume from "
                         f"another copy, or start the run again")
    check_finite(tensors, path)
    groups = {prefix: {k[len(prefix) + 1:]: v for k, v in tensors.items()
                       if k.startswith(prefix + ".")} for prefix in ("model", "optim", "ema")}
    found = (groups["model"], groups["optim"], state)
    return (*found, groups["ema"]) if ema else found


def _fits_architecture(declared, architecture, path):
    """Refuse a checkpoint whose tensors, as its header declares them ({key: (dtype,
    shape)}), do not fit the model its metadata names, before a tensor is read: the
    model's ("model.") as load_state_dict checks them, and each optimizer state
    ("optim.<state>.<parameter>") and moving average ("ema.<key>") of the shape of the
    model's tensor it is for. A misfit is called damaged or edited; an architecture that
    cannot be built says why."""
    from convnet.layers.base import counting_only
    from convnet.models.config import from_config

    model_keys = {k[len("model."):]: v for k, v in declared.items() if k.startswith("model.")}
    damaged = f"{path}: damaged checkpoint, or one edited: its tensors do not fit the " \
              f"model its metadata names"
    tensors = f"{path}'s model tensors"
    with counting_only():          # zeros never written: no memory for the weights
        try:
            model = from_config(architecture, where=f"{path}: architecture",
                                max_params=sum(int(np.prod(shape)) for _, shape in
                                               model_keys.values()), weights=tensors)
        except ValueError as err:  # a model larger than its tensors: they do not fit it
            if tensors not in str(err):
                raise
            raise ValueError(f"{damaged} ({err})") from None
    try:
        _fits_header(model, model_keys, path)
    except ValueError as err:
        raise ValueError(f"{damaged} ({str(err).removeprefix(f'{path}: ')})") from None
    shapes = {key: tuple(shape) for key, (_, shape) in model_keys.items()}
    for key, (_, shape) in declared.items():
        group, _, rest = key.partition(".")
        target = rest.partition(".")[2] if group == "optim" else rest
        if group == "model":
            continue
        if group not in ("optim", "ema") or shapes.get(target) != tuple(shape):
            raise ValueError(f"{damaged}: tensor {key!r} of shape {tuple(shape)} is no "
                             f"optimizer state or moving average of a model tensor of its "
                             f"shape")
