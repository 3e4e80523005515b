"""load_torch against real torch.save files: values, dtypes, views, wrappers, hostile files."""

import ast
import io
import os
import pickle
import pickletools
import re
import subprocess
import sys
import tracemalloc
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import convnet.io.torch_file as torch_file
from convnet.io.torch_file import load_torch
from convnet.layers.activation import ReLU
from convnet.layers.conv import Conv2d
from convnet.layers.norm import BatchNorm2d
from convnet.models.containers import Sequential


def save(obj, path, **kwargs):
    torch.save(obj, path, **kwargs)
    return path


def rewrite(src, dst, replace=(), add=()):
    """Copy a torch.save zip to dst; replace maps names under the archive folder to new
    bytes (None drops the member); add maps full member names to bytes."""
    replace, add = dict(replace), dict(add)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            prefix, name = info.filename.split("/", 1)
            data = replace.get(name, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
        for name, data in add.items():
            zout.writestr(name.format(prefix=prefix), data)
    return dst


def small_net(seed=0):
    """Conv2d -> BatchNorm2d -> ReLU -> Linear, after one training-mode forward (so the
    running statistics and num_batches_tracked are not their initial values)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3),
                              torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(12, 4))
    net(torch.randn(2, 2, 4, 4))
    return net


def assert_same(loaded, expected):
    """Same keys in the same order; each array equal to the tensor in dtype, shape, value."""
    assert list(loaded) == list(expected)
    for key, tensor in expected.items():
        want = tensor.detach().numpy()
        got = loaded[key]
        assert isinstance(got, np.ndarray), key
        assert got.dtype == want.dtype and got.shape == want.shape, key
        assert np.array_equal(got, want, equal_nan=got.dtype.kind in "fc"), key
        assert got.flags.c_contiguous and got.flags.writeable, key


def test_state_dict_of_small_modules(tmp_path):
    sd = small_net().state_dict()
    loaded = load_torch(save(sd, tmp_path / "net.pt"))
    assert_same(loaded, sd)
    count = loaded["1.num_batches_tracked"]
    assert count.shape == () and count.dtype == np.int64 and count == 1


def test_weights_run_in_a_convnet_model(tmp_path):
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.BatchNorm2d(3),
                              torch.nn.ReLU())
    net(torch.randn(4, 2, 5, 5))
    net.eval()
    model = Sequential(Conv2d(2, 3, 3, padding=1), BatchNorm2d(3), ReLU())
    model.load_state_dict(load_torch(save(net.state_dict(), tmp_path / "net.pt")))
    model.eval()
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert np.allclose(model.forward(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict"])
def test_wrapper_dict_gives_the_state_dict(tmp_path, key):
    net = small_net()
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.randn(1, 2, 4, 4)).sum().backward()
    optimizer.step()            # the optimizer state now holds tensors too
    sd = net.state_dict()
    checkpoint = {"epoch": 3, key: sd, "optimizer": optimizer.state_dict(),
                  "best_acc": 0.5, "arch": "tiny"}
    assert_same(load_torch(save(checkpoint, tmp_path / "ckpt.pt")), sd)


def test_nested_dicts_are_flattened_with_dotted_keys(tmp_path):
    a, b, c = torch.randn(2, 3), torch.randn(3), torch.randn(4, 2)
    checkpoint = {"epoch": 3, "encoder": {"0.weight": a, "0.bias": b},
                  "head": {"weight": c}, "tag": "x", "sizes": [1, 2], "lr": 0.1}
    loaded = load_torch(save(checkpoint, tmp_path / "nested.pt"))
    assert_same(loaded, {"encoder.0.weight": a, "encoder.0.bias": b, "head.weight": c})
    # two state_dicts under known keys: ambiguous, so everything comes back flattened
    sd = small_net().state_dict()
    loaded = load_torch(save({"model": sd, "state_dict": sd, "epoch": 1}, tmp_path / "two.pt"))
    assert list(loaded) == [f"{k}.{name}" for k in ("model", "state_dict") for name in sd]


def test_views_and_shared_storage(tmp_path):
    big = torch.arange(60, dtype=torch.float64).reshape(3, 4, 5)
    tensors = {"whole": big, "slice": big[1:, ::2, 1:4], "transposed": big.transpose(0, 2),
               "row": big[2, 1], "scalar": big[1, 2, 3], "expanded": big[0, 0, :1].expand(3, 4),
               "empty": big[:, :0]}
    path = save(tensors, tmp_path / "views.pt")
    with zipfile.ZipFile(path) as zf:
        records = [name for name in zf.namelist() if "/data/" in name]
    assert len(records) == 1            # all seven tensors share big's storage
    assert_same(load_torch(path), tensors)


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8,
          torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.bool,
          torch.complex64, torch.complex128, torch.float8_e4m3fn, torch.float8_e5m2]
WIDENED = (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)   # NumPy has none


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(tmp_path, dtype):
    rng = np.random.default_rng(DTYPES.index(dtype))
    values = rng.standard_normal((3, 5)) * 50      # (3, 5)
    if dtype.is_floating_point:
        values[0, :4] = [np.inf, -np.inf, np.nan, -0.0]
        t = torch.from_numpy(values).to(dtype)
    elif dtype.is_complex:
        t = torch.from_numpy(values + 1j * rng.standard_normal((3, 5))).to(dtype)
    elif dtype == torch.bool:
        t = torch.from_numpy(values > 0)
    else:
        low = 0 if dtype in (torch.uint8, torch.uint16) else -100
        t = torch.from_numpy(rng.integers(low, 100, size=(3, 5))).to(dtype)
    tensors = {"t": t, "transposed": t.t(), "scalar": t[1, 2]}
    loaded = load_torch(save(tensors, tmp_path / "dtype.pt"))
    if dtype in WIDENED:     # widened exactly to float32 (float8 had been refused)
        tensors = {key: value.float() for key, value in tensors.items()}
    assert_same(loaded, tensors)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fnuz, torch.float8_e5m2fnuz])
def test_a_dtype_convnet_does_not_read_is_named_as_one(tmp_path, dtype):
    """It had been refused as if its name were unsafe ("only tensors and their
    containers are allowed")."""
    name = str(dtype).removeprefix("torch.")
    path = tmp_path / "q.pth"
    torch.save({"a": torch.zeros(3, dtype=dtype)}, path)
    with pytest.raises(ValueError, match=f"tensors of dtype torch.{name} are not read: "
                                         f"convnet reads float64, float32"):
        load_torch(path)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_a_quantized_tensor_is_named_as_one(tmp_path):
    """It had been refused as "'torch._utils._rebuild_qtensor' ... only tensors and
    their containers are allowed", which does not say what to do."""
    path = tmp_path / "q.pth"
    torch.save({"a": torch.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.qint8)}, path)
    with pytest.raises(ValueError, match="quantized tensors are not read: convnet reads "
                                         r"float64.*tensor.dequantize\(\)"):
        load_torch(path)


def test_conj_and_neg_views_are_resolved(tmp_path):
    z, y = torch.randn(2, 3, dtype=torch.complex128), torch.randn(3, 2, dtype=torch.complex64)
    tensors = {"conj": z.conj(), "neg": y.conj().imag}    # flags set, storages untouched
    assert tensors["conj"].is_conj() and tensors["neg"].is_neg()
    loaded = load_torch(save(tensors, tmp_path / "lazy.pt"))
    assert_same(loaded, {"conj": z.conj().resolve_conj(), "neg": y.conj().imag.resolve_neg()})


def test_parameters(tmp_path):
    w = torch.nn.Parameter(torch.randn(3, 2))
    b = torch.nn.Parameter(torch.randn(3), requires_grad=False)
    b.note = "python state"     # pickled through _rebuild_parameter_with_state
    loaded = load_torch(save({"weight": w, "bias": b}, tmp_path / "params.pt"))
    assert_same(loaded, {"weight": w, "bias": b})


# ---- hostile files -------------------------------------------------------------------


class Call:
    """Pickles as a call func(*args), then BUILD with state if given: a hand-made pickle."""

    def __init__(self, func, *args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args,
                                                                   self.state)


class Record:
    """A persistent storage record in a hand-made pickle: ('storage', type, key, loc, n)."""

    def __init__(self, *pid):
        self.pid = pid


class RecordPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, Record) else None


