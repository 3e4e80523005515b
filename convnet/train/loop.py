"""The training loop: one readable function, resumable to the bit.

    cfg = TrainConfig(data="digits", epochs=30)
    result = train(cfg)            # -> TrainResult(model, history, best_val_acc, paths)

Reproducibility: every random draw comes from explicit generators. The initial weights
come from ``default_rng(seed)``; epoch e shuffles and augments with its own generator
``default_rng([seed, e])``; dropout layers carry their own generators. A checkpoint stores
all of their states with the weights, the optimizer, the schedule and the position in
the epoch, so a run killed and resumed ends with the same weights, bit for bit, as one
that ran straight through.

Under ``mpiexec -n R`` (a communicator of R ranks, see convnet.train.distributed) the same
run is data-parallel: ``batch_size`` stays the whole batch, each rank computes the same
order and takes its contiguous share of every batch, and one Allreduce a step sums the
ranks' gradients (each scaled by its share of the batch), so the update is the one a
single process makes on the whole batch. Batch norm layers use the whole batch's
statistics (``sync_bn``). Rank 0 alone prints and writes files; every rank resumes from
the same checkpoint, which holds every rank's dropout generator.

A run directory holds one run: a new run refuses a directory that already holds files
unless told to resume it or to overwrite it; without ``out`` a run takes the first free
name of runs/<data>, runs/<data>-2, runs/<data>-3, ... A run holds its directory from
its checks to its end (``RunLock``): another run there, new, resumed or overwriting, is
refused while it lasts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import inspect
import json
import math
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:              # Windows: runs do not lock their directories (RunLock)
    fcntl = None

from convnet import limits
from convnet.analysis import counted, layer_inputs
from convnet.data import (
    DATASETS,
    check_drawn_split,
    data_folder,
    load_dataset,
    takes_root,
    untrained_classes,
)
from convnet.data.folder import nfc
from convnet.data.loader import train_val_split
from convnet.data.preprocess import border_range, brightness_range, check_info
from convnet.data.transforms import Normalize, random_crop, random_flip, to_float
from convnet.functional.conv import Algorithm, use_algorithm
from convnet.functional.loss import softmax_cross_entropy
from convnet.functional.threads import THREADS
from convnet.io.onnx_import import OpenInputError
from convnet.io.weights import atomic_write, json_text, safetensors_module, save_model
from convnet.layers.base import MultilineError
from convnet.layers.dropout import Dropout
from convnet.layers.linear import Linear
from convnet.layers.norm import BatchNorm1d, BatchNorm2d
from convnet.models import Sequential, from_config
from convnet.models.finetune import reorder_head, replace_head
from convnet.spec import WEIGHTS, is_notation, resolve_model
from convnet.train.checkpoint import (
    HISTORY_KEYS,
    is_epoch_record,
    load_checkpoint,
    save_checkpoint,
)
from convnet.train.defaults import DEFAULTS, OTHER_NAME, default_notation, defaults_for
from convnet.train.distributed import RanksDiverged, RootsError, describe, from_environment
from convnet.train.ema import WeightEMA
from convnet.train.inference import evaluate, prepare_bytes
from convnet.train.optim import DEFAULT_LR, OPTIMIZERS, make_optimizer
from convnet.train.schedules import SCHEDULES, make_schedule

__all__ = ["DEFAULTS", "RUN_FILES", "TrainConfig", "TrainResult", "TrainingDiverged", "train"]

# Every file a run writes into its directory (--overwrite removes these, nothing else).
RUN_FILES = ("checkpoint.safetensors", "model.json", "model.safetensors", "best.json",
             "best.safetensors", "history.json", "curve.png", "filters.png", "report.html")
MAX_EPOCHS = 1_000_000
# Fields added after checkpoints were written without them: a checkpoint that lacks one
# resumes with this value.
ADDED_FIELDS = {"sync_bn": True, "label_smoothing": 0.0, "ema": 0.0, "tta": False,
                "translate": None, "time_limit": None, "conv_algorithm": "auto",
                "shift_fill": "mean"}
SHIFT_FILLS = ("black", "mean")   # a shift pads with a 0 pixel, or with 0 once normalized


@dataclass
class TrainConfig:
    """Everything that defines a run. None means: the default for the data or optimizer."""
    data: str = "digits"
    model: str | None = None         # zoo name or notation; with a weights file in
    #                                  init_from: the architecture of those weights
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None          # default: DEFAULT_LR[optimizer]
    weight_decay: float | None = None
    augment: bool | None = None      # random crops (padding of 1/8 of each side), plus flips
    flip: bool | None = None         # horizontal flips when augmenting (not for digits)
    schedule: str | None = None      # none, step, cosine, warmup+cosine, onecycle, triangular
    val_fraction: float | None = None   # default FRACTION, unless the data has val/
    test_fraction: float | None = None  # held out of an image folder without test/ (FRACTION)
    limit: int | None = None         # use N of the training images, chosen at random
    seed: int = 0
    out: str | None = None           # default: the first free runs/<data>[-N]
    checkpoint_every: int = 0        # also checkpoint every N batches (0: each epoch only)
    data_root: str | None = None
    download: bool = False
    image_size: tuple | None = None  # resize the data set's images to (H, W) (load_dataset)
    channels: int | None = None      # convert the images to 1 (grayscale) or 3 (RGB) channels
    dtype: str = "float32"
    init_from: str | None = None     # fine-tune: start from this saved model's weights
    freeze: tuple = ()               # stages to keep fixed (with init_from), e.g. features
    sync_bn: bool = True             # over several processes: batch norm with the whole
    #                                  batch's statistics (False: each rank's own share)
    label_smoothing: float | None = None   # target (1 - e) one_hot + e / classes
    ema: float | None = None         # decay of the weights' moving average, evaluated and
    #                                  saved in the weights' place (0: none)
    tta: bool | None = None          # evaluate on each image and its mirror image
    translate: int | None = None     # augmentation's largest shift in pixels (None: side/8)
    time_limit: float | None = None  # seconds: plan the epochs so the run ends in time
    conv_algorithm: str = "auto"     # every convolution that can, with this algorithm
    #                                  (functional.conv.Algorithm; "auto": each layer's own)
    shift_fill: str = "black"        # what a shift pads with: a 0 pixel ("black"), or the
    #                                  mean ("mean": 0 after normalizing, runs begun before
    #                                  2026-12-07 resume with it)

    @classmethod
    def from_dict(cls, values, where):
        """A TrainConfig from a checkpoint's JSON, every field checked (ValueError)."""
        if not isinstance(values, dict):
            raise ValueError(f"{where}: config must be a JSON object, got "
                             f"{type(values).__name__}")
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        missing = sorted(set(cls.__dataclass_fields__) - set(values) - set(ADDED_FIELDS))
        if unknown or missing:
            raise ValueError(f"{where}: config has unknown fields {unknown} and lacks "
                             f"{missing}")
        values = {**ADDED_FIELDS, **values}
        return cls(**values).check(where)

    def check(self, where="TrainConfig"):
        """Check the type and range of every field; returns self. None means default.
        A list given for image_size or freeze becomes the tuple the field holds."""
        for name in ("image_size", "freeze"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))

        def fail(name, expected):
            raise ValueError(f"{where}: {name} must be {expected}, got "
                             f"{getattr(self, name)!r:.80}")

        def is_int(v, low, high=None):
            return type(v) is int and v >= low and (high is None or v <= high)

        def is_float(v, low, high=None, open_low=False):
            return (isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(v) and (v > low if open_low else v >= low)
                    and (high is None or v < high))

        for name in ("data", "dtype"):
            if not isinstance(getattr(self, name), str):
                fail(name, "a string")
        for name in ("model", "out", "data_root", "init_from"):
            if getattr(self, name) is not None and not (
                    isinstance(getattr(self, name), str) and getattr(self, name).strip()):
                fail(name, "a non-empty string or null")
        for name, high in (("epochs", MAX_EPOCHS), ("batch_size", None), ("limit", None)):
            if getattr(self, name) is not None and not is_int(getattr(self, name), 1, high):
                fail(name, "a positive int" + (f" up to {high:,}" if high else ""))
        if not is_int(self.seed, 0, 2**63 - 1):
            fail("seed", "an int >= 0")
        if not is_int(self.checkpoint_every, 0):
            fail("checkpoint_every", "an int >= 0")
        # (a name is a str first: a list is unhashable, and True == 1)
        if self.optimizer is not None and not (isinstance(self.optimizer, str)
                                               and self.optimizer in OPTIMIZERS):
            fail("optimizer", f"one of {', '.join(OPTIMIZERS)}")
        if self.schedule is not None and not (isinstance(self.schedule, str)
                                              and self.schedule in SCHEDULES):
            fail("schedule", f"one of {', '.join(SCHEDULES)}")
        if self.lr is not None and not is_float(self.lr, 0, open_low=True):
            fail("lr", "a finite number > 0")
        if self.weight_decay is not None and not (is_float(self.weight_decay, 0)
                                                  and self.weight_decay <= 1):
            fail("weight_decay", "a number in [0, 1]")
        for name in ("val_fraction", "test_fraction"):
            if getattr(self, name) is not None and not is_float(getattr(self, name), 0, 1,
                                                                 open_low=True):
                fail(name, "a fraction in (0, 1), or null")
        for name in ("augment", "flip"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                fail(name, "true, false or null")
        for name in ("download", "sync_bn"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "true or false")
        for name in ("label_smoothing", "ema"):
            if getattr(self, name) is not None and not is_float(getattr(self, name), 0, 1):
                fail(name, "a number in [0, 1)")
        if self.tta is not None and not isinstance(self.tta, bool):
            fail("tta", "true, false or null")
        if self.translate is not None and not is_int(self.translate, 0, 1024):
            fail("translate", "an int from 0 to 1,024 (pixels)")

        if self.time_limit is not None and not is_float(self.time_limit, 0, open_low=True):
            fail("time_limit", "a finite number of seconds > 0")
        if not (isinstance(self.dtype, str) and self.dtype in ("float32", "float64")):
            fail("dtype", "'float32' or 'float64'")
        if self.conv_algorithm not in [a.value for a in Algorithm]:   # any type: a list
            fail("conv_algorithm", f"one of {', '.join(a.value for a in Algorithm)}")
        if not (isinstance(self.shift_fill, str) and self.shift_fill in SHIFT_FILLS):
            fail("shift_fill", f"one of {', '.join(SHIFT_FILLS)}")
        if self.image_size is not None and not (
                isinstance(self.image_size, tuple) and len(self.image_size) == 2
                and all(is_int(v, 1, limits.MAX_IMAGE_SIDE) for v in self.image_size)):
            fail("image_size", f"(H, W) with sides from 1 to {limits.MAX_IMAGE_SIDE}")
        if self.channels is not None and not (type(self.channels) is int
                                              and self.channels in (1, 3)):
            fail("channels", "1, 3 or null")
        if not (isinstance(self.freeze, tuple) and all(isinstance(s, str) for s in self.freeze)):
            fail("freeze", "a list of stage names")
        return self

    def resolved(self, data_name, input_shape, num_classes):
        """A copy with every None filled: the data set's defaults; the lr its own where the
        optimizer is its own, else the optimizer's (DEFAULT_LR); AdamW's own weight decay
        (0.01, as torch's: decoupled decay is what it adds to Adam); flip TTA where the images
        are flipped in training (a model that never saw mirror images gains nothing from
        them)."""
        defaults = defaults_for(data_name)
        values = {k: (defaults[k] if getattr(self, k) is None and k in defaults
                      and k != "lr" else getattr(self, k)) for k in self.__dataclass_fields__}
        if values["lr"] is None:
            own = values["optimizer"] == defaults["optimizer"] and "lr" in defaults
            values["lr"] = defaults["lr"] if own else DEFAULT_LR[values["optimizer"]]
        if self.weight_decay is None and values["optimizer"] == "adamw":   # its own, torch's
            values["weight_decay"] = inspect.signature(OPTIMIZERS["adamw"]).parameters[
                "weight_decay"].default
        if values["tta"] is None:
            values["tta"] = bool(values["augment"] and values["flip"])
        if self.model is None and not self.init_from:
            values["model"] = _default_model(defaults["model"], input_shape, num_classes)
        return TrainConfig(**values)


def _default_model(notation, input_shape, num_classes):
    """The data set's tuned net where it fits the data (its INPUT and FC), else one sized
    for the data by default_notation."""
    if notation is not None:
        head, _, _ = notation.partition(" -> ")
        c, h, w = input_shape
        if head == f"INPUT {w}x{h}x{c}" and notation.endswith(f" -> FC {num_classes}"):
            return notation
    return default_notation(input_shape, num_classes)


@dataclass
class TrainResult:
    model: Sequential
    history: list
    best_val_acc: float
    test_acc: float | None
    model_path: Path
    best_path: Path
    seconds: float


class TrainingDiverged(ValueError):
    """The loss became NaN or Inf: names the epoch, the batch and the first bad layer."""


FRACTION = 0.1   # the default val_fraction and test_fraction


def _fraction(value):
    """A val_fraction or test_fraction as given, or FRACTION for None."""
    return FRACTION if value is None else value


def _unused_fractions(cfg, splits):
    """Notes for a val_fraction or test_fraction given where the data has its own split
    (a val/ or test/ folder, a named set's test images): not used."""
    notes = []
    if cfg.test_fraction is not None and splits.drawn_from is None:
        notes.append(f"--test-fraction {cfg.test_fraction} is not used: {splits.name} has "
                     f"its own test images")
    if cfg.val_fraction is not None and splits.val is not None:
        notes.append(f"--val-fraction {cfg.val_fraction} is not used: {splits.name} has its "
                     f"own validation images (val/)")
    return notes


def prepare(splits, val_fraction, limit, seed, dtype):
    """Scale to [0, 1], hold out validation (unless the data has its own), normalize per
    channel with training statistics. Returns the three (x, y) pairs and the Normalize."""
    x, y = splits.train
    if limit and limit < len(y):   # a random subset: a folder's images come class by class
        keep = np.sort(np.random.default_rng([seed, 1 << 22]).permutation(len(y))[:limit])
        x, y = x[keep], y[keep]
    if splits.val is not None:
        (x_train, y_train), (x_val, y_val) = (x, y), splits.val
    else:
        (x_train, y_train), (x_val, y_val) = train_val_split(
            x, y, val_fraction, np.random.default_rng([seed, 1 << 20]))
    if len(y_val) == 0:
        most = int(np.bincount(y).max()) if len(y) else 0
        rule = (f" (each class holds out round(val_fraction x its images), 0.5 rounding to "
                f"0: above {0.5 / most:g} the largest class, of {most}, gives up one)"
                if most else "")
        raise ValueError(f"{splits.name}: {len(y)} training images leave no validation "
                         f"images at val_fraction {val_fraction}{rule}; raise it or add "
                         f"images")
    if len(y_train) == 0:
        raise ValueError(f"{splits.name}: {len(y)} training images at val_fraction "
                         f"{val_fraction} are all held out for validation, none left to "
                         f"train on; lower it or add images")
    x_train = to_float(x_train, splits.scale, dtype)
    norm = Normalize()
    norm.fit(x_train)
    x_train = norm(x_train)
    x_val = norm(to_float(x_val, splits.scale, dtype))
    x_test = norm(to_float(splits.test[0], splits.scale, dtype))
    return (x_train, y_train), (x_val, y_val), (x_test, splits.test[1]), norm


def first_nonfinite(model, x):
    """The name of the first layer whose output is not finite (descending into stages)."""
    if isinstance(model, Sequential):
        for layer in model.children():
            out = layer.forward(x)
            if not np.all(np.isfinite(out)):
                return first_nonfinite(layer, x)
            x = out
        return None
    return model.where


def dropout_layers(model):
    return [(name, layer) for name, layer in model.named_layers() if isinstance(layer, Dropout)]


def _last_written(folder):
    """(has a checkpoint, when it was last written): how --resume ranks a data set's run
    folders, the latest checkpoint first; a folder without one (an empty folder, or what
    a run that stopped before its first checkpoint left) only where no folder has one."""
    try:
        return True, (folder / "checkpoint.safetensors").stat().st_mtime_ns
    except OSError:
        return False, 0


def run_directory(cfg, resume, overwrite, passed=()):
    """The directory a run writes to, checked: see the module docstring. An earlier run
    an --overwrite left set aside is put back first (``recover_set_aside``). passed: names
    a new run without ``out`` is not to take (claim_run_directory's: taken meanwhile)."""
    if cfg.out is not None:
        out = Path(cfg.out)
    else:
        base = Path("runs") / Path(cfg.data).name
        taken = [base] + [base.with_name(f"{base.name}-{i}") for i in range(2, 10_000)]
        if resume:   # the latest run of this data set: the last checkpoint written
            existing = [p for p in taken if p.is_dir()]
            out = max(existing, key=lambda p: (*_last_written(p), taken.index(p)),
                      default=base)          # equal times: the higher number, as before
        else:            # nothing, or an empty folder no run holds
            out = next(p for p in taken if p not in passed and (
                not os.path.lexists(p) or (p.is_dir() and lock_holder(p) is None
                                           and not _held_files(p))))
    holder = lock_holder(out)          # (held since it was chosen: a run started with it)
    if holder is not None and cfg.out is None and not resume:
        return run_directory(cfg, resume, overwrite, (*passed, out))
    if holder is not None:
        raise DirectoryHeld(f"{out}: a run is using it ({holder}): wait for it to end, or "
                            f"give another --out")
    note = recover_set_aside(out)
    if note:
        warnings.warn(note, stacklevel=2)
    remove_stale_temporaries(out)
    data = data_folder(cfg.data)
    if data is not None and out.resolve().is_relative_to(data.resolve()):
        raise ValueError(f"{out}: the run directory is inside the data folder {cfg.data}, "
                         f"where its files would be read as images; give --out a folder "
                         f"outside it")
    if os.path.lexists(out) and not out.exists():
        raise ValueError(f"{out}: --out is a link to nothing ({os.readlink(out)}): give an "
                         f"existing folder or a new name")
    if resume:
        if not (out / "checkpoint.safetensors").is_file():
            raise ValueError(f"{out / 'checkpoint.safetensors'}: no checkpoint to resume from")
        return out
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: --out must be a directory, and this is a file")
    source = Path(cfg.init_from) if cfg.init_from else None
    if overwrite and source is not None and source.name in RUN_FILES and \
            source.parent.resolve() == out.resolve():
        raise ValueError(f"--from {source} is a file of {out}, which --overwrite replaces: "
                         f"give another --out, or copy the model elsewhere first")
    held = _held_files(out)
    if held and not overwrite:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        if not set(held) & set(RUN_FILES):
            raise ValueError(f"{out} holds files that are not a run's ({shown}): give "
                             f"another --out, or --overwrite to write the run beside them "
                             f"(it replaces only a run's own files: "
                             f"{', '.join(RUN_FILES[:3])}, ...)")
        resume = ("pass --resume to continue that run, "
                  if (out / "checkpoint.safetensors").is_file() else
                  "none is a checkpoint to resume from (a run stopped in its first epoch); "
                  "pass ")
        raise ValueError(f"{out} already holds files ({shown}): {resume}--overwrite to "
                         f"replace them, or another --out")
    # Said now, not at the first checkpoint after an epoch of training; nothing is made
    # yet (a run that fails its checks leaves no directory behind).
    held_by = next(p for p in (out, *out.parents) if p.exists())
    if not held_by.is_dir() or not os.access(held_by, os.W_OK | os.X_OK):
        why = "is a file" if not held_by.is_dir() else "is not writable"
        raise ValueError(f"{out}: the run directory (--out) cannot be made: {held_by} {why}")
    return out


def _check_same_data(comm, splits, cfg):
    """Under mpiexec: every rank loaded the same images, labels and class names and was
    given the same settings (checksums compared, comm.check_identical); else rank 0
    names the first that differs (the others stop with it). Ranks on machines whose data
    folders differ would otherwise take different batches, or fail in a collective with
    MPI's own error."""
    if comm.size < 2:
        return
    arrays = {"settings": _json_bytes(dataclasses.asdict(cfg)),
              "class names": _json_bytes([str(name) for name in splits.classes])}
    for part in ("train", "val", "test"):
        images, labels = getattr(splits, part) or (np.empty(0), np.empty(0))
        arrays[f"{part} images"], arrays[f"{part} labels"] = images, labels
    try:
        comm.check_identical(arrays, "the data or settings",
                             "Every rank must load the same data (the same files, on a "
                             "shared folder or as identical copies) with the same options")
    except RanksDiverged as err:
        raise (ValueError if comm.is_root else RootsError)(str(err)) from None


def _data_digest(splits):
    """SHA-256 of the training and validation images and labels as read (what a resumed
    run must train on again to go on as it began), and their count."""
    digest = hashlib.sha256()
    count = 0
    for part in (splits.train, splits.val):
        if part is not None:
            for array in part:
                digest.update(f"{array.dtype.str}{array.shape}".encode())
                digest.update(np.ascontiguousarray(array))
            count += len(part[0])
    return {"images": count, "sha256": digest.hexdigest()}


def _check_resumed_data(recorded, now, cfg, ckpt_path):
    """Refuse to resume on other training images than the run's (recorded: its
    checkpoint's "data", None for one written before it was kept): images added or
    removed since would redraw the validation split, changing which images the run
    trained on, and the mean the inputs are normalized by. now: _data_digest of the
    data read."""
    if recorded is None:
        return
    if not (isinstance(recorded, dict) and type(recorded.get("images")) is int
            and isinstance(recorded.get("sha256"), str)):
        raise ValueError(f"{ckpt_path}: checkpoint field 'data' must be {{'images': an int, "
                         f"'sha256': a str}}, got {recorded!r:.80}")
    if now == recorded:
        return
    change = (f"{now['images']:,} training and validation images where the run had "
              f"{recorded['images']:,}" if now["images"] != recorded["images"] else
              "other training or validation images than the run's (changed, renamed or "
              "read differently)")
    raise ValueError(f"{cfg.data} now holds {change}: the run cannot go on as it began. "
                     f"Resume with the data as it was, or start a new run (--out another "
                     f"folder, or --overwrite)")


def _resume_paths(cfg, given, recorded, log, ckpt_path):
    """The run's data folder and data root as this process finds them: where the run
    began (recorded: the absolute paths it kept), whatever the working directory is now;
    where that is gone, the path as the run was given it, or the --data / --data-root
    given now (a moved folder). The data's digest then checks that it is the same.
    Returns the names of the settings ("data", "data_root") whose given value names the
    folder read (not ignored, then)."""
    recorded = recorded if isinstance(recorded, dict) else {}
    agreed = set()

    def same(a, b):
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()

    def place(field, current, kept, offered, is_there, what, option):
        if isinstance(kept, str) and is_there(kept):
            found = current if is_there(current) and same(current, kept) else kept
        elif is_there(current):
            found = current
        elif offered is not None and is_there(offered):
            found = str(offered)
        else:
            began = f", nor where the run began ({kept})" if isinstance(kept, str) else ""
            raise ValueError(f"{ckpt_path}: the run's {what} {current} is not here{began}: "
                             f"give its place now with {option} PATH (the run checks that "
                             f"its images are the same)")
        if offered is not None and is_there(offered) and same(offered, found):
            agreed.add(field)
        if found != current:
            log(f"resuming {ckpt_path}: its {what} {current} is " + (
                f"read where the run began: {found}" if found == kept else
                f"not here; reading {found}"))
        return found

    def is_dir(path):
        return isinstance(path, str) and Path(path).expanduser().is_dir()

    if str(cfg.data).lower() not in DATASETS:
        cfg.data = place("data", cfg.data, recorded.get("data"), given.data,
                         lambda p: data_folder(p) is not None, "data folder", "--data")
    kept_root = recorded.get("data_root")
    if cfg.data_root is not None and any(map(is_dir, (cfg.data_root, kept_root,
                                                      given.data_root))):
        cfg.data_root = place("data_root", cfg.data_root, kept_root, given.data_root,
                              is_dir, "data root", "--data-root")
    return agreed


def _absolute_paths(cfg):
    """The run's data folder and data root as absolute paths (None where there is
    none), kept in its checkpoint for _resume_paths."""
    folder = data_folder(cfg.data)
    root = cfg.data_root
    return {"data": str(folder.resolve()) if folder is not None else None,
            "data_root": str(Path(root).expanduser().resolve()) if root is not None else None}


def _check_same_start(comm, model, state, optim_arrays):
    """Under mpiexec: every rank starts from the same architecture and weights (each
    reads the model file of --from, or the checkpoint of --resume, itself) and a resumed
    run from the same epoch, batch and optimizer state; else rank 0 names the first that
    differs. Ranks with stale copies of a run directory would otherwise fail in a
    collective with MPI's own error, or train on until the weights are found to differ."""
    if comm.size < 2:
        return
    why = ("Every rank must start from the same files (a shared run directory and model "
           "file, or identical copies)")
    position = None if state is None else {
        key: state.get(key) for key in ("epoch", "batch", "optimizer", "schedule")}
    try:    # the architecture first: the arrays compared next then have the same names
        comm.check_identical({"architecture": _json_bytes(model.get_config()),
                              "checkpoint position": _json_bytes(position)},
                             "the starting model or checkpoint", why)
        arrays = dict(model.state_dict())
        arrays.update((f"optimizer: {key}", value)
                      for key, value in (optim_arrays or {}).items())
        comm.check_identical(arrays, "the starting weights", why)
    except RanksDiverged as err:
        raise (ValueError if comm.is_root else RootsError)(str(err)) from None


def _json_bytes(value):
    """value as canonical JSON bytes, an array that check_identical compares."""
    return np.frombuffer(json.dumps(value, sort_keys=True).encode(), np.uint8)


def check_memory(need, what, processes=1, hint=None):
    """limits.check_memory for training (processes: this machine's ranks, each holding
    as much): what to shrink is a training option (hint, by default the image size, the
    batch size or the number of images)."""
    limits.check_memory(need, "training", what, hint or "use a smaller --image-size or "
                        "--batch-size, or --limit N images", processes)


def training_bytes(model, input_shape, cfg, batch=None):
    """summary's training memory for a batch of ``batch`` images (default the run's; a
    rank's share under MPI) (a lower bound: activations and their gradients, the
    parameters times the optimizer's multiplier, the input batch), plus what the run
    keeps beside it: the weights' moving average (--ema), and while a checkpoint is
    written, two copies of its tensors (the safetensors library's); 0 for a model summary
    cannot walk (no estimate, so no refusal)."""
    from convnet.analysis import OPTIMIZER_MULTIPLIERS, summary
    optimizer = cfg.optimizer if cfg.optimizer in OPTIMIZER_MULTIPLIERS else "adam"
    try:
        memory = summary(model, input_shape, batch_size=batch or cfg.batch_size,
                         optimizer=optimizer, dtype=cfg.dtype).memory
    except (ValueError, TypeError):     # an estimate, never a reason to refuse a run
        return 0
    weights = model.num_params() * np.dtype(cfg.dtype).itemsize
    averaged = weights if cfg.ema else 0
    # the checkpoint: the weights and the optimizer's state (the multiplier less the
    # gradients, which it does not keep), and the moving average
    tensors = weights * (OPTIMIZER_MULTIPLIERS[optimizer] - 1) + averaged
    return memory["training_total"] + averaged + 2 * tensors


LOCK = ".convnet-run.lock"     # a run's hold on its directory (RunLock)


class DirectoryHeld(ValueError):
    """The run directory is held by another run (RunLock)."""


def claim_run_directory(cfg, resume, overwrite, stack):
    """run_directory's choice, held (a RunLock entered into ``stack``) until the run ends.
    A new run without ``out`` whose choice another run took meanwhile (runs started
    together) takes the next free name, as it would have a moment later."""
    passed = []
    for _ in range(100):
        out = run_directory(cfg, resume, overwrite, passed)
        try:
            lock = RunLock(out)
        except DirectoryHeld:
            if cfg.out is not None or resume:
                raise
            passed.append(out)
            continue
        if cfg.out is None and not resume and _held_files(out):   # written meanwhile
            lock.__exit__(None, None, None)
            passed.append(out)
            continue
        stack.enter_context(lock)
        return out
    raise DirectoryHeld(f"{out}: no free run directory among the next 100 names; give --out")


PLAN_PREFIX = ".convnet-plan-"   # --time-limit's timing writes, in the run directory


def _held_files(out):
    """The names of what ``out`` holds, sorted; a LOCK that no run holds and a timing
    folder of --time-limit left out (what a killed run leaves)."""
    return sorted(p.name for p in out.iterdir() if p.name != LOCK
                  and not p.name.startswith(PLAN_PREFIX)) if out.is_dir() else []


def lock_holder(out):
    """Who holds ``out`` ("pid N on host H", as LOCK says), or None. A run holds its
    directory with a kernel lock (flock) on LOCK, which ends with the process however it
    ends (Ctrl-C, a kill, an MPI rank ended by MPI_Abort): a LOCK file left behind holds
    nothing. None too where the file system has no locks."""
    if fcntl is None:
        return None
    try:
        fd = os.open(out / LOCK, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:                      # none there, or not a file we may read
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):   # a FIFO planted there: RunLock says
            return None
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        words = os.read(fd, 300).decode("utf-8", "replace").split()
        return f"pid {words[0]} on {words[1]}" if len(words) == 2 else "another run"
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


class RunLock:
    """Rank 0's hold on its run directory, from the checks to the end of the run and its
    report: an exclusive flock on LOCK, which holds this process's id and host for the
    message another run gets. Another run (new, --resume or --overwrite) on a held
    directory is refused, where two had written over each other's files until the first
    checkpoint made the directory. The directory is made here; at the end LOCK is
    removed, and so are the folders made here if nothing else was written in them (a run
    that fails its checks leaves no directory)."""

    def __init__(self, out):
        self.out, self.fd = Path(out), None
        self.made = [p for p in (self.out, *self.out.parents) if not p.exists()]
        self.out.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return
        path = self.out / LOCK
        for _ in range(5):           # a lock_holder() looking in, or a run just ending
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK
                             | getattr(os, "O_NOFOLLOW", 0), 0o644)
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)
                    raise OSError(0, "not a regular file")
            except OSError as err:   # a link or a FIFO planted there, or no permission
                self._remove_made()
                # a read-only folder, whether or not a killed run left its lock there
                # (where deleting the lock would not help)
                if err.errno == errno.EROFS or (
                        err.errno in (errno.EACCES, errno.EPERM)
                        and not (os.path.lexists(path) and os.access(self.out, os.W_OK))):
                    raise ValueError(f"{self.out}: the run directory is not writable "
                                     f"({err.strerror}): a run writes its lock, checkpoints "
                                     f"and model there; copy the run to a writable "
                                     f"folder") from None
                raise ValueError(f"{path}: the run's lock file cannot be made: "
                                 f"{err.strerror or err} (if no run holds it, delete "
                                 f"it)") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                time.sleep(0.05)
                continue
            except OSError:          # a file system without locks: the run goes unlocked
                os.close(fd)
                return
            try:                     # the holder may have removed the file as it ended
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            self.fd = fd
            return
        self._remove_made()
        raise DirectoryHeld(f"{self.out}: a run is using it ("
                            f"{lock_holder(self.out) or 'another run'}): wait for it to end, "
                            f"or give another --out")

    def __enter__(self):
        return self

    def __exit__(self, *error):
        if self.fd is not None:
            (self.out / LOCK).unlink(missing_ok=True)     # while still held
            os.close(self.fd)
            self.fd = None
        self._remove_made()

    def _remove_made(self):
        for folder in self.made:          # innermost first; only while empty
            try:
                folder.rmdir()
            except OSError:
                break
        self.made = []


