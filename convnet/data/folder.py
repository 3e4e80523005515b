"""Image folders: one sub-folder per class, decoded through Pillow (an optional dependency).

    root/
      cat/  0001.png  0002.jpg ...
      dog/  a.png ...

Classes are the sub-folder names sorted. Every file in a class folder is an image, and
so is every file with an image extension in the folders inside it (as torchvision's
ImageFolder and Keras read them), except hidden files and folders (names starting with
".") and what operating systems leave behind (Thumbs.db, desktop.ini, __MACOSX/, ...): a
stray file in a class folder is an error naming it, not silently skipped. Unreadable
files are named together: every file whose header cannot be read in one error, and once
every header reads, every file whose image data cannot be decoded in another. Pillow's
decompression-bomb guard stays on: an image over ``Image.MAX_IMAGE_PIXELS`` (about 89
megapixels by default) is refused with the file named, and so is one with a side over
``convnet.limits.MAX_SOURCE_SIDE`` (resizing a thin strip takes memory in proportion to
its long side: an 80,000,000 x 1 PNG of 78 KB took 1.7 GB). 16-bit grayscale images (PNG,
TIFF, PGM) are scaled to 8 bits (v * 255 / 65535), not clipped; 32-bit ones (integer or
float) are refused. An image is turned as its EXIF
orientation says (as a photo viewer shows it), transparent pixels are shown over white,
and a file of several frames (an animated GIF, a multi-page TIFF) gives its first.

``scan_image_folder`` lists the files and ``read_headers`` reads each file's mode and
size without decoding it, so that a caller (``load_dataset``) can choose one size and one
channel mode for a whole data set before ``load_image_folder`` decodes it.
"""

from __future__ import annotations

import os
import stat
import unicodedata
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from convnet import limits

GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"}
SIXTEEN_BIT = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# What operating systems and NAS boxes leave in folders (lower case): never images.
SYSTEM_FILES = {"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"}
SYSTEM_FOLDERS = {"__macosx", "@eadir", "$recycle.bin", "system volume information"}
ORIENTATION = 0x0112   # the EXIF tag: 1 as stored; 2-8 flipped and/or turned (5-8 a quarter)
UNREADABLE_SHOWN = 5   # how many unreadable files an error names before "and N more"


class Header(NamedTuple):
    """What an image file's header says: its mode, its size as shown (after its EXIF
    orientation), that orientation (1: as stored), whether it has transparency, and its
    frames (pages)."""
    mode: str
    height: int
    width: int
    orientation: int = 1
    alpha: bool = False
    frames: int = 1

    def describe(self):
        """'640x480 RGBA (...)': the size as shown and the mode, with what reading it does."""
        done = [what for what, applies in (
            ("turned as its EXIF orientation says", self.orientation != 1),
            ("transparent pixels over white", self.alpha),
            (f"the first of {self.frames} frames", self.frames > 1)) if applies]
        return f"{self.width}x{self.height} {self.mode}" + (f" ({'; '.join(done)})"
                                                           if done else "")


# The image formats read: the common photo and image formats. Pillow opens others by what
# a file holds, whatever its name; EPS among them runs Ghostscript on the file's PostScript.
FORMATS = ("AVIF", "BMP", "DIB", "GIF", "ICO", "JPEG", "JPEG2000", "PCX", "PNG", "PPM", "QOI",
           "SGI", "TGA", "TIFF", "WEBP")


def _formats(Image):
    """FORMATS that this Pillow can open (a plugin may be missing)."""
    Image.init()
    return [name for name in FORMATS if name in Image.OPEN]


