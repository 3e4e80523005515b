"""The convnet command line: thin argument parsing over the library.

Every numeric option is checked as it is parsed (a usage error, exit 2). Any other
failure is one line on stderr (a notation error adds the text with carets under it) and
exit 1 (``--debug`` shows the traceback); a closed pipe (``convnet summary vgg16 | head``)
ends quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import math
import os
import re
import shlex
import sys
import time
import traceback
import warnings
from pathlib import Path

import convnet
from convnet import limits

# -- argument types: each checks its range as argparse parses it ----------------------

def int_type(low, high=None):
    """An argparse type: an int in [low, high]."""
    from convnet.spec import DIGITS

    def parse(text):
        value = int(text) if DIGITS.fullmatch(text) else None
        if value is None or value < low or (high is not None and value > high):
            bound = f"an int >= {low}" if high is None else f"an int from {low} to {high:,}"
            raise argparse.ArgumentTypeError(f"expected {bound}, got {text!r:.40}")
        return value
    return parse


NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def float_type(low, high=None, low_open=False, high_open=False):
    """An argparse type: a finite float in the interval from low to high."""
    def parse(text):
        try:       # a plain ASCII number: float() would also take "1_0e-3", "\u0661", " 1"
            value = float(text) if NUMBER.fullmatch(text) else math.nan
        except ValueError:
            value = math.nan
        ok = (math.isfinite(value) and (value > low if low_open else value >= low)
              and (high is None or (value < high if high_open else value <= high)))
        if not ok:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            span = f"> {low:g}" if high is None and low_open else (
                f">= {low:g}" if high is None else f"in {left}{low:g}, {high:g}{right}")
            raise argparse.ArgumentTypeError(f"expected a number {span}, got {text!r:.40}")
        return value
    return parse


def image_size(text):
    """--image-size: "28" (28x28) or "HxW" such as "32x28" -> (H, W)."""
    from convnet.spec import DIGITS
    parts = text.lower().split("x")
    if len(parts) in (1, 2) and all(DIGITS.fullmatch(p) and int(p) > 0 for p in parts):
        size = int(parts[0]), int(parts[-1])
        if max(size) <= limits.MAX_IMAGE_SIDE:
            return size
    raise argparse.ArgumentTypeError(f"expected a size such as 28 or 32x28 (H x W, positive "
                                     f"integers up to {limits.MAX_IMAGE_SIDE}), got "
                                     f"{text!r:.40}")


def input_shape(text):
    """--input: "3x224x224" -> (3, 224, 224)."""
    from convnet.spec import parse_shape
    try:
        shape = parse_shape(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if math.prod(shape) > limits.MAX_VOLUME:
        raise argparse.ArgumentTypeError(f"{text!r} has {math.prod(shape):,} values, over "
                                         f"the cap of {limits.MAX_VOLUME:,}")
    return shape


def count_binding(text):
    """--count: "N=2" -> ("N", 2), a repetition count of arrow notation."""
    from convnet.spec import DIGITS
    name, _, value = text.partition("=")
    if not (name.isidentifier() and name.isascii() and DIGITS.fullmatch(value)):
        raise argparse.ArgumentTypeError(f"expected NAME=N, such as M=3 (a count of the "
                                         f"notation's [...]*M), got {text!r:.40}")
    return name, int(value)


def _bound(args, text, option):
    """text (arrow notation) with the --count values written in; an error when --count
    is given for text that is not notation."""
    from convnet.models import bind_counts
    from convnet.spec import is_notation
    given = getattr(args, "count", None) or ()
    counts = dict(given)
    twice = sorted({name for name, _ in given if sum(n == name for n, _ in given) > 1})
    if twice:
        raise ValueError(f"--count gives {', '.join(twice)} more than once: give each name "
                         f"one value")
    if not counts:
        return text
    if text is None:
        raise ValueError(f"--count binds the names of arrow notation: give the notation "
                         f"with {option}")
    if not (isinstance(text, str) and is_notation(text)):
        raise ValueError(f"--count binds the names of arrow notation, but {option} is "
                         f"{text!r:.80}")
    try:
        return bind_counts(text, counts, every=True)
    except ValueError as error:
        raise ValueError(str(error).replace("bind_counts: ", "--count: ", 1)) from None


def _bound_model(args, spec, arch, name):
    """(spec, arch) with --count written into whichever of the two is notation: spec, the
    command's positional ``name``, or arch, its --model (the architecture of weights)."""
    from convnet.spec import is_notation
    if getattr(args, "count", None) and isinstance(arch, str) and is_notation(arch) \
            and not is_notation(spec):
        return spec, _bound(args, arch, "--model")
    return _bound(args, spec, name), arch


# The notation's grammar for --help (convnet.models.notation has it in full; a test checks
# that every keyword is here).
NOTATION_HELP = (
    "Arrow notation (the notes'): items joined by '->'; [ ... ]*N repeats a group, LAYER*N "
    "a layer (N a number, or a name given with --count N=2); '?' marks a part optional "
    "(the command line keeps it). INPUT WxHxD (width x height x depth, e.g. 32x32x3; WxH "
    "for depth 1); CONV K [F3] [S1] [P1|Psame] [D2] [G2] [floor] (F=3, S=1 and a P that "
    "keeps the size by default); POOL [F2] [S2] [P0] [ceil|floor] (max, F=2, S=F); "
    "AVGPOOL, L2POOL; GAP; RELU, RELU6, LEAKYRELU [slope], TANH, SIGMOID; BN; "
    "LRN [size alpha beta k]; DROPOUT [p]; LC K [F] [S] [P] (locally connected); FLATTEN; "
    "FC n. Options are written F3 or F=3, pairs as height x width (F3x5); keywords in any "
    "case. E.g. 'INPUT 32x32x3 -> [[CONV 32 -> RELU]*2 -> POOL]*3 -> FC 10'.")