def torch_pickle(obj):
    buffer = io.BytesIO()
    RecordPickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def with_pickle(tmp_path, obj, name="evil.pt"):
    """A real torch.save file ({"w": [0, 1, 2, 3]} as float32, storage key '0') whose
    data.pkl is replaced by the pickle of obj."""
    real = save({"w": torch.arange(4, dtype=torch.float32)}, tmp_path / "real.pt")
    data = obj if isinstance(obj, bytes) else torch_pickle(obj)
    return rewrite(real, tmp_path / name, replace={"data.pkl": data})


PAYLOADS = [
    (os.system, lambda marker: (f"touch {marker}",)),
    (eval, lambda marker: (f"open({str(marker)!r}, 'w').close()",)),
    (subprocess.Popen, lambda marker: (["touch", str(marker)],)),
]


def test_the_payload_is_live_under_plain_pickle(tmp_path):
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(Call(os.system, f"touch {marker}"), protocol=2))
    assert marker.exists()      # so a missing marker below means load_torch stopped it


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("func, args", PAYLOADS, ids=["os.system", "eval", "Popen"])
def test_malicious_pickle_is_refused_by_name(tmp_path, func, args, protocol):
    marker = tmp_path / "pwned"
    payload = Call(func, *args(marker))
    for obj in (payload, OrderedDict(weight=payload)):      # bare, or inside a state_dict
        path = with_pickle(tmp_path, pickle.dumps(obj, protocol=protocol))
        with pytest.raises(ValueError, match=rf"evil\.pt: refusing to load '[\w.]+\."
                                             rf"{func.__name__}' from a PyTorch file"):
            load_torch(path)
    assert not marker.exists()


