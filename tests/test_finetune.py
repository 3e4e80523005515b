"""Fine-tuning end to end on tiny data: frozen stages stay put, the head moves.

Two paths: the command line (``convnet train --from --freeze --image-size``) and the
proof script examples/finetune.py (fresh classifier, frozen features, then unfrozen; the
same net from scratch). Only what must hold is asserted, not accuracies.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from convnet.cli import main
from convnet.io.weights import load_model, save_model
from convnet.spec import resolve_model

ROOT = Path(__file__).parents[1]
TINY = "INPUT 12x12x1 -> CONV 4 -> BN -> RELU -> POOL -> FC 10"
FROZEN = ("0.weight", "0.bias", "1.weight", "1.bias")            # CONV 4 and its BN


def params(path):
    """A saved model's parameters (no batch-norm buffers), by dotted key."""
    return {k: v.copy() for k, v in load_model(path).params().items()}


def test_cli_fine_tune_keeps_frozen_stages_and_trains_the_rest(tmp_path):
    pre, tuned = tmp_path / "pre", tmp_path / "tuned"
    assert main(["train", "--data", "digits", "--image-size", "12", "--model", TINY,
                 "--epochs", "1", "--limit", "120", "--batch-size", "32", "--quiet",
                 "--out", str(pre)]) == 0
    rng = np.random.default_rng(40)
    other = tmp_path / "other"                                   # a second data set: IDX, 5x4
    other.mkdir()
    for split, n in (("train", 60), ("t10k", 20)):
        x = rng.integers(0, 256, (n, 5, 4), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            head = np.array([0x800 | arr.ndim, *arr.shape], dtype=">u4").tobytes()
            (other / f"{split}-{kind}-ubyte").write_bytes(head + arr.tobytes())
    assert main(["train", "--from", str(pre / "model.json"), "--freeze", "0", "1",
                 "--data", str(other), "--image-size", "12", "--epochs", "1",
                 "--batch-size", "16", "--optimizer", "adam", "--lr", "0.01", "--quiet",
                 "--out", str(tuned)]) == 0
    before, after = params(pre / "model.json"), params(tuned / "model.json")
    assert before.keys() == after.keys()
    for key in before:
        if key in FROZEN:
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)
        else:
            assert not np.allclose(after[key], before[key]), f"{key} did not train"
    assert load_model(tuned / "model.json").input_shape == (1, 12, 12)