class SetAside:
    """An earlier run's files (RUN_FILES) in ``out``, moved by ``begin()`` into a hidden
    folder beside them just before the new run writes its first file (its first best
    model, or its first checkpoint): ``drop()`` deletes them once the new run has written
    its first checkpoint; ``restore()`` puts them back if it fails before that. A failing
    run loses nothing, and until its first epoch ends the earlier run stays where it was
    (readable by eval; and under mpiexec, where another rank's failure ends rank 0
    before it can restore anything, not hidden until a later run puts it back).

    The files go into ``.replacing-*``, renamed ``.replaced-*`` once all are in: a kill
    or Ctrl-C in the middle leaves a folder whose put_back takes nothing of the earlier
    run's that was still in place (the new run has written nothing yet)."""

    def __init__(self, out):
        self.out, self.folder, self.begun, self.dropped = out, None, False, False

    def begin(self):
        if self.begun:
            return
        self.begun = True
        held = [name for name in RUN_FILES if (self.out / name).exists()]
        if held:
            self.folder = Path(tempfile.mkdtemp(prefix=MOVING, dir=self.out))
            for name in held:
                os.replace(self.out / name, self.folder / name)
            done = self.out / (MOVED + self.folder.name[len(MOVING):])
            os.replace(self.folder, done)
            self.folder = done

    def drop(self):
        self.dropped = True
        folder, self.folder = self.folder, None     # never restored once the drop starts
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def restore(self):
        folder, self.folder = self.folder, None
        if folder is not None:            # renamed as the Ctrl-C came: by its suffix
            suffix = folder.name.split("-", 1)[1]
            for prefix in (MOVING, MOVED, RESTORING):
                if (self.out / (prefix + suffix)).is_dir():
                    put_back(self.out, self.out / (prefix + suffix))
                    break

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if kind is None:
            self.drop()
        elif self.folder is not None and not self.dropped:
            self.restore()
            error.earlier_restored = True      # the command line's resume hint says so
        elif not self.begun and any((self.out / name).exists() for name in RUN_FILES):
            error.earlier_restored = True      # never moved: there as it was