def storage(key="0", numel=4, kind=torch.FloatStorage):
    return Record("storage", kind, key, "cpu", numel)


def tensor(*args, state=None):
    return Call(torch._utils._rebuild_tensor_v2, *args, state=state)


def case(tensor_or_record, error, name):
    """A hand-made data.pkl {"w": ...} with the expected error (None: loads as [1, 2, 3])."""
    return pytest.param(OrderedDict(w=tensor_or_record), error, id=name)


HOOKS = OrderedDict()
HAND_MADE = [
    case(tensor(storage(), 1, (3,), (1,), False, HOOKS), None, "valid"),
    case(tensor("not a storage", 0, (1,), (1,), False, HOOKS),
         "a tensor's storage is a str", "storage-not-storage"),
    case(tensor(storage(), 0, (3,), (2,), False, HOOKS),
         r"tensor 'w' reaches element 4 of storage '\w+/data/0', which holds 4 elements",
         "view-past-storage"),
    case(tensor(storage(), 3, (2,), (-1,), False, HOOKS), "bad tensor layout",
         "negative-stride"),
    case(tensor(storage("../../etc/passwd"), 0, (1,), (1,), False, HOOKS),
         "bad storage key '../../etc/passwd'", "key-traversal"),
    case(tensor(storage("7"), 0, (1,), (1,), False, HOOKS),
         r"storage record '\w+/data/7' is missing", "missing-record"),
    case(tensor(storage(numel=5), 0, (1,), (1,), False, HOOKS),
         r"storage record '\w+/data/0' holds 16 bytes, but its 5 float32 elements need 20",
         "numel-vs-bytes"),
    case(Record("module", "Conv2d", "file.py", "source"),
         "unsupported persistent record 'module'", "module-record"),
    case(tensor(storage(), 0, (1,), (1,), False, HOOKS, state={"x": 1}),
         "the pickle sets attributes on a tensor", "build-on-tensor"),
    case(tensor(storage(), 0, (1,), (1,), False, HOOKS, {"grad_fn": True}),
         "unsupported tensor metadata", "metadata"),
]


@pytest.mark.parametrize("obj, error", HAND_MADE)
def test_admitted_names_with_bad_arguments(tmp_path, obj, error):
    path = with_pickle(tmp_path, obj)
    if error is None:
        assert np.array_equal(load_torch(path)["w"], np.array([1, 2, 3], np.float32))
    else:
        with pytest.raises(ValueError, match=rf"evil\.pt: {error}"):
            load_torch(path)


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "other/data.pkl",
                                  "{prefix}/../evil.txt", "{prefix}/data/../../evil",
                                  "{prefix}/"])
def test_zip_member_outside_the_archive_folder(tmp_path, name):
    real = save(small_net().state_dict(), tmp_path / "net.pt")
    fine = rewrite(real, tmp_path / "fine.pt", add={"{prefix}/extra/notes.txt": b"hi"})
    assert list(load_torch(fine)) == list(load_torch(real))     # a member inside is fine
    path = rewrite(real, tmp_path / "unsafe.pt", add={name: b"x"})
    with pytest.raises(ValueError, match="unsafe.pt: zip member .* lies outside the archive"):
        load_torch(path)


@pytest.mark.parametrize("cut", [4, 1, -4])
def test_storage_of_the_wrong_length(tmp_path, cut):
    real = save({"w": torch.arange(4, dtype=torch.float32)}, tmp_path / "real.pt")
    path = rewrite(real, tmp_path / "short.pt", replace={"data/0": bytes(16 - cut)})
    with pytest.raises(ValueError, match=rf"short.pt: storage record '\w+/data/0' holds "
                                         rf"{16 - cut} bytes, but its 4 float32 elements"):
        load_torch(path)


