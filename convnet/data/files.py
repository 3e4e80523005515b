"""Where data sets live on disk, and a checked, atomic download.

Search order for a data set called ``name`` (e.g. "fashion-mnist"), first hit wins:

1. ``root`` when the caller gives one, ``root/<name>``, or where torchvision's datasets
   put the files under that root (``root/FashionMNIST/raw``, ``root/MNIST/raw``; then
   only these: an explicit place is meant; ``~`` is expanded),
2. ``$CONVNET_DATA/<name>``,
3. ``/usr/share/datasets/<name>`` (Debian's ``dataset-*`` packages install there),
4. ``~/.cache/convnet/<name>`` (where ``download=True`` writes).

Downloads use only the standard library (urllib), check the published MD5 of every file
and write through a temporary file in the target directory that is renamed into place
only when the checksum matches: a failed or interrupted download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

DATA_ENV = "CONVNET_DATA"
TORCHVISION_FOLDERS = {"fashion-mnist": "FashionMNIST/raw", "mnist": "MNIST/raw"}
SYSTEM_DIR = Path("/usr/share/datasets")
CHUNK = 1 << 20  # bytes per read when streaming a download or a decompressed file


def cache_dir():
    """~/.cache/convnet: where downloads go when no root is given."""
    return Path.home() / ".cache" / "convnet"


def search_dirs(name, root=None):
    """The directories searched for data set ``name``, in order (see the module docstring).

    >>> search_dirs("fashion-mnist", root="/data")
    [PosixPath('/data'), PosixPath('/data/fashion-mnist'), PosixPath('/data/FashionMNIST/raw')]
    """
    if root is not None:
        root = Path(root).expanduser()
        return [root, root / name] + ([root / TORCHVISION_FOLDERS[name]]
                                      if name in TORCHVISION_FOLDERS else [])
    dirs = []
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]) / name)
    return dirs + [SYSTEM_DIR / name, cache_dir() / name]


def find_file(directory, name):
    """``directory/name`` or ``directory/name.gz``, whichever exists (plain first), else None."""
    for candidate in (Path(directory) / name, Path(directory) / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def md5sum(path):
    """Hex MD5 of a file, streamed (MD5 here detects corruption; it is no security check)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def umask():
    """The process's umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def download(url, dest, md5, timeout=60.0):
    """Fetch ``url`` to ``dest`` if its MD5 is ``md5``; nothing is left behind otherwise.

    The bytes go to a hidden temporary file next to ``dest`` (same file system) while
    their MD5 is computed; on a match the file is renamed onto ``dest`` (atomic), on a
    mismatch or any error it is deleted and the error raised: ``ValueError`` for a wrong
    checksum, an ``OSError`` naming the URL, what went wrong and what to do for the
    network (a bare urllib error had said only "Name or service not known").

    >>> download(BASE + "t10k-labels-idx1-ubyte.gz", "/tmp/t10k-labels-idx1-ubyte.gz",
    ...          "bb300cfdad3c16e7a12a480ee83cd310")  # doctest: +SKIP
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())     # mkstemp makes 0600; open() would honour umask
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with os.fdopen(fd, "wb") as out, \
                    urllib.request.urlopen(url, timeout=timeout) as src:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            reason = (f"HTTP {err.code} {err.reason}" if isinstance(err, urllib.error.HTTPError)
                      else getattr(err, "reason", None) or err)
            raise OSError(f"{url}: the download failed ({reason}); nothing was saved to "
                          f"{dest}: check the network, or put the file there yourself") \
                from None
        if digest.hexdigest() != md5.lower():
            raise ValueError(f"{url}: checksum mismatch: expected MD5 {md5.lower()}, got "
                             f"{digest.hexdigest()}; the file was not saved to {dest}")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