COUNT_HELP = ("NAME=N: the value of a repetition count named in the notation (the notes' "
              "[[CONV -> RELU]*N -> POOL?]*M); repeat for each name")


def memory_size(text):
    """--budget: "4GB", "512MB" -> bytes."""
    from convnet.analysis import parse_bytes
    try:
        return parse_bytes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


class Parser(argparse.ArgumentParser):
    """argparse with a usage error as one line (the usage itself is in --help)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def duration(text):
    """--time-limit: "10m", "90s", "1h" or seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = text.strip().lower()
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:       # a plain ASCII number, as float_type takes
        seconds = float(number) * units[unit] if NUMBER.fullmatch(number) else math.nan
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= 366 * 86400):
        raise argparse.ArgumentTypeError(f"expected a duration such as 10m, 90s or 1h, got "
                                         f"{text!r}")
    return seconds


# functional.conv.Algorithm's names, here so that --help does not import NumPy (a test
# checks that they agree).
CONV_ALGORITHMS = ("auto", "im2col", "shifted", "blocks", "one_image", "winograd2x2",
                   "winograd4x4", "fft")
POSITIVE = int_type(1)
CLASSES = int_type(1, limits.MAX_CLASSES)


# -- commands ---------------------------------------------------------------------------

def _model(args, **kwargs):
    """The model the command's MODEL (and --model for a weights file) name, its --classes
    (num_classes) checked by ``check_classes``."""
    from convnet.spec import check_classes, resolve_model
    spec, arch = _bound_model(args, args.model, getattr(args, "arch", None), "MODEL")
    model = resolve_model(spec, architecture=arch, **kwargs)
    return check_classes(model, kwargs.get("num_classes"), args.model, arch)


def _trained(args, model):
    if not model.trained and (getattr(model, "info", None) or {}).get("trained") is False:
        raise ValueError(f"{args.model}: {args.command} needs trained weights, and this file "
                         f"records fresh ones (convert wrote it from a zoo name or "
                         f"notation): train the net first (convnet train --model ...)")
    if not model.trained:
        raise ValueError(f"{args.model}: {args.command} needs trained weights: a saved model "
                         f"(.json), an ONNX file, or weights (.pt, .safetensors) with --model; "
                         f"a zoo name or notation has random initial weights")


def _tta(args, info):
    """--tta/--no-tta, else flip TTA as the model file records training did."""
    return info.get("tta", False) if args.tta is None else args.tta


def _takes_images(args, model, scores=True):
    """The model's per-sample input (C, H, W): what eval, predict and show activations
    resize images to; a ValueError naming the file when it records none, takes other
    than 1 or 3 channels, or (scores) gives no score per class."""
    from convnet.train.inference import image_input
    return image_input(model, f"{args.model}: {args.command}", scores=scores)


def cmd_summary(args):
    from convnet.analysis import summary
    from convnet.io.weights import json_text
    from convnet.layers.base import counting_only

    with counting_only():   # a summary reads no weight: fresh ones are zeros, never written
        model = _model(args, input_shape=args.input, num_classes=args.classes)
    shape = args.input or getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError("the model has no default input size: give --input CxHxW")
    optimizer = args.optimizer or (getattr(model, "info", None) or {}).get("optimizer", "sgd")
    result = summary(model, shape, batch_size=args.batch, optimizer=optimizer,
                     budget=args.budget)
    print(json_text(result.to_dict(), indent=2) if args.json
          else result.to_text(inference=args.inference))


def cmd_train(args):
    from convnet.train.loop import TrainConfig, train

    cfg = TrainConfig(data=args.data, model=_bound(args, args.arch, "--model"),
                      epochs=args.epochs,
                      batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                      weight_decay=args.weight_decay, augment=args.augment,
                      flip=args.flip, schedule=args.schedule, label_smoothing=args.label_smoothing,
                      ema=args.ema, tta=args.tta, translate=args.translate,
                      time_limit=args.time_limit, val_fraction=args.val_fraction,
                      test_fraction=args.test_fraction, limit=args.limit, seed=args.seed,
                      out=args.out, checkpoint_every=args.checkpoint_every,
                      data_root=args.data_root, download=args.download,
                      image_size=args.image_size, channels=args.channels,
                      init_from=args.init_from,
                      freeze=tuple(args.freeze or ()), sync_bn=args.sync_bn,
                      conv_algorithm=args.conv_algorithm)
    train(cfg, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite,
          then=None if args.no_report else lambda result: _train_report(args, result))


def _train_report(args, result):
    """report.html in the run directory, on the data the run trained on (rank 0 alone
    under mpiexec, while the run still holds its directory); a missing extra or a report
    that fails is a note, not a failed run."""
    from convnet.train.distributed import from_environment

    if not from_environment().is_root:
        return
    run = result.model_path.parent
    try:
        from convnet.data import takes_root
        from convnet.report import run_config, write_report
        from convnet.spec import resolve_model

        config = run_config(run) or {}
        model = resolve_model(str(result.model_path))
        data = config.get("data", args.data)
        root = config.get("data_root", args.data_root)   # a run of old may name one
        path = write_report(model, run / "report.html", source=str(result.model_path),
                            data=data, data_root=root if takes_root(data) else None)
    except ImportError as err:
        _note(args, f"no report.html: {err}")
        return
    except (ValueError, OSError) as err:
        _note(args, f"no report.html: {_one_line(err)}")
        return
    print(limits.printable(f"report: {path}"))


def _note(args, text):
    """A note on stderr, as one line (_shown_line: a file's name with a line break or a
    terminal escape in it cannot start a line that reads as convnet's own)."""
    print(f"convnet {args.command}: {_shown_line(text)}", file=sys.stderr)