def test_cli_fine_tune_resizes_the_data_to_the_models_input_and_says_so(tmp_path, capsys):
    pre = tmp_path / "pre"
    save_model(resolve_model(TINY, rng=np.random.default_rng(0)), pre / "model")
    assert main(["train", "--from", str(pre / "model.json"), "--data", "digits",
                 "--epochs", "1", "--quiet", "--out", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "resized the images from 8x8 to 12x12 (W x H, bilinear)" in out
    assert load_model(tmp_path / "x" / "model.json").input_shape == (1, 12, 12)


@pytest.fixture(scope="module")
def finetune_script():
    spec = importlib.util.spec_from_file_location("finetune_example",
                                                  ROOT / "examples" / "finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finetune_script_whole_path(tmp_path, finetune_script, capsys):
    fs = finetune_script
    rng = np.random.default_rng(41)
    model = resolve_model(fs.NET, rng=rng)
    for value in model.params().values():    # stand-in for training: no BN at its 1 / 0 init
        value += rng.normal(0, 0.1, value.shape).astype(value.dtype)
    pretrained = save_model(model, tmp_path / "pretrained")
    out = tmp_path / "runs"
    record = fs.main(["--pretrained", str(pretrained), "--out", str(out), "--limit", "100",
                      "--batch-size", "32", "--head-epochs", "1", "--unfreeze-epochs", "1",
                      "--seeds", "1", "--json"])
    assert json.loads(capsys.readouterr().out) == record
    # 100 digits, 10 held out for validation: 90 // 32 = 2 steps a phase, 2 phases.
    assert record["finetune"]["steps"] == record["scratch"]["steps"] == 4
    assert record["frozen"] == ["0", "1", "4", "5"] and "pretrain" not in record
    assert all(0 <= a <= 1 for a in record["finetune"]["test_acc"] + record["scratch"]["test_acc"])

    run = out / "seed0"
    pre = params(pretrained)
    start, head = params(run / "start-finetune.json"), params(run / "finetune/head/model.json")
    tuned = params(run / "finetune/all/model.json")
    scratch_start = params(run / "start-scratch.json")
    scratch_end = params(run / "scratch/all/model.json")
    features = [k for k in pre if k.split(".")[0] in record["frozen"]]
    classifier = [k for k in pre if k.split(".")[0] in ("9", "11")]      # FC 128, FC 10
    assert len(features) == 8 and len(classifier) == 4
    for key in features:
        np.testing.assert_array_equal(start[key], pre[key], err_msg=key)   # transferred
        np.testing.assert_array_equal(head[key], pre[key], err_msg=key)    # frozen
        assert not np.allclose(tuned[key], pre[key]), f"{key}: unfrozen but unchanged"
        assert not np.allclose(scratch_start[key], pre[key]), key          # random features
    for key in classifier:
        assert not np.allclose(start[key], pre[key]), f"{key} was not re-initialised"
        np.testing.assert_array_equal(scratch_start[key], start[key], err_msg=key)  # same init
        assert not np.allclose(head[key], start[key]), f"{key} did not train"
    for key in pre:
        assert not np.allclose(scratch_end[key], scratch_start[key]), f"scratch: {key} fixed"


def test_a_model_for_other_classes_of_the_same_count_gets_a_new_head(tmp_path, capsys):
    """A 10-class digits model fine-tuned on 10 other classes had kept its head (a '0'
    unit is no 'zero' unit) without a word; the same classes keep it, and the log says
    which."""
    pre = tmp_path / "pre"
    assert main(["train", "--data", "digits", "--model", "INPUT 8x8x1 -> CONV 4 -> RELU -> "
                 "FC 10", "--epochs", "1", "--limit", "100", "--quiet", "--no-report",
                 "--out", str(pre)]) == 0
    from convnet.data import load_dataset
    x, y = load_dataset("digits").train
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    from PIL import Image
    for i in range(200):
        folder = tmp_path / "words" / names[y[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[i, 0].astype(np.uint16) * 255 // 16).astype(np.uint8)).save(
            folder / f"{i}.png")
    capsys.readouterr()
    assert main(["train", "--from", str(pre / "model.json"), "--data", str(tmp_path / "words"),
                 "--epochs", "1", "--quiet", "--no-report", "--out", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "new head: layer 3, made anew: the model's 10 classes are not the data's (0, 1, " \
        "2, 3, ... against eight, five, four, nine, ...)" in out, out
    for name in names[3:]:                        # 3 classes: a head of another size
        for path in (tmp_path / "words" / name).iterdir():
            path.unlink()
        (tmp_path / "words" / name).rmdir()
    assert main(["train", "--from", str(pre / "model.json"), "--data", str(tmp_path / "words"),
                 "--epochs", "1", "--quiet", "--no-report", "--out", str(tmp_path / "w3")]) == 0
    out = capsys.readouterr().out
    assert ("new head: layer 3, Linear(in=256, out=10), made anew as Linear(in=256, out=3) "
            "for the data's 3 classes") in out, out
    assert main(["train", "--from", str(pre / "model.json"), "--data", "digits", "--epochs",
                 "1", "--limit", "100", "--quiet", "--no-report", "--out",
                 str(tmp_path / "d")]) == 0
    assert "keeping the model's head: 10 outputs, as many as the data's classes, the same " \
        "names" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--from", "lenet5"], "--from lenet5: not a file of trained weights (a zoo name or "
                           "notation has random ones)"),
    (["--from", "INPUT 8x8x1 -> FC 10"], "not a file of trained weights"),
    (["--from", "{pre}", "--freeze", "0-3"], "--freeze 0-3 holds the new head 3 at its "
                                             "random start; freeze the stages before it"),
    (["--from", "{same}", "--freeze", "0-3"], "--freeze 0-3 leaves nothing to train: every "
                                              "parameter is frozen"),
])
def test_fine_tuning_refuses_what_would_train_nothing_or_from_random_weights(
        tmp_path, capsys, argv, message):
    """--from a zoo name or notation had fine-tuned random weights (and --freeze kept them
    random); freezing every stage, or the new head, had trained nothing and exited 0."""
    pre = tmp_path / "pre"
    save_model(resolve_model("INPUT 8x8x1 -> CONV 4 -> RELU -> FC 3",
                             rng=np.random.default_rng(0)), pre)
    same = tmp_path / "same"
    save_model(resolve_model("INPUT 8x8x1 -> CONV 4 -> RELU -> FC 10",
                             rng=np.random.default_rng(0)), same)
    argv = [a.format(pre=pre.with_suffix(".json"), same=same.with_suffix(".json"))
            for a in argv]
    assert main(["train", *argv, "--data", "digits", "--epochs", "1", "--quiet",
                 "--no-report", "--out", str(tmp_path / "run")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.json").exists()


def test_weights_for_a_zoo_net_with_other_classes_load_with_their_head(tmp_path):
    """A resnet18 state_dict saved for 10 classes: the file's head decides the classes
    (the zoo's 1000 had been refused, with a hint at --classes, which train lacks)."""
    torch = pytest.importorskip("torch")
    from tests.torch_models import BasicBlock, ResNet
    torch.save(ResNet(BasicBlock, [2, 2, 2, 2], 10).state_dict(), tmp_path / "r18.pth")
    model = resolve_model(str(tmp_path / "r18.pth"), architecture="resnet18")
    assert model.output_shape((3, 64, 64)) == (10,) and model.trained


def test_fine_tuning_takes_the_runs_dtype(tmp_path):
    """TrainConfig(dtype='float64') had trained a float32 start model on float64 data."""
    from convnet.train.loop import TrainConfig, train
    pre = tmp_path / "pre"
    save_model(resolve_model(TINY, rng=np.random.default_rng(0)), pre)
    result = train(TrainConfig(data="digits", init_from=str(pre.with_suffix(".json")),
                               dtype="float64", epochs=1, limit=100,
                               out=str(tmp_path / "run")), log=lambda *a: None,
                   progress=False)
    assert {v.dtype for v in result.model.params().values()} == {np.dtype(np.float64)}


def test_fine_tuning_a_model_without_an_fc_head_says_so(tmp_path, capsys):
    """A model that ends in global average pooling has no FC layer to make anew for other
    classes: replace_head's message (naming the head had failed first, a KeyError)."""
    pre = tmp_path / "pre"
    assert main(["train", "--data", "digits", "--model", "INPUT 8x8x1 -> CONV 4 -> GAP",
                 "--epochs", "1", "--limit", "100", "--quiet", "--no-report", "--out",
                 str(pre)]) == 1          # 4 scores for 10 classes: refused by train
    from convnet.io import save_model
    from convnet.models import from_notation
    model = from_notation("INPUT 8x8x1 -> CONV 4 -> GAP", rng=np.random.default_rng(0))
    save_model(model, pre / "gap")
    capsys.readouterr()
    assert main(["train", "--from", str(pre / "gap.json"), "--data", "digits", "--epochs",
                 "1", "--quiet", "--no-report", "--out", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err
    assert (f"--from {pre / 'gap.json'} gives 1x1x4 scores per image and the data has 10 "
            f"classes: a new head would replace its last FC layer, and it has none; "
            f"fine-tune a model that ends in an FC layer") in err, err


def test_channels_other_than_the_models_are_refused_naming_both(tmp_path, capsys):
    """--from a 1-channel model with --channels 3 had failed in the first CONV, naming
    neither option."""
    out = tmp_path / "base"
    assert main(["train", "--model", "INPUT 8x8x1 -> CONV 4 -> GAP -> FC 10", "--epochs",
                 "1", "--quiet", "--no-report", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", "--from", str(out / "model.json"), "--channels", "3", "--epochs",
                 "1", "--quiet", "--no-report", "--out", str(tmp_path / "tuned")]) == 1
    err = capsys.readouterr().err
    assert f"--channels 3: the model --from {out / 'model.json'} takes 1 channel(s); give " \
           "--channels 1, or leave it out" in err, err


def test_a_python_loop_leaves_frozen_layers_alone_and_skips_their_backward(monkeypatch):
    """freeze() had only set a flag: grads() still gave the frozen layers' gradients, so
    the loop of examples/train_loop.py (step(model.grads())) updated them, and backward
    ran through them to the input. Now a frozen layer's gradients are None (PyTorch's
    grad with requires_grad=False), and a backward with input_grad=False stops at the
    first layer that trains: the gradients it gives are those of the whole pass."""
    from convnet.functional.loss import softmax_cross_entropy
    from convnet.models import from_notation
    from convnet.train.optim import Adam
    text = "INPUT 8x8x1 -> CONV 4 -> BN -> RELU -> POOL -> CONV 8 -> RELU -> FC 10"
    x = np.random.default_rng(1).standard_normal((8, 1, 8, 8))
    whole = from_notation(text, dtype=np.float64, rng=np.random.default_rng(0))
    _, d = softmax_cross_entropy(whole.forward(x), np.arange(8))
    whole.backward(d, input_grad=False)
    net = from_notation(text, dtype=np.float64, rng=np.random.default_rng(0))
    net.freeze("0", "1")
    frozen = {k: v.copy() for k, v in net.params().items() if k[0] in "01"}
    opt = Adam(net.params(), lr=0.01)

    def no_backward(*args, **kwargs):
        raise AssertionError("a frozen layer's backward ran")
    for name in ("0", "1", "2", "3"):       # frozen, or with nothing below that trains
        monkeypatch.setattr(net[name], "backward", no_backward)
    _, d = softmax_cross_entropy(net.forward(x), np.arange(8))
    net.backward(d, input_grad=False)
    grads = net.grads()
    assert [k for k, v in grads.items() if v is None] == list(frozen)
    for key, g in grads.items():
        if g is not None:
            np.testing.assert_array_equal(g, whole.grads()[key])
    opt.step(grads)
    for key, value in frozen.items():
        np.testing.assert_array_equal(net.params()[key], value)
    assert not np.array_equal(net.params()["4.weight"], whole.params()["4.weight"])
    net.freeze()                           # all frozen: nothing to do
    assert net.backward(d, input_grad=False) is None


def test_weights_with_notation_without_input_take_the_image_size_given(tmp_path, capsys):
    """--from weights --model notation without INPUT had failed with 'pass
    input_shape=(C, H, W)', even with --image-size and --channels given."""
    import shutil
    body = "CONV 4 -> RELU -> POOL -> FC 10"
    assert main(["train", "--model", f"INPUT 8x8x1 -> {body}", "--epochs", "1", "--quiet",
                 "--no-report", "--out", str(tmp_path / "a")]) == 0
    shutil.copy(tmp_path / "a" / "model.safetensors", tmp_path / "w.safetensors")
    base = ["train", "--from", str(tmp_path / "w.safetensors"), "--model", body, "--epochs",
            "1", "--quiet", "--no-report"]
    assert main(base + ["--out", str(tmp_path / "b")]) == 1
    assert "the notation has no INPUT size for the weights of --from" in \
        capsys.readouterr().err
    assert main(base + ["--image-size", "8", "--channels", "1", "--out",
                        str(tmp_path / "c")]) == 0
    named = ["--model", f"INPUT size=8x8x1 -> {body}"]           # INPUT's named form
    assert main(base[:3] + named + base[5:] + ["--out", str(tmp_path / "d")]) == 0
    # a head of other classes is named as such (it had said to give --classes, which
    # notation does not take, and said so for any misfit)
    capsys.readouterr()
    assert main(["summary", str(tmp_path / "w.safetensors"), "--model",
                 f"INPUT 8x8x1 -> {body[:-2]}5"]) == 1
    assert "(the file's last FC layer, 4, gives 10 classes and the architecture's 5: for a " \
           "zoo name, give --classes 10 or leave it out; in notation, write FC 10 last" in \
        capsys.readouterr().err
    assert main(["summary", str(tmp_path / "w.safetensors"), "--model",
                 "INPUT 8x8x1 -> CONV 6 -> RELU -> POOL -> FC 10"]) == 1
    assert "last FC layer" not in capsys.readouterr().err


def test_a_model_that_cannot_take_the_data_or_a_new_head_says_why(tmp_path, capsys):
    """--image-size that does not fit a --from model's FC layers had failed with the
    Linear layer's error alone; a new head with a class-sized layer after it (FC 10 -> BN)
    with an error about that layer."""
    from PIL import Image
    for name, text in (("fc", "INPUT 8x8x1 -> CONV 8 -> RELU -> FC 10"),
                       ("bn", "INPUT 8x8x1 -> CONV 8 -> RELU -> FC 10 -> BN")):
        assert main(["train", "--model", text, "--epochs", "1", "--quiet", "--no-report",
                     "--out", str(tmp_path / name)]) == 0
    folder = tmp_path / "five"
    for k in range(5):
        (folder / f"c{k}").mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((8, 8), 40 * k + i, np.uint8)).save(
                folder / f"c{k}" / f"{i}.png")
    capsys.readouterr()
    assert main(["train", "--from", str(tmp_path / "fc" / "model.json"), "--data", "digits",
                 "--image-size", "16", "--epochs", "1", "--quiet", "--out",
                 str(tmp_path / "a")]) == 1
    assert "model.json takes 8x8x1 images; the data's, 16x16x1 (--image-size, --channels), " \
           "do not fit its layers: " in capsys.readouterr().err
    assert main(["train", "--from", str(tmp_path / "bn" / "model.json"), "--data",
                 str(folder), "--epochs", "1", "--quiet", "--out", str(tmp_path / "b")]) == 1
    assert "its last FC layer (3, Linear(in=512, out=10)) is not its output: the layers " \
           "after it take its outputs, and a new head for the data's 5 classes cannot " \
           "feed them" in capsys.readouterr().err


def test_from_a_model_in_the_folder_that_overwrite_replaces_is_refused(tmp_path, capsys):
    """--from run/model.json --out run --overwrite had replaced the model it fine-tuned."""
    out = tmp_path / "run"
    assert main(["train", "--model", "INPUT 8x8x1 -> CONV 4 -> RELU -> FC 10", "--epochs",
                 "1", "--quiet", "--no-report", "--out", str(out)]) == 0
    before = (out / "model.safetensors").read_bytes()
    assert main(["train", "--from", str(out / "model.json"), "--epochs", "1", "--quiet",
                 "--out", str(out), "--overwrite"]) == 1
    assert f"--from {out / 'model.json'} is a file of {out}, which --overwrite replaces" in \
        capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