# A SetAside's folder: while it is filled, once it is full, while it is emptied back.
MOVING, MOVED, RESTORING = ".replacing-", ".replaced-", ".restoring-"


class AsideElsewhere:
    """What a rank other than 0 knows of rank 0's SetAside under an --overwrite: whether
    the new run has written its first checkpoint (``dropped``, set where rank 0's
    drop() runs). A Ctrl-C or error on this rank before then ends every rank, rank 0
    before it can restore anything: the earlier run stays in out, or set aside for the
    next run there to put back (recover_set_aside), and the error says so."""

    def __init__(self):
        self.dropped = False

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if kind is not None and not self.dropped:
            error.earlier_kept = True          # the command line's resume hint says so


def put_back(out, folder):
    """Move an earlier run's files from ``folder`` (a SetAside's) back into ``out`` and
    remove the folder. From a whole set (``.replaced-*``) they take the place of the
    failed run's: first the failed run's other files are deleted, then the folder is
    renamed ``.restoring-*`` and its files moved back, so that a put_back cut short and
    done again deletes nothing of the earlier run's already back. From one a kill cut
    short while filling (``.replacing-*``) or emptying (``.restoring-*``), they join the
    earlier run's files in place. The checkpoint goes back last: until it is back,
    recover_set_aside puts back the rest."""
    if folder.name.startswith(MOVED):
        for name in RUN_FILES:
            if not (folder / name).exists():
                (out / name).unlink(missing_ok=True)
        emptying = out / (RESTORING + folder.name[len(MOVED):])
        os.replace(folder, emptying)
        folder = emptying
    for name in sorted(RUN_FILES, key=lambda n: n == "checkpoint.safetensors"):
        if (folder / name).exists():
            os.replace(folder / name, out / name)
    shutil.rmtree(folder, ignore_errors=True)