def cmd_eval(args):
    import numpy as np

    from convnet.io.weights import json_text
    from convnet.spec import check_open_input
    from convnet.train.inference import evaluate, evaluation_data

    model = _model(args, num_classes=args.classes,
                   input_shape=check_open_input(args.model, args.input, args.arch))
    _trained(args, model)
    _takes_images(args, model)
    x, y, classes, notes = evaluation_data(model, args.data, root=args.data_root,
                                           where=args.model, all_images=args.all_images,
                                           changed_hint="; to score every image of "
                                                        "another folder: --all-images")
    for note in notes:
        _note(args, note)
    info = getattr(model, "info", None) or {}
    tta = _tta(args, info)
    with np.errstate(all="ignore"):     # scores that overflow are named below
        result = evaluate(model, x, y, num_classes=len(classes), tta=tta)
    if result["not_finite"]:
        raise ValueError(f"{args.model} gives class scores that are not finite (NaN or "
                         f"infinite) for {result['not_finite']} of {len(x)} images of "
                         f"{args.data}: its weights hold NaN or infinities, or its outputs "
                         f"overflow float32; no accuracy can be given")
    if args.json:
        print(json_text({"accuracy": result["accuracy"], "loss": result["loss"],
                          "images": len(x), "tta": tta, "classes": list(classes),
                          "confusion": result["confusion"].tolist()}))
        return
    print(f"accuracy {result['accuracy']:.4f} on {len(x)} "
          f"{'' if args.all_images else 'test '}images of {args.data}"
          f"{' with flip TTA' if tta else ''}, loss {result['loss']:.4f}")
    print("confusion matrix (rows: true class, columns: predicted):")
    print(confusion_text(result["confusion"], classes))


def confusion_text(confusion, classes):
    """The confusion matrix as aligned text: a row per true class (its index and name, at
    most 16 characters), a column per predicted class index."""
    index = len(str(len(classes) - 1))
    names = [str(c)[:16] for c in classes]
    label = index + 1 + max(len(n) for n in names)
    cell = 2 + max(index, len(str(int(confusion.max(initial=0)))))
    lines = [" " * label + "".join(f"{i:>{cell}}" for i in range(len(names)))]
    for i, row in enumerate(confusion):
        lines.append(f"{i:>{index}} {names[i]:<{label - index - 1}}"
                     + "".join(f"{int(v):>{cell}}" for v in row))
    return "\n".join(lines)


def cmd_predict(args):
    import numpy as np

    from convnet.data.preprocess import brightness_warning
    from convnet.spec import check_open_input
    from convnet.train.inference import (
        MAX_IMAGE_NOTES,
        class_names,
        conversion_notes,
        inference_batch,
        load_images,
        preprocess,
        top_k,
    )

    model = _model(args, input_shape=check_open_input(args.model, args.input, args.arch))
    _trained(args, model)
    info = getattr(model, "info", None) or {}
    if "mean" not in info:
        _note(args, f"{args.model} records no preprocessing: pixels are scaled to [0, 1] "
                    f"and not normalized")
    shape = _takes_images(args, model)
    classes = class_names(model)
    tta = _tta(args, info)
    # The images are read, predicted and printed a batch at a time: memory stays that of
    # one batch however many files are given.
    part = inference_batch(model, shape)
    errors, converted = [], []    # an unreadable file among many: the others are predicted
    nonfinite = []                # images whose scores are NaN or infinite
    warned = 0                    # images far from the training data's brightness
    for start in range(0, len(args.images), part):
        chunk = args.images[start:start + part]
        images, _ = load_images(chunk, shape, errors, converted=(found := []))
        for note in conversion_notes(found, shape, shown=len(converted), more=False):
            _note(args, note)
        converted += found
        bad = {path for path, _ in errors}
        paths = [path for path in chunk if path not in bad]
        if not paths:
            continue
        for i, warning in brightness_warning(images, 255, info):
            if warned < MAX_IMAGE_NOTES:
                _note(args, f"warning: {paths[i]}: {warning}")
            warned += 1
        with np.errstate(all="ignore"):     # scores that overflow are named below
            indices, probs = top_k(model, preprocess(images, 255, info),
                                   min(args.top, len(classes)), tta=tta)
        for path, idx, prob in zip(paths, indices, probs):
            if not np.isfinite(prob).all():
                nonfinite.append(path)
                continue
            ranked = ", ".join(f"{classes[i]} {p:.3f}" for i, p in zip(idx, prob))
            shown = path if path.isprintable() else repr(path)   # no terminal escapes
            print(f"{shown}: {ranked}", flush=True)
    if len(converted) > MAX_IMAGE_NOTES:      # how many more were converted
        _note(args, conversion_notes(converted, shape)[-1])
    if warned > MAX_IMAGE_NOTES:
        _note(args, f"warning: {warned - MAX_IMAGE_NOTES} more images' intensity lies far "
                    f"outside the training images'")
    if errors:
        from convnet.data.folder import unreadable
        raise unreadable([message for _, message in errors], len(args.images))
    if nonfinite:
        shown = ", ".join(nonfinite[:MAX_IMAGE_NOTES]) + (
            f" and {len(nonfinite) - MAX_IMAGE_NOTES} more"
            if len(nonfinite) > MAX_IMAGE_NOTES else "")
        raise ValueError(f"{args.model} gives class scores that are not finite (NaN or "
                         f"infinite) for {len(nonfinite)} of {len(args.images)} images "
                         f"({shown}): its weights hold NaN or infinities, or its outputs "
                         f"overflow float32")


def _in_a_folder(out):
    """Refuse a file ``out`` whose folder does not exist: a typo in the path would
    otherwise become a tree of new folders."""
    folder = Path(out).parent     # as written: the writers do not expand ~ either
    if not folder.is_dir():
        raise ValueError(f"{out}: the directory {folder} does not exist; create it first, or "
                         f"write somewhere else")


