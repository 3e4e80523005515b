"""Caps on what a file or a string handed to convnet may ask for.

Every loader (model JSON, notation, checkpoints, PyTorch and ONNX files, IDX, CIFAR,
image folders) checks the sizes a file declares against these caps before it allocates
anything, and refuses with a ValueError that names the file, the field, the value and
the cap. They are far above what real ConvNets need (VGG-16 has 138 million parameters,
DenseNet-201 about 700 layers), and far below what would exhaust a machine.

The caps are read when a check runs, so a user with a trusted, larger file can raise
one for the process: ``convnet.limits.MAX_PARAMS = 1 << 32``.
"""

from __future__ import annotations

import os

MAX_PARAMS = 1 << 30          # parameters in one model: 4 GiB in float32
MAX_LAYERS = 10_000           # layers in one model, after repetitions are unrolled
MAX_DEPTH = 32                # nesting of containers, brackets and ONNX blocks
MAX_VOLUME = 1 << 28          # values in one sample's input (C * H * W)
MAX_IMAGE_SIDE = 8192         # pixels on a side of a training image (--image-size too)
MAX_SOURCE_SIDE = 65_535      # pixels on a side of an image file (JPEG's own limit)
MAX_CLASSES = 100_000         # classes of one data set or model
MAX_FILES = 10_000_000        # files in one class folder of an image folder
MAX_ARRAY_BYTES = 4 << 30     # bytes of all the arrays read from one weight file
MAX_DATA_BYTES = 2 << 30      # bytes of one decoded data set (uint8 images)
MAX_JSON_BYTES = 64 << 20     # a model .json file, or a checkpoint's metadata
MAX_JSON_VALUES = 1 << 20     # values in one of them (each up to ~70 bytes once parsed)
MAX_COMPRESSION = 100         # decompressed / compressed bytes of a gzip or zip member
MAX_KEY_CHARS = 4096          # characters of one tensor's dotted key in a weights file


def check_count(value, cap_name, what, where):
    """value <= the cap called ``cap_name`` in this module, or a ValueError naming both.

    >>> check_count(10, "MAX_LAYERS", "layers", "model.json")
    10
    """
    cap = globals()[cap_name]
    if value > cap:
        raise ValueError(f"{where}: {what} {value:,} is over the cap of {cap:,} "
                         f"(convnet.limits.{cap_name}); refusing to allocate it")
    return value


def check_json(text, where, what="JSON"):
    """Refuse JSON text (str or bytes) before it is parsed when it is longer than
    MAX_JSON_BYTES, or could hold more than MAX_JSON_VALUES values (counted by the
    brackets, braces and commas that separate them). Parsed, each value is a Python object
    of up to ~70 bytes: 64 MB of ``[],[],...`` would have become 1.4 GB."""
    check_count(len(text), "MAX_JSON_BYTES", f"{what} bytes", where)
    marks = (b"[", b"{", b",") if isinstance(text, bytes) else ("[", "{", ",")
    check_count(sum(map(text.count, marks)) + 1, "MAX_JSON_VALUES", f"{what} values", where)
    return text


def cores():
    """The cores this process may run on: its CPU affinity (a cpuset, taskset, an MPI
    launcher's binding), where the OS tells it; else the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def printable(text):
    """text for one line of a terminal: each character that is not printable (a line
    break or a terminal escape in a file's name) written as its escape (\\n, \\x1b), so
    that nothing a user named can pass for a line of convnet's own; tabs are kept."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\t" else ascii(c)[1:-1] for c in text)


def is_count(text):
    """Whether an environment setting's text is a count int() reads as written: ASCII
    digits ("²" and "٣" are digits to str.isdigit), at most 9 of them."""
    return text.isascii() and text.isdigit() and len(text) < 10


def cores_per_process(processes):
    """This process's share of the cores when ``processes`` run on this machine: the cores
    it may run on divided among them, at least 1. (A launcher that binds each process to
    its own cores leaves it fewer than its share; one cpuset for the whole job, as many as
    its share: the division can only undersubscribe.)"""
    return max(1, cores() // max(1, processes))


def machine_memory():
    """The machine's physical memory in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(need, task, what, hint, processes=1):
    """Refuse, before the work, a step that cannot fit in the machine's physical memory:
    a ValueError saying the bytes ``task`` needs for ``what`` and, in ``hint``, what to
    shrink. (A large --image-size had run until the OS killed the process, with no
    message.) processes: how many processes on this machine each need as much (an MPI
    launch's ranks here)."""
    from convnet.analysis import format_bytes
    total = machine_memory()
    if total is not None and need * processes > total:
        each = (f" in each of the {processes} processes on this machine, "
                f"{format_bytes(need * processes)} in all" if processes > 1 else "")
        raise ValueError(f"{task} needs at least {format_bytes(need)} of memory for "
                         f"{what}{each}, more than this machine's {format_bytes(total)}: "
                         f"{hint}")
