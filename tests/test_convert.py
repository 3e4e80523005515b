"""convnet convert: PyTorch -> convnet -> safetensors/ONNX, and summary of any of them."""

import json

import numpy as np
import onnxruntime
import pytest
import torch

from convnet.cli import main
from convnet.io import load_model
from convnet.zoo import lenet5


def test_torch_checkpoint_to_convnet_to_onnx_and_summary(tmp_path, capsys):
    reference = lenet5(rng=np.random.default_rng(0))
    state = {k: torch.tensor(v) for k, v in reference.state_dict().items()}
    torch.save(state, tmp_path / "lenet.pt")
    assert main(["convert", str(tmp_path / "lenet.pt"), str(tmp_path / "m.json")]) == 1
    assert "--model" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "lenet.pt"), str(tmp_path / "m.json"),
                 "--model", "lenet5"]) == 0
    model = load_model(tmp_path / "m.json")
    x = np.random.default_rng(1).standard_normal((2, 1, 32, 32)).astype(np.float32)
    expected = reference.eval().infer(x)
    assert np.allclose(model.eval().infer(x), expected, rtol=1e-6, atol=1e-6)

    assert main(["convert", str(tmp_path / "m.json"), str(tmp_path / "m.onnx")]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"),
                                           providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert np.allclose(out, expected, rtol=1e-4, atol=1e-5)

    assert main(["convert", str(tmp_path / "m.json"), str(tmp_path / "w.safetensors")]) == 0
    from safetensors.torch import load_file
    assert set(load_file(tmp_path / "w.safetensors")) == set(state)
    assert main(["convert", str(tmp_path / "w.safetensors"), str(tmp_path / "again.json"),
                 "--model", "lenet5"]) == 0
    capsys.readouterr()
    assert main(["summary", str(tmp_path / "again.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_params"] == 61_706


@pytest.mark.parametrize("dst, message", [("x.h5", "unknown output format"),
                                          ("x.json", "unknown input format")])
def test_convert_errors(tmp_path, capsys, dst, message):
    (tmp_path / "in.bin").write_bytes(b"\0" * 8)
    assert main(["convert", str(tmp_path / "in.bin"), str(tmp_path / dst)]) == 1
    assert message in capsys.readouterr().err


def test_onnx_in_convert_and_summary(tmp_path, capsys):
    """An ONNX file converts to a convnet model (same outputs, same keys) and summarizes."""
    from convnet.io import export_onnx
    from convnet.zoo import resnet18

    reference = resnet18(num_classes=10, input_size=32, rng=np.random.default_rng(0)).eval()
    export_onnx(reference, tmp_path / "r.onnx")
    assert main(["convert", str(tmp_path / "r.onnx"), str(tmp_path / "r.json")]) == 0
    model = load_model(tmp_path / "r.json")
    assert model.input_shape == (3, 32, 32)
    assert list(model.state_dict()) == list(reference.state_dict())
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert np.allclose(model.eval().infer(x), reference.infer(x), rtol=1e-6, atol=1e-6)

    capsys.readouterr()
    assert main(["summary", str(tmp_path / "r.onnx"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total_params"] == sum(v.size for v in reference.params().values())
    assert data["layers"][-1]["output_shape"] == [10]

    assert main(["convert", str(tmp_path / "r.onnx"), str(tmp_path / "w.safetensors")]) == 0
    from safetensors.numpy import load_file
    weights = load_file(tmp_path / "w.safetensors")
    assert np.array_equal(weights["fc.weight"], reference.params()["fc.weight"])


def test_onnx_convert_errors(tmp_path, capsys):
    from convnet.io import export_onnx
    export_onnx(lenet5(rng=np.random.default_rng(0)), tmp_path / "l.onnx")
    assert main(["convert", str(tmp_path / "l.onnx"), str(tmp_path / "m.json"),
                 "--model", "lenet5"]) == 1
    assert "carries its own architecture" in capsys.readouterr().err
    assert main(["summary", str(tmp_path / "missing.onnx")]) == 1
    assert "missing.onnx: no such ONNX file" in capsys.readouterr().err


def test_convert_never_replaces_a_file_silently(tmp_path, capsys):
    src = tmp_path / "m.json"
    assert main(["convert", str(tmp_path / "in.pt"), str(src)]) == 1     # no such input
    torch.save({k: torch.tensor(v) for k, v in lenet5(rng=np.random.default_rng(0))
                .state_dict().items()}, tmp_path / "in.pt")
    assert main(["convert", str(tmp_path / "in.pt"), str(src), "--model", "lenet5"]) == 0
    for dst in (src, tmp_path / "m.safetensors", tmp_path / "other.json"):
        if dst.name == "other.json":          # its weights file, other.safetensors, is there
            (tmp_path / "other.safetensors").write_bytes(b"mine")
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        capsys.readouterr()
        assert main(["convert", str(src), str(dst)]) == 1
        err = capsys.readouterr().err
        assert "already there" in err and "--overwrite" in err, err
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert main(["convert", str(src), str(tmp_path / "other.json"), "--overwrite"]) == 0
    assert load_model(tmp_path / "other.json").num_params() == 61_706


@pytest.mark.parametrize("out", ["m.onnx", "m.safetensors"])
def test_a_model_files_record_goes_into_the_onnx_or_safetensors_metadata(tmp_path, capsys,
                                                                         out):
    """ONNX and safetensors files keep the model file's preprocessing and class names as
    JSON in their metadata ("convnet.info"), where eval and predict read them: they had
    been dropped, and predict on the file then scaled the pixels without normalizing them
    and gave other classes than the model file. onnxruntime sees the same metadata."""
    from convnet.io import save_model
    from convnet.models import from_notation
    from convnet.spec import resolve_model
    notation = "INPUT 8x8x1 -> CONV 4 -> RELU -> POOL -> FC 3"
    model = from_notation(notation, rng=np.random.default_rng(0))
    record = dict(classes=["a", "b", "c"], mean=[0.5], std=[0.25], scale=255)
    src = save_model(model, tmp_path / "src", **record)
    assert main(["convert", str(src), str(tmp_path / out)]) == 0
    err = capsys.readouterr().err
    assert "keeps the preprocessing and class names" in err and "convnet.info" in err, err
    again = resolve_model(str(tmp_path / out),
                          architecture=None if out.endswith(".onnx") else notation)
    assert {k: again.info[k] for k in record} == record
    if out.endswith(".onnx"):
        session = onnxruntime.InferenceSession(str(tmp_path / out),
                                               providers=["CPUExecutionProvider"])
        meta = json.loads(session.get_modelmeta().custom_metadata_map["convnet.info"])
        assert meta["classes"] == ["a", "b", "c"]
    image = tmp_path / "x.png"
    from PIL import Image
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 3).save(image)
    shown = []
    for path, extra in ((src, []), (tmp_path / out, [] if out.endswith(".onnx") else
                                    ["--model", notation])):
        assert main(["predict", str(path), str(image), *extra]) == 0
        shown.append(capsys.readouterr().out)
    assert shown[0] == shown[1] and shown[0].split(": ")[1][0] in "abc", shown
    # a .json made from the file keeps the record too
    assert main(["convert", str(tmp_path / out), str(tmp_path / "back.json"),
                 *([] if out.endswith(".onnx") else ["--model", notation])]) == 0
    assert {k: load_model(tmp_path / "back.json").info[k] for k in record} == record


@pytest.mark.parametrize("out", ["m.onnx", "m.safetensors"])
@pytest.mark.parametrize("text, message", [
    ("{not json", "not JSON"),
    ('{"classes": "abc"}', "info.classes must be a list"),
    ('{"classes": ["a", "b"]}', "classes names 2 classes, but"),
    ('{"mean": [0.5, 0.5, 0.5]}', "mean"),
    ("[" * 100_000, "convnet.info"),
])
def test_a_files_recorded_info_is_checked_and_named(tmp_path, out, text, message):
    """A record in a file's metadata is checked as a model file's info is, and errors
    name the file and the key."""
    from convnet.io import save_tensors
    from convnet.io.onnx_export import export_onnx
    from convnet.models import from_notation
    from convnet.spec import resolve_model
    notation = "INPUT 8x8x1 -> CONV 4 -> RELU -> POOL -> FC 3"
    model = from_notation(notation, rng=np.random.default_rng(0))
    path = tmp_path / out
    if out.endswith(".onnx"):
        import onnx
        proto = export_onnx(model, path)
        onnx.helper.set_model_props(proto, {"convnet.info": text})
        path.write_bytes(proto.SerializeToString())
    else:
        save_tensors(model.state_dict(), path, metadata={"convnet.info": text})
    with pytest.raises(ValueError) as err:
        resolve_model(str(path), architecture=None if out.endswith(".onnx") else notation)
    assert str(path) in str(err.value) and "convnet.info" in str(err.value)
    assert message in str(err.value), str(err.value)


def test_a_model_file_name_with_dots_keeps_them(tmp_path, capsys):
    """convert to lenet.v1.json had written lenet.json (Path.with_suffix drops '.v1'), so
    a second net to lenet.v2.json was refused as already there, and summary read the
    other net."""
    from convnet.io import save_model
    from convnet.zoo import lenet5
    src = save_model(lenet5(rng=np.random.default_rng(0)), tmp_path / "src")
    for version in ("v1", "v2"):
        assert main(["convert", str(src), str(tmp_path / f"lenet.{version}.json")]) == 0
    assert {p.name for p in tmp_path.iterdir()} >= {
        "lenet.v1.json", "lenet.v1.safetensors", "lenet.v2.json", "lenet.v2.safetensors"}
    assert not (tmp_path / "lenet.json").exists()
    assert load_model(tmp_path / "lenet.v1.json").num_params() == 61_706
    assert load_model(tmp_path / "lenet.v1").num_params() == 61_706


@pytest.mark.parametrize("out", ["M.ONNX", "M.SafeTensors", "M.JSON"])
def test_an_output_suffix_in_capitals_is_its_format(tmp_path, capsys, out):
    """convert d/model.json d/M.ONNX failed "unknown output format"; the files written are
    the ones named (M.JSON beside M.safetensors) and read back the same net."""
    from convnet.io import load_tensors, save_model
    reference = lenet5(rng=np.random.default_rng(0)).eval()
    src = save_model(reference, tmp_path / "model")
    assert main(["convert", str(src), str(tmp_path / out)]) == 0, capsys.readouterr().err
    x = np.random.default_rng(1).standard_normal((2, 1, 32, 32)).astype(np.float32)
    if out.endswith(".ONNX"):
        session = onnxruntime.InferenceSession(str(tmp_path / out),
                                               providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        assert np.allclose(got, reference.infer(x), rtol=1e-4, atol=1e-5)
    elif out.endswith(".SafeTensors"):
        weights, _ = load_tensors(tmp_path / out)
        assert all(np.array_equal(weights[k], v) for k, v in reference.state_dict().items())
    else:
        assert {p.name for p in tmp_path.iterdir()} >= {"M.JSON", "M.safetensors"}
        assert np.array_equal(load_model(tmp_path / out).eval().infer(x), reference.infer(x))


@pytest.mark.parametrize("src_kind", ["json", "safetensors"])
@pytest.mark.parametrize("out", ["m.onnx", "m.safetensors"])
def test_the_kept_record_note_comes_from_what_the_model_records(tmp_path, src_kind, out):
    """A model's .safetensors, read with the .json beside it, has its class names and
    preprocessing as much as the .json does: convert's log says that the bare format
    keeps them, for either source; a model that records nothing gets no note and no
    metadata."""
    from convnet.io import load_tensors, save_model
    from convnet.io.convert import convert
    model = lenet5(rng=np.random.default_rng(0))
    src = save_model(model, tmp_path / "src", classes=[str(i) for i in range(10)],
                     mean=[0.5], std=[0.25], scale=255)
    bare = save_model(model, tmp_path / "bare")
    if src_kind == "safetensors":
        src, bare = src.with_suffix(".safetensors"), bare.with_suffix(".safetensors")
    notes = []
    convert(src, tmp_path / out, log=notes.append)
    assert len(notes) == 1 and notes[0].startswith(
        f"{tmp_path / out} keeps the preprocessing and class names that {src} records in "
        f"its metadata (convnet.info)"), notes
    convert(bare, tmp_path / f"bare-{out}", log=notes.append)
    convert(src, tmp_path / "again.json", log=notes.append)
    assert len(notes) == 1
    if out.endswith(".safetensors"):
        assert "convnet.info" not in load_tensors(tmp_path / f"bare-{out}")[1]


@pytest.mark.parametrize("out", ["u.json", "u.onnx", "u.safetensors"])
def test_a_zoo_net_or_notation_converted_keeps_saying_its_weights_are_fresh(tmp_path, capsys,
                                                                          out):
    """convert of notation wrote a model file that every command then took as trained:
    report's badge said "Trained weights", eval and predict scored random weights."""
    from convnet.report.build import build_report
    from convnet.spec import resolve_model
    net = "INPUT 8x8x1 -> CONV 4 -> GAP -> FC 3"
    assert main(["convert", net, str(tmp_path / out)]) == 0
    assert "holds fresh random weights (from INPUT 8x8x1" in capsys.readouterr().err
    model = str(tmp_path / out)
    args = ["--model", net] if out.endswith(".safetensors") else []
    assert resolve_model(model, architecture=args[1] if args else None).trained is False
    if not args:     # a model file (or ONNX) is its own architecture
        assert main(["eval", model, "--data", "digits"]) == 1
        assert "needs trained weights, and this file records fresh ones" in \
            capsys.readouterr().err
        page = build_report(resolve_model(model), source=model)
        assert 'data-trained="false">Untrained: random initial weights' in page
        from convnet.io import load_model  # in Python: the record says so too
        if out.endswith(".json"):
            page = build_report(load_model(model), source=model)
            assert 'data-trained="false">Untrained: random initial weights' in page
        assert main(["train", "--from", model, "--data", "digits", "--out",
                     str(tmp_path / "r")]) == 1
        assert "the file records fresh weights (convert wrote it from a zoo name or " \
               "notation), not trained ones" in capsys.readouterr().err
    with pytest.raises(ValueError, match="info.trained must be true or false"):
        from convnet.data.preprocess import check_info
        check_info({"trained": "no"}, "m.json")
    assert main(["convert", "lenet5", str(tmp_path / "l.json")]) == 0
    assert resolve_model(str(tmp_path / "l.json")).trained is False
    assert resolve_model(str(tmp_path / "l.json")).info == {"trained": False}