def test_zero_stride_view_is_capped_before_any_copy(tmp_path):
    """torch.zeros(1).expand(10**6) keeps stride 0: 4 bytes of storage, a million elements."""
    path = save({"ok": torch.ones(3), "w": torch.zeros(1).expand(10**6)}, tmp_path / "wide.pt")
    with pytest.raises(ValueError, match=r"wide\.pt: tensor 'w' declares shape \(1000000,\) "
                                         r"\(1000000 elements, 4000000 bytes\) with strides "
                                         r"\(0,\) over storage '\w+/data/\d+' of 1 elements"):
        load_torch(path)
    # a small repeat (up to 16x the storage) still loads, as a copy
    loaded = load_torch(save({"w": torch.arange(2.0).expand(8, 2)}, tmp_path / "fine.pt"))
    assert np.array_equal(loaded["w"], np.tile([0.0, 1.0], (8, 1)).astype(np.float32))


def test_many_views_of_one_storage_are_capped_together(tmp_path):
    """Each view within 16x its storage, but 32 of them over one 4 MiB storage made 2 GiB
    from a 50 KB file: the views' repeats of a storage count together. Plain views do
    not: a block tied 40 times over (nn.Sequential(*[block] * 40)) still loads."""
    base = torch.zeros(1 << 10)
    path = save({f"t{i}": base.expand(8, 1 << 10) for i in range(3)}, tmp_path / "many.pt")
    with pytest.raises(ValueError, match=r"many\.pt: tensor 't2' declares .* the views of "
                                         r"that storage together, repeat it more than 16"):
        load_torch(path)
    block = torch.nn.Linear(4, 3)
    tied = load_torch(save(torch.nn.Sequential(*[block] * 40).state_dict(),
                           tmp_path / "tied.pt"))
    assert len(tied) == 80 and tied["39.weight"].shape == (3, 4)


def test_a_long_key_shared_at_every_level_is_refused_before_keys_multiply(tmp_path):
    """One long string, stored once and reused as the key at 30 levels of nesting, had
    been joined into 30 ever longer keys: a 2 MB file took 1 GB."""
    text = "k" * 2000
    obj = OrderedDict(w=tensor(storage(), 0, (4,), (1,), False, HOOKS))
    for _ in range(30):
        obj = {text: obj}
    path = with_pickle(tmp_path, obj)
    assert path.stat().st_size < 10_000                  # the string is in the file once
    with pytest.raises(ValueError, match=r"evil\.pt: a key of 6,002 characters under "
                                         r"'kkk.*', over the cap of 4,096 \(convnet\.limits"
                                         r"\.MAX_KEY_CHARS\)"):
        load_torch(path)


def test_plain_views_of_one_storage_are_capped_together(tmp_path):
    """250 keys viewing one 4 MB storage whole had made 1 GB of copies from a 4 MB file;
    a block tied 40 times over still loads, and so do many views of a small storage."""
    base = torch.zeros(1 << 18)
    path = save({f"t{i}": base.view(512, 512) for i in range(250)}, tmp_path / "views.pt")
    with pytest.raises(ValueError, match=r"views\.pt: tensor 't64' brings the views of "
                                         r"storage '\S+' \(262144 elements\) to 17039360 "
                                         r"elements, more than 64 times it"):
        load_torch(path)
    tied = load_torch(save({f"t{i}": base.view(512, 512) for i in range(40)},
                           tmp_path / "tied.pt"))
    assert len(tied) == 40
    one = torch.zeros(16)
    assert len(load_torch(save({f"t{i}": one for i in range(500)}, tmp_path / "tiny.pt"))) \
        == 500


def test_a_huge_declared_view_is_refused_without_allocating(tmp_path):
    """Overlapping strides declare 10**12 elements over a 4-element storage: refused from
    the declared sizes (materialising it would need 4 TB)."""
    path = with_pickle(tmp_path, OrderedDict(w=tensor(storage(), 0, (10**6, 10**6), (0, 1),
                                                     False, HOOKS)))
    with pytest.raises(ValueError, match=r"evil\.pt: tensor 'w' declares shape \(1000000, "
                                         r"1000000\) \(1000000000000 elements, "
                                         r"4000000000000 bytes\)"):
        load_torch(path)


