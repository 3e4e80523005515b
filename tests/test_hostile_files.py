"""Hostile files against the binary loaders: a few hundred cases, generated from small seeds.

The loaders a stranger's file reaches (read_idx and load_idx_dataset, the CIFAR binary
files, pickles and class-name files, load_torch) meet files made here from valid seeds:
truncations at many offsets, seeded byte flips, huge and negative header fields, a wrong
type in every field of a pickle, pickles that would create a marker file if any of their
code ran, zip, gzip and pickle bombs, and nesting 100,000 deep. Every case must end in
a ValueError or OSError whose message starts with the file's path; a mutation that may
still decode to a valid file (a byte flip, a changed field) may instead load, with the
shapes and ranges the loader promises. Never another exception, a crash or a hang.

The cases run in a worker process (this file, run as a script) under a memory limit
(RLIMIT_AS) and a timeout, so a regression that crashes the interpreter (a NumPy segfault,
a C stack overflow) or eats the machine fails its case instead of killing pytest; a
crashed worker is restarted after the case that crashed it. The worker measures each
case's peak allocation (tracemalloc): a refusal must come before any large allocation.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

PEAK_LIMIT = 64 << 20       # traced bytes one case may allocate (the seeds are tiny)
MEMORY_LIMIT = 4 << 30      # RLIMIT_AS of the worker
WORKER_TIMEOUT = 120        # seconds for one worker run (all cases)
MARKER = "pwned"            # the file a payload creates, in the case's directory


# -- a pickle assembler: opcodes written by hand, no memo, so fragments compose ----------
class Op(bytes):
    """Pickle opcodes inserted as they are (a global, a call, a hand-made fragment)."""


def enc(value):
    """The opcodes that push value (protocol 2 opcodes, bytes as Python 2's BINSTRING)."""
    if isinstance(value, Op):
        return bytes(value)
    if value is None or type(value) is bool:
        return {None: b"N", True: b"\x88", False: b"\x89"}[value]
    if type(value) is int:
        if 0 <= value < 256:
            return b"K" + bytes([value])
        if -2**31 <= value < 2**31:
            return b"J" + struct.pack("<i", value)
        raw = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
        if len(raw) < 256:
            return b"\x8a" + bytes([len(raw)]) + raw       # LONG1
        return b"\x8b" + struct.pack("<i", len(raw)) + raw     # LONG4
    if type(value) is float:
        return b"G" + struct.pack(">d", value)
    if type(value) is str:
        raw = value.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw
    if type(value) is bytes:
        return b"T" + struct.pack("<i", len(value)) + value
    if type(value) is tuple:
        return b"(" + b"".join(map(enc, value)) + b"t"
    if type(value) is list:
        return b"]" + (b"(" + b"".join(map(enc, value)) + b"e" if value else b"")
    assert type(value) is dict
    items = b"".join(enc(k) + enc(v) for k, v in value.items())
    return b"}" + (b"(" + items + b"u" if items else b"")


def glob(module, name):
    return Op(f"c{module}\n{name}\n".encode())


def call(func, *args):
    return Op(enc(func) + enc(args) + b"R")


def build(obj, state):
    return Op(enc(obj) + enc(state) + b"b")


def dict_of(*pairs):
    """A dict from (key, value) pairs: keys of any type (a list key fails when it loads)."""
    return Op(b"}(" + b"".join(enc(k) + enc(v) for k, v in pairs) + b"u")


def pickled(value, proto=2):
    return b"\x80" + bytes([proto]) + enc(value) + b"."


# -- seeds --------------------------------------------------------------------------------
RNG = np.random.default_rng(17)
PIXELS = RNG.integers(0, 256, 2 * 3072, dtype=np.uint8).tobytes()    # two CIFAR images
CIFAR_FIELDS = {        # every field of a CIFAR batch as NumPy pickles it
    "key_data": b"data", "key_labels": b"labels", "labels": [3, 7],
    "filenames": [b"a.png", b"b.png"], "batch_label": b"testing batch 1 of 1",
    "recon_subtype": glob("numpy", "ndarray"), "recon_shape": (0,), "recon_code": b"b",
    "dtype_code": "u1", "dtype_align": False, "dtype_copy": True, "dtype_version": 3,
    "dtype_order": "|", "dtype_subarray": None, "dtype_names": None, "dtype_fields": None,
    "dtype_elsize": -1, "dtype_alignment": -1, "dtype_flags": 0,
    "array_version": 1, "array_shape": (2, 3072), "array_fortran": False,
    "array_data": PIXELS,
}


def np_dtype(dtype):
    """numpy.dtype as NumPy itself pickles it (its __reduce__), nested dtypes included."""
    def nested(value):
        if isinstance(value, np.dtype):
            return np_dtype(value)
        if type(value) is tuple:
            return tuple(map(nested, value))
        return {k: nested(v) for k, v in value.items()} if type(value) is dict else value
    _, args, state = dtype.__reduce__()
    return build(call(glob("numpy", "dtype"), *args), nested(state))


def cifar_pickle(dtype=None, **changes):
    """A CIFAR-10 python-form batch of two images, with some fields changed (dtype: the
    array's whole dtype, pickled opcodes)."""
    f = {**CIFAR_FIELDS, **changes}
    if dtype is None:
        dtype = build(call(glob("numpy", "dtype"), f["dtype_code"], f["dtype_align"],
                           f["dtype_copy"]),
                      (f["dtype_version"], f["dtype_order"], f["dtype_subarray"],
                       f["dtype_names"], f["dtype_fields"], f["dtype_elsize"],
                       f["dtype_alignment"], f["dtype_flags"]))
    array = build(call(glob("numpy.core.multiarray", "_reconstruct"), f["recon_subtype"],
                       f["recon_shape"], f["recon_code"]),
                  (f["array_version"], f["array_shape"], dtype, f["array_fortran"],
                   f["array_data"]))
    return pickled(dict_of((b"batch_label", f["batch_label"]), (f["key_labels"], f["labels"]),
                           (f["key_data"], array), (b"filenames", f["filenames"])))


STORAGE = np.arange(6, dtype="<f4").tobytes()
TORCH_FIELDS = {        # every field of a one-tensor state_dict as torch.save pickles it
    "key": "w", "pid_kind": "storage", "pid_type": glob("torch", "FloatStorage"),
    "pid_key": "0", "pid_location": "cpu", "pid_numel": 6, "offset": 0, "size": (2, 3),
    "stride": (3, 1), "requires_grad": False,
    "hooks": call(glob("collections", "OrderedDict")),
}


def torch_pickle(extra=None, **changes):
    """data.pkl of {"w": arange(6).reshape(2, 3) float32}, with some fields changed, and
    an entry "x": extra if given."""
    f = {**TORCH_FIELDS, **changes}
    pid = (f["pid_kind"], f["pid_type"], f["pid_key"], f["pid_location"], f["pid_numel"])
    tensor = call(glob("torch._utils", "_rebuild_tensor_v2"), Op(enc(pid) + b"Q"),
                  f["offset"], f["size"], f["stride"], f["requires_grad"], f["hooks"])
    more = b"" if extra is None else enc("x") + enc(extra)
    return pickled(Op(enc(call(glob("collections", "OrderedDict"))) + b"(" + enc(f["key"])
                      + enc(tensor) + more + b"u"))


def torch_zip(pkl, storage=STORAGE, compression=zipfile.ZIP_STORED):
    """A torch.save archive around data.pkl and the storage data/0."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in [("data.pkl", pkl), ("byteorder", b"little"), ("data/0", storage),
                           ("version", b"3\n")]:
            zf.writestr(f"archive/{name}", data)
    return buf.getvalue()


def idx_file(arr, magic=None, dims=None):
    dims = arr.shape if dims is None else dims
    head = struct.pack(">I", 0x800 | arr.ndim if magic is None else magic)
    return head + struct.pack(f">{len(dims)}I", *dims) + arr.tobytes()


IMAGES = RNG.integers(0, 256, (3, 4, 5), dtype=np.uint8)
LABELS = np.array([1, 9, 0], np.uint8)
IDX = {"images": idx_file(IMAGES), "labels": idx_file(LABELS)}
CIFAR_BIN = {f"data_batch_{i}.bin": bytes([i]) + PIXELS[:3072] for i in range(1, 6)}
CIFAR_BIN["test_batch.bin"] = bytes([3]) + PIXELS[:3072] + bytes([7]) + PIXELS[3072:]
CIFAR_BIN["batches.meta.txt"] = "".join(f"class {i}\n" for i in range(10)).encode()
CIFAR_META = pickled({b"label_names": [f"c{i}".encode() for i in range(10)]})
CIFAR_PY = {**{f"data_batch_{i}": cifar_pickle() for i in range(1, 6)},
            "test_batch": cifar_pickle(), "batches.meta": CIFAR_META}


# -- loaders as the worker runs them, each with the check of a successful load -------------
def _load(loader, directory):
    """Run one loader on a case directory; returns None or what is wrong with the result."""
    from convnet.data.cifar import load_cifar10, read_cifar_python
    from convnet.data.idx import load_idx_dataset, read_idx
    from convnet.io.torch_file import load_torch
    d = Path(directory)
    if loader == "segfault":            # for the test of the harness itself
        os.kill(os.getpid(), signal.SIGSEGV)
    if loader == "idx":
        x = read_idx(d / "images")
        return None if x.dtype == np.uint8 and x.ndim == 3 else f"{x.dtype} {x.shape}"
    if loader == "idx-labels":
        y = read_idx(d / "labels")
        return None if y.dtype == np.uint8 and y.ndim == 1 else f"{y.dtype} {y.shape}"
    if loader == "idx-pair":
        x, y = load_idx_dataset(d / "images", d / "labels")
        good = (x.dtype == np.uint8 and x.ndim == 4 and x.shape[1] == 1
                and y.shape == x.shape[:1] and ((0 <= y) & (y < 10)).all())
        return None if good else f"x {x.shape}, y {y.shape}"
    if loader == "cifar-python":
        x, labels = read_cifar_python(d / "test_batch", {"labels": 10})
        y = labels["labels"]
        good = (x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32)
                and y.shape == x.shape[:1] and ((0 <= y) & (y < 10)).all())
        return None if good else f"x {x.shape}, y {y.shape}"
    if loader == "cifar10":
        out = load_cifar10(d)
        (x, y), classes = out["test"], out["classes"]
        good = (x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32) and y.shape == x.shape[:1]
                and ((0 <= y) & (y < 10)).all() and len(classes) == 10
                and all(type(c) is str for c in classes))
        return None if good else f"x {x.shape}, y {y.shape}, {len(classes)} classes"
    assert loader == "torch"
    tensors = load_torch(d / "w.pt")
    good = (type(tensors) is dict and tensors
            and all(type(k) is str and isinstance(v, np.ndarray) for k, v in tensors.items()))
    return None if good else f"{type(tensors).__name__}"


def worker(spec):
    """Run the cases listed in spec (JSON [[id, loader, directory, traced], ...]), one JSON
    line each on stdout: the start, then the outcome with its peak traced allocation."""
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    for case_id, loader, directory, traced in json.loads(Path(spec).read_text()):
        print(json.dumps({"start": case_id}), flush=True)
        os.chdir(directory)             # a payload's marker would land here
        start = time.perf_counter()
        if traced:
            tracemalloc.start()
        try:
            problem = _load(loader, directory)
            outcome = {"ok": problem is None, "problem": problem}
        except Exception as err:        # everything is reported; the test judges it
            chain, cause = [], err
            while cause is not None and len(chain) < 8:
                chain.append(type(cause).__name__)
                cause = cause.__cause__ or cause.__context__
            outcome = {"error": type(err).__name__, "chain": chain,
                       "named": isinstance(err, (ValueError, OSError)),
                       "message": str(err)[:2000]}
        outcome.update(id=case_id, peak=tracemalloc.get_traced_memory()[1],
                       seconds=time.perf_counter() - start)
        tracemalloc.stop()              # (a no-op, and a peak of 0, when not traced)
        print(json.dumps(outcome), flush=True)


def run_cases(cases, root):
    """{case id: outcome}: write each case's files under root/<id>, run them in workers,
    restarting after a case that crashed or hung its worker."""
    dirs = {}
    for case in cases:
        d = dirs[case.id] = root / case.id
        d.mkdir()
        for name, data in case.files.items():
            if isinstance(data, Sparse):        # a huge file that takes no disk
                with open(d / name, "wb") as f:
                    f.write(data.head)
                    f.truncate(data.size)
            else:
                (d / name).write_bytes(data)
    outcomes, pending = {}, list(cases)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    while pending:
        spec = root / "spec.json"
        spec.write_text(json.dumps([[c.id, c.loader, str(dirs[c.id]), c.traced]
                                    for c in pending]))
        try:
            proc = subprocess.run([sys.executable, __file__, "--worker", str(spec)],
                                  capture_output=True, timeout=WORKER_TIMEOUT, env=env,
                                  cwd=root)
            out, failure = proc.stdout, (f"worker exited with {proc.returncode}: "
                                         f"{proc.stderr[-1500:].decode(errors='replace')}")
        except subprocess.TimeoutExpired as err:
            out, failure = err.stdout or b"", f"worker timed out after {WORKER_TIMEOUT} s"
        started = None
        for line in out.decode().splitlines():
            record = json.loads(line)
            if "start" in record:
                started = record["start"]
            else:
                outcomes[record["id"]], started = record, None
        done = {c.id for c in pending if c.id in outcomes}
        if started is not None:         # the case that crashed or hung the worker
            outcomes[started] = {"crash": failure}
            done.add(started)
        elif len(done) < len(pending):  # died before starting a case
            raise RuntimeError(failure)
        pending = [c for c in pending if c.id not in done]
    return outcomes


# -- the cases ----------------------------------------------------------------------------
class Sparse(NamedTuple):
    """A file of ``size`` bytes that begins with ``head`` (the rest is a hole)."""
    size: int
    head: bytes = b""


class Case(NamedTuple):
    id: str
    loader: str             # a key of _load
    files: dict             # name -> bytes (or Sparse) in the case's directory
    may_load: bool = False  # a mutation that may still be a valid file
    match: str = ""         # what the refusal must say, besides the path
    traced: bool = True     # measure the peak allocation (tracemalloc slows 100,000 opcodes
                            # 20 times over; the nesting cases test recursion, not memory)


def with_file(base, name, data):
    return {**base, name: data}


SEEDS = {   # name: (loader, files, hostile file, bytes not to flip mostly (a data blob))
    "idx": ("idx", {}, "images", IDX["images"], IMAGES.tobytes()),
    "idx-gz": ("idx", {}, "images", gzip.compress(IDX["images"], mtime=0), b""),
    "idx-labels": ("idx-labels", {}, "labels", IDX["labels"], b""),
    "cifar-bin": ("cifar10", CIFAR_BIN, "test_batch.bin", CIFAR_BIN["test_batch.bin"],
                  PIXELS),
    "cifar-py": ("cifar-python", {}, "test_batch", cifar_pickle(), PIXELS),
    "cifar-meta": ("cifar10", CIFAR_PY, "batches.meta", CIFAR_META, b""),
    "torch": ("torch", {}, "w.pt", torch_zip(torch_pickle()), STORAGE),
}


def truncations():
    """Cut every seed at 18 offsets; none of the shorter files is valid."""
    for seed, (loader, base, name, data, _) in SEEDS.items():
        n = len(data)
        cuts = sorted({0, 1, 2, 3, 7, n - 1, n - 2, *np.linspace(8, n - 3, 12).astype(int)})
        if seed == "cifar-bin":         # a whole number of records is a valid file
            cuts = [c for c in cuts if c % 3073]
        for cut in cuts:
            yield Case(f"truncate-{seed}-{cut}", loader, with_file(base, name, data[:cut]))


def flips():
    """Flip 1 to 3 bytes of every seed at seeded positions, mostly outside its data blob."""
    rng = np.random.default_rng(1)
    for seed, (loader, base, name, data, blob) in SEEDS.items():
        start = data.find(blob) if blob else -1
        outside = [i for i in range(len(data)) if not start <= i < start + len(blob)]
        for k in range(16):
            where = rng.choice(outside if k % 4 else len(data), size=1 + k % 3)
            raw = bytearray(data)
            for i in where:
                raw[i] ^= int(rng.integers(1, 256))
            yield Case(f"flip-{seed}-{k}", loader, with_file(base, name, bytes(raw)),
                       may_load=True)


HUGE = [-1, -2**31, 2**31, 2**63, 2**64 + 1, 10**30, 10**5000]    # 10**5000: no repr()
HUGE_IDS = ["-1", "-2e31", "2e31", "2e63", "2e64+1", "1e30", "1e5000"]
DIMS = [0, 1, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1]
WRONG = [None, True, 2.5, "text", b"bytes", (1, 2), [1, 2], {"k": 1}]


def header_fields():
    """Huge, zero and 'negative' (top bit set) sizes in every IDX header field, odd magic
    numbers; huge and negative numbers in every numeric field of the two pickles."""
    for gz in (False, True):
        pack = (lambda raw: gzip.compress(raw, mtime=0)) if gz else (lambda raw: raw)
        for which, arr in (("images", IMAGES), ("labels", LABELS)):
            for axis in range(arr.ndim):
                for value in DIMS:
                    dims = list(arr.shape)
                    dims[axis] = value
                    files = {**IDX, which: idx_file(arr, dims=dims)}
                    yield Case(f"idx-dim-{which}{axis}-{value}-gz{gz:d}", "idx-pair",
                               {k: pack(v) for k, v in files.items()}, may_load=True)
        for magic in (0, 0x803_0000, 0x0000_0804, 0x0000_0D03, 0xFFFF_FFFF, 0x0000_0800):
            yield Case(f"idx-magic-{magic:x}-gz{gz:d}", "idx",
                       {"images": pack(idx_file(IMAGES, magic=magic))})
    for label in (10, 11, 128, 255):
        data = bytes([label]) + PIXELS[:3072] + bytes([1]) + PIXELS[3072:]
        yield Case(f"cifar-bin-label-{label}", "cifar10",
                   with_file(CIFAR_BIN, "test_batch.bin", data), match="out of range")
    numeric = {"array_shape": (2, 3072), "dtype_elsize": -1, "dtype_alignment": -1,
               "dtype_flags": 0, "dtype_version": 3, "array_version": 1, "labels": [3, 7]}
    for field, default in numeric.items():
        for value, tag in zip(HUGE, HUGE_IDS):
            for i in range(len(default)) if isinstance(default, (tuple, list)) else [None]:
                changed = value if i is None else type(default)(
                    value if j == i else v for j, v in enumerate(default))
                yield Case(f"cifar-{field}{'' if i is None else i}-{tag}", "cifar-python",
                           {"test_batch": cifar_pickle(**{field: changed})}, may_load=True)
    for field, default in {"pid_numel": 6, "offset": 0, "size": (2, 3),
                           "stride": (3, 1)}.items():
        for value, tag in zip(HUGE, HUGE_IDS):
            for i in range(len(default)) if isinstance(default, tuple) else [None]:
                changed = value if i is None else tuple(
                    value if j == i else v for j, v in enumerate(default))
                yield Case(f"torch-{field}{'' if i is None else i}-{tag}", "torch",
                           {"w.pt": torch_zip(torch_pickle(**{field: changed}))},
                           may_load=True)


def wrong_types():
    """A value of another type in every field of a CIFAR batch and of a torch state_dict."""
    for prefix, fields, make in (("cifar", CIFAR_FIELDS, cifar_pickle),
                                 ("torch", TORCH_FIELDS, torch_pickle)):
        for field, default in fields.items():
            for k, value in enumerate(WRONG):
                if type(value) is type(default) and not isinstance(default, Op):
                    continue
                data = make(**{field: value})
                if prefix == "cifar":
                    yield Case(f"cifar-type-{field}-{k}", "cifar-python",
                               {"test_batch": data}, may_load=True)
                else:
                    yield Case(f"torch-type-{field}-{k}", "torch",
                               {"w.pt": torch_zip(data)}, may_load=True)


def payload(style, module, name, arg):
    """Opcodes that call module.name(arg) if the unpickler lets them: four ways to name it."""
    if style == "reduce":
        return Op(enc(glob(module, name)) + enc((arg,)) + b"R")
    if style == "inst":
        return Op(b"(" + enc(arg) + f"i{module}\n{name}\n".encode())
    if style == "obj":
        return Op(b"(" + enc(glob(module, name)) + enc(arg) + b"o")
    assert style == "stack_global"
    return Op(enc(module) + enc(name) + b"\x93" + enc((arg,)) + b"R")


COMMAND = f"touch {MARKER}"
PYTHON = f"open({MARKER!r}, 'w').close()"
PAYLOADS = [("os", "system", COMMAND), ("posix", "system", COMMAND),
            ("builtins", "eval", PYTHON), ("builtins", "exec", PYTHON),
            ("__builtin__", "eval", PYTHON), ("subprocess", "check_call", ["touch", MARKER])]
STYLES = ("reduce", "inst", "obj", "stack_global")


def code_payloads():
    """Every payload in every style, bare and nested in an otherwise valid file."""
    for module, name, arg in PAYLOADS:
        for style in STYLES:
            op = payload(style, module, name, arg)
            match = f"refusing to load '{module}.{name}'"
            tag = f"{module}.{name}-{style}"
            yield Case(f"code-torch-bare-{tag}", "torch", {"w.pt": torch_zip(pickled(op))},
                       match=match)
            yield Case(f"code-torch-nested-{tag}", "torch",
                       {"w.pt": torch_zip(torch_pickle(offset=op))}, match=match)
            yield Case(f"code-cifar-bare-{tag}", "cifar-python",
                       {"test_batch": pickled(op)}, match=match)
            yield Case(f"code-cifar-nested-{tag}", "cifar-python",
                       {"test_batch": cifar_pickle(labels=[3, op])}, match=match)


DEEP = 100_000
NESTINGS = {    # name: (opcodes that push one deeply nested object, what the refusal says)
    # hashing a tuple a million deep (a dict key) overflows CPython's C stack
    "tuple-key": (b"}" + b"N" + b"\x85" * 10**6 + b"Ns", "tuples nested deeper than 32"),
    "lists-append": (b"]" * DEEP + b"a" * (DEEP - 1), "nested deeper than 32 levels"),
    "lists-mark": (b"(" * DEEP + b"l" * DEEP, "nested deeper than 32 levels"),
    "dicts": (b"}U\x01k" * (DEEP - 1) + b"}" + b"s" * (DEEP - 1), "nested deeper than 32"),
    "tuples": (b"N" + b"\x85" * DEEP, "tuples nested deeper than 32 levels"),
    "cycle": (b"]\x94h\x00a", "nested deeper than 32 levels"),     # a list holding itself
}


def nestings():
    """Deep nesting as the labels of an otherwise valid CIFAR batch, or as an entry beside
    the tensor of a state_dict (the assembler stores no memo: "cycle" gets entry 0)."""
    for name, (ops, match) in NESTINGS.items():
        yield Case(f"nest-cifar-{name}", "cifar-python",
                   {"test_batch": cifar_pickle(labels=Op(ops))}, match=match, traced=False)
        yield Case(f"nest-torch-{name}", "torch",
                   {"w.pt": torch_zip(torch_pickle(extra=Op(ops)))}, match=match,
                   traced=False)


def dtypes():
    """Arrays of every dtype that is not plain numeric, pickled as NumPy pickles them, with
    data as bytes or as a short list: the issue's crash is an object array of 100,000
    given a list of one (NumPy reads past the list)."""
    for name, code in [("object", "O"), ("void", "V8"), ("unicode", "U2"), ("bytes", "S2"),
                       ("datetime", "M8[s]"), ("timedelta", "m8[s]"), ("complex64", "c8"),
                       ("complex128", "c16"), ("longdouble", "f16"), ("subarray", "(3,)f4"),
                       ("structured", [("x", "<f4"), ("y", "u1")]),
                       ("structured-object", [("x", "O")])]:
        dtype = np.dtype(code)
        for k, data in enumerate([[1], bytes(100_000 * dtype.itemsize)]):
            yield Case(f"dtype-{name}-{('list', 'bytes')[k]}", "cifar-python",
                       {"test_batch": cifar_pickle(dtype=np_dtype(dtype),
                                                   array_shape=(100_000,), array_data=data)},
                       match="refusing numpy.dtype")


def counted(opcode, width, length):
    return opcode + length.to_bytes(width, "little") + b"abc"


PICKLE_BOMBS = {    # opcodes that make CPython's unpickler allocate before it reads
    "binbytes8": counted(b"\x8e", 8, 1 << 40), "binunicode8": counted(b"\x8d", 8, 1 << 40),
    "bytearray8": counted(b"\x96", 8, 1 << 40), "binbytes": counted(b"B", 4, 2**32 - 1),
    "binstring": counted(b"T", 4, 2**31 - 1), "long4": counted(b"\x8b", 4, 2**31 - 1),
    "frame": counted(b"\x95", 8, 1 << 40), "memo": b"N" + b"r\xf0\xff\xff\xff",
    "get": b"j\xf0\xff\xff\xff",
    "shared": pickle.dumps([[[[0]] * 1000] * 1000] * 1000, protocol=2)[2:-1],  # 10**9 items
}


def patch_central(data, member, **fields):
    """A zip's bytes with fields (compressed, size) of member's central record changed:
    zipfile takes the sizes from there."""
    raw, at = bytearray(data), data.find(b"PK\x01\x02")
    while raw[at + 46:at + 46 + int.from_bytes(raw[at + 28:at + 30], "little")] != member:
        at = data.find(b"PK\x01\x02", at + 4)
    for field, value in fields.items():
        start = {"compressed": 20, "size": 24}[field]
        raw[at + start:at + start + 4] = value.to_bytes(4, "little")
    return bytes(raw)


def deflated(data_size, declared=None):
    """A torch archive whose storage is data_size zero bytes deflated (about 1000:1);
    declared: the bytes the pickle and the central directory claim instead."""
    numel = (data_size if declared is None else declared) // 4
    data = torch_zip(torch_pickle(pid_numel=numel, size=(numel,), stride=(1,)),
                     storage=bytes(data_size), compression=zipfile.ZIP_DEFLATED)
    return data if declared is None else patch_central(data, b"archive/data/0",
                                                       size=declared)


def bombs():
    """Zip, gzip and pickle bombs; files whose declared sizes are far past the caps."""
    for name, ops in PICKLE_BOMBS.items():
        yield Case(f"bomb-pickle-cifar-{name}", "cifar-python",
                   {"test_batch": b"\x80\x04" + ops + b"."})
        yield Case(f"bomb-pickle-torch-{name}", "torch",
                   {"w.pt": torch_zip(b"\x80\x04}(X\x01\x00\x00\x00w" + ops + b"u.")})
    yield Case("bomb-cifar-labels-shared", "cifar-python",
               {"test_batch": cifar_pickle(labels=Op(PICKLE_BOMBS["shared"]))},
               match="'labels' must be 2 integers")
    yield Case("bomb-cifar-array-shape", "cifar-python",
               {"test_batch": cifar_pickle(array_shape=(2**40, 3072))}, match="over the cap")
    zeros = struct.pack(">IIII", 0x803, 3000, 100, 100) + bytes(3000 * 100 * 100)
    yield Case("bomb-idx-gzip-ratio", "idx", {"images": gzip.compress(zeros)},
               match="MAX_COMPRESSION")
    yield Case("bomb-idx-gzip-trailing", "idx",      # valid data, then 70 MB of zeros
               {"images": gzip.compress(IDX["images"] + bytes(70 << 20), compresslevel=1)},
               match="too long")
    yield Case("bomb-idx-sparse", "idx",
               {"images": Sparse(3 << 30, struct.pack(">IIII", 0x803, 3 << 20, 32, 32))},
               match="MAX_DATA_BYTES")
    yield Case("bomb-idx-header", "idx",
               {"images": struct.pack(">IIII", 0x803, *[2**32 - 1] * 3)},
               match="MAX_DATA_BYTES")
    yield Case("bomb-cifar-bin-sparse", "cifar10",
               with_file(CIFAR_BIN, "test_batch.bin", Sparse(3073 << 20)),
               match="MAX_DATA_BYTES")
    yield Case("bomb-cifar-pickle-sparse", "cifar-python",
               {"test_batch": Sparse(600 << 20, b"\x80\x02")}, match="too large")
    yield Case("bomb-cifar-names-sparse", "cifar10",
               with_file(CIFAR_BIN, "batches.meta.txt", Sparse(1 << 30)), match="too large")
    yield Case("bomb-zip-ratio", "torch", {"w.pt": deflated(40 << 20)},
               match="MAX_COMPRESSION")
    yield Case("bomb-zip-liar", "torch", {"w.pt": deflated(40 << 20, declared=24)},
               match="Bad CRC-32")
    yield Case("bomb-zip-declared", "torch",
               {"w.pt": patch_central(torch_zip(torch_pickle()), b"archive/data/0",
                                      compressed=2**32 - 16, size=2**32 - 16)},
               match="declares 4,294,967,280 bytes")


def text_files():
    """Class-name files that are not UTF-8, too long, or list the wrong number of names."""
    for k, data in enumerate([b"caf\xe9\n" * 10, b"\xff\xfe" + "a\n".encode("utf-16-le") * 10,
                              b"x\n" * 9, b"x\n" * 11, b"", b"\n\n\n", bytes(100)]):
        yield Case(f"names-txt-{k}", "cifar10", with_file(CIFAR_BIN, "batches.meta.txt", data))


CASES = [*truncations(), *flips(), *header_fields(), *wrong_types(), *code_payloads(),
         *nestings(), *dtypes(), *bombs(), *text_files()]


# -- the tests ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    return run_cases(CASES, tmp_path_factory.mktemp("hostile"))


def test_seeds_load(tmp_path):
    """Every seed is a valid file, so what each case changes is what it tests."""
    seeds = {"idx": {"images": IDX["images"]}, "idx-labels": {"labels": IDX["labels"]},
             "idx-pair": IDX, "cifar10": CIFAR_BIN,
             "cifar-python": {"test_batch": cifar_pickle()},
             "torch": {"w.pt": torch_zip(torch_pickle())}}
    for loader, files in seeds.items():
        (tmp_path / loader).mkdir()
        for name, data in files.items():
            (tmp_path / loader / name).write_bytes(data)
        assert _load(loader, tmp_path / loader) is None, loader
    (tmp_path / "py").mkdir()
    for name, data in CIFAR_PY.items():
        (tmp_path / "py" / name).write_bytes(data)
    assert _load("cifar10", tmp_path / "py") is None
    from convnet.io.torch_file import load_torch
    np.testing.assert_array_equal(load_torch(tmp_path / "torch" / "w.pt")["w"],
                                  np.arange(6, dtype=np.float32).reshape(2, 3))


def test_the_payloads_run_under_plain_pickle(tmp_path):
    """Each payload, bare, creates its marker under pickle.loads: so a missing marker in
    the cases means the loader stopped it."""
    script = ("import os, pickle, sys, time\n"
              "for d in sys.argv[1:]:\n"
              "    os.chdir(d)\n"
              "    try: pickle.loads(open('p', 'rb').read())\n"
              "    except Exception: pass\n"
              "time.sleep(0.3)\n")
    dirs = []
    for k, (module, name, arg) in enumerate(PAYLOADS):
        for style in STYLES:
            d = tmp_path / f"{k}-{style}"
            d.mkdir()
            (d / "p").write_bytes(pickled(payload(style, module, name, arg)))
            dirs.append(d)
    subprocess.run([sys.executable, "-c", script, *map(str, dirs)], check=True, timeout=60)
    assert [d.name for d in dirs if not (d / MARKER).exists()] == []


def test_a_crash_fails_its_case_and_the_others_still_run(tmp_path):
    cases = [Case("before", "idx", {"images": IDX["images"]}), Case("crash", "segfault", {}),
             Case("after", "idx", {"images": b"\0\0\x08\x03"})]
    out = run_cases(cases, tmp_path)
    assert out["before"]["ok"] and "after" in out["after"]["message"]
    assert out["crash"]["crash"].startswith("worker exited with -11")


def test_there_are_a_few_hundred_cases():
    assert len(CASES) >= 300 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_file(case, outcomes, tmp_path_factory):
    out = outcomes[case.id]
    assert "crash" not in out, out["crash"]
    assert out["peak"] < PEAK_LIMIT, f"peak {out['peak']:,} bytes"
    if "ok" in out:
        assert case.may_load, "loaded a file that must be refused"
        assert out["ok"], f"loaded, but wrong: {out['problem']}"
    else:
        message = out["message"]
        assert out["named"], f"{out['error']}: {message}"
        directory = str(tmp_path_factory.getbasetemp())
        assert message.startswith(directory), f"the message does not name the file: {message}"
        assert not {"MemoryError", "RecursionError"} & set(out["chain"])
        assert "MemoryError" not in message and "RecursionError" not in message, message
        assert case.match in message, message
    assert not list(Path(tmp_path_factory.getbasetemp()).glob(f"hostile*/{case.id}/{MARKER}"))


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(sys.argv[2])


def test_a_pickle_of_more_opcodes_than_max_ops_is_refused_before_it_is_built():
    """The check walks the opcodes in Python (about 1.5 us each): MAX_OPS, 2**20, bounds
    its time on a small compressed file (8.4 million opcodes had taken 20 s)."""
    from convnet import safe_pickle
    pairs = b"0N" * ((1 << 19) - 2)                # POP, NONE
    safe_pickle.check_pickle(b"\x80\x02NN" + pairs + b".")        # 2**20 opcodes
    with pytest.raises(ValueError, match=r"more than 1,048,576 pickle opcodes "
                                         r"\(convnet.safe_pickle.MAX_OPS\)"):
        safe_pickle.check_pickle(b"\x80\x02NNN" + pairs + b".")
