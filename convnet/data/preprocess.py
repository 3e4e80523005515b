"""What a trained model expects of an image: the preprocessing it was trained with.

A model file keeps it under "info", so that ``convnet eval`` and ``convnet predict``
apply exactly what training applied:

    classes     class names in label order, e.g. ["cat", "dog"] (the folder names)
    channels    "L" (grayscale, one channel) or "RGB": the mode images are converted to
    scale       the largest pixel value of the training data (255; 16 for the digits)
    mean, std   per-channel normalization of pixels scaled to [0, 1]: (x/scale - mean)/std
    brightness  [low, high]: the 0.5th and 99.5th percentiles of the training images'
                mean intensity (in [0, 1]); an image far outside is worth a warning
    border      [low, high]: the same of the mean intensity of each image's outermost
                ring of pixels, its background where the object is centred (Fashion-MNIST
                and MNIST: black): a light background there is worth a warning
    data        the data set's name
    resize      "bilinear" when training resized the images
    split_seed, test_fraction
                how an image folder without test/ was split: ``convnet eval`` holds out
                the same test images

Every field is optional (files from older versions lack some), and every field present
is checked by ``check_info``: types, lengths and ranges, with the file named.
"""

from __future__ import annotations

import math
import re

import numpy as np

from convnet import limits

CHANNEL_MODES = {"L": 1, "RGB": 3}
MAX_NAME = 1000  # characters in a class or data set name