def test_max_bytes_caps_the_total(tmp_path):
    path = save({"a": torch.ones(10), "b": torch.ones(20, dtype=torch.float64)},
                tmp_path / "two.pt")
    assert set(load_torch(path, max_bytes=200)) == {"a", "b"}       # 40 + 160 bytes
    with pytest.raises(ValueError, match=r"two\.pt: tensor 'b' declares shape \(20,\) \(20 "
                                         r"elements, 160 bytes\), which brings the arrays to "
                                         r"200 bytes, over max_bytes=199"):
        load_torch(path, max_bytes=199)
    assert set(load_torch(path, max_bytes=None)) == {"a", "b"}
    with pytest.raises(ValueError, match="max_bytes must be a non-negative int or None"):
        load_torch(path, max_bytes=-1)


def test_big_endian_is_refused(tmp_path):
    real = save({"w": torch.ones(2)}, tmp_path / "real.pt")
    path = rewrite(real, tmp_path / "big.pt", replace={"byteorder": b"big"})
    with pytest.raises(ValueError, match="big.pt: byte order 'big' is not supported"):
        load_torch(path)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_legacy_format_gives_a_clear_error(tmp_path, protocol):
    """At every pickle protocol (from 4 on, a frame opcode comes before the magic)."""
    path = save(small_net().state_dict(), tmp_path / "old.pt",
                _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    with pytest.raises(ValueError, match=r"old.pt: legacy PyTorch format \(before 1.6\) is "
                                         "not supported; re-save with torch.save"):
        load_torch(path)


def test_a_compressed_tar_is_not_opened_as_a_legacy_file(tmp_path):
    """A 1 KB bz2 tar whose pax header declares 2**40 bytes: tarfile.is_tarfile had asked
    bz2 for them (a MemoryError); the legacy check now reads 512 raw bytes."""
    import bz2
    header = bytearray(512)
    header[0:9], header[156:157], header[257:263] = b"PaxHeader", b"x", b"ustar\0"
    for field, text in ((100, b"0000644\0"), (108, b"0000000\0"), (116, b"0000000\0"),
                        (136, b"00000000000\0")):
        header[field:field + len(text)] = text
    header[124:136] = b"\x80" + (1 << 40).to_bytes(11, "big")
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    path = tmp_path / "pax.pt"
    path.write_bytes(bz2.compress(bytes(header) + bytes(1 << 20)))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="pax.pt: not a PyTorch checkpoint"):
            load_torch(path)
        assert tracemalloc.get_traced_memory()[1] < 16 << 20
    finally:
        tracemalloc.stop()


def raw_string(text):
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def test_ordered_dict_with_arguments_is_refused(tmp_path):
    """torch.save's pickles call OrderedDict() bare; with an argument the admitted call
    copied a dict each time: 1,000 calls of 7 bytes on a 65,536-entry dict took 2.5 GB."""
    data = (b"\x80\x02ccollections\nOrderedDict\nq\x00}q\x01" + raw_string("w")
            + b"K\x01sh\x00h\x01\x85R.")
    with pytest.raises(ValueError, match="evil.pt: .*calls OrderedDict with arguments"):
        load_torch(with_pickle(tmp_path, data))


def test_tensor_metadata_changed_after_its_check_is_not_seen(tmp_path):
    """The pickle keeps the metadata dict it passed to _rebuild_tensor_v2 in its memo and
    sets 'neg' in it afterwards: the loader keeps its own copy of the checked flags."""
    data = (b"\x80\x02}q\x00" + raw_string("w") + b"ctorch._utils\n_rebuild_tensor_v2\n("
            + b"(" + raw_string("storage") + b"ctorch\nFloatStorage\n" + raw_string("0")
            + raw_string("cpu") + b"K\x04tQK\x00K\x04\x85K\x01\x85\x89"
            + b"ccollections\nOrderedDict\n)R}q\x01" + raw_string("conj") + b"\x89stRs"
            + b"h\x01" + raw_string("neg") + b"\x88s0.")
    loaded = load_torch(with_pickle(tmp_path, data))
    np.testing.assert_array_equal(loaded["w"], [0.0, 1.0, 2.0, 3.0])


