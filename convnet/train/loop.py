"""The training loop: one readable function, resumable to the bit.

    cfg = TrainConfig(data="digits", epochs=30)
    result = train(cfg)            # -> TrainResult(model, history, best_val_acc, paths)

Reproducibility: every random draw comes from explicit generators. The initial weights
come from ``default_rng(seed)``; epoch e shuffles and augments with its own generator
``default_rng([seed, e])``; dropout layers carry their own generators. A checkpoint stores
all of their states with the weights, the optimizer, the schedule and the position in
the epoch, so a run killed and resumed ends with the same weights, bit for bit, as one
that ran straight through.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convnet.data import load_dataset
from convnet.data.transforms import Normalize, random_crop, random_flip, to_float
from convnet.functional.loss import softmax_cross_entropy
from convnet.io.weights import load_model, save_model
from convnet.layers.dropout import Dropout
from convnet.models import Sequential, from_config
from convnet.models.finetune import replace_head
from convnet.spec import resolve_model
from convnet.train.checkpoint import load_checkpoint, save_checkpoint
from convnet.train.inference import evaluate
from convnet.train.optim import make_optimizer
from convnet.train.schedules import make_schedule

# Per dataset: model, epochs, batch size, optimizer, lr, weight decay, augmentation.
# The models follow the notes' pattern INPUT -> [[CONV -> RELU]*N -> POOL]*M -> FC.
DEFAULTS = {
    "digits": dict(
        model="INPUT 8x8x1 -> [CONV 32 -> BN -> RELU]*2 -> POOL -> [CONV 64 -> BN -> RELU]*2 "
              "-> GAP -> FC 10",
        epochs=25, batch_size=32, optimizer="adam", lr=2e-3, weight_decay=0.0, augment=True,
        flip=False),
    "fashion-mnist": dict(
        model="INPUT 28x28x1 -> [CONV 32 -> BN -> RELU]*2 -> POOL -> [CONV 64 -> BN -> RELU]*2 "
              "-> POOL -> FC 256 -> RELU -> DROPOUT 0.5 -> FC 10",
        epochs=12, batch_size=128, optimizer="adam", lr=2e-3, weight_decay=0.0, augment=False,
        flip=True),
    "mnist": dict(
        model="INPUT 28x28x1 -> [CONV 32 -> BN -> RELU -> POOL]*2 -> FC 128 -> RELU -> FC 10",
        epochs=5, batch_size=128, optimizer="adam", lr=2e-3, weight_decay=0.0, augment=False,
        flip=False),
    "cifar10": dict(
        model="INPUT 32x32x3 -> [[CONV 64 -> BN -> RELU]*2 -> POOL]*3 -> FC 256 -> RELU "
              "-> DROPOUT 0.5 -> FC 10",
        epochs=30, batch_size=128, optimizer="momentum", lr=0.05, weight_decay=5e-4,
        augment=True, flip=True),
}
FALLBACK = "cifar10"  # defaults for other datasets (image folders, cifar100)


@dataclass
class TrainConfig:
    """Everything that defines a run. None means: the dataset's default (DEFAULTS)."""
    data: str = "digits"
    model: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    augment: bool | None = None      # random crops (zero padding of H/8), plus flips if flip
    flip: bool | None = None         # horizontal flips when augmenting (not for digits)
    schedule: str = "cosine"         # none | step | cosine | warmup+cosine
    val_fraction: float = 0.1
    limit: int | None = None         # use only the first N training images (short runs)
    seed: int = 0
    out: str | None = None           # default: runs/<data>
    checkpoint_every: int = 0        # also checkpoint every N batches (0: each epoch only)
    data_root: str | None = None
    download: bool = False
    image_size: tuple | None = None  # resize the data set's images to (H, W) (load_dataset)
    dtype: str = "float32"
    init_from: str | None = None     # fine-tune: start from this saved model's weights
    freeze: tuple = ()               # stages to keep fixed (with init_from), e.g. features

    def resolved(self, data_name):
        """A copy with every None filled from the dataset's defaults."""
        defaults = DEFAULTS.get(data_name, DEFAULTS[FALLBACK])
        values = {k: (defaults[k] if getattr(self, k) is None and k in defaults
                      else getattr(self, k)) for k in self.__dataclass_fields__}
        if values["out"] is None:
            values["out"] = str(Path("runs") / Path(self.data).name)
        if self.model is None and self.image_size is not None:  # the data's size, not INPUT's
            values["model"] = values["model"].split("->", 1)[1].strip()
        return TrainConfig(**values)


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


def prepare(splits, val_fraction, limit, seed, dtype):
    """Scale to [0, 1], split off validation, normalize per channel with training stats."""
    from convnet.data.loader import train_val_split

    x, y = splits.train
    if limit:
        x, y = x[:limit], y[:limit]
    (x_train, y_train), (x_val, y_val) = train_val_split(
        x, y, val_fraction, np.random.default_rng([seed, 1 << 20]))
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
        for _, layer in model.children():
            out = layer.forward(x)
            if not np.all(np.isfinite(out)):
                return first_nonfinite(layer, x)
            x = out
        return None
    return model.where