def _new_file(args, out):
    """Refuse to replace the file ``out`` unless --overwrite was given, or to write it
    into a folder that does not exist."""
    from convnet.io.weights import check_new_file

    _in_a_folder(out)
    check_new_file(out, args.overwrite)


def cmd_show(args):
    from convnet import plot
    from convnet.spec import check_open_input

    if args.image and args.what != "activations":
        raise ValueError(f"show {args.what} draws the model alone: IMAGE ({args.image}) is "
                         f"for show activations")
    if args.what == "activations" and not args.image:
        raise ValueError("show activations needs an IMAGE")
    out = args.out if args.out is not None else f"{args.what}.png"
    if Path(out).suffix.lower() not in PICTURES:
        raise ValueError(f"--out {out}: expected a picture file name ending in "
                         f"{', '.join(PICTURES)}")
    _new_file(args, out)
    model = _model(args, input_shape=check_open_input(args.model, args.input, args.arch))
    title = None
    if not model.trained:
        title = f"{args.model}: untrained (random initial weights, nothing learned)"
    try:
        if args.what == "filters":
            path = plot.plot_filters(model, out, title=title)
        elif args.what == "reuse":
            path = plot.plot_reuse(model, out, title=title)
        else:
            from convnet.train.inference import load_images, preprocess
            images, notes = load_images([args.image],
                                        _takes_images(args, model, scores=False))
            for note in notes:
                _note(args, note)
            info = getattr(model, "info", None) or {}
            path = plot.plot_activations(model, preprocess(images, 255, info), out,
                                         title=title)
    except ValueError as err:    # "the model has no CONV layer ...": which model
        if str(err).startswith("the model has no"):
            raise ValueError(f"{args.model}: {err}") from None
        raise
    if title:
        _note(args, f"{args.model} has random initial weights: the picture says so")
    print(limits.printable(f"wrote {path}"))


def cmd_report(args):
    from convnet.report.build import check_report_path, write_report
    from convnet.spec import WEIGHTS, check_open_input
    for option, given in (("--all-images", args.all_images), ("--data-root", args.data_root)):
        if given and not args.data:
            raise ValueError(f"{option} is for the images of --data: give --data")
    _new_file(args, check_report_path(args.out))
    shape = args.input
    if Path(args.model).suffix.lower() in (".json", *WEIGHTS):  # a trained model's own
        shape = check_open_input(args.model, args.input, args.arch)
    model = _model(args, input_shape=shape)
    path = write_report(model, args.out, source=args.model, data=args.data,
                        data_root=args.data_root, images=args.images,
                        all_images=args.all_images, log=lambda text: _note(args, text))
    print(limits.printable(f"wrote {path}"))


def cmd_convert(args):
    from convnet.io.convert import convert

    _in_a_folder(args.dst)
    src, arch = _bound_model(args, args.src, args.arch, "IN")
    path = convert(src, args.dst, model=arch, num_classes=args.classes,
                   overwrite=args.overwrite, input_shape=args.input,
                   log=lambda text: _note(args, text))
    print(limits.printable(f"wrote {path}"))


def cmd_zoo(args):
    from convnet.zoo import listing

    print(listing())


# -- the parser -------------------------------------------------------------------------

PICTURES = (".png", ".svg", ".pdf")   # what `convnet show --out` writes (matplotlib)
OPEN_INPUT_HELP = ("for an ONNX file whose graph leaves the input size open, weights of a "
                   "net that takes other sizes, or a model file that records none: the size "
                   "to run it at (e.g. 3x224x224); images are resized to it")
ARCH_HELP = ("the architecture of a weights file (.pt, .pth, .safetensors): a zoo name or "
             "arrow notation in quotes")


def _optimizer_help():
    from convnet.train.optim import DEFAULT_LR
    extra = {"momentum": ", momentum 0.9", "nesterov": ", momentum 0.9"}
    return ("optimizer, with the learning rate it gets when --lr is not given: " +
            "; ".join(f"{name} (lr {lr:g}{extra.get(name, '')})"
                      for name, lr in DEFAULT_LR.items()) +
            " (default: the data set's, adam for image folders)")