def recover_set_aside(out):
    """An earlier run's files left set aside in ``out`` (a run under mpiexec killed, or
    killed itself, before its first checkpoint, its SetAside never restored): put back
    where ``out`` has no checkpoint, else deleted (the newer run replaced them); a set
    that a kill cut short while filling it (``.replacing-*``: the new run wrote nothing)
    or emptying it (``.restoring-*``) is put back.
    Returns a note, or None where there was nothing."""
    def found(prefix):                   # a link could name another run's folder
        return sorted(p for p in out.glob(f"{prefix}*") if p.is_dir() and not
                      p.is_symlink()) if out.is_dir() else []
    cut = found(MOVING) + found(RESTORING)
    for folder in cut:
        put_back(out, folder)
    left, put = found(MOVED), bool(cut)
    if left and not (out / "checkpoint.safetensors").exists():
        put_back(out, left.pop())
        put = True
    for folder in left:
        shutil.rmtree(folder, ignore_errors=True)
    return (f"{out}: the earlier run set aside by an --overwrite that stopped before its "
            f"first checkpoint is put back") if put else None


STALE_SECONDS = 600   # a temporary file unwritten this long belongs to no live write


RUN_ONLY = ("checkpoint.safetensors", "best.json", "best.safetensors", "history.json")


def remove_stale_temporaries(out):
    """Delete what a kill in the middle of a write left in ``out``: the temporary files
    (``.checkpoint.safetensors.*.tmp``) atomic_write makes beside each of RUN_FILES, as
    large as the file they were to become, and --time-limit's timing folders. Those of
    what only a run writes (RUN_ONLY, the timing folders), at once: this is called where
    no run holds ``out``; the others (a model or report that convert or report may be
    writing there now), once STALE_SECONDS have passed since their last write."""
    if not out.is_dir():
        return
    now = time.time()
    for name in RUN_FILES:
        for path in out.glob(f".{name}.*.tmp"):
            try:
                info = path.lstat()
            except OSError:
                continue
            if path.is_file() and not path.is_symlink() and (
                    name in RUN_ONLY or now - info.st_mtime > STALE_SECONDS):
                path.unlink(missing_ok=True)
    for path in out.glob(f"{PLAN_PREFIX}*"):      # --time-limit's timing writes: a run's
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _ignored_settings(given, saved):
    """The settings given for a resumed run (those not at their defaults) that differ
    from the run's own, as "name=value, ...": resuming keeps the run's settings."""
    default = TrainConfig()
    return ", ".join(f"{f.name}={getattr(given, f.name)!r}" for f in dataclasses.fields(given)
                     if f.name != "out"
                     and getattr(given, f.name) != getattr(default, f.name)
                     and getattr(given, f.name) != getattr(saved, f.name))


@contextlib.contextmanager
def _interrupt_names(out):
    """A KeyboardInterrupt (Ctrl-C), or an OSError (a full disk), inside carries the run
    directory as ``run_directory``: the command line says how to continue the run."""
    try:
        yield
    except (KeyboardInterrupt, OSError) as interrupt:
        if not hasattr(interrupt, "run_directory"):
            interrupt.run_directory = out
        raise


@contextlib.contextmanager
def _size_hinted(spec, input_shape):
    """A ValueError inside gets _size_hint's line, where it has one."""
    try:
        yield
    except ValueError as error:
        hint = _size_hint(spec, input_shape) if spec is not None else None
        if hint is None:
            raise
        lines = error.lines if isinstance(error, MultilineError) else (str(error),)
        raise MultilineError(*lines, f"    {hint}") from None


@contextlib.contextmanager
def _resumed_settings(ckpt_path):
    """On --resume (ckpt_path not None): a ValueError inside, raised by a setting the
    checkpoint's config gave (its data, channels, stages to freeze, batch size), also
    names the checkpoint, where the error does not already."""
    try:
        yield
    except ValueError as error:
        # (a RootsError is rank 0's error, passed on: rank 0 says it, and names what it must)
        if ckpt_path is None or str(ckpt_path) in str(error) or isinstance(error, RootsError):
            raise
        lines = error.lines if isinstance(error, MultilineError) else (str(error),)
        raise MultilineError(*lines, f"    (the settings come from {ckpt_path}, which "
                                     f"--resume continues)") from error


def _size_hint(spec, input_shape):
    """Where a zoo net or notation with an INPUT of its own is built for another volume
    than the data's: what the two are and the options that bring the data to the net's;
    else None."""
    from convnet.layers.base import counting_only
    from convnet.spec import is_notation
    from convnet.zoo import CARDS
    own = None
    if spec in CARDS:
        own = CARDS[spec][0]
    elif isinstance(spec, str) and is_notation(spec):
        try:
            with counting_only():
                own = _notation_input(spec)
        except ValueError:
            return None
    if own is None or tuple(own) == tuple(input_shape) or len(own) != 3:
        return None
    (c, h, w), (dc, dh, dw) = own, input_shape
    options = [f"--image-size {h}x{w}" if (h, w) != (dh, dw) else "",
               f"--channels {c}" if c != dc and c in (1, 3) else ""]
    return (f"(the data's images are {dw}x{dh}x{dc} and {spec:.60} is built for "
            f"{w}x{h}x{c}: {' '.join(o for o in options if o) or 'another data set'} "
            f"brings them to it)")


def _volume_text(shape):
    """(C, H, W) as the notes write a volume: W x H x D."""
    return f"{shape[2]}x{shape[1]}x{shape[0]}" if len(shape) == 3 else str(tuple(shape))


def _notation_input(text):
    """The per-sample input (C, H, W) that notation's INPUT names (None without one)."""
    from convnet.models import from_notation
    return getattr(from_notation(text), "input_shape", None)


def _check_fine_tune_split(info, splits, cfg):
    """Refuse to fine-tune a model on the image folder it was trained on with a test
    split drawn otherwise (another --seed or --test-fraction): the new test images would
    include images the model trained on (all 6 of 6, in the review that found it)."""
    drawn, recorded = splits.drawn_from, info.get("split_files")
    if not drawn or not recorded:
        return
    if recorded != drawn:        # other files: other data, or this folder changed since
        if info.get("data") == splits.name:
            warnings.warn(
                f"--from {cfg.init_from} was trained on a folder also named {splits.name} "
                f"that held other files ({recorded['files']:,} images; now "
                f"{drawn['files']:,}): if it is this folder, changed, the test images held "
                f"out now may include images the model trained on; train/ and test/ "
                f"folders keep them apart", stacklevel=3)
        return
    was = (info.get("split_seed"), info.get("test_fraction"))
    if was != (cfg.seed, _fraction(cfg.test_fraction)):
        seed, fraction = was
        given = "--test-fraction" if cfg.seed == seed else "--seed"
        shown = fraction if fraction is not None else "the default"
        raise ValueError(
            f"--from {cfg.init_from} was trained on {cfg.data} with its test images held out "
            f"by seed {seed} and test fraction {shown}; "
            f"this run's {given} holds out others, some of which the model trained on: "
            f"give --seed {seed}"
            + (f" --test-fraction {fraction}" if fraction is not None else "")
            + ", or fine-tune on train/ and test/ folders")


def _check_before_data(cfg):
    """Settings that are wrong whatever the data, refused before it is read (a large data
    set takes seconds and gigabytes to read): conflicting augmentation options, and a
    --model whose notation does not parse or that names no zoo net, file or notation."""
    from convnet.models.notation import check_notation
    from convnet.spec import is_notation, resolve_model
    from convnet.zoo import MODELS
    if cfg.augment is False and (cfg.flip or (cfg.translate or 0) > 0):
        shaping = "flip=True" if cfg.flip else f"translate={cfg.translate}"
        raise ValueError(f"{shaping} shapes the augmentation, and augment=False turns it off "
                         f"(--no-augment): give one or the other")
    model = cfg.model
    if model is None or cfg.init_from:
        return
    if is_notation(model):
        check_notation(model)
    elif model not in MODELS and not Path(model).expanduser().exists():
        resolve_model(model)       # names no model: its error ("not a zoo name, ...")


def _initial_model(cfg, log):
    """The model to fine-tune from cfg.init_from (a model file, or weights with cfg.model)."""
    is_weights = Path(cfg.init_from).suffix.lower() in WEIGHTS
    if cfg.model is not None and not is_weights:
        raise ValueError(f"{cfg.init_from}: a model file has its own architecture: drop "
                         f"--model (it names the architecture of a weights file)")
    given = None
    if is_weights and isinstance(cfg.model, str) and is_notation(cfg.model) \
            and not re.match(r"\s*INPUT\s+(size\s*=\s*)?[0-9]", cfg.model, re.IGNORECASE):
        if not (cfg.channels and cfg.image_size):     # notation with no INPUT size
            raise ValueError(f"--model {cfg.model:.80}: the notation has no INPUT size for "
                             f"the weights of --from {cfg.init_from}: start it with INPUT "
                             f"WxHxD (the size they were trained at), or give --image-size "
                             f"and --channels")
        given = (cfg.channels, *cfg.image_size)
    try:
        model = resolve_model(cfg.init_from, architecture=cfg.model if is_weights else None,
                              input_shape=given)
    except OpenInputError:   # an ONNX graph's open input size: the data's, as given
        if not (cfg.channels and cfg.image_size):
            raise
        model = resolve_model(cfg.init_from, input_shape=(cfg.channels, *cfg.image_size))
    if not model.trained and (getattr(model, "info", None) or {}).get("trained") is False:
        raise ValueError(f"--from {cfg.init_from}: the file records fresh weights (convert "
                         f"wrote it from a zoo name or notation), not trained ones: train "
                         f"the net from scratch with --model, or give a trained model")
    if not model.trained:          # a zoo name or notation: fresh random weights
        raise ValueError(f"--from {cfg.init_from}: not a file of trained weights (a zoo "
                         f"name or notation has random ones); train it from scratch with "
                         f"--model, or give a saved model or weights file")
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError(f"{cfg.init_from}: the model has no input size")
    if len(shape) != 3:
        raise ValueError(f"{cfg.init_from}: training needs a model whose input is an image "
                         f"(C, H, W); its input_shape is {tuple(shape)!r} (a model that "
                         f"takes vectors: export it with its flatten, nn.Flatten(), first)")
    log(f"fine-tuning {cfg.init_from} ({model.num_params():,} parameters)")
    return model


def train(cfg: TrainConfig, resume=False, log=print, progress=True, overwrite=False,
          comm=None, then=None):
    """Train a model as ``cfg`` says; checkpoint into its run directory; return a TrainResult.

    With resume=True, continue from the run directory's checkpoint.safetensors: the run
    picks up at the saved epoch and batch with the saved weights, optimizer, schedule and
    RNG states. A new run refuses a directory holding files unless overwrite=True, which
    replaces the files of an earlier run (RUN_FILES), once the data, the model and every
    setting have been checked and the new run has written its first checkpoint (a run
    that fails before then leaves them as they were: ``SetAside``).
    resume and overwrite together are refused.

    comm: the communicator (convnet.train.distributed); default: the one this process was
    started with, a plain one unless launched by mpiexec with several processes. Every
    rank calls train with the same arguments and returns the same weights; only rank 0
    logs, shows progress and writes files.

    then: a function of the TrainResult that rank 0 calls before the run lets go of its
    directory (RunLock), as part of the run (the command line writes report.html with
    it, and --time-limit keeps time for that: the test images once more, on one process).
    """
    if resume and overwrite:
        raise ValueError("resume=True continues the earlier run and overwrite=True replaces "
                         "it: pass one of them")
    safetensors_module()     # before the data is read: the first checkpoint needs it
    with contextlib.ExitStack() as stack:
        result = _train(cfg, resume, log, progress, overwrite, comm, stack, then is not None)
        if then is not None and (comm if comm is not None else from_environment()).is_root:
            try:
                then(result)
            except KeyboardInterrupt as interrupt:   # the run is done: nothing to resume
                interrupt.run_directory = None
                raise
        return result