def dropout_layers(model):
    return [(name, layer) for name, layer in model.named_layers() if isinstance(layer, Dropout)]


def train(cfg: TrainConfig, resume=False, log=print, progress=True):
    """Train a model as ``cfg`` says; checkpoint into cfg.out; return a TrainResult.

    With resume=True, continue from cfg.out/checkpoint.safetensors: the run picks up at
    the saved epoch and batch with the saved weights, optimizer, schedule and RNG states.
    """
    started = time.perf_counter()
    out = Path(cfg.out or Path("runs") / Path(cfg.data).name)
    ckpt_path = out / "checkpoint.safetensors"
    ckpt = None
    if resume:
        if not ckpt_path.is_file():
            raise ValueError(f"{ckpt_path}: no checkpoint to resume from")
        ckpt = load_checkpoint(ckpt_path)
        cfg = TrainConfig(**ckpt[2]["config"])
    splits = load_dataset(cfg.data, root=cfg.data_root, download=cfg.download,
                          image_size=cfg.image_size)
    cfg = cfg.resolved(splits.name)
    cfg.out = str(out)
    dtype = np.dtype(cfg.dtype)
    (x_train, y_train), (x_val, y_val), (x_test, y_test), norm = prepare(
        splits, cfg.val_fraction, cfg.limit, cfg.seed, dtype)
    input_shape = tuple(x_train.shape[1:])
    num_classes = len(splits.classes)

    if ckpt is not None:
        model_state, optim_arrays, state = ckpt
        model = from_config(state["architecture"])
        model.load_state_dict(model_state)
    elif cfg.init_from:
        state = None
        model = load_model(cfg.init_from)
        if getattr(model, "input_shape", input_shape) != input_shape:
            raise ValueError(f"{cfg.init_from} takes {model.input_shape} images but "
                             f"{cfg.data} has {input_shape}; resize with --image-size")
        if model.output_shape(input_shape) != (num_classes,):
            head = replace_head(model, num_classes, np.random.default_rng(cfg.seed))
            log(f"new head {head} for {num_classes} classes")
    else:
        state = None
        model = resolve_model(cfg.model, input_shape=input_shape, num_classes=num_classes,
                              rng=np.random.default_rng(cfg.seed))
        if dtype != np.float32:
            model = from_config(_with_dtype(model.get_config(), dtype.name),
                                rng=np.random.default_rng(cfg.seed))
    model.input_shape = input_shape
    if cfg.freeze:
        model.freeze(*cfg.freeze)
    out_shape = model.output_shape(input_shape)
    if out_shape != (num_classes,):
        raise ValueError(f"model gives {out_shape} scores per image but {cfg.data} has "
                         f"{num_classes} classes: end the model with FC {num_classes}")

    batches_per_epoch = len(x_train) // cfg.batch_size
    if batches_per_epoch == 0:
        raise ValueError(f"batch size {cfg.batch_size} is larger than the {len(x_train)} "
                         f"training images")
    params = model.trainable_params()
    optimizer = make_optimizer(cfg.optimizer, params, cfg.lr, weight_decay=cfg.weight_decay)
    schedule = make_schedule(cfg.schedule, optimizer, total_steps=cfg.epochs * batches_per_epoch)
    info = {"classes": list(splits.classes), "data": splits.name, "scale": splits.scale,
            "mean": np.ravel(norm.mean).tolist(), "std": np.ravel(norm.std).tolist()}

    epoch, batch, history, best = 0, 0, [], {"val_acc": -1.0, "epoch": -1}
    sums = {"loss": 0.0, "correct": 0, "seen": 0}
    epoch_rng_state = None
    if state is not None:
        optimizer.load_state_dict(optim_arrays, state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        epoch, batch = state["epoch"], state["batch"]
        history, best = state["history"], state["best"]
        sums = state["sums"]
        epoch_rng_state = state["epoch_rng"]
        for (name, layer) in dropout_layers(model):
            layer.rng.bit_generator.state = state["dropout_rng"][name]
        log(f"resuming {ckpt_path} at epoch {epoch + 1}, batch {batch}")
    else:
        for i, (_, layer) in enumerate(dropout_layers(model)):
            layer.rng = np.random.default_rng([cfg.seed, 1 << 21, i])

    def checkpoint(epoch, batch, epoch_rng):
        state = {"config": dataclasses.asdict(cfg), "architecture": model.get_config(),
                 "optimizer": None, "schedule": schedule.state_dict(), "epoch": epoch,
                 "batch": batch, "history": history, "best": best, "sums": sums,
                 "epoch_rng": epoch_rng.bit_generator.state if epoch_rng else None,
                 "dropout_rng": {name: layer.rng.bit_generator.state
                                 for name, layer in dropout_layers(model)},
                 "info": info}
        arrays, state["optimizer"] = optimizer.state_dict()
        save_checkpoint(ckpt_path, model.state_dict(), arrays, state)

    log(f"training on {splits.name}: {len(x_train)} images {_volume(input_shape)}, "
        f"{len(x_val)} for validation, {len(x_test)} for test; {model.num_params():,} "
        f"parameters ({sum(p.size for p in params.values()):,} trainable); "
        f"{cfg.optimizer} lr={cfg.lr}, batch {cfg.batch_size}, "
        f"{cfg.epochs} epochs")
    bar = _progress(progress)
    while epoch < cfg.epochs:
        model.train()
        epoch_rng = np.random.default_rng([cfg.seed, epoch])
        order = epoch_rng.permutation(len(x_train))
        if epoch_rng_state is not None:  # resuming inside this epoch
            epoch_rng.bit_generator.state = epoch_rng_state
            epoch_rng_state = None
        tick = time.perf_counter()
        shown = bar(total=batches_per_epoch, initial=batch, desc=f"epoch {epoch + 1}")
        while batch < batches_per_epoch:
            idx = order[batch * cfg.batch_size:(batch + 1) * cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if cfg.augment:  # shifts of up to 1/8 of the image; flips only where they make sense
                xb = random_crop(xb, max(1, xb.shape[2] // 8), epoch_rng)
                if cfg.flip:
                    xb = random_flip(xb, epoch_rng)
            with np.errstate(all="ignore"):  # a non-finite loss is reported just below
                scores = model.forward(xb)
                loss, dscores = softmax_cross_entropy(scores, yb)
            if not math.isfinite(loss):
                model.eval()
                with np.errstate(all="ignore"):
                    where = first_nonfinite(model, xb) or "the loss itself"
                kept = (f"the last good checkpoint is {ckpt_path}" if ckpt_path.exists()
                        else "no checkpoint was written yet")
                raise TrainingDiverged(
                    f"epoch {epoch + 1}, batch {batch + 1}: the loss is {loss}; the first "
                    f"non-finite output is at {where}. Lower the learning rate (now "
                    f"{optimizer.lr:g}); {kept}")
            if model.skips_input_grad:    # the data needs no gradient
                model.backward(dscores, input_grad=False)
            else:
                model.backward(dscores)
            grads = model.grads()
            optimizer.step({key: grads[key] for key in params})
            schedule.step()
            batch += 1
            sums["loss"] += loss * len(yb)
            sums["correct"] += int(np.sum(np.argmax(scores, axis=1) == yb))
            sums["seen"] += len(yb)
            shown.update(1, loss=sums["loss"] / sums["seen"],
                         acc=sums["correct"] / sums["seen"],
                         ips=len(yb) / max(time.perf_counter() - tick, 1e-9))
            tick = time.perf_counter()
            if cfg.checkpoint_every and batch % cfg.checkpoint_every == 0 \
                    and batch < batches_per_epoch:
                checkpoint(epoch, batch, epoch_rng)
        shown.close()
        val = evaluate(model, x_val, y_val, num_classes=num_classes)
        val_acc, val_loss = val["accuracy"], val["loss"]
        history.append({"epoch": epoch + 1, "loss": sums["loss"] / sums["seen"],
                        "acc": sums["correct"] / sums["seen"], "val_loss": val_loss,
                        "val_acc": val_acc, "lr": optimizer.lr})
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {history[-1]['loss']:.4f}, "
            f"acc {history[-1]['acc']:.4f}, val loss {val_loss:.4f}, val acc {val_acc:.4f}")
        if val_acc > best["val_acc"]:
            best = {"val_acc": val_acc, "epoch": epoch + 1}
            save_model(model, out / "best", **info)
        epoch, batch = epoch + 1, 0
        sums = {"loss": 0.0, "correct": 0, "seen": 0}
        checkpoint(epoch, 0, None)

    model_path = save_model(model, out / "model", **info)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    pictures = _pictures(model, history, out)
    test_acc = evaluate(model, x_test, y_test, num_classes=num_classes)["accuracy"]
    seconds = time.perf_counter() - started
    log(f"test accuracy {test_acc:.4f} ({len(x_test)} images); best val acc "
        f"{best['val_acc']:.4f} at epoch {best['epoch']}; {seconds:.1f} s")
    log(f"saved the model to {model_path} (best by validation: {out / 'best.json'})")
    if pictures:
        log(f"pictures: {', '.join(str(p) for p in pictures)}")
    return TrainResult(model, history, best["val_acc"], test_acc, model_path,
                       out / "best.json", seconds)


def _pictures(model, history, out):
    """The training curve and the first layer's filters, when matplotlib is installed."""
    try:
        from convnet.plot import plot_filters, plot_history
        return [plot_history(history, out / "curve.png"),
                plot_filters(model, out / "filters.png")]
    except ImportError:
        return []


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
        def __init__(self, total, initial, desc):
            self.bar = None
            if enabled and tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False,
                                file=sys.stderr, mininterval=0.5, dynamic_ncols=True)

        def update(self, n, loss, acc, ips):
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}",
                                     img_s=f"{ips:,.0f}", refresh=False)
                self.bar.update(n)

        def close(self):
            if self.bar is not None:
                self.bar.close()

    return Bar