def build_parser():
    from convnet.train.optim import OPTIMIZERS
    from convnet.train.schedules import SCHEDULES

    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error")
    parser = Parser(
        prog="convnet",
        description="convnet: ConvNets on NumPy, written next to the CS231n notes.")
    parser.add_argument("--version", action="version", version=f"convnet {convnet.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    parser.commands = {}

    def counts(p):    # every command that takes notation binds its counts
        p.add_argument("--count", type=count_binding, action="append", metavar="NAME=N",
                       help=COUNT_HELP)

    def command(name, **kwargs):
        parser.commands[name] = commands.add_parser(name, parents=[common], **kwargs)
        return parser.commands[name]

    p = command(
        "summary", help="volumes, parameters, mult-adds, receptive field and memory",
        description="Summarize a ConvNet layer by layer the way the notes compute it: output "
                    "volume W x H x D, parameters, multiply-adds, receptive field (and jump), "
                    "activation memory; then the memory arithmetic (activations and their "
                    "gradients, parameters x the optimizer's multiplier, the input batch) "
                    "and the notes' rules of thumb as advice.")
    p.epilog = NOTATION_HELP
    p.add_argument("model", metavar="MODEL",
                   help="a zoo name (see 'convnet zoo'), arrow notation in quotes "
                        "(e.g. 'INPUT 32x32x3 -> [CONV 32 -> RELU -> POOL]*2 -> FC 10'; "
                        "its grammar below), a model .json file, an ONNX .onnx file, or a "
                        "weights file (.pt, .pth, .safetensors) with --model")
    p.add_argument("--model", dest="arch", metavar="ARCH", help=ARCH_HELP)
    p.add_argument("--input", type=input_shape, metavar="CxHxW",
                   help="per-sample input size, channels first (e.g. 3x224x224); "
                        "default: the model's own")
    p.add_argument("--batch", "--batch-size", dest="batch", type=int_type(1, 1_000_000),
                   default=1, metavar="N", help="batch size (1)")
    counts(p)
    p.add_argument("--classes", type=CLASSES, metavar="K",
                   help="number of classes of a zoo model; any other model must give K scores")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS),
                   help="sets the parameter memory multiplier: sgd x2; momentum, nesterov, "
                        "adagrad, rmsprop x3; adam, adamw x4 (default: the optimizer a "
                        "trained model file records, else sgd)")
    p.add_argument("--budget", type=memory_size, metavar="SIZE",
                   help="memory budget such as 4GB or 512MB: report the largest batch that fits")
    p.add_argument("--inference", action="store_true",
                   help="show the convolution algorithm each CONV layer runs at inference "
                        "on a batch of --batch (default: in training; the auto choice "
                        "takes Winograd only at inference, fft only in training). The JSON "
                        "has both")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_summary)

    p = command(
        "train", help="train a ConvNet (default: the embedded digits, in under a minute)",
        description="Train a ConvNet on real images with a progress bar, validation after "
                    "each epoch, the best model kept, and a checkpoint after every epoch "
                    "(and every --checkpoint-every batches) that --resume continues from, "
                    "bit for bit on as many threads (CONVNET_THREADS). Unset options take "
                    "the data set's defaults. A run writes into its own directory and never "
                    "over an earlier run's files unless --overwrite is given.")
    p.add_argument("--data", default="digits", metavar="DATA",
                   help="digits (embedded, the default), fashion-mnist, mnist, cifar10, "
                        "cifar100, cifar100-coarse (its 20 superclasses), or a directory: "
                        "IDX or CIFAR files (CIFAR-10's, Fashion-MNIST's and MNIST's train "
                        "with that set's defaults), or "
                        "images in one sub-folder per class (split "
                        "into train, validation and test here), or in train/ and test/ (and "
                        "val/) sub-folders of class folders")
    p.epilog = NOTATION_HELP
    p.add_argument("--model", dest="arch", metavar="MODEL",
                   help="a zoo name or arrow notation (its grammar below; default: the data "
                        "set's own net, or for other data a net of the notes' pattern sized "
                        "for its volume and classes); with --from a weights file, its "
                        "architecture")
    counts(p)
    p.add_argument("--data-root", metavar="DIR", help="where to look for the data set's files")
    p.add_argument("--download", action="store_true",
                   help="download Fashion-MNIST if it is not found (checksums verified)")
    p.add_argument("--image-size", type=image_size, metavar="H[xW]",
                   help="resize the images first (bilinear), e.g. 28 to fine-tune a 28x28 "
                        "net on the 8x8 digits (default: their own size, or with --from the "
                        "model's; an image folder of mixed sizes: the median; left to "
                        "itself, at most 128 pixels a side; given, up to 8192)")
    p.add_argument("--channels", type=int_type(1, 3), choices=(1, 3),
                   help="read the images as grayscale (1) or RGB (3) (default: the data's "
                        "own; with --from, the model's; --from an ONNX file whose graph "
                        "leaves the input size open needs both --channels and --image-size)")
    p.add_argument("--epochs", type=int_type(1, 1_000_000), metavar="N",
                   help="passes over the training images (default: the data set's; with "
                        "--time-limit, the most)")
    p.add_argument("--batch-size", type=int_type(1, 1_000_000), metavar="N",
                   help="images a step (default: the data set's); each epoch leaves out "
                        "its last partial batch, other images each epoch (shuffled)")
    p.add_argument("--lr", type=float_type(0, low_open=True),
                   help="learning rate (default: the data set's own with its own "
                        "optimizer, else the optimizer's, see --optimizer)")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), metavar="NAME",
                   help=_optimizer_help())
    p.add_argument("--weight-decay", type=float_type(0, 1), metavar="L2",
                   help="weight decay (default: the data set's; 0.01 for adamw, as torch's)")
    p.add_argument("--schedule", choices=list(SCHEDULES),
                   help="learning-rate schedule, stepped every batch (default: cosine)")
    p.add_argument("--label-smoothing", type=float_type(0, 1, high_open=True), metavar="E",
                   help="train on targets (1 - E) one_hot + E / classes (default: the data "
                        "set's)")
    p.add_argument("--ema", type=float_type(0, 1, high_open=True), metavar="DECAY",
                   help="keep a moving average of the weights (e.g. 0.999; warmed up as "
                        "min(DECAY, (1+t)/(10+t)) at step t), evaluated and saved in their "
                        "place; 0 for none (default: the data set's)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluate on each image and its mirror image (default: on when "
                        "training flips the images, --augment with --flip)")
    p.add_argument("--translate", type=int_type(0, 1024), metavar="PIXELS",
                   help="augmentation: the largest random shift, less than the image's "
                        "side (turns --augment on where the data set's default is off; "
                        "default: the data set's, or 1/8 of each side)")
    p.add_argument("--time-limit", type=duration, metavar="TIME",
                   help="plan the run to end within TIME (e.g. 10m, 90s, 1h): time a few "
                        "steps, then set the epochs so that the schedule ends in time "
                        "(--epochs N: at most N)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random shifts (--translate) and flips (--flip) of the training "
                        "images (default: the data set's)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="augmentation: mirror half the training images (turns --augment on "
                        "where the data set's default is off; default: the data set's, off "
                        "for the digits, whose mirror images are other shapes)")
    p.add_argument("--val-fraction", type=float_type(0, 1, True, True), metavar="F",
                   help="share of the training images held out for validation (0.1), "
                        "unless the data has a val/ folder")
    p.add_argument("--test-fraction", type=float_type(0, 1, True, True), metavar="F",
                   help="share of each class held out for testing from an image folder "
                        "without test/ (0.1); other data have their own test images")
    p.add_argument("--limit", type=POSITIVE, metavar="N",
                   help="use N of the training images, chosen at random (seeded), before "
                        "the validation split: about N x (1 - val fraction) are trained on")
    p.add_argument("--seed", type=int_type(0, 2**63 - 1), default=0,
                   help="seed of the weights, the split, the batches and the augmentation "
                        "(0): the same seed gives the same run, bit for bit, on as many "
                        "threads (CONVNET_THREADS)")
    p.add_argument("--out", metavar="DIR",
                   help="run directory (default: the first free runs/DATA, runs/DATA-2, ...)")
    p.add_argument("--checkpoint-every", type=int_type(0), default=0, metavar="N",
                   help="also write a checkpoint every N batches")
    earlier = p.add_mutually_exclusive_group()
    earlier.add_argument("--resume", action="store_true",
                         help="continue the run in --out (default: the runs/DATA[-N] "
                              "whose checkpoint was written last) from its last checkpoint, "
                              "with its own settings and data (the folder it began on; "
                              "--data PATH where that folder moved)")
    earlier.add_argument("--overwrite", action="store_true",
                         help="replace the earlier run's files in --out")
    p.add_argument("--from", dest="init_from", metavar="MODEL_FILE",
                   help="fine-tune: start from a saved model (.json, .onnx) or weights (.pt, "
                        ".pth, .safetensors, with --model); the data is resized to its input "
                        "and normalized with its own statistics, and a new head is made when "
                        "the classes differ (in number, or in the names the model records; "
                        "the same names in another order reorder the head)")
    p.add_argument("--freeze", nargs="+", action="extend", metavar="STAGE",
                   help="with --from: stages whose parameters stay fixed, by name (e.g. "
                        "features, layer1) or as a range of top-level stages (e.g. 0-7); "
                        "'convnet summary MODEL' lists them. Batch norm in them still "
                        "updates its running statistics (as requires_grad=False)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-report", action="store_true",
                   help="do not write report.html (the 'convnet report' page) into the run "
                        "directory at the end")
    p.add_argument("--conv-algorithm", default="auto", metavar="NAME", choices=CONV_ALGORITHMS,
                   help=f"run every convolution that can with this algorithm: "
                        f"{', '.join(CONV_ALGORITHMS)} (default auto: each layer's own "
                        f"choice; functional/conv/select.py)")
    p.add_argument("--no-sync-bn", dest="sync_bn", action="store_false",
                   help="under mpiexec: batch norm normalizes each process's share of the "
                        "batch on its own (default: the whole batch's statistics)")
    p.set_defaults(func=cmd_train)

    p = command("eval", help="accuracy and confusion matrix on a test set",
                description="Evaluate a saved model on a data set's test split (or with "
                            "--all-images on every image of it), preprocessed as the model "
                            "was trained (size, channels, normalization).")
    p.add_argument("model", metavar="MODEL",
                   help="a saved model (.json), an ONNX file, or weights with --model")
    p.add_argument("--model", dest="arch", metavar="ARCH", help=ARCH_HELP)
    p.add_argument("--classes", type=CLASSES, metavar="K",
                   help="number of classes of a zoo architecture given with --model; "
                        "any other model must give K scores")
    p.add_argument("--data", required=True, help="digits, fashion-mnist, cifar10, ... or a path")
    p.add_argument("--data-root", metavar="DIR", help="where to look for the data set's files")
    p.add_argument("--all-images", action="store_true",
                   help="score every image of DATA, not its test split: a folder of labelled "
                        "images (one sub-folder per class) that the model never trained on; "
                        "split folders and a named set's splits are taken together")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="flip test-time augmentation: the mean of each image's scores and "
                        "its mirror image's (default: as the model was trained)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--input", type=input_shape, metavar="CxHxW", help=OPEN_INPUT_HELP)
    counts(p)
    p.set_defaults(func=cmd_eval)

    p = command("predict", help="top-k classes of image files",
                description="Classify image files with a saved model; each image is "
                            "converted as the model's training data was (size, channels, "
                            "normalization), and the conversion is reported.")
    p.add_argument("model", metavar="MODEL",
                   help="a saved model (.json), an ONNX file, or weights with --model")
    p.add_argument("images", metavar="IMAGE", nargs="+",
                   help="image files; each readable one is predicted, and unreadable ones "
                        "are named at the end (exit status 1)")
    p.add_argument("--model", dest="arch", metavar="ARCH", help=ARCH_HELP)
    p.add_argument("--top", type=POSITIVE, default=3, help="how many classes to show (3)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="flip test-time augmentation: the mean of each image's scores and "
                        "its mirror image's (default: as the model was trained)")
    p.add_argument("--input", type=input_shape, metavar="CxHxW", help=OPEN_INPUT_HELP)
    counts(p)
    p.set_defaults(func=cmd_predict)

    p = command(
        "show", help="pictures: first-layer filters, activation maps, DenseNet reuse",
        description="Draw what a net has learned (needs matplotlib): 'filters' = the first "
                    "CONV layer's filters as a grid; 'activations MODEL IMAGE' = each "
                    "stage's activation maps for an image (up to 32 a stage; the report "
                    "page shows all); 'reuse' = the DenseNet paper's "
                    "feature-reuse heat map, one per dense block. A zoo name or notation "
                    "has random initial weights, and its picture says so.")
    p.add_argument("what", choices=["filters", "activations", "reuse"])
    p.add_argument("model", metavar="MODEL", help="a saved model, zoo name or arrow notation")
    p.add_argument("image", metavar="IMAGE", nargs="?",
                   help="for activations only: an image file")
    p.add_argument("--model", dest="arch", metavar="ARCH", help=ARCH_HELP)
    p.add_argument("--input", type=input_shape, metavar="CxHxW", help=OPEN_INPUT_HELP)
    p.add_argument("--out", metavar="PNG",
                   help="output file, .png, .svg or .pdf (default WHAT.png)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    counts(p)
    p.set_defaults(func=cmd_show)

    p = command(
        "report", help="one HTML page: architecture, summary, training, filters, activations",
        description="Write one self-contained HTML page about a model (it needs no network "
                    "to open; needs matplotlib): whether its weights are trained, its "
                    "architecture drawn as volumes, the summary table, the training curves "
                    "and settings of its run directory, the first layer's filters, every "
                    "stage's activation maps for a few sample images (from --data or "
                    "--images), and with --data the accuracy, confusion matrix and most "
                    "confidently wrong test images. "
                    "'convnet train' writes one into its run directory.")
    p.add_argument("model", metavar="MODEL",
                   help="a saved model (.json; its run directory brings the training "
                        "record), an ONNX file, weights with --model, a zoo name or notation")
    p.add_argument("--model", dest="arch", metavar="ARCH", help=ARCH_HELP)
    p.add_argument("--input", type=input_shape, metavar="CxHxW",
                   help="per-sample input size (e.g. 3x64x64) for a zoo name, notation, "
                        "weights or an ONNX file of an open size; default: the model's own "
                        "(a model file that records its own keeps it)")
    p.add_argument("--data", help="a data set (digits, fashion-mnist, cifar10, ... or a "
                                  "path): accuracy and sample images from its test split")
    p.add_argument("--data-root", metavar="DIR", help="where to look for the data set's files")
    p.add_argument("--all-images", action="store_true",
                   help="with --data: every image of DATA, not its test split (as convnet "
                        "eval --all-images)")
    p.add_argument("--images", nargs="+", action="extend", metavar="IMAGE",
                   help="image files whose activations to draw (instead of --data's)")
    p.add_argument("--out", metavar="HTML", default="report.html",
                   help="output file (default report.html)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    counts(p)
    p.set_defaults(func=cmd_report)

    p = command(
        "convert", help="convert between PyTorch, safetensors, convnet and ONNX files",
        description="Convert a model between formats, chosen by suffix. In: a convnet model "
                    "(.json), an ONNX file (.onnx: architecture and weights), or weights "
                    "(.pt/.pth from torch.save, .safetensors) with --model naming the "
                    "architecture, or a zoo name or arrow notation (a new net, fresh "
                    "weights). Out: .json (convnet model), .safetensors (weights, loadable "
                    "in PyTorch), .onnx; the last two keep a model's class names and "
                    "preprocessing in their metadata (convnet.info).")
    p.add_argument("src", metavar="IN")
    p.add_argument("dst", metavar="OUT")
    p.add_argument("--model", dest="arch", metavar="MODEL", help=ARCH_HELP)
    p.add_argument("--classes", type=CLASSES, metavar="K",
                   help="number of classes of a zoo model; any other model must give K scores")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT (and a .json's weights file) if it exists")
    p.add_argument("--input", type=input_shape, metavar="CxHxW",
                   help="the size the converted model takes (e.g. 3x224x224): for an ONNX "
                        "file whose graph leaves it open, weights or a zoo net at a size "
                        "it takes, notation without an INPUT, or a model file that records "
                        "none (one that records its own keeps it)")
    counts(p)
    p.set_defaults(func=cmd_convert)

    p = command("zoo", help="list the famous nets", description="List the zoo: name, default "
                "input, parameters, and a one-line description.")
    p.set_defaults(func=cmd_zoo)
    return parser


def main(argv=None):
    from convnet.functional.threads import SETTING_ERROR
    from convnet.train.distributed import launch_rank, launch_size
    parser = build_parser()
    parallel = _several_processes(launch_size())
    held = io.StringIO()   # under mpiexec, a rank but 0's argparse help and usage errors
    try:
        with contextlib.ExitStack() as quiet:
            if parallel and launch_rank() not in (0, None):
                quiet.enter_context(contextlib.redirect_stdout(held))
                quiet.enter_context(contextlib.redirect_stderr(held))
            args, extra = parser.parse_known_args(argv)
            if extra:          # said by the command's parser: its --help lists its options
                parser.commands.get(getattr(args, "command", None), parser).error(
                    f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as done:     # --help (0), or a usage error argparse has printed (2)
        if done.code not in (0, None):
            # Under mpiexec a rank but 0 says its own usage error in its abort line (in a
            # launch of several programs, A : B, it may be its own), after rank 0's.
            from convnet.train.distributed import abort_if_parallel
            said = held.getvalue().strip().splitlines()
            abort_if_parallel(done, said[-1] if said else
                              "convnet: its command line was refused (above)")
        raise                      # (a rank of mpiexec's several programs would end
                                   # alone, and the others wait in a collective for good)
    if args.command is None:
        if not parallel or launch_rank() in (0, None):
            parser.print_help()
        return 0
    if SETTING_ERROR is not None:      # (under mpiexec: said once, every rank ended)
        _stop(args, ValueError(SETTING_ERROR), f"error: {SETTING_ERROR}")
        return 2
    if parallel and args.command != "train":    # each rank would run it all, and print
        text = ("this command runs in one process (under mpiexec only train shares its "
                "work): run it without mpiexec")
        _stop(args, ValueError(text), f"error: {text}")
        return 2
    try:
        with warnings.catch_warnings():
            if parallel and launch_rank() not in (0, None):   # said once, by rank 0
                warnings.simplefilter("ignore")
            elif not args.debug:    # a library's warning as one line, as the notes are
                warnings.showwarning = lambda message, *rest: _note(
                    args, f"warning: {message}")
            if sys.stdout is None:     # None: started with standard output closed
                args.func(args)
            else:
                with contextlib.redirect_stdout(_NamedStdout(sys.stdout)):
                    args.func(args)
                    sys.stdout.flush()
    except BrokenPipeError:
        # The reader closed the pipe (| head): end quietly, and keep Python's shutdown
        # from failing again on flushing stdout (the Python docs' recipe).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141   # as if killed by SIGPIPE (128 + 13), like other tools in a pipe
    except KeyboardInterrupt as err:
        _stop(args, err, "interrupted" + _resume_hint(err))
        return 130
    except Exception as err:  # the CLI's promise: one line, never a traceback
        if args.debug:
            from convnet.train.distributed import RootsError, launch_size
            if launch_size() in (0, 1):
                raise
            if not isinstance(err, RootsError):   # (rank 0's error, said by rank 0)
                from convnet.train.distributed import PEER_WAIT, from_environment
                if from_environment().rank != 0:  # an error every rank meets: rank 0's
                    time.sleep(PEER_WAIT)         # abort ends this one before it prints
                traceback.print_exc()   # then end every rank: the others wait in a collective
        hint = (" (try a smaller --batch-size or --image-size)"
                if isinstance(err, MemoryError) and args.command == "train" else
                _resume_hint(err) if isinstance(err, OSError) and err.errno in WRITE_ERRORS
                else "")
        _stop(args, err, f"error: {_one_line(err)}{hint}")
        return 1
    return 0


class _NamedStdout:
    """Standard output whose failed writes say so: an OSError of a write or flush (a full
    disk behind ``> file``, /dev/full) is raised again as "writing to standard output:
    ...", of the same type (BrokenPipeError stays one). Everything else is the stream's."""

    def __init__(self, stream):
        self._stream = stream

    def _named(self, call, *args):
        try:
            return call(*args)
        except OSError as err:
            raise type(err)(err.errno, f"writing to standard output: {err.strerror}") from err

    def write(self, text):
        return self._named(self._stream.write, text)

    def flush(self):
        return self._named(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _several_processes(size):
    """Whether an MPI launcher started this process among several: its size, or for a
    launch that does not say it (PMIx), MPI's (mpi4py imported to ask; False where that
    fails, as training would then say)."""
    if size is not None:
        return size > 1
    from convnet.train.distributed import from_environment
    try:
        return from_environment().size > 1
    except Exception:
        return False


# OSErrors of a write that failed (a full disk or quota, a file too large, a device that
# failed or became read-only): training says how to continue the run after one.
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def _resume_hint(interrupt):
    """How to continue a training run that a Ctrl-C or an OSError (a full disk) stopped
    ("" for other commands)."""
    out = getattr(interrupt, "run_directory", None)
    if out is None:
        return ""
    if getattr(interrupt, "earlier_restored", False):
        return (f"; the new run had written no checkpoint yet: {out} holds the earlier run "
                f"again, as it was")
    if getattr(interrupt, "earlier_kept", False):      # said by a rank other than 0
        return (f"; the new run had written no checkpoint yet: {out} keeps the earlier run "
                f"(the next convnet train there puts back what was set aside)")
    if not (Path(out) / "checkpoint.safetensors").is_file():
        return f"; {out} has no checkpoint yet (one is written after each epoch)"
    from convnet.train.distributed import launch_size
    size = launch_size()         # under mpiexec: resume on as many processes, bit for bit
    launcher = ("" if size in (0, 1) else "mpiexec -n N " if size is None else
                f"mpiexec -n {size} ")
    return (f"; continue the run with: {launcher}convnet train --resume --out "
            f"{shlex.quote(str(out))} (from its last checkpoint: after each epoch, and every "
            f"--checkpoint-every batches)")


def _stop(args, err, text):
    """Say ``text`` once: under mpiexec as ``rank R: convnet CMD: text`` while every rank
    is ended (a rank left in a collective would wait forever; a Ctrl-C too), else as
    ``convnet CMD: text``."""
    from convnet.train.distributed import abort_if_parallel, launch_rank, launch_size
    abort_if_parallel(err, f"convnet {args.command}: {text}")   # returns if not parallel
    if launch_size() not in (0, 1) and launch_rank() not in (0, None):
        return     # MPI could not start (so nothing ended the others): rank 0 says it
    print(f"convnet {args.command}: {text}", file=sys.stderr)


MAX_ERROR = 1000    # characters of an error line; a longer one keeps both ends


def _one_line(err):
    """An exception as the one line the user sees: ours say what and where; others
    (a bug, or a library's error we did not expect) also say what kind they are."""
    text = str(err).strip() or type(err).__name__
    if isinstance(err, MemoryError):
        text = "out of memory (MemoryError): the model or the data is too large for this " \
               "machine's memory"
    elif not isinstance(err, (ValueError, OSError, ImportError)):
        text = f"{type(err).__name__}: {text} (run with --debug for the traceback)"
    from convnet.layers.base import MultilineError
    if isinstance(err, MultilineError) and text == str(err).strip():
        return "\n".join(_shown_line(line) for line in err.lines)
    return _shown_line(text)


def _shown_line(line):
    """Text as one line on the terminal: characters that are not printable (terminal
    escapes, or a line break, in a file's key or name) escaped, so that nothing quoted can
    pass for a line of convnet's own; and a line over MAX_ERROR (a long path or string
    the user gave, echoed whole) cut to both its ends. A MultilineError's lines are cut
    one by one: a notation error's text and the carets under it stay aligned."""
    line = limits.printable(line)
    if len(line) > MAX_ERROR:
        line = f"{line[:MAX_ERROR // 2]} ... ({len(line) - MAX_ERROR:,} characters left " \
               f"out) ... {line[-MAX_ERROR // 2:]}"
    return line


if __name__ == "__main__":
    sys.exit(main())
