"""Test time: preprocessing as in training, accuracy, a confusion matrix, top-k predictions.

At test time only the current activations are kept (the notes' memory point): every
forward here goes through ``model.infer``, which drops each layer's cache as it goes, in
batches whose activations ``inference_batch`` sizes to the model's input.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from convnet import limits
from convnet.functional.loss import softmax, softmax_cross_entropy

BATCH_BYTES = 1 << 30   # the current activations one inference batch may hold
LARGEST_BATCH = 256
MAX_IMAGE_NOTES = 10     # images named in load_images' notes; the rest are counted


def inference_batch(model, input_shape, largest=LARGEST_BATCH):
    """The largest batch, at most ``largest``, whose current activations (summary's
    inference estimate, less the parameters) hold at most BATCH_BYTES; at least 1.
    VGG-16 at 224 x 224 gets 41 images; the digits' and Fashion-MNIST's nets get 256.

    >>> from convnet.models import from_notation
    >>> inference_batch(from_notation("INPUT 32x32x3 -> CONV 16 -> FC 10"), (3, 32, 32))
    256
    """
    from convnet.analysis import summary
    try:
        memory = summary(model, tuple(input_shape), batch_size=1).memory
    except (ValueError, TypeError):     # a model summary cannot walk: no estimate
        return largest
    per_image = memory["inference_total"] - memory["parameters"]
    return int(max(1, min(largest, BATCH_BYTES // max(per_image, 1))))


def prepare_bytes(splits, limit, dtype):
    """About the most memory that making a data set's floats holds at once (training's
    prepare, or evaluation without a record): the images as they are, and while
    Normalize.fit runs, the training images as floats plus fit's float64 block and its
    deviations from the mean (at most Normalize.FIT_VALUES values each, or one image)."""
    from convnet.data.transforms import Normalize
    x = splits.train[0][:limit] if limit else splits.train[0]
    floats = x.size * np.dtype(dtype).itemsize
    held = sum(p[0].nbytes for p in (splits.train, splits.val, splits.test) if p is not None)
    block = min(x.size, max(Normalize.FIT_VALUES, x[0].size if len(x) else 0))
    return held + floats + 2 * block * 8


def preprocess(x, scale, info, dtype=np.float32):
    """uint8 images (N, C, H, W) in [0, scale] -> the normalized floats the model trained on.

    info: the model's preprocessing record (``convnet.data.preprocess``); without "mean"
    and "std" the pixels are only scaled to [0, 1].
    """
    mean = np.asarray(info.get("mean", [0.0]), dtype=dtype).reshape(1, -1, 1, 1)
    std = np.asarray(info.get("std", [1.0]), dtype=dtype).reshape(1, -1, 1, 1)
    return (x.astype(dtype) / dtype(scale) - mean) / std


def class_names(model):
    """The model's class names (its file's), or "0", "1", ... by output index."""
    classes = (getattr(model, "info", None) or {}).get("classes")
    count = model.output_shape(model.input_shape)[0]
    if classes and len(classes) == count:
        return list(classes)
    return [str(i) for i in range(count)]


def evaluation_data(model, data, root=None, where="the model", all_images=False,
                    changed_hint=""):
    """A data set's test images prepared as ``model`` was trained: (x, y, classes, notes).

    The images are resized to the model's input (bilinear) and converted to its channels
    where they differ, and normalized with the model's recorded statistics; an image
    folder without test/ is split as training split it (its recorded seed and fraction).
    Of an image folder only the test images are decoded (so no note says which are
    copies of training images), except for a model without a record (weights alone): it
    is normalized with the data's own training statistics. notes says what was done. An
    image folder's images are labelled by the class names the model records, of which
    its class folders may be some (new photos of two of ten classes); another class
    list that differs from the model's is an error.

    all_images=True: every image of the data instead, not split (load_dataset's
    all_images), for a folder of images the model never trained on; a model without a
    record is then normalized with their statistics, and a note says where the model's
    record shows it was trained on this data. changed_hint ends the error for a folder
    whose files changed since training.
    """
    from convnet.data import DATASETS, check_drawn_split, load_dataset
    from convnet.data.folder import nfc
    from convnet.data.transforms import Normalize, to_float

    info = getattr(model, "info", None) or {}
    c, h, w = model.input_shape
    outputs = model.output_shape(model.input_shape)[0]

    def check_classes(classes):   # before the images are resized or decoded
        if len(classes) != outputs:
            raise ValueError(f"{where} has {outputs} outputs but {data} has {len(classes)} "
                             f"classes")
        if info.get("classes") and [nfc(n) for n in info["classes"]] != [
                nfc(n) for n in classes]:     # a folder copied from a Mac: NFD names
            raise ValueError(f"{where} was trained on the classes {info['classes']!r:.200} "
                             f"but {data} has {classes!r:.200}")
    stats = "mean" in info and "std" in info
    splits = load_dataset(data, root=root, image_size=(h, w), channels=c,
                          seed=info.get("split_seed", 0),
                          test_fraction=info.get("test_fraction", 0.1),
                          check_classes=check_classes, test_only=stats,
                          all_images=all_images, classes=info.get("classes"))
    if not all_images:
        check_drawn_split(info.get("split_files"), splits, data, where, hint=changed_hint)
    notes = list(splits.notes)
    recorded = info.get("split_files")
    if all_images and recorded and splits.drawn_from == recorded:
        notes.append(f"{where} was trained on this folder's images (the same files): its "
                     f"training images are scored too")
    elif all_images and not recorded and info.get("data") == splits.name:
        notes.append(f"{where} was trained on the training images of {splits.name}: they "
                     f"are scored too" if str(data).lower() in DATASETS
                     and info.get("defaults", splits.name) == splits.kind else
                     f"{where} was trained on data named {splits.name}: if this is that "
                     f"data, its training images are scored too")
    classes = list(splits.classes)
    x, y = splits.test
    if stats:       # the images, and the test images as floats with one temporary
        need = sum(p[0].nbytes for p in (splits.train, splits.val, splits.test)
                   if p is not None) + 2 * x.size * 4
    else:           # fitting the statistics on the training images, as training does
        need = prepare_bytes(replace(splits, train=splits.test) if all_images else splits,
                             None, np.float32)
    limits.check_memory(need, "evaluating", f"{data}'s images as floats at "
                        f"{c}x{h}x{w}, the model's input", "evaluate on a smaller data set "
                        "or a model with a smaller input")
    if stats:
        x = preprocess(x, splits.scale, info)
    else:
        norm = Normalize()
        norm.fit(to_float(x if all_images else splits.train[0], splits.scale))
        x = norm(to_float(x, splits.scale))
        notes.append(f"{where} records no preprocessing: normalized with the statistics of "
                     f"{data}'s {'' if all_images else 'training '}images")
    return x, y, classes, notes


def image_input(model, where, scores=False):
    """The model's per-sample input (C, H, W), checked to be one images are made for: one
    channel (read as L) or three (RGB). With scores=True, also that its output is a score
    per class: (K,), or a 1 x 1 map of them (K, 1, 1: an FC net converted to CONV, at the
    size it trained at). Otherwise a ValueError that starts with ``where`` ("model.json:
    eval")."""
    shape = getattr(model, "input_shape", None)
    if shape is None or len(shape) != 3:
        raise ValueError(f"{where} needs a model whose input is an image (C, H, W); its "
                         f"input_shape is {shape!r}")
    if shape[0] not in (1, 3):
        raise ValueError(f"{where} needs a model of 1 or 3 input channels (images are read "
                         f"as grayscale or RGB); this one takes {shape[0]}")
    out = tuple(model.output_shape(tuple(shape))) if scores else ()
    if scores and not (len(out) == 1 or (len(out) == 3 and out[1:] == (1, 1))):
        from convnet.models.notation import _volume
        raise ValueError(f"{where} needs a score per class; the model gives {_volume(out)} "
                         f"per image (an FC net slid as CONV over larger images gives a "
                         f"map: run it at the size it was trained for)")
    return tuple(shape)


def class_scores(model, x, tta=False):
    """The model's class scores (N, K) for the batch x (eval mode), a 1 x 1 map of them
    (N, K, 1, 1) taken as they are; with tta=True, flip test-time augmentation: the mean
    of the scores of x and of its mirror images (left-right)."""
    scores = model.infer(x)
    if tta:
        scores += model.infer(np.ascontiguousarray(x[..., ::-1]))
        scores /= 2
    if scores.ndim == 4 and scores.shape[2:] == (1, 1):
        scores = scores.reshape(scores.shape[:2])
    return scores


def evaluate(model, x, y, batch_size=None, num_classes=None, tta=False, predictions=False):
    """Eval-mode accuracy, mean loss and confusion matrix (rows: true class, cols: predicted).

    batch_size: images per forward; None takes ``inference_batch``'s.
    tta=True: flip test-time augmentation, the scores the mean of the image's and of its
    mirror image's (left-right). predictions=True: also each image's predicted class
    ("predicted") and its softmax probability ("probability"), from the same pass.
    "not_finite" counts the images whose class scores are NaN or infinite (their
    predicted class is then meaningless)."""
    model.eval()
    batch_size = batch_size or inference_batch(model, x.shape[1:])
    k = num_classes or int(np.prod(model.output_shape(x.shape[1:])))
    confusion = np.zeros((k, k), dtype=np.int64)
    loss = 0.0
    not_finite = 0
    guesses, probabilities = [], []
    for start in range(0, len(x), batch_size):
        scores = class_scores(model, x[start:start + batch_size], tta)
        not_finite += int(len(scores) - np.isfinite(scores).all(axis=1).sum())
        yb = y[start:start + batch_size]
        loss += softmax_cross_entropy(scores, yb)[0] * len(yb)
        guess = np.argmax(scores, axis=1)
        np.add.at(confusion, (yb, guess), 1)
        if predictions:
            guesses.append(guess)
            probabilities.append(np.take_along_axis(
                softmax(scores.astype(np.float64)), guess[:, None], axis=1)[:, 0])
    n = max(len(x), 1)
    result = {"accuracy": float(np.trace(confusion) / n), "loss": loss / n,
              "confusion": confusion, "not_finite": not_finite}
    if predictions:
        result["predicted"] = np.concatenate(guesses) if guesses else np.empty(0, np.int64)
        result["probability"] = np.concatenate(probabilities) if probabilities else \
            np.empty(0)
    return result


def top_k(model, x, k=3, batch_size=None, tta=False):
    """(indices, probabilities) of the k most likely classes for each image in x, in
    batches of ``batch_size`` (None takes ``inference_batch``'s); tta as evaluate's."""
    model.eval()
    batch_size = batch_size or inference_batch(model, x.shape[1:])
    found = []
    for start in range(0, len(x), batch_size):
        scores = class_scores(model, x[start:start + batch_size], tta)
        probs = softmax(scores.astype(np.float64))
        order = np.argsort(-probs, axis=1)[:, :k]
        found.append((order, np.take_along_axis(probs, order, axis=1)))
    if not found:
        return np.empty((0, k), np.int64), np.empty((0, k))
    return np.concatenate([o for o, _ in found]), np.concatenate([p for _, p in found])


def load_images(paths, input_shape, errors=None, converted=None):
    """Image files -> (uint8 (N, C, H, W) at the model's input volume, notes).

    Each image is converted to the model's channel mode ("L" for one channel, "RGB" for
    three) and resized to its H x W (bilinear), as training converts an image folder:
    16-bit images scaled to 8 bits, turned as their EXIF orientation says, transparent
    pixels over white. notes says, per image that needed it, what was done ("a.png:
    640x480 RGBA (transparent pixels over white), converted to 28x28 L (bilinear)"), for
    the first MAX_IMAGE_NOTES of them, then how many more.

    errors: None (an unreadable file is a ValueError), or a list that gets each
    unreadable file's (path, message): those files are left out of the array.
    converted: None, or a list that gets each converted image's (path, Header) instead of
    the notes (a caller reading its images in parts says them: ``conversion_notes``).
    """
    from convnet.data.folder import decode_image

    c, h, w = input_shape
    mode = "L" if c == 1 else "RGB"
    out = np.empty((len(paths), c, h, w), dtype=np.uint8)            # (N, C, H, W)
    found, kept = [], 0
    for path in paths:
        try:
            arr, header = decode_image(path, mode, (h, w))
        except ValueError as err:
            if errors is None:
                raise
            errors.append((path, str(err)))
            continue
        out[kept] = arr.transpose(2, 0, 1)
        kept += 1
        if header != (mode, h, w, 1, False, 1):
            found.append((path, header))
    if converted is not None:
        converted += found
        return out[:kept], []
    return out[:kept], conversion_notes(found, input_shape)


def conversion_notes(converted, input_shape, shown=0, more=True):
    """load_images' notes for the converted images [(path, Header)]: one for each of the
    first MAX_IMAGE_NOTES - shown (shown: named already), then (with more) how many
    more."""
    c, h, w = input_shape
    mode = "L" if c == 1 else "RGB"
    room = max(0, MAX_IMAGE_NOTES - shown)
    notes = [f"{path}: {header.describe()}, converted to {w}x{h} {mode}"
             f"{' (bilinear)' if (header.height, header.width) != (h, w) else ''}, the "
             f"model's input" for path, header in converted[:room]]
    if more and len(converted) > room:
        notes.append(f"... and {len(converted) - room} more images converted to "
                     f"{w}x{h} {mode}, the model's input")
    return notes