def _finite(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _numbers(info, key, where, positive=False):
    values = info[key]
    if (not isinstance(values, list) or not 1 <= len(values) <= 3
            or not all(_finite(v) and (v > 0 or not positive) for v in values)):
        kind = "positive " if positive else ""
        raise ValueError(f"{where}: info.{key} must be a list of 1 or 3 finite {kind}numbers "
                         f"(one per channel), got {values!r:.80}")
    return [float(v) for v in values]


def check_info(info, where, channels=None):
    """Check a model file's "info" dict field by field; returns it with floats as floats.

    Args:
        info: the dict (unknown keys are kept as they are: a user's own notes).
        where: the file, for error messages.
        channels: the model's input depth C, when known: mean, std and the channel mode
            must agree with it.

    >>> check_info({"classes": ["cat", "dog"], "mean": [0.5], "std": [0.25]}, "m.json")
    {'classes': ['cat', 'dog'], 'mean': [0.5], 'std': [0.25]}
    """
    if not isinstance(info, dict):
        raise ValueError(f"{where}: info must be a JSON object, got {type(info).__name__}")
    out = dict(info)
    if "classes" in info:
        classes = info["classes"]
        if (not isinstance(classes, list) or not 1 <= len(classes) <= limits.MAX_CLASSES
                or not all(isinstance(c, str) and len(c) <= MAX_NAME for c in classes)):
            raise ValueError(f"{where}: info.classes must be a list of 1 to "
                             f"{limits.MAX_CLASSES:,} class names (strings), got "
                             f"{classes!r:.80}")
        odd = next((c for c in classes if not c.isprintable()), None)
        if odd is not None:   # printed by predict: no terminal escapes or forged lines
            raise ValueError(f"{where}: info.classes: a class name must be printable text "
                             f"(no control characters or line breaks), got {odd!r:.80}")
    for key in ("data", "defaults"):   # the data's name; the set whose defaults it took
        if key in info and not (isinstance(info[key], str) and len(info[key]) <= MAX_NAME):
            raise ValueError(f"{where}: info.{key} must be a data set name (a string), got "
                             f"{info[key]!r:.80}")
    if "scale" in info:
        if not (_finite(info["scale"]) and info["scale"] > 0):
            raise ValueError(f"{where}: info.scale must be a positive number (the largest "
                             f"pixel value, e.g. 255), got {info['scale']!r:.80}")
    for key, positive in (("mean", False), ("std", True)):
        if key in info:
            out[key] = _numbers(info, key, where, positive)
    if "channels" in info and not (isinstance(info["channels"], str)
                                   and info["channels"] in CHANNEL_MODES):
        raise ValueError(f"{where}: info.channels must be 'L' (grayscale) or 'RGB', got "
                         f"{info['channels']!r:.80}")
    for key in ("brightness", "border"):
        if key in info:
            low_high = info[key]
            if (not isinstance(low_high, list) or len(low_high) != 2
                    or not all(_finite(v) and 0 <= v <= 1 for v in low_high)
                    or low_high[0] > low_high[1]):
                raise ValueError(f"{where}: info.{key} must be [low, high] with "
                                 f"0 <= low <= high <= 1, got {low_high!r:.80}")
            out[key] = [float(v) for v in low_high]
    if "optimizer" in info:     # the run's: what summary counts the training memory by
        from convnet.train.optim import OPTIMIZERS
        if not (isinstance(info["optimizer"], str) and info["optimizer"] in OPTIMIZERS):
            raise ValueError(f"{where}: info.optimizer must be one of "
                             f"{', '.join(OPTIMIZERS)}, got {info['optimizer']!r:.80}")
    if "trained" in info and not isinstance(info["trained"], bool):
        raise ValueError(f"{where}: info.trained must be true or false (false: the weights "
                         f"are fresh, not trained), got {info['trained']!r:.80}")
    if "label_smoothing" in info and not (_finite(info["label_smoothing"])
                                          and 0 <= info["label_smoothing"] < 1):
        raise ValueError(f"{where}: info.label_smoothing must be a number in [0, 1), got "
                         f"{info['label_smoothing']!r:.80}")
    if "split_seed" in info and not (type(info["split_seed"]) is int
                                     and 0 <= info["split_seed"] < 2**63):
        raise ValueError(f"{where}: info.split_seed must be an int >= 0, got "
                         f"{info['split_seed']!r:.80}")
    if "test_fraction" in info and not (_finite(info["test_fraction"])
                                        and 0 < info["test_fraction"] < 1):
        raise ValueError(f"{where}: info.test_fraction must be a fraction in (0, 1), got "
                         f"{info['test_fraction']!r:.80}")
    if "split_files" in info:
        files = info["split_files"]
        if not (isinstance(files, dict) and set(files) == {"files", "sha256"}
                and type(files["files"]) is int and 0 < files["files"] <= limits.MAX_FILES
                and isinstance(files["sha256"], str)
                and re.fullmatch("[0-9a-f]{64}", files["sha256"])):
            raise ValueError(f"{where}: info.split_files must be {{\"files\": a count, "
                             f"\"sha256\": 64 hex digits}} (the image folder a test split "
                             f"was drawn from), got {files!r:.80}")
    if "tta" in info and not isinstance(info["tta"], bool):
        raise ValueError(f"{where}: info.tta must be true or false (flip test-time "
                         f"augmentation), got {info['tta']!r:.80}")
    if "resize" in info and not (info["resize"] is None or info["resize"] == "bilinear"):
        raise ValueError(f"{where}: info.resize must be 'bilinear' or null, got "
                         f"{info['resize']!r:.80}")
    if channels is not None:
        for key in ("mean", "std"):
            if key in out and len(out[key]) not in (1, channels):
                raise ValueError(f"{where}: info.{key} has {len(out[key])} values but the "
                                 f"model takes {channels} channel(s)")
        if "channels" in info and CHANNEL_MODES[info["channels"]] != channels:
            raise ValueError(f"{where}: info.channels is {info['channels']!r} but the model "
                             f"takes {channels} channel(s)")
    return out


def mean_intensities(x, scale):
    """Each image's mean intensity in [0, 1]: the mean of all its pixels over scale (N,).
    Light-on-dark digits have low means, the same digits drawn dark on light high ones."""
    return x.reshape(len(x), -1).mean(axis=1) / scale


def border_means(x, scale):
    """Each image's mean intensity, in [0, 1], over its outermost ring of pixels (N,)."""
    ring = np.zeros(x.shape[2:], bool)
    ring[[0, -1], :] = ring[:, [0, -1]] = True         # each pixel once, on 1-wide images too
    return x[:, :, ring].reshape(len(x), -1).mean(axis=1) / scale


def _spread(values):
    """[low, high]: the 0.5th and 99.5th percentiles of values, to 4 decimals."""
    low, high = np.percentile(values, [0.5, 99.5])
    return [round(float(low), 4), round(float(high), 4)]


def brightness_range(x, scale):
    """[low, high] of the images' mean_intensities (uint8 x (N, C, H, W) in [0, scale])."""
    return _spread(mean_intensities(x, scale))


def border_range(x, scale):
    """[low, high] of the images' border_means: the training images' background, where
    their objects are centred."""
    return _spread(border_means(x, scale))


def brightness_warning(x, scale, info):
    """A warning for each image whose mean intensity lies far outside the training data's.

    x: uint8 images (N, C, H, W) in [0, scale], already converted to the model's channels.
    Two measures, each where info records its training range [low, high]: the mean
    intensity ("brightness") and the border's ("border", the background). "Far outside"
    is beyond the range by more than its width (or 0.1, if that is more); the mean of a
    data set of dark and light objects spans most of [0, 1], while its background can
    stay black (Fashion-MNIST), so a light background is caught by the border alone.
    Returns [(index, message)], one message an image; empty when info has no range.
    """
    measures = [(key, what, values) for key, what, values in (
        ("brightness", "mean intensity", lambda: mean_intensities(x, scale)),
        ("border", "background (border) intensity", lambda: border_means(x, scale)))
        if key in info]
    found = {}
    for key, what, values in measures:
        low, high = info[key]
        margin = max(high - low, 0.1)
        for i, value in enumerate(values()):
            if i in found or low - margin <= value <= high + margin:
                continue
            hint = ""
            if low - margin <= 1 - value <= high + margin:
                light = "light on dark" if high < 0.5 else "dark on light"
                hint = (f"; the training images are {light}, this one is the reverse: "
                        f"invert it (255 - pixel)?")
            found[i] = (f"its {what} {value:.2f} lies far outside the training images' "
                        f"{low:.2f}..{high:.2f}{hint}")
    return sorted(found.items())