def _train(cfg, resume, log, progress, overwrite, comm, stack, reported):
    """train's body; ``stack`` holds use_algorithm(cfg.conv_algorithm) once cfg is final."""
    started = time.perf_counter()
    comm = from_environment() if comm is None else comm
    if not comm.is_root:
        log, progress = (lambda *args: None), False
    elif log is print:   # a path may hold a line break or a terminal escape; under a
        flush = comm.size > 1    # launcher, into its pipe: each line as it comes

        def log(text):
            print(limits.printable(text), flush=flush)
    log(describe(comm))
    cfg = dataclasses.replace(cfg.check())   # the caller's config stays as it was given
    if cfg.freeze and cfg.init_from is None and not resume:   # a run of old may resume
        raise ValueError("freeze (--freeze) keeps stages of the model that init_from "
                         "(--from) starts from; without it they would stay at their random "
                         "start: give --from MODEL_FILE, or drop --freeze")
    out = Path(_on_root(comm, lambda: str(claim_run_directory(cfg, resume, overwrite, stack))))
    stack.enter_context(_interrupt_names(out))
    ckpt_path = out / "checkpoint.safetensors"
    ckpt = None
    ema_arrays = {}
    if resume:
        *ckpt, ema_arrays = load_checkpoint(ckpt_path, ema=True)
        given, cfg = cfg, TrainConfig.from_dict(ckpt[2].get("config"), f"{ckpt_path}: config")
        recorded_data = {"data": cfg.data, "data_root": cfg.data_root}
        with _resumed_settings(ckpt_path):
            agreed = _resume_paths(cfg, given, ckpt[2].get("paths"), log, ckpt_path)
        # a --data naming the folder read is not ignored, whatever its spelling
        taken = dataclasses.replace(given, **{f: recorded_data[f] for f in agreed})
        ignored = _ignored_settings(taken, dataclasses.replace(cfg, **recorded_data))
        if ignored:
            log(f"resuming {ckpt_path}: the run's own settings apply; ignored: {ignored}")
        named = takes_root(cfg.data)                # a data set with files of its own
        if (cfg.data_root is not None and not named) or (
                cfg.download and str(cfg.data).lower() != "fashion-mnist"):
            log(f"resuming {ckpt_path}: its data_root/download, which {cfg.data} takes no "
                f"longer, are left out")     # written before they were refused there
            cfg.data_root = cfg.data_root if named else None
            cfg.download = cfg.download and str(cfg.data).lower() == "fashion-mnist"
    start_model = _initial_model(cfg, log) if cfg.init_from and ckpt is None else None
    if ckpt is None:       # what needs no data is checked before the data is read
        _check_before_data(cfg)
    for stage in (cfg.freeze or ()) if start_model is not None else ():
        try:                             # the stages named, before the data is read
            start_model._stages(str(stage))
        except ValueError as err:
            raise ValueError(f"--freeze {stage}: --from {cfg.init_from} has no "
                             f"{str(err).split(': no ', 1)[1]}") from None
    if start_model is not None:   # the data goes to the model's input volume
        channels, *size = start_model.input_shape
        if cfg.channels not in (None, channels):
            raise ValueError(f"--channels {cfg.channels}: the model --from {cfg.init_from} "
                             f"takes {channels} channel(s); give --channels {channels}, or "
                             f"leave it out")
        cfg.channels = cfg.channels or channels
        cfg.image_size = cfg.image_size or tuple(size)

    def load():
        return load_dataset(cfg.data, root=cfg.data_root, download=cfg.download,
                            image_size=cfg.image_size, channels=cfg.channels, seed=cfg.seed,
                            test_fraction=_fraction(cfg.test_fraction))
    resumed = ckpt_path if resume else None
    with _resumed_settings(resumed):
        if cfg.download and comm.size > 1:   # rank 0 downloads; the others read its files
            splits = _on_root(comm, load, then_all=True)
        else:
            splits = load()
    _check_same_data(comm, splits, cfg)
    paths = _absolute_paths(cfg)
    data_digest = _data_digest(splits)
    if ckpt is not None:      # the test split drawn again: from the files it was drawn from
        recorded = check_info(ckpt[2].get("info") or {}, f"{ckpt_path}: info")
        check_drawn_split(recorded.get("split_files"), splits, cfg.data, "the run")
        names = recorded.get("classes")
        if splits.kind in ("mnist", "fashion-mnist") and names == [
                str(i) for i in range(len(splits.classes))]:   # IDX labels by number,
            splits.classes = list(names)      # as the run recorded them when it began
    if start_model is not None:
        _check_fine_tune_split(getattr(start_model, "info", None) or {}, splits, cfg)
    input_shape, num_classes = splits.input_shape, len(splits.classes)
    stack.enter_context(use_algorithm(cfg.conv_algorithm))
    if cfg.conv_algorithm != "auto":
        log(f"convolutions: {cfg.conv_algorithm} wherever it can run")
    batch_given, epochs_given = cfg.batch_size is not None, cfg.epochs
    # The defaults of the named data set the files are (CIFAR-10's in cifar-10-batches-py/),
    # else OTHER's, whatever the folder's name; a resumed run's as it began (by the data's
    # name for a run from before "defaults" was recorded).
    defaults = splits.kind if splits.kind in DEFAULTS else OTHER_NAME
    if ckpt is not None:
        defaults = recorded.get("defaults", splits.name)
    if ckpt is None and (cfg.translate or 0) >= min(input_shape[1:]):
        raise ValueError(f"--translate {cfg.translate}: shifts of up to that many pixels "
                         f"move the {input_shape[2]}x{input_shape[1]} images (W x H) out of "
                         f"view; give at most {min(input_shape[1:]) - 1}")
    if ckpt is None and cfg.augment is None and (cfg.flip or (cfg.translate or 0) > 0) \
            and not defaults_for(defaults)["augment"]:
        # an augmentation asked for by its shape turns augmentation on, where the data
        # set's default has it off (it had been ignored without a word)
        cfg.augment = True                   # and what was not asked for stays off
        cfg.flip, cfg.translate = bool(cfg.flip), cfg.translate or 0
        asked = " and ".join(text for text, given in (
            ("--flip", cfg.flip), (f"--translate {cfg.translate}", cfg.translate)) if given)
        log(f"{asked} turns augmentation on (the defaults for {defaults} have none): "
            f"only what is asked for")
    cfg = cfg.resolved(defaults, input_shape, num_classes)
    cfg.out = str(out)
    dtype = np.dtype(cfg.dtype)
    check_memory(prepare_bytes(splits, cfg.limit, dtype), "the data set as floats "
                 f"({len(splits.train[0]):,} training images at "
                 f"{'x'.join(map(str, input_shape))})", comm.local_size,
                 hint="use a smaller --image-size, or --limit N images")
    (x_train, y_train), (x_val, y_val), (x_test, y_test), norm = prepare(
        splits, _fraction(cfg.val_fraction), cfg.limit, cfg.seed, dtype)
    # what a shift pads with: a 0 pixel, normalized (or 0 after normalizing: the mean)
    zero_pixel = norm.zero(dtype) if cfg.shift_fill == "black" else 0
    if not batch_given:   # the default batch, on a data set smaller than it
        cfg.batch_size = min(cfg.batch_size, len(x_train))

    head = None                                  # a new head made for the data's classes
    if ckpt is not None:
        model_state, optim_arrays, state = ckpt
        model = from_config(state.get("architecture"), where=f"{ckpt_path}: architecture",
                            max_params=sum(v.size for v in model_state.values()),
                            weights=f"{ckpt_path}'s model tensors")
        try:
            model.load_state_dict(model_state)
        except ValueError as err:
            raise ValueError(f"{ckpt_path}: {err}") from None
    elif start_model is not None:
        state, model = None, start_model
        model = _as_dtype(model, dtype)
        known = (getattr(model, "info", None) or {}).get("classes")
        # the model's class names and the data's, compared as Unicode's composed form
        ours = [nfc(c) for c in known] if known else None
        theirs = [nfc(c) for c in splits.classes] if known else None
        position = {name: i for i, name in enumerate(ours or ())}
        own = tuple(getattr(model, "input_shape", None) or input_shape)
        try:
            scores = model.output_shape(input_shape)
        except ValueError as err:   # --image-size or --channels other than the model's
            raise ValueError(f"--from {cfg.init_from} takes {_volume_text(own)} images; the "
                             f"data's, {_volume_text(input_shape)} (--image-size, "
                             f"--channels), do not fit its layers: {err}") from None
        if scores != (num_classes,):
            given = scores[0] if len(scores) == 1 else _volume_text(scores)
            _check_head(model, cfg, f"gives {given} scores per image and the data has "
                                    f"{num_classes} classes")
            old = _head_text(model)
            head = replace_head(model, num_classes, np.random.default_rng(cfg.seed))
            try:
                model.output_shape(input_shape)
            except ValueError as err:         # layers after the FC sized for its classes
                raise ValueError(f"--from {cfg.init_from}: its last FC layer ({head}, "
                                 f"{old}) is not its output: the layers after it take its "
                                 f"outputs, and a new head for the data's {num_classes} "
                                 f"classes cannot feed them ({err}); fine-tune a model that "
                                 f"ends in its FC layer") from None
            log(f"new head: layer {head}, {old}, made anew as {_head_text(model)} for the "
                f"data's {num_classes} classes")
        elif ours != theirs and sorted(ours) == sorted(theirs) and (kept := reorder_head(
                model, [position[name] for name in theirs])) is not None:
            log(f"keeping the model's head ({kept}), its outputs reordered: the data's "
                f"classes are the model's in another order")
        elif ours != theirs:
            _check_head(model, cfg, "names other classes than the data's")
            head = replace_head(model, num_classes, np.random.default_rng(cfg.seed))
            log(f"new head: layer {head}, made anew: the model's {len(known)} classes are "
                f"not the data's "
                f"({', '.join(map(str, known[:4]))}{', ...' if len(known) > 4 else ''} "
                f"against {', '.join(splits.classes[:4])}"
                f"{', ...' if num_classes > 4 else ''})")
        else:
            log(f"keeping the model's head: {num_classes} outputs, as many as the data's "
                f"classes" + (", the same names" if known else ""))
    else:
        state = None
        with _size_hinted(cfg.model, input_shape):
            model = resolve_model(cfg.model, input_shape=input_shape, num_classes=num_classes,
                                  rng=np.random.default_rng(cfg.seed),
                                  input_name="the data's volume")
        model = _as_dtype(model, dtype)   # the weights as drawn (a zoo net's torchvision
                                          # init too), not drawn again by each layer
    with _resumed_settings(resumed):
        model.input_shape = input_shape
        if cfg.freeze:
            model.freeze(*cfg.freeze)
            if ckpt is None and head is not None and not any(
                    key.startswith(f"{head}.") for key in model.trainable_params()):
                raise ValueError(f"--freeze {' '.join(cfg.freeze)} holds the new head {head} at "
                                 f"its random start; freeze the stages before it")
            if not model.trainable_params():
                raise ValueError(f"--freeze {' '.join(cfg.freeze)} leaves nothing to train: "
                                 f"every parameter is frozen")
        _check_same_start(comm, model, state, optim_arrays if ckpt is not None else None)
        with _size_hinted(None if ckpt is not None or cfg.init_from else cfg.model, input_shape):
            out_shape = model.output_shape(input_shape)
        if out_shape != (num_classes,):
            has_fc = any(isinstance(layer, Linear) for _, layer in model.named_layers())
            fix = (f"end the model with FC {num_classes}" if len(out_shape) == 1 else
                   f"it must give one vector of {num_classes} scores: put a Flatten() before "
                   f"its FC layers (an FC layer on a volume acts on the last axis alone)"
                   if has_fc else f"it gives a volume: end it with FLATTEN -> FC {num_classes}")
            raise ValueError(f"model gives {out_shape} scores per image but {cfg.data} has "
                             f"{num_classes} classes: {fix}")

        batches_per_epoch = len(x_train) // cfg.batch_size
        if batches_per_epoch == 0:
            raise ValueError(f"batch size {cfg.batch_size} is larger than the {len(x_train)} "
                             f"training images")
    if cfg.batch_size < comm.size:
        most = "1 process" if cfg.batch_size == 1 else f"{cfg.batch_size} processes"
        fix = (f"resume it on at most {most} (a resumed run keeps its batch size)"
               if ckpt is not None else
               "raise --batch-size or start fewer processes")
        raise ValueError(f"batch size {cfg.batch_size} is smaller than the {comm.size} "
                         f"processes: each takes its share of every batch (at least one "
                         f"image); {fix}")
    share = cfg.batch_size // comm.size if comm.size > 1 and not cfg.sync_bn \
        else cfg.batch_size         # the fewest images one batch norm layer normalizes
    # (one image's values per channel: 1 for an FC's outputs, or a CONV's 1x1 volume)
    alone = [layer for _, layer, shape in layer_inputs(model, input_shape)
             if isinstance(layer, (BatchNorm1d, BatchNorm2d)) and math.prod(shape[1:]) == 1]
    if share < 2 and alone:
        kind = ("FC outputs (BatchNorm1d)" if isinstance(alone[0], BatchNorm1d) else
                "a 1x1 volume (BatchNorm2d)")
        per = (f"a share of {share} image (of each batch of {cfg.batch_size} on "
               f"{comm.size} processes, --no-sync-bn)" if share != cfg.batch_size
               else f"batches of {cfg.batch_size} image")
        most = cfg.batch_size // 2
        fix = ("raise --batch-size" + (" or synchronize batch norm"
                                       if share != cfg.batch_size else "")
               if ckpt is None else
               f"resume it on at most {'1 process' if most == 1 else f'{most} processes'} "
               f"(a resumed run keeps its batch size and batch norm)")
        raise ValueError(f"batch norm over {kind} needs at least 2 images to normalize, "
                         f"and it would get {per}: {fix}")
    per_rank = -(-cfg.batch_size // comm.size)       # the most images one rank takes
    check_memory(training_bytes(model, input_shape, cfg, per_rank)
                 + sum(x.nbytes for x in (x_train, x_val, x_test)),
                 f"the data and a batch of {per_rank} with its activations and the "
                 f"parameters", comm.local_size)
    params = model.trainable_params()
    if cfg.time_limit and ckpt is None:
        cfg.epochs = plan_epochs(cfg, model, x_train, y_train, len(x_val), len(x_test),
                                 batches_per_epoch, started, comm, log, reported)
        if epochs_given is not None and epochs_given < cfg.epochs:   # --epochs: a cap
            cfg.epochs = epochs_given
            log(f"--epochs {epochs_given}: the run stops there, before the time limit")
    optimizer = make_optimizer(cfg.optimizer, params, cfg.lr, weight_decay=cfg.weight_decay)
    schedule = make_schedule(cfg.schedule, optimizer, total_steps=cfg.epochs * batches_per_epoch)
    ema = WeightEMA(model, cfg.ema, warmup=True) if cfg.ema else None
    info = {"classes": list(splits.classes), "data": splits.name, "scale": splits.scale,
            "channels": splits.channels, "mean": np.ravel(norm.mean).tolist(),
            "std": np.ravel(norm.std).tolist(),
            "brightness": brightness_range(splits.train[0], splits.scale),
            "border": border_range(splits.train[0], splits.scale),
            "resize": "bilinear" if splits.resized else None,
            "split_seed": cfg.seed, "tta": cfg.tta, "optimizer": cfg.optimizer,
            "label_smoothing": cfg.label_smoothing,
            # as used: a split drawn here, else the default that eval draws others with
            "test_fraction": _fraction(cfg.test_fraction if splits.drawn_from else None),
            "defaults": defaults}
    if splits.drawn_from is not None:   # eval draws the same test images from these files
        info["split_files"] = splits.drawn_from
    aside = None
    if overwrite and not resume:   # set aside at the first write (rank 0's files)
        aside = stack.enter_context(SetAside(out) if comm.is_root else AsideElsewhere())

    def ours():
        """The run's checkpoint, or None while the file there is an earlier run's."""
        return ckpt_path if aside is None or aside.dropped else None
    norms = _sync_norms(model, comm, cfg)

    epoch, batch, history = 0, 0, []
    best = {"val_acc": -1.0, "val_loss": math.inf, "epoch": -1}
    sums = {"loss": 0.0, "correct": 0, "seen": 0}
    epoch_rng_state = None
    for i, (_, layer) in enumerate(dropout_layers(model)):   # each rank its own masks
        layer.rng = np.random.default_rng([cfg.seed, 1 << 21, i]
                                          + ([comm.rank] if comm.size > 1 else []))
    if state is not None:
        _check_resumed_data(state.get("data"), data_digest, cfg, ckpt_path)
        epoch, batch, history, best, sums, epoch_rng_state = _restore(
            state, ckpt_path, model, optimizer, optim_arrays, schedule, cfg, batches_per_epoch,
            comm, log)
        if ema is not None:
            ema.load_state_dict(ema_arrays, state.get("ema"), f"{ckpt_path}: ema")
            _check_steps(ckpt_path, "ema.updates", [ema.updates], epoch, batch,
                         batches_per_epoch)
        done = f"{counted(cfg.epochs, 'epoch')} {'is' if cfg.epochs == 1 else 'are'} done"
        log(f"resuming {ckpt_path} at epoch {epoch + 1}, batch {batch}" if epoch < cfg.epochs
            else f"resuming {ckpt_path}: its {done}; the model is tested and written again "
                 f"(to train it further, start a new run from it: convnet train --from "
                 f"{out / 'model.json'} --epochs N)")

    def agree():
        """Make the ranks' running statistics agree (averaged, where each rank normalizes
        its own share) and check that every rank holds the same weights."""
        if comm.size == 1:
            return
        if not cfg.sync_bn:
            _average_running_stats(norms, ema, comm)
        comm.check_identical(model.state_dict())
        if ema is not None and ema.averages is not None:
            comm.check_identical(ema.averages, "averaged weights")

    def checkpoint(epoch, batch, epoch_rng):
        dropout = {name: layer.rng.bit_generator.state for name, layer in dropout_layers(model)}
        every_rank = comm.gather(dropout) if comm.size > 1 else None
        if not comm.is_root:
            if aside is not None:   # rank 0 writes the new run's checkpoint now
                aside.dropped = True
            return
        state = {"config": dataclasses.asdict(cfg), "architecture": model.get_config(),
                 "optimizer": None, "schedule": schedule.state_dict(), "epoch": epoch,
                 "batch": batch, "history": history, "best": best, "sums": sums,
                 "epoch_rng": epoch_rng.bit_generator.state if epoch_rng else None,
                 "dropout_rng": dropout, "info": info, "threads": THREADS,
                 "data": data_digest, "paths": paths}
        if every_rank is not None:
            state.update(processes=comm.size, dropout_rng_ranks=every_rank)
        arrays, state["optimizer"] = optimizer.state_dict()
        averages, state["ema"] = ema.state_dict() if ema is not None else (None, None)
        if aside is not None:
            aside.begin()
        save_checkpoint(ckpt_path, model.state_dict(), arrays, state, averages)
        if aside is not None:        # the new run can be resumed: the old one goes
            aside.drop()

    for note in splits.notes + [untrained_classes(y_train, splits)] + (
            _unused_fractions(cfg, splits) if ckpt is None else []):   # (a run of old
        # recorded the default fractions as given)
        if note:
            log(note)
    if ckpt is None and defaults in DEFAULTS and defaults != splits.name:
        log(f"{splits.name} is in {defaults}'s format: {defaults}'s defaults apply")
    elif ckpt is None and splits.name in DEFAULTS and defaults != splits.name:
        log(f"the folder {splits.name} does not hold the {splits.name} data set's files: "
            f"the defaults for any other data apply")
    if cfg.model and not cfg.init_from:
        log(f"model: {cfg.model}")
    log(f"training on {splits.name}: {len(x_train)} images {_volume(input_shape)}, "
        f"{len(x_val)} for validation, {len(x_test)} for test; {model.num_params():,} "
        f"parameters ({sum(p.size for p in params.values()):,} trainable); "
        f"{cfg.optimizer} lr={cfg.lr:g}, batch {cfg.batch_size}, "
        f"{counted(cfg.epochs, 'epoch')}; "
        f"writing to {out}")
    log(f"recipe: {recipe(cfg)}")
    bar = _progress(progress)
    stack.callback(bar.close_open)     # an error or Ctrl-C is said on a line of its own
    while epoch < cfg.epochs:
        model.train()
        epoch_rng = np.random.default_rng([cfg.seed, epoch])
        order = epoch_rng.permutation(len(x_train))
        if epoch_rng_state is not None:  # resuming inside this epoch
            epoch_rng.bit_generator.state = epoch_rng_state
            epoch_rng_state = None
        tick = epoch_start = time.perf_counter()
        data_seconds = 0.0
        used_lr = optimizer.lr              # the history's lr: the epoch's last batch's
        shown = bar(total=batches_per_epoch, initial=batch, desc=f"epoch {epoch + 1}")
        while batch < batches_per_epoch:
            idx = order[batch * cfg.batch_size:(batch + 1) * cfg.batch_size]
            xb, yb = _batch(x_train, y_train, idx, comm.share(len(idx)), cfg, epoch_rng,
                            zero_pixel)
            data_seconds += time.perf_counter() - tick
            with np.errstate(all="ignore"):  # a non-finite loss is reported just below
                scores = model.forward(xb)
                loss, dscores = softmax_cross_entropy(scores, yb, cfg.label_smoothing)
            correct, seen = int(np.sum(np.argmax(scores, axis=1) == yb)), len(yb)
            if comm.size == 1 and not math.isfinite(loss):
                raise _diverged(model, xb, loss, epoch, batch, optimizer.lr, ours())
            if comm.size > 1:   # each share's part of the whole batch's mean loss
                dscores *= dscores.dtype.type(len(yb) / len(idx))
            with np.errstate(all="ignore") if comm.size > 1 else contextlib.nullcontext():
                if model.skips_input_grad:    # the data needs no gradient
                    model.backward(dscores, input_grad=False)
                else:
                    model.backward(dscores)
            grads = model.grads()
            grads = {key: grads[key] for key in params}
            if comm.size > 1:   # one Allreduce: the gradients, the loss and accuracy sums
                total, correct, seen = comm.average_gradients(
                    grads, weight=1, extra=[loss * len(yb), correct, len(yb)])
                correct, seen = round(correct), round(seen)
                loss = total / seen
                if not math.isfinite(loss):   # every rank sees it: all stop together
                    raise _diverged(model, xb, loss, epoch, batch, optimizer.lr, ours())
            # A finite loss can still have a gradient that is not (an overflow in a
            # backward pass): the step would put NaN into the weights, and a checkpoint
            # right after would keep them. Every rank has the same (averaged) gradients.
            bad = next((key for key, g in grads.items() if not np.isfinite(g.sum())), None)
            if bad is not None:
                raise _gradient_diverged(bad, loss, epoch, batch, optimizer.lr, ours())
            optimizer.step(grads)
            used_lr = optimizer.lr
            schedule.step()
            if ema is not None:
                ema.update()
            batch += 1
            sums["loss"] += loss * seen
            sums["correct"] += correct
            sums["seen"] += seen
            shown.update(1, loss=sums["loss"] / sums["seen"],
                         acc=sums["correct"] / sums["seen"],
                         ips=seen / max(time.perf_counter() - tick, 1e-9))
            if cfg.checkpoint_every and batch % cfg.checkpoint_every == 0 \
                    and batch < batches_per_epoch:
                agree()
                checkpoint(epoch, batch, epoch_rng)
            tick = time.perf_counter()   # the next batch's data time: its own, no write's
        shown.close()
        seconds = time.perf_counter() - epoch_start
        agree()
        with ema.applied() if ema is not None else contextlib.nullcontext():
            val_acc, val_loss = _evaluate(model, x_val, y_val, num_classes, comm, cfg.tta)
            if not math.isfinite(val_loss):   # every rank sees it: all stop together
                raise _val_diverged(val_loss, epoch, ema is not None, optimizer.lr,
                                    ours())
            if val_loss < best["val_loss"]:       # the best model: the lowest validation loss
                best = {"val_acc": val_acc, "val_loss": val_loss, "epoch": epoch + 1}
                if comm.is_root:
                    if aside is not None:
                        aside.begin()
                    save_model(model, out / "best", **info)
        history.append({"epoch": epoch + 1, "loss": sums["loss"] / sums["seen"],
                        "acc": sums["correct"] / sums["seen"], "val_loss": val_loss,
                        "val_acc": val_acc, "lr": used_lr, "seconds": round(seconds, 3),
                        "data_seconds": round(data_seconds, 3)})
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {history[-1]['loss']:.4f}, "
            f"acc {history[-1]['acc']:.4f}, val loss {val_loss:.4f}, val acc {val_acc:.4f}; "
            f"{seconds:.1f} s, {data_seconds / max(seconds, 1e-9):.0%} of it on the data")
        epoch, batch = epoch + 1, 0
        sums = {"loss": 0.0, "correct": 0, "seen": 0}
        checkpoint(epoch, 0, None)

    if ema is not None and ema.averages is not None:   # the model is the averaged weights
        model.load_state_dict(ema.averages)
    model_path, pictures = out / "model.json", []
    if comm.is_root:
        model_path = save_model(model, out / "model", **info)
        atomic_write(out / "history.json", json_text(history, indent=1).encode())
        pictures = _pictures(model, history, out, cfg.label_smoothing)
    test_acc, _ = _evaluate(model, x_test, y_test, num_classes, comm, cfg.tta)
    for layer in norms:
        layer.comm = None
    seconds = time.perf_counter() - started
    log(f"test accuracy {test_acc:.4f} ({len(x_test)} images); lowest val loss "
        f"{best['val_loss']:.4f} at epoch {best['epoch']} (val acc {best['val_acc']:.4f}); "
        f"{seconds:.1f} s")
    log(f"saved the model to {model_path} (best by validation: {out / 'best.json'})")
    if pictures:
        log(f"pictures: {', '.join(str(p) for p in pictures)}")
    return TrainResult(model, history, best["val_acc"], test_acc, model_path,
                       out / "best.json", seconds)


