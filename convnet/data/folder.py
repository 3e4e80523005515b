"""Image folders: one sub-folder per class, decoded through Pillow (an optional dependency).

    root/
      cat/  0001.png  0002.jpg ...
      dog/  a.png ...

Classes are the sub-folder names sorted; every non-hidden file in a class folder is an
image (a stray file is an error naming it, not silently skipped). Pillow's
decompression-bomb guard stays on: an image over ``Image.MAX_IMAGE_PIXELS`` (about 89
megapixels by default) is refused with the file named.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def _pillow():
    """Import Pillow lazily: only image folders need it."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("load_image_folder needs Pillow to decode images: "
                          "pip install Pillow") from None
    return Image


def _class_folders(root):
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"load_image_folder: root must be a directory, got {str(root)!r}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root}: no class sub-folders: expected root/<class>/<image files>")
    return folders


def _image_files(folder):
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"{folder}: class folder holds no image files")
    return files


def _decode(Image, path, mode, size):
    """One file -> uint8 (H, W, C) array in ``mode``, resized to size=(H, W) if given."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im = im.convert(mode)
                if size is not None and im.size != (size[1], size[0]):
                    im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"{path}: refused as a possible decompression bomb "
                         f"(Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}): {err}") from None
    except (OSError, ValueError, SyntaxError) as err:  # UnidentifiedImageError is an OSError
        raise ValueError(f"{path}: unreadable image: {type(err).__name__}: {err}") from None
    return arr if arr.ndim == 3 else arr[:, :, None]             # (H, W, C)


def load_image_folder(root, size=None, grayscale=False):
    """Decode root/<class>/<image> files into one uint8 NCHW array.

    Args:
        root: directory with one sub-folder per class; sorted folder names = classes.
        size: (H, W) to resize every image to (bilinear), or an int for square images;
            None keeps the original size, which then must be the same for all images.
        grayscale: decode to one channel (Pillow mode "L") instead of RGB.

    Returns (x uint8 (N, C, H, W) with C = 3 or 1, y int64 (N,), class_names). Images come
    in class order, then file-name order.

    >>> x, y, classes = load_image_folder("pets", size=(64, 64))     # doctest: +SKIP
    >>> x.shape, classes                                              # doctest: +SKIP
    ((120, 3, 64, 64), ['cat', 'dog'])
    """
    if size is not None:
        pair = (size, size) if isinstance(size, int) else tuple(size)
        if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
            raise ValueError(f"load_image_folder: size must be a positive int or an (H, W) "
                             f"pair, got {size!r}")
        size = pair
    Image = _pillow()
    folders = _class_folders(root)
    files = [(f, k) for k, folder in enumerate(folders) for f in _image_files(folder)]
    mode, channels = ("L", 1) if grayscale else ("RGB", 3)
    first = _decode(Image, files[0][0], mode, size)                # (H, W, C)
    h, w = first.shape[:2]
    x = np.empty((len(files), channels, h, w), dtype=np.uint8)     # (N, C, H, W)
    y = np.array([k for _, k in files], dtype=np.int64)
    x[0] = first.transpose(2, 0, 1)
    for i, (path, _) in enumerate(files[1:], start=1):
        img = _decode(Image, path, mode, size)
        if img.shape[:2] != (h, w):
            raise ValueError(f"{path}: image is {img.shape[0]}x{img.shape[1]} (HxW) but "
                             f"{files[0][0]} is {h}x{w}: all images must share one size; "
                             f"pass size=(H, W) to resize them")
        x[i] = img.transpose(2, 0, 1)
    return x, y, [f.name for f in folders]