def test_files_that_are_not_checkpoints(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    npz = tmp_path / "arrays.npz"
    np.savez(npz, a=np.ones(2), b=np.zeros(3))
    real = save(small_net().state_dict(), tmp_path / "net.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(real.read_bytes()[:-200])       # the central directory is gone
    cases = [(text, r"not a PyTorch checkpoint \(torch.save writes a zip archive\)"),
             (npz, r"not a PyTorch checkpoint: the zip holds no <name>/data\.pkl"),
             (cut, "not a PyTorch checkpoint"), (tmp_path / "nowhere.pt", "no such"),
             (save(torch.ones(3), tmp_path / "bare.pt"), "holds a Tensor, not a dict"),
             (save({"epoch": 3, "name": "x"}, tmp_path / "none.pt"), "holds no tensors"),
             (with_pickle(tmp_path, b"\x80\x02}q\x00(X"), r"data\.pkl is not a valid")]
    for path, error in cases:
        with pytest.raises(ValueError, match=rf"{path.name}: {error}"):
            load_torch(path)


def test_package_code_never_imports_torch(tmp_path):
    tree = ast.parse(Path(torch_file.__file__).read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names]
    imported += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert imported and not [name for name in imported if name.split(".")[0] == "torch"]
    path = save(small_net().state_dict(), tmp_path / "net.pt")
    code = ("import sys; from convnet.io.torch_file import load_torch; "
            f"assert len(load_torch({str(path)!r})) == 9; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- nothing handed out can be changed; sizes are checked before anything is read -------


def poisoning_pickle(module, name, state):
    """data.pkl that BUILDs state onto the global module.name, drops it, then holds the
    plain state_dict {"w": [0, 1, 2, 3]} of with_pickle's file (memo-free prefix)."""
    body = torch_pickle(OrderedDict(w=tensor(storage(), 0, (4,), (1,), False, HOOKS)))
    state = pickletools.optimize(pickle.dumps(state, protocol=2))[2:-1]     # no memo
    return body[:2] + f"c{module}\n{name}\n".encode() + state + b"b0" + body[2:]


DEFAULTS_STATE = (None, {"__defaults__": (False, None, {"neg": True})})    # negate every tensor


def test_the_poisoning_pickle_is_live_on_a_plain_function(tmp_path):
    """The same bytes, given a plain copy of the function, do change its defaults: so the
    refusal below is what stops them."""
    func = type(torch_file._rebuild_tensor_v2)
    copy = func(torch_file._rebuild_tensor_v2.__code__, vars(torch_file), "copy",
                torch_file._rebuild_tensor_v2.__defaults__)

    class Plain(pickle.Unpickler):
        def find_class(self, module, name):
            return OrderedDict if name == "OrderedDict" else copy

        def persistent_load(self, pid):
            return torch_file._Storage("archive/data/0", "float32", 4)

    data = poisoning_pickle("torch._utils", "_rebuild_tensor_v2", DEFAULTS_STATE)
    assert Plain(io.BytesIO(data)).load()["w"].metadata == {"neg": True}
    assert copy.__defaults__ == (False, None, {"neg": True})


@pytest.mark.parametrize("module, name", [
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("collections", "OrderedDict"), ("torch", "FloatStorage"), ("torch", "float32"),
    ("torch.storage", "UntypedStorage")])
@pytest.mark.parametrize("state", [DEFAULTS_STATE, {"dtype": "float64"},
                                   (None, {"dtype": "float64", "name": "x"})],
                         ids=["slots-defaults", "dict", "slots"])
def test_build_on_an_allowed_name_is_refused_and_later_loads_are_clean(
        tmp_path, module, name, state):
    path = with_pickle(tmp_path, poisoning_pickle(module, name, state))
    with pytest.raises(ValueError, match=re.escape(f"evil.pt: the pickle sets state on "
                                                   f"{module}.{name}, which the format")):
        load_torch(path)
    plain = save({"w": torch.arange(4, dtype=torch.float32)}, tmp_path / "plain.pt")
    assert np.array_equal(load_torch(plain)["w"], [0, 1, 2, 3])
    assert torch_file._rebuild_tensor_v2.__defaults__ == (False, None, None)
    for admitted in torch_file.ALLOWED.values():
        with pytest.raises(ValueError, match="the pickle sets an attribute on"):
            admitted.dtype = "float64"


def central_entries(data):
    """{member name: offset of its central directory record} of a zip's bytes."""
    out, at = {}, data.find(b"PK\x01\x02")
    while at >= 0:
        name_len = int.from_bytes(data[at + 28:at + 30], "little")
        out[data[at + 46:at + 46 + name_len].decode()] = at
        at = data.find(b"PK\x01\x02", at + 46)
    return out


def patch_central(src, dst, suffix, **fields):
    """Copy a zip, setting fields of the central record of the member ending in suffix:
    flags, method, crc, compressed, size (zipfile reads sizes from there)."""
    offsets = {"flags": (8, 2), "method": (10, 2), "crc": (16, 4), "compressed": (20, 4),
               "size": (24, 4)}
    data = bytearray(Path(src).read_bytes())
    at = next(off for name, off in central_entries(bytes(data)).items() if name.endswith(suffix))
    for field, value in fields.items():
        start, width = offsets[field]
        data[at + start:at + start + width] = value.to_bytes(width, "little")
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def peak_of(func):
    """Peak traced allocation (bytes) while func() runs, and the ValueError it raised."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            func()
        return tracemalloc.get_traced_memory()[1], str(info.value)
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fields, error", [
    (dict(size=0xFFFFFFF0, compressed=0xFFFFFFF0),
     r"zip member '\w+/data/0' declares 4,294,967,280 bytes \(4,294,967,280 compressed\) "
     r"in an archive of \d+(,\d+)? bytes \(expected compressed bytes that fit"),
    (dict(size=0xFFFFFFF0), r"zip member '\w+/data/0' declares 4,294,967,280 bytes \(16 "
                            r"compressed\) .* and equal sizes for a stored member"),
    (dict(method=12), r"zip member '\w+/data/0' uses compression method 12 \(expected 0"),
    (dict(method=14), r"zip member '\w+/data/0' uses compression method 14"),
    (dict(flags=1), r"zip member '\w+/data/0' is encrypted"),
])
def test_zip_sizes_the_archive_cannot_hold(tmp_path, fields, error):
    """The issue's 261 KB file declaring 4 GiB: refused from the central directory."""
    real = save({"w": torch.arange(4, dtype=torch.float32)}, tmp_path / "real.pt")
    path = patch_central(real, tmp_path / "declared.pt", "/data/0", **fields)
    peak, message = peak_of(lambda: load_torch(path))
    assert re.search(rf"declared\.pt: {error}", message), message
    assert peak < 1 << 20, f"peak {peak} bytes"


def deflated_checkpoint(tmp_path, name, numel, declared=None):
    """{"w": zeros(numel) float32} with its storage deflated (zeros: about 1000:1), written
    in chunks; declared: the element count the pickle and the central directory claim."""
    declared = numel if declared is None else declared
    pkl = torch_pickle(OrderedDict(w=tensor(storage(numel=declared), 0, (declared,), (1,),
                                            False, HOOKS)))
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", b"little")
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w") as f:
            zeros = bytes(1 << 20)
            for start in range(0, 4 * numel, len(zeros)):
                f.write(zeros[:4 * numel - start])
    if declared != numel:
        patch_central(path, path, "/data/0", size=4 * declared)
    return path


def test_deflated_bomb_is_refused_by_the_compression_ratio(tmp_path, monkeypatch):
    """The issue's 2 MB file with a 2 GiB storage, scaled down: 40 MB of zeros deflate to
    about 40 KB, 1000:1, over limits.MAX_COMPRESSION (100); a raised cap reads it."""
    path = deflated_checkpoint(tmp_path, "bomb.pt", 10**7)
    assert path.stat().st_size < 100_000
    peak, message = peak_of(lambda: load_torch(path))
    assert re.search(r"bomb\.pt: the zip members declare 40,000,\d+ bytes in all, over "
                     r"convnet\.limits\.MAX_COMPRESSION = 100 times the archive's "
                     r"\d+(,\d+)? bytes; refusing a zip bomb", message), message
    assert peak < 1 << 20, f"peak {peak} bytes"
    monkeypatch.setattr("convnet.limits.MAX_COMPRESSION", 10_000)
    w = load_torch(path)["w"]
    assert w.shape == (10**7,) and not w.any()


def test_a_deflated_member_never_inflates_past_its_declared_size(tmp_path):
    """A member that declares 16 bytes but whose stream inflates to 40 MB: read in chunks,
    stopped at 16 bytes, refused by its CRC, with little memory."""
    path = deflated_checkpoint(tmp_path, "liar.pt", 10**7, declared=4)
    peak, message = peak_of(lambda: load_torch(path))
    assert re.search(r"liar\.pt: cannot read zip member 'archive/data/0' \(BadZipFile: Bad "
                     r"CRC-32", message), message
    assert peak < 8 << 20, f"peak {peak} bytes"


def test_caps_are_read_when_load_torch_runs(tmp_path, monkeypatch):
    path = save({"a": torch.ones(10), "b": torch.arange(1000.0)[:2]}, tmp_path / "caps.pt")
    assert set(load_torch(path)) == {"a", "b"}
    monkeypatch.setattr("convnet.limits.MAX_ARRAY_BYTES", 40)
    with pytest.raises(ValueError, match=r"caps\.pt: tensor 'b' declares shape \(2,\) .* "
                                         r"brings the arrays to 48 bytes, over max_bytes=40"):
        load_torch(path)
    # b is a 2-element view of a 4,000-byte storage: the storages read count too
    with pytest.raises(ValueError, match=r"caps\.pt: the tensors' storages hold 4040 bytes, "
                                         r"over max_bytes=1000"):
        load_torch(path, max_bytes=1000)
    monkeypatch.setattr("convnet.limits.MAX_JSON_BYTES", 50)
    with pytest.raises(ValueError, match=r"caps\.pt: zip member 'caps/data\.pkl' declares "
                                         r"\d+ bytes, over the 50 it may hold"):
        load_torch(path)


def test_member_name_that_is_not_utf8(tmp_path):
    real = save({"w": torch.ones(2)}, tmp_path / "real.pt")
    fine = rewrite(real, tmp_path / "fine.pt", add={"{prefix}/extra/caf\u00e9": b"x"})
    assert list(load_torch(fine)) == ["w"]      # a UTF-8 name (flag 0x800) is fine
    data = fine.read_bytes().replace("caf\u00e9".encode(), b"caf\xff\xfe")   # same length
    (tmp_path / "latin.pt").write_bytes(data)
    with pytest.raises(ValueError, match=r"latin\.pt: not a readable zip archive "
                                         r"\(UnicodeDecodeError"):
        load_torch(tmp_path / "latin.pt")


@pytest.mark.parametrize("body, error", [
    (b"\x8e" + (1 << 30).to_bytes(8, "little") + b"abc", "bytes8, but only 4 remain"),
    (b"\x8d" + (1 << 30).to_bytes(8, "little") + b"abc", "unicodestring8, but only 4 remain"),
    (b"B" + (1 << 30).to_bytes(4, "little") + b"abc", "bytes4, but only 4 remain"),
    (b"N" + b"r" + (0xFFFFFFF0).to_bytes(4, "little") + b"0}", "memo entry 4294967280 at "
                                                              "byte 3 skips past the 0 entries"),
    (b"\x95" + (1 << 30).to_bytes(8, "little") + b"}", "frame at byte 2 declares 1073741824"),
    (b"}N" + b"\x85" * 40 + b"Ns", "tuples nested deeper than 32 levels at byte 36"),
    (b"}X\x01\x00\x00\x00k" + b"]" * 100_000 + b"a" * 99_999 + b"s",
     r"containers nested deeper than 32 levels"),
    (b"}X\x01\x00\x00\x00k" + b"(" * 50_000 + b"l" * 50_000 + b"s",
     r"containers nested deeper than 32 levels"),
    (pickle.dumps({"k": [[[[]] * 1000] * 1000] * 1000}, protocol=4)[2:-1],   # 10**9 items
     r"the containers hold more than \d+(,\d+)? items"),
])
def test_pickle_bombs_in_data_pkl_are_refused_small(tmp_path, body, error):
    """Lengths past the end (CPython allocates them first), a runaway memo index, deep
    tuples (a C stack overflow when hashed), deep lists, shared containers."""
    path = with_pickle(tmp_path, b"\x80\x04" + body + b".")
    peak, message = peak_of(lambda: load_torch(path))
    assert re.search(rf"evil\.pt: .*{error}", message), message
    assert peak < 16 << 20, f"peak {peak} bytes"


@pytest.mark.parametrize("storage, flag, dtype", [("BoolStorage", "neg", "bool"),
                                                  ("BoolStorage", "conj", "bool"),
                                                  ("FloatStorage", "conj", "float32")])
def test_a_flag_torch_never_sets_on_a_dtype_is_refused(tmp_path, storage, flag, dtype):
    """A bool tensor with the neg flag had ended in NumPy's TypeError, naming no file; one
    with the conj flag had loaded as int8."""
    data = (b"\x80\x02}q\x00" + raw_string("w") + b"ctorch._utils\n_rebuild_tensor_v2\n("
            + b"(" + raw_string("storage") + f"ctorch\n{storage}\n".encode()
            + raw_string("0") + raw_string("cpu")                # 16 bytes: 16 bools
            + (b"K\x10" if storage == "BoolStorage" else b"K\x04")
            + b"tQK\x00K\x04\x85K\x01\x85\x89"
            + b"ccollections\nOrderedDict\n)R}q\x01" + raw_string(flag) + b"\x88stRs.")
    with pytest.raises(ValueError, match=rf"evil.pt: .*tensor 'w' of {dtype} carries the "
                                         rf"{flag} flag, which torch sets only on"):
        load_torch(with_pickle(tmp_path, data))