def _batch(x, y, idx, part, cfg, rng, fill=0):
    """This rank's share (``part``) of the batch of images ``idx``, augmented as cfg says:
    random shifts of up to cfg.translate pixels (default_shift when None), padded with
    fill (per channel: the normalized value of a 0 pixel) and, with cfg.flip, mirror
    images. Every rank draws the whole batch's numbers, so that the ranks' generators
    stay in step. Only the batch is copied, never the data set."""
    if not cfg.augment:
        return x[idx[part]], y[idx[part]]
    xb = x[idx]
    shift = cfg.translate if cfg.translate is not None else default_shift(*xb.shape[2:])
    if shift != 0 and shift != (0, 0):
        xb = random_crop(xb, shift, rng, fill=fill)
    if cfg.flip:
        xb = random_flip(xb, rng)
    return xb[part], y[idx[part]]


def default_shift(h, w):
    """Augmentation's largest shift (vertical, horizontal) when --translate is not given:
    an eighth of each side, at least 1 pixel and less than the side (a 1-pixel side is
    not shifted: any shift of it is a blank crop)."""
    return tuple(min(max(1, side // 8), side - 1) for side in (h, w))


def recipe(cfg):
    """The training recipe in one line, for the log and the README."""
    shift = "1/8 of each side" if cfg.translate is None else f"{cfg.translate} px"
    moves = ([f"shifts of up to {shift}"] if cfg.translate != 0 else []) + (
        ["flips"] if cfg.flip else [])
    augment = (" and ".join(moves) or "none") if cfg.augment else "none"
    augment = f"augmentation: {augment}"
    parts = [f"{cfg.optimizer} lr {cfg.lr:g}", f"{cfg.schedule} schedule",
             f"batch {cfg.batch_size}", counted(cfg.epochs, "epoch"), augment]
    if cfg.weight_decay:
        parts.append(f"weight decay {cfg.weight_decay:g}")
    if cfg.label_smoothing:
        parts.append(f"label smoothing {cfg.label_smoothing:g}")
    if cfg.ema:
        parts.append(f"weight EMA {cfg.ema:g}")
    if cfg.tta:
        parts.append("flip TTA")
    return ", ".join(parts)


# --time-limit: the steps timed (after PROBE_WARMUP untimed ones), and the seconds left at
# the end for saving the model, the pictures and the report: FINAL_MARGIN, or FINAL_SHARE
# of a shorter limit (a fixed 20 s had left a 30 s limit a third of it to train).
PROBE_STEPS, PROBE_WARMUP, FINAL_MARGIN, FINAL_SHARE = 6, 2, 20.0, 0.1


def final_margin(limit):
    """The seconds a run of ``limit`` seconds keeps for its end (saving, pictures,
    report)."""
    return min(FINAL_MARGIN, FINAL_SHARE * limit)


def _sync_norms(model, comm, cfg):
    """The model's batch norm layers, each given the communicator when the ranks'
    statistics are synchronized (the whole batch's), else None (each rank's share)."""
    norms = [layer for _, layer in model.named_layers()
             if isinstance(layer, (BatchNorm1d, BatchNorm2d))]
    for layer in norms:
        layer.comm = comm if comm.size > 1 and cfg.sync_bn else None
    return norms


def plan_epochs(cfg, model, x_train, y_train, n_val, n_test, batches_per_epoch, started,
                comm, log, reported=False):
    """The epochs that fit in cfg.time_limit seconds from ``started``.

    A copy of the model takes PROBE_WARMUP + PROBE_STEPS training steps on random
    batches (the run itself starts from the untouched model, so its result does not
    depend on the timing), runs one batch of inference, and writes a checkpoint and a
    model into a temporary directory inside the run directory. An epoch is its steps,
    its validation (with TTA, twice the images), those two writes and a checkpoint every
    checkpoint_every batches; the end is the test
    evaluation (and with ``reported``, the report's, on rank 0 alone) plus final_margin
    seconds. Over several processes a step includes its
    gradients' Allreduce, and each rank evaluates a share of the images. At least one
    epoch runs: where even one does not fit, the log says so and how long it will take;
    at most MAX_EPOCHS do (what a checkpoint's config may hold). Rank 0's plan holds for
    all."""
    probe = from_config(model.get_config())
    probe.load_state_dict(model.state_dict())
    if cfg.freeze:       # as the run: its frozen stages take no update, no backward pass
        probe.freeze(*cfg.freeze)
    probe.train()
    _sync_norms(probe, comm, cfg)             # as the run's: a share may be one image
    params = probe.trainable_params()
    opt = make_optimizer(cfg.optimizer, params, cfg.lr, weight_decay=cfg.weight_decay)
    ema = WeightEMA(probe, cfg.ema, warmup=True) if cfg.ema else None
    rng = np.random.default_rng([cfg.seed, 1 << 23])
    for step in range(PROBE_WARMUP + PROBE_STEPS):
        if step == PROBE_WARMUP:
            tick = time.perf_counter()
        idx = rng.choice(len(x_train), min(cfg.batch_size, len(x_train)), replace=False)
        xb, yb = _batch(x_train, y_train, idx, comm.share(len(idx)), cfg, rng)
        _, dscores = softmax_cross_entropy(probe.forward(xb), yb, cfg.label_smoothing)
        probe.backward(dscores, input_grad=False) if probe.skips_input_grad \
            else probe.backward(dscores)
        grads = probe.grads()
        grads = {key: grads[key] for key in params}
        if comm.size > 1:          # the run's Allreduce, timed with the step
            comm.average_gradients(grads, weight=1, extra=[0.0, 0, 0])
        opt.step(grads)
        if ema is not None:
            ema.update()
    step_seconds = (time.perf_counter() - tick) / PROBE_STEPS
    probe.eval()
    sample = x_train[:256]
    tick = time.perf_counter()
    probe.infer(sample)
    # Each rank evaluates its share of the validation and test images.
    per_image = ((time.perf_counter() - tick) / len(sample) * (2 if cfg.tta else 1)
                 / comm.size)
    checkpoint_seconds, model_seconds = (_write_seconds(probe, opt, ema, Path(cfg.out))
                                         if comm.is_root else (0.0, 0.0))
    # the epoch's checkpoint and best model, and the checkpoints every checkpoint_every
    # batches inside it
    inside = (batches_per_epoch - 1) // cfg.checkpoint_every if cfg.checkpoint_every else 0
    writes = checkpoint_seconds * (1 + inside) + model_seconds
    epoch_seconds = batches_per_epoch * step_seconds + n_val * per_image + writes
    spent = time.perf_counter() - started
    end = n_test * per_image * (1 + comm.size * reported) + final_margin(cfg.time_limit)
    left = cfg.time_limit - spent - end
    fit = int(left // epoch_seconds)
    epochs = min(MAX_EPOCHS, max(1, fit))
    epochs = comm.broadcast(epochs) if comm.size > 1 else epochs
    shown = f"{epoch_seconds:.1f}" if epoch_seconds < 10 else f"{epoch_seconds:.0f}"
    said = (f"{epochs} epoch(s) fit, the schedule planned for them" if 1 <= fit <= MAX_EPOCHS
            else f"{fit:,} fit, the run trains at most {MAX_EPOCHS:,}" if fit > MAX_EPOCHS
            else "not even one fits: the run trains one")
    log(f"time limit {cfg.time_limit:g} s: a step takes {step_seconds * 1e3:.0f} ms, an "
        f"epoch with its validation about {shown} s: {said}")
    if left < epoch_seconds and comm.is_root:     # a warning: on stderr, said once
        warnings.warn(f"not even one epoch fits in the time limit ({spent:.1f} s went to "
                      f"loading and planning); the run trains one and takes about "
                      f"{spent + epoch_seconds + end:.0f} s: give a longer --time-limit, or "
                      f"train on fewer images (--limit)", stacklevel=2)
    return epochs


def _write_seconds(probe, opt, ema, out):
    """(checkpoint, model) seconds: what an epoch's end writes at most (its checkpoint,
    and the best model so far), each timed into a temporary directory in the run
    directory ``out``, which the run holds (removed at once; one a kill left is not the
    run's, _held_files, and is removed by remove_stale_temporaries)."""
    with tempfile.TemporaryDirectory(prefix=PLAN_PREFIX, dir=out) as tmp:
        tick = time.perf_counter()
        arrays, _ = opt.state_dict()
        averages = ema.state_dict()[0] if ema is not None else None
        save_checkpoint(Path(tmp) / "checkpoint.safetensors", probe.state_dict(), arrays,
                        {"architecture": probe.get_config()}, averages)
        middle = time.perf_counter()
        save_model(probe, Path(tmp) / "best")
        return middle - tick, time.perf_counter() - middle


def _diverged(model, xb, loss, epoch, batch, lr, ckpt_path):
    """The TrainingDiverged error of a step whose loss is not finite: names the epoch, the
    batch, the first layer with a non-finite output on xb, and the last checkpoint."""
    model.eval()
    with np.errstate(all="ignore"):
        where = first_nonfinite(model, xb) or "the loss itself"
    return TrainingDiverged(
        f"epoch {epoch + 1}, batch {batch + 1}: the loss is {loss}; the first non-finite "
        f"output is at {where}. {_lower(lr, ckpt_path)}")


def _check_head(model, cfg, why):
    """Refuse to fine-tune a model that needs a new head (``why``) and has no FC layer
    to replace."""
    from convnet.models.finetune import head_name
    if head_name(model) is None:
        raise ValueError(f"--from {cfg.init_from} {why}: a new head would replace its last "
                         f"FC layer, and it has none; fine-tune a model that ends in an FC "
                         f"layer, or train on data with the model's classes")


def _head_text(model):
    """The last FC layer as "Linear(in=256, out=10)"; None for a model without one."""
    from convnet.models.finetune import head_name
    name = head_name(model)
    return None if name is None else repr(dict(model.named_layers())[name])


def _gradient_diverged(key, loss, epoch, batch, lr, ckpt_path):
    """The TrainingDiverged error of a step whose loss is finite but whose gradient of
    parameter ``key`` is not: the step is not taken."""
    return TrainingDiverged(
        f"epoch {epoch + 1}, batch {batch + 1}: the loss is {loss:.6g} but the gradient of "
        f"{key} is not finite (or too large to add up in float32); the weights were left "
        f"as they were. {_lower(lr, ckpt_path)}")


def _val_diverged(val_loss, epoch, averaged, lr, ckpt_path):
    """The TrainingDiverged error of a validation loss that is not finite."""
    return TrainingDiverged(
        f"epoch {epoch + 1}: the validation loss is {val_loss}: the "
        f"{'moving average of the weights (--ema)' if averaged else 'weights'} no longer "
        f"give finite scores. {_lower(lr, ckpt_path)}")


def _lower(lr, ckpt_path):
    """What a diverged run can do: a new run at a lower learning rate (resuming would go
    on at this one), from the best weights kept so far if it likes."""
    text = (f"Lower the learning rate (now {lr:g}) in a new run: --lr, with --overwrite "
            f"or another --out (--resume would go on at this one); ")
    if ckpt_path is None or not ckpt_path.exists():
        return text + "no checkpoint was written yet"
    best = ckpt_path.parent / "best.json"
    return text + f"the last good checkpoint is {ckpt_path}" + (
        f", and --from {best} starts from the best weights so far" if best.exists() else "")


def _on_root(comm, compute, then_all=False):
    """compute() on rank 0, its result (JSON) sent to every rank; an error there is
    raised on every rank (a ValueError with its message elsewhere), so none waits for
    the others. then_all=True: the other ranks call compute() themselves once rank 0's
    has succeeded (e.g. to read the files it downloaded) and return their own result."""
    if comm.size == 1:
        return compute()
    result = error = None
    if comm.is_root:
        try:
            result = compute()
        except Exception as err:
            error = err
    sent = comm.broadcast({"error": f"{error}"} if error is not None else
                          {"value": None if then_all else result})
    if error is not None:
        raise error
    if "error" in sent:
        raise RootsError(f"rank 0: {sent['error']}")
    if then_all and not comm.is_root:
        return compute()
    return result if comm.is_root else sent["value"]


def _evaluate(model, x, y, num_classes, comm, tta=False):
    """(accuracy, mean loss) of evaluate(); over several processes each evaluates its
    share of the images and one Allreduce adds up [loss sum, correct, images]."""
    if comm.size == 1:
        result = evaluate(model, x, y, num_classes=num_classes, tta=tta)
        return result["accuracy"], result["loss"]
    part = comm.share(len(x))
    result = evaluate(model, x[part], y[part], num_classes=num_classes, tta=tta)
    n = len(y[part])
    totals = np.array([result["loss"] * n, np.trace(result["confusion"]), n], np.float64)
    loss, correct, n = comm.allreduce(totals)
    n = max(n, 1)
    return float(correct / n), float(loss / n)


def _average_running_stats(norms, ema, comm):
    """Replace each batch norm layer's running mean and variance, and their moving
    averages in ``ema`` (a WeightEMA or None), by their mean over the ranks (each
    normalized its own share, sync_bn=False), in one Allreduce."""
    arrays = [layer.buffers[key] for layer in norms if layer.track_running_stats
              for key in ("running_mean", "running_var")]
    if ema is not None and ema.averages is not None:
        arrays += [ema.averages[key] for key in sorted(ema.averages)
                   if key.endswith((".running_mean", ".running_var"))]
    if not arrays:
        return
    flat = np.concatenate([a.astype(np.float64).ravel() for a in arrays])
    comm.allreduce(flat, op="mean")
    offset = 0
    for a in arrays:
        a[...] = flat[offset:offset + a.size].reshape(a.shape)
        offset += a.size


def _restore(state, path, model, optimizer, optim_arrays, schedule, cfg, batches_per_epoch,
             comm, log):
    """Put a checkpoint's state back, every field checked; returns the loop's variables.

    Each rank takes its own dropout generators: rank r those of rank r of the run that
    wrote the checkpoint (``dropout_rng_ranks``; one process: ``dropout_rng``). A rank
    the checkpoint has none for keeps the generators it was given, and the log says so.
    """
    def need(name, kind, check=lambda v: True, expected=None):
        value = state.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) or not check(value):
            raise ValueError(f"{path}: checkpoint field {name!r} must be "
                             f"{expected or kind.__name__}, got {value!r:.80}")
        return value

    epoch = need("epoch", int, lambda v: 0 <= v <= cfg.epochs,
                 f"an int from 0 to the {cfg.epochs} epochs")
    batch = need("batch", int, lambda v: 0 <= v < batches_per_epoch and (
        epoch < cfg.epochs or v == 0), f"an int from 0 to {batches_per_epoch - 1} (0 once "
        f"the last epoch is done)")
    history = need("history", list, lambda v: len(v) == epoch and all(
        map(is_epoch_record, v)), f"a list of {epoch} dicts (one per epoch done) with "
        f"{', '.join(HISTORY_KEYS)} as numbers")
    def count(value, low):
        return isinstance(value, int) and not isinstance(value, bool) and value >= low

    best = need("best", dict, lambda v: set(v) == {"val_acc", "val_loss", "epoch"} and all(
        _is_number(x) or x == math.inf for x in v.values()) and count(v["epoch"], -1)
        and v["epoch"] <= epoch, f"{{'val_acc', 'val_loss': numbers, 'epoch': an int from "
        f"-1 to {epoch}}}")
    sums = need("sums", dict, lambda v: set(v) == {"loss", "correct", "seen"} and _is_number(
        v["loss"]) and count(v["seen"], batch) and count(v["correct"], 0)
        and v["correct"] <= v["seen"] and (v["seen"] == 0) == (batch == 0),
        f"{{'loss': a number, 'correct' and 'seen': ints, 0 <= correct <= seen, seen at "
        f"least the {batch} batch(es) done and 0 only with none}}")
    names = {name for name, _ in dropout_layers(model)}
    dropout = need("dropout_rng", dict, lambda v: set(v) == names,
                   "one RNG state per dropout layer")
    ranks = state.get("dropout_rng_ranks", [dropout])
    if not (isinstance(ranks, list) and ranks
            and all(isinstance(r, dict) and set(r) == names for r in ranks)):
        raise ValueError(f"{path}: checkpoint field 'dropout_rng_ranks' must be a list of "
                         f"dicts, one RNG state per dropout layer, got {ranks!r:.80}")
    threads = state.get("threads")     # None: written before the count was recorded
    if isinstance(threads, int) and threads != THREADS:
        log(f"the checkpoint was written with {threads} thread(s) a process, resumed with "
            f"{THREADS}: the filter gradients' sums split differently, so the run goes on "
            f"within rounding, not bit for bit (CONVNET_THREADS={threads}"
            + (f" on {len(ranks)} processes" if len(ranks) != comm.size else "")
            + " for that)")
    if len(ranks) != comm.size:
        log(f"the checkpoint was written by {len(ranks)} process(es), resumed on "
            f"{comm.size}: the batches split differently"
            + (", and ranks without saved dropout generators start new ones"
               if names and comm.size > len(ranks) else ""))
    epoch_rng = state.get("epoch_rng")
    for name, value in (("optimizer", state.get("optimizer")),
                        ("schedule", state.get("schedule"))):
        if not isinstance(value, dict):
            raise ValueError(f"{path}: checkpoint field {name!r} must be a JSON object, "
                             f"got {value!r:.80}")
    try:
        optimizer.load_state_dict(optim_arrays, state["optimizer"])
        schedule.load_state_dict(state["schedule"])
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    _check_steps(path, "schedule.last_epoch", [schedule.last_epoch], epoch, batch,
                 batches_per_epoch)
    _check_steps(path, "optimizer.steps", list(optimizer.steps.values()), epoch, batch,
                 batches_per_epoch)
    if comm.rank < len(ranks):
        for name, layer in dropout_layers(model):
            field = "dropout_rng" if "dropout_rng_ranks" not in state else \
                f"dropout_rng_ranks[{comm.rank}]"
            _set_rng(layer.rng, ranks[comm.rank][name], path, f"{field}.{name}")
    if epoch_rng is not None:
        _set_rng(np.random.default_rng(0), epoch_rng, path, "epoch_rng")  # checks it
    return epoch, batch, history, best, sums, epoch_rng


def _check_steps(path, field, counts, epoch, batch, batches_per_epoch):
    """Each count of steps a checkpoint keeps (the schedule's, each parameter's, the
    EMA's) is the steps its epoch and batch have done: one an edited file or another run
    set otherwise would go on at another learning rate without a word."""
    done = epoch * batches_per_epoch + batch
    if any(n != done for n in counts):
        raise ValueError(f"{path}: checkpoint field {field!r} must count the {done} steps "
                         f"done ({epoch} epoch(s) of {batches_per_epoch} batches, then "
                         f"{batch}), got {sorted(set(counts))!r:.80}")


def _is_number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _set_rng(rng, value, path, name):
    """rng.bit_generator.state = value, with a bad state named instead of raised raw."""
    kind = type(rng.bit_generator).__name__
    if not (isinstance(value, dict) and value.get("bit_generator") == kind):
        raise ValueError(f"{path}: checkpoint field {name!r} must be a {kind} state, got "
                         f"{value!r:.80}")
    try:
        rng.bit_generator.state = value
    except (TypeError, ValueError, KeyError, OverflowError) as err:
        raise ValueError(f"{path}: checkpoint field {name!r} is not a valid {kind} state "
                         f"({type(err).__name__}: {err})") from None


def _pictures(model, history, out, label_smoothing=0.0):
    """The training curve (its legend names the label smoothing) and the first CONV
    layer's filters (an FC-only net has none), when matplotlib is installed."""
    from convnet.plot import first_conv_weight, plot_filters, plot_history
    try:
        curve = plot_history(history, out / "curve.png", label_smoothing)  # imports matplotlib
    except ImportError:
        return []
    try:
        first_conv_weight(model)
    except ValueError:                                      # no CONV layer
        return [curve]
    return [curve, plot_filters(model, out / "filters.png")]


def _as_dtype(model, dtype):
    """``model`` with its weights in ``dtype`` (the same values, rounded to float32 when
    narrower), its info and input size kept; the model itself where they are in it."""
    if all(v.dtype == dtype for v in model.params().values()):
        return model
    copy = from_config(_with_dtype(model.get_config(), dtype.name))
    copy.load_state_dict(model.state_dict())          # each array cast to the copy's dtype
    for name in ("info", "input_shape", "trained"):
        if hasattr(model, name):
            setattr(copy, name, getattr(model, name))
    return copy


def _with_dtype(config, dtype):
    """The same architecture config with every layer's dtype set to ``dtype``."""
    if isinstance(config, dict):
        return {k: (dtype if k == "dtype" else _with_dtype(v, dtype)) for k, v in config.items()}
    if isinstance(config, list):
        return [_with_dtype(v, dtype) for v in config]
    return config


def _volume(shape):
    return "x".join(map(str, (shape[2], shape[1], shape[0]))) if len(shape) == 3 else str(shape)


def _progress(enabled):
    """A tqdm progress bar (loss, accuracy, images/s) when tqdm is installed and enabled."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None

    class Bar:
        shown = None     # the bar on the screen, if any

        def __init__(self, total, initial, desc):
            self.bar = None
            if enabled and tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False,
                                file=sys.stderr, mininterval=0.5, dynamic_ncols=True)
                Bar.shown = self

        @staticmethod
        def close_open():
            """Close the bar on the screen (it clears its line), if any."""
            if Bar.shown is not None:
                Bar.shown.close()

        def update(self, n, loss, acc, ips):
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}",
                                     img_s=f"{ips:,.0f}", refresh=False)
                self.bar.update(n)

        def close(self):
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            if Bar.shown is self:
                Bar.shown = None

    return Bar