def _pillow():
    """Import Pillow lazily: only image folders need it."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("load_image_folder needs Pillow to decode images: "
                          "pip install Pillow") from None
    return Image


def skipped(name, folder=False):
    """Whether a file or folder name is never read as data: hidden (".name"), or what an
    operating system leaves behind (SYSTEM_FILES, SYSTEM_FOLDERS)."""
    return name.startswith(".") or name.lower() in (SYSTEM_FOLDERS if folder else SYSTEM_FILES)


def _class_folders(root):
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"load_image_folder: root must be a directory, got {str(root)!r}")
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not skipped(p.name, True)),
                     key=lambda p: nfc(p.name))   # one order for both Unicode forms
    if not folders:
        raise ValueError(f"{root}: no class sub-folders: expected root/<class>/<image files>")
    same = next(((a, b) for a, b in zip(folders, folders[1:]) if nfc(a.name) == nfc(b.name)),
                None)
    if same is not None:     # "café" composed and decomposed: one name, two folders
        raise ValueError(f"{root}: the class folders {same[0].name!r} and {same[1].name!r} "
                         f"have one name in two Unicode forms (composed and decomposed): "
                         f"merge them")
    limits.check_count(len(folders), "MAX_CLASSES", "class folders", root)
    return folders


def _image_files(folder):
    """Every file in ``folder`` (a stray one is then an error), and the image files (by
    Pillow's extensions) in the folders inside it, at most limits.MAX_DEPTH deep (links
    followed, each real folder once), less skipped names, in path order. Files of other
    kinds in those inner folders (annotations beside the photos) are left alone."""
    images = _image_extensions()
    files, seen, stack = [], set(), [(Path(folder), 0)]
    while stack:                   # no recursion: a folder may nest deeper than Python's
        top, depth = stack.pop()
        real = os.path.realpath(top)
        if real in seen:           # a link back up the tree: read once
            continue
        seen.add(real)
        limits.check_count(len(seen), "MAX_FILES", "folders in the class folder", folder)
        with os.scandir(top) as entries:
            for entry in entries:
                if skipped(entry.name, entry.is_dir()):
                    continue
                if entry.is_dir():
                    if depth + 1 > limits.MAX_DEPTH:
                        raise ValueError(f"{entry.path}: folders nest more than "
                                         f"{limits.MAX_DEPTH} deep in the class folder "
                                         f"(convnet.limits.MAX_DEPTH)")
                    stack.append((Path(entry.path), depth + 1))
                elif depth == 0 or Path(entry.name).suffix.lower() in images:
                    files.append(Path(entry.path))
        limits.check_count(len(files), "MAX_FILES", "files in the class folder", folder)
    if not files:
        raise ValueError(f"{folder}: class folder holds no image files")
    return sorted(files, key=lambda p: [nfc(part) for part in p.relative_to(folder).parts])


def _image_extensions():
    """The file name extensions of the FORMATS Pillow reads (".jpg", ".png", ...)."""
    Image = _pillow()
    formats = _formats(Image)
    return {ext for ext, kind in Image.registered_extensions().items() if kind in formats}


def loose_images(root):
    """The names of the image files (by Pillow's extensions) that lie in ``root`` itself,
    beside its class folders, sorted: images with no class, which are not read."""
    images = _image_extensions()
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if not skipped(e.name) and not e.is_dir()
                      and os.path.splitext(e.name)[1].lower() in images)


def relabeled(scan, classes, folder):
    """An image folder's scan ([(path, class index)], names) with each image labelled by
    its folder's place in ``classes`` (compared in Unicode's composed form), and
    ``classes`` as its names; a class folder that is not one of them is an error."""
    files, names = scan
    index = {nfc(name): k for k, name in enumerate(classes)}
    unknown = [name for name in names if nfc(name) not in index]
    if unknown:
        raise ValueError(f"{folder}: class folders {unknown!r:.200} are not among the "
                         f"classes {list(classes)!r:.300}")
    return [(path, index[nfc(names[k])]) for path, k in files], list(classes)


def scan_image_folder(root):
    """root/<class>/<file> -> ([(path, class index)], class names), in class then name order.

    An empty class folder is an error naming it, and so is a folder name that is not
    printable text (a model file keeps the names, and predict prints them).
    """
    folders = _class_folders(root)
    odd = next((f for f in folders if not f.name.isprintable()), None)
    if odd is not None:
        raise ValueError(f"{str(odd)!r}: a class folder's name must be printable text (no "
                         f"control characters or line breaks): rename it")
    files = [(f, k) for k, folder in enumerate(folders) for f in _image_files(folder)]
    return files, [f.name for f in folders]


def check_each_file_once(paths):
    """Refuse two paths to one file (a link, or a hard link): the image would count twice,
    in two classes, or in both training and test; a ValueError names both paths."""
    first = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:              # a broken link: reading it names it
            continue
        other = first.setdefault((st.st_dev, st.st_ino), path)
        if other is not path:
            raise ValueError(f"{other} and {path} are one file (through a link): each "
                             f"image must be in the data once; remove the link")


def _opened(Image, path):
    """Image.open (the header only) with the decompression-bomb guard as an error, each
    side held to limits.MAX_SOURCE_SIDE, and bad files named."""
    if isinstance(path, str) and not path:          # Path("") would be ".", a folder
        raise ValueError("an empty file name: give an image file")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not an image file: give the images in it "
                         f"(such as {path / '*'})")
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):   # read twice (header, then pixels): a pipe
            raise ValueError(f"{path}: not a regular file (a pipe or a device): save the "
                             f"image to a file")
        if info.st_size == 0:
            raise ValueError(f"{path}: unreadable image: the file is empty (0 bytes)")
    except OSError as err:     # a link to nothing, or no permission
        raise ValueError(f"{path}: unreadable image: {type(err).__name__}: "
                         f"{err.strerror or err}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path, formats=_formats(Image))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"{path}: refused as a possible decompression bomb "
                         f"(Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}): {err}") from None
    except MemoryError:
        raise
    except Image.UnidentifiedImageError:
        raise ValueError(f"{path}: unreadable image: not a file of a format convnet reads "
                         f"({', '.join(_formats(Image))})") from None
    except Exception as err:    # a plugin may raise anything (DDS: NotImplementedError)
        raise ValueError(f"{path}: unreadable image: {type(err).__name__}: {err}") from None
    if max(im.size) > limits.MAX_SOURCE_SIDE:
        im.close()
        limits.check_count(max(im.size), "MAX_SOURCE_SIDE",
                           f"image of {im.size[0]:,} x {im.size[1]:,} pixels: side", path)
    kind = _thirty_two_bit(im)
    if kind:
        im.close()
        raise ValueError(f"{path}: 32-bit {kind} images are not supported; save it with 8 or "
                         f"16 bits per channel")
    return im


def _thirty_two_bit(im):
    """"float" or "integer" where an opened image holds 32 bits a value, else None. Pillow
    reads 32-bit integers as mode "I", and so too 16-bit PGMs (whose maxval is at most
    65535, in binary or plain text) and, before Pillow 10, 16-bit PNGs: the first tile's
    raw mode tells the others apart ("I;32S" against "I;16B")."""
    if im.mode == "F":
        return "float"
    if im.mode != "I" or not im.tile or im.format == "PPM":   # a PGM's maxval is 16 bits
        return None
    raw = im.tile[0][3]        # (codec, extents, offset, args); args: the raw mode first
    raw = raw[0] if isinstance(raw, tuple) and raw else raw
    return None if isinstance(raw, str) and "16" in raw else "integer"


def _turned_at_open(im):
    """Whether Pillow gives im's size already turned by its EXIF orientation: its TIFF
    reader does so in recent versions, and then turns the pixels itself as it loads them
    (not those of some uncompressed TIFFs, in Pillow 13: _decode refuses those)."""
    tags = getattr(im, "tag_v2", None)
    if im.format != "TIFF" or tags is None:
        return False
    stored = (tags.get(256), tags.get(257))          # ImageWidth, ImageLength
    return stored != tuple(im.size) and stored == tuple(im.size[::-1])


def _header(Image, im):
    """The Header of an opened image, from what Image.open read (nothing decoded)."""
    try:   # Image.getexif itself: PNG's own would decode the image to look past its data
        orientation = Image.Image.getexif(im).get(ORIENTATION, 1)
    except Exception:   # a damaged EXIF block: the image as stored
        orientation = 1
    orientation = orientation if orientation in range(1, 9) else 1
    w, h = im.size[::-1] if orientation >= 5 and not _turned_at_open(im) else im.size
    alpha = im.mode in ALPHA_MODES or "transparency" in im.info
    try:        # counting frames reads past the first, which may be damaged
        frames = getattr(im, "n_frames", 1)
    except Exception:
        frames = 1
    return Header(im.mode, h, w, orientation, alpha, frames if isinstance(frames, int) else 1)


def unreadable(errors, total):
    """One ValueError for every unreadable file ([str(error)], each naming its file)."""
    more = len(errors) - UNREADABLE_SHOWN
    shown = "; ".join(errors[:UNREADABLE_SHOWN]) + (f"; and {more} more" if more > 0 else "")
    return ValueError(f"{shown}; remove or fix it" if len(errors) == 1 else
                      f"{len(errors)} of {total} files are not images convnet can read "
                      f"(remove or fix them): {shown}")


def read_headers(paths):
    """[Header] of image files, from their headers only (nothing is decoded). Every file
    that cannot be read is named in one ValueError."""
    Image = _pillow()
    headers, errors = [], []
    for path in paths:
        try:
            with _opened(Image, path) as im:
                headers.append(_header(Image, im))
        except ValueError as err:
            errors.append(str(err))
    if errors:
        raise unreadable(errors, len(paths))
    return headers


def _eight_bit(Image, im, path):
    """A 16-bit grayscale image as 8-bit "L", scaled v * 255 / 65535 (Pillow would clip);
    as "LA" where the file names a transparent value (a PNG's tRNS), transparent where
    the 16-bit value is that one. Read and scaled in strips of about 256K pixels:
    whole-image copies and uint32 temporaries had taken 1 GB for a 16-bit PNG of 89
    megapixels (Pillow's own decoded image: 180 MB)."""
    width, height = im.size
    clear = im.info.get("transparency")
    clear = clear if isinstance(clear, int) else None
    out = np.empty((height, width) + ((2,) if clear is not None else ()), np.uint8)
    gray = out[..., 0] if clear is not None else out
    rows = max(1, (1 << 18) // max(1, width))
    for i in range(0, height, rows):
        part = np.asarray(im.crop((0, i, width, min(height, i + rows))))
        if part.size and (part.min() < 0 or part.max() > 65535):
            kind = ("signed values (a signed-integer image), which convnet does not read"
                    if part.min() < 0 else "values outside 0..65535")
            raise ValueError(f"{path}: {im.mode} image with {kind} ({part.min()}.."
                             f"{part.max()} in rows {i}..{i + len(part) - 1}); save it as "
                             f"unsigned 8 or 16 bits")
        gray[i:i + rows] = (part.astype(np.uint32) * 255 + 32767) // 65535
        if clear is not None:
            out[i:i + rows, :, 1] = np.where(part == clear, 0, 255)
    return Image.fromarray(out, mode="LA") if clear is not None else Image.fromarray(out)


def decode_image(path, mode, size=None):
    """One image file -> (uint8 (H, W, C) array in ``mode``, its Header).

    mode: "L" or "RGB"; size: (H, W) to resize to (bilinear), or None.
    """
    Image = _pillow()
    im = _opened(Image, path)
    header = _header(Image, im)
    return _decode(Image, path, mode, size, im, header), header


def _decode(Image, path, mode, size, im=None, header=None):
    """One file -> uint8 (H, W, C) array in ``mode``, resized to size=(H, W) if given:
    turned as its EXIF orientation says, its transparent pixels over white (Header)."""
    if im is None:
        im = _opened(Image, path)
    header = header or _header(Image, im)
    try:
        with im:
            im.load()                   # truncated or corrupt data shows up here
    except MemoryError:
        raise
    except Exception as err:    # as in _opened: whatever the format's plugin raises
        raise ValueError(f"{path}: unreadable image: {type(err).__name__}: {err}") from None
    if im.format == "TIFF" and header.orientation >= 5 and im.size != (header.width,
                                                                       header.height):
        import PIL  # its reader turned the size at open, then not the pixels
        raise ValueError(f"{path}: Pillow {PIL.__version__} reads this uncompressed TIFF, "
                         f"turned by its EXIF orientation ({header.orientation}), with its "
                         f"rows and columns mixed up; save it compressed (LZW, Deflate), "
                         f"as PNG, or turned and without the orientation")
    def pillow(step, *args):
        """A Pillow step; its error (ValueError, OSError ...) names the file."""
        try:
            return step(*args)
        except MemoryError:
            raise
        except Exception as err:
            raise ValueError(f"{path}: cannot read the image as {mode}: "
                             f"{type(err).__name__}: {err}") from None
    if header.orientation != 1:   # first: the 8-bit copy of a 16-bit image has no EXIF
        from PIL import ImageOps
        im = pillow(ImageOps.exif_transpose, im)
    if im.mode in SIXTEEN_BIT:
        im = _eight_bit(Image, im, path)
    if header.alpha:
        im = pillow(lambda: Image.alpha_composite(Image.new("RGBA", im.size, "white"),
                                                  im.convert("RGBA")))
    im = pillow(im.convert, mode)
    if size is not None and im.size != (size[1], size[0]):
        im = pillow(im.resize, (size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr if arr.ndim == 3 else arr[:, :, None]             # (H, W, C)


def _check_size(size):
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, int) and 0 < v <= limits.MAX_IMAGE_SIDE
                                 for v in pair):
        raise ValueError(f"load_image_folder: size must be a positive int or an (H, W) "
                         f"pair of at most {limits.MAX_IMAGE_SIDE}, got {size!r}")
    return pair


def load_image_folder(root, size=None, grayscale=False, classes=None):
    """Decode root/<class>/<image> files into one uint8 NCHW array.

    Args:
        root: directory with one sub-folder per class; sorted folder names = classes.
        size: (H, W) to resize every image to (bilinear), or an int for square images;
            None keeps the original size, which then must be the same for all images.
        grayscale: decode to one channel (Pillow mode "L") instead of RGB.
        classes: the class names expected (e.g. the training folder's, for a test
            folder), in their order: each class folder must be one of them (a folder
            may lack some), and the labels index them.

    Returns (x uint8 (N, C, H, W) with C = 3 or 1, y int64 (N,), class_names). Images come
    in class order, then file-name order. The decoded array is capped at
    ``limits.MAX_DATA_BYTES`` (checked before it is allocated).

    >>> x, y, classes = load_image_folder("pets", size=(64, 64))     # doctest: +SKIP
    >>> x.shape, classes                                              # doctest: +SKIP
    ((120, 3, 64, 64), ['cat', 'dog'])
    """
    size = _check_size(size)
    _pillow()                      # a missing extra is said before the folder is read
    files, names = scan_image_folder(root)
    check_each_file_once(path for path, _ in files)
    if classes is not None:        # the training classes, in their order (some may lack)
        files, names = relabeled((files, names), classes, root)
    y = np.array([k for _, k in files], dtype=np.int64)
    return decode_files([path for path, _ in files], size, grayscale, root), y, names


def decode_files(paths, size=None, grayscale=False, where="decode_files"):
    """Decode image files into one uint8 (N, C, H, W) array, C = 1 with grayscale=True
    (Pillow mode "L"), else 3 (RGB); size as for load_image_folder. Every unreadable
    file is named in one ValueError (the others are still read, to find them all); the
    array is capped at ``limits.MAX_DATA_BYTES`` (checked before it is allocated, and
    named by ``where``)."""
    size = _check_size(size)
    Image = _pillow()
    mode, channels = ("L", 1) if grayscale else ("RGB", 3)
    x, first, errors = None, None, []
    for i, path in enumerate(paths):
        try:
            img = _decode(Image, path, mode, size)                 # (H, W, C)
        except ValueError as err:    # the others are still read, to name every bad one
            errors.append(str(err))
            continue
        if x is None:                # the first readable image sets the size
            first, (h, w) = path, img.shape[:2]
            nbytes = len(paths) * channels * h * w
            if nbytes > limits.MAX_DATA_BYTES:
                raise ValueError(f"{where}: {len(paths):,} images of {w}x{h}x{channels} take "
                                 f"{nbytes:,} bytes, over the cap of "
                                 f"{limits.MAX_DATA_BYTES:,} (convnet.limits.MAX_DATA_BYTES); "
                                 f"resize them smaller (--image-size, or size=(H, W))")
            x = np.empty((len(paths), channels, h, w), dtype=np.uint8)   # (N, C, H, W)
        if img.shape[:2] != (h, w):
            raise ValueError(f"{path}: image is {img.shape[0]}x{img.shape[1]} (HxW) but "
                             f"{first} is {h}x{w}: all images must share one size; "
                             f"pass size=(H, W) to resize them")
        x[i] = img.transpose(2, 0, 1)
    if errors:
        raise unreadable(errors, len(paths))
    if x is None:                    # no files
        h, w = size or (0, 0)
        x = np.empty((0, channels, h, w), dtype=np.uint8)
    return x


def nfc(name):
    """A folder name in Unicode's composed form: "café" typed on one system and copied
    from another (decomposed, as macOS stores names) compare equal."""
    return unicodedata.normalize("NFC", str(name))
