"""Training: kill-and-resume to the bit, divergence errors, checkpoints, eval and predict."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from convnet.cli import main
from convnet.functional.loss import softmax_cross_entropy
from convnet.io import load_model, load_tensors, save_model, save_tensors
from convnet.train.checkpoint import load_checkpoint
from convnet.train.loop import TrainConfig, TrainingDiverged, train

SMALL = ("INPUT 8x8x1 -> CONV 8 -> BN -> RELU -> POOL -> FC 32 -> RELU -> DROPOUT 0.3 "
         "-> FC 10")


def run_cli(*args):
    return subprocess.Popen([sys.executable, "-m", "convnet.cli", "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_and_resumed_run_ends_bit_identical_to_a_straight_run(tmp_path):
    args = ["--data", "digits", "--model", SMALL, "--epochs", "3", "--batch-size", "16",
            "--checkpoint-every", "7", "--augment", "--quiet"]
    with run_cli(*args, "--out", str(tmp_path / "straight")) as straight:
        assert straight.wait(timeout=300) == 0, straight.stdout.read()

    killed_dir = tmp_path / "killed"
    proc = run_cli(*args, "--out", str(killed_dir))
    ckpt = killed_dir / "checkpoint.safetensors"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.005)
    def version():   # checkpoints are written to a new file and renamed over the old
        stat = ckpt.stat()
        return stat.st_ino, stat.st_mtime_ns
    first = version()
    # Kill once a later checkpoint has replaced the first: the run is then past it, and
    # (with dozens of checkpoints to go) not finished, however fast a step is.
    while version() == first and time.time() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    proc.stdout.close()
    assert not (killed_dir / "model.json").exists(), "the run finished before the kill"
    _, _, state = load_checkpoint(ckpt)  # the last checkpoint is whole and loadable
    assert (state["epoch"], state["batch"]) > (0, 0)

    with run_cli("--out", str(killed_dir), "--resume", "--quiet") as resumed:
        output = resumed.stdout.read()
        assert resumed.wait(timeout=300) == 0, output
    assert "resuming" in output
    a, _ = load_tensors(tmp_path / "straight" / "model.safetensors")
    b, _ = load_tensors(killed_dir / "model.safetensors")
    assert list(a) == list(b)
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    def history(run):   # everything but the wall-clock times, which no run repeats
        rows = json.loads((run / "history.json").read_text())
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows]
    assert history(tmp_path / "straight") == history(killed_dir)
    assert all("seconds" in row for row in json.loads((killed_dir / "history.json").read_text()))


def test_divergence_names_epoch_batch_and_layer(tmp_path):
    quiet = dict(log=lambda *a: None, progress=False)
    bad = TrainConfig(data="digits", model=SMALL, epochs=3, batch_size=32, optimizer="sgd",
                      lr=1e12, schedule="none", out=str(tmp_path), augment=False)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, batch \d+: the loss is nan; the "
                                               r"first non-finite output is at \S+ .*"
                                               r"no checkpoint was written yet"):
        train(bad, **quiet)


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A run that diverges in its second epoch leaves the first epoch's checkpoint."""
    import convnet.train.loop as loop
    calls = []

    def loss_that_blows_up(scores, y, *args):
        calls.append(1)
        return softmax_cross_entropy(scores * (np.inf if len(calls) > 50 else 1), y, *args)
    monkeypatch.setattr(loop, "softmax_cross_entropy", loss_that_blows_up)
    cfg = TrainConfig(data="digits", model=SMALL, epochs=3, batch_size=32, out=str(tmp_path))
    # what to do: a new run at a lower --lr (it had pointed at the checkpoint alone, which
    # --resume continues at the same learning rate), from best.json if one likes
    with pytest.raises(TrainingDiverged, match=r"epoch 2, batch 11: the loss is nan; .*in a "
                                               r"new run: --lr, with --overwrite or another "
                                               r"--out .*the last good checkpoint is "
                                               r".*checkpoint.safetensors, and --from "
                                               r".*best.json starts from the best weights"):
        train(cfg, log=lambda *a: None, progress=False)
    _, _, state = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert (state["epoch"], state["batch"]) == (1, 0)
    # an --overwrite run that diverges before its first checkpoint names none: the file
    # there is still the earlier run's (it had been called this run's last good one)
    calls[:] = [1] * 45                                  # blows up at its 6th batch
    with pytest.raises(TrainingDiverged, match=r"epoch 1, batch 6: .*no checkpoint was "
                                               r"written yet"):
        train(cfg, overwrite=True, log=lambda *a: None, progress=False)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")   # the inf's own NaNs
def test_a_gradient_that_is_not_finite_stops_the_run_before_its_step(tmp_path, monkeypatch):
    """A finite loss whose gradient overflows: the step had put NaN into the weights, and
    the checkpoint written right after it kept them (the next batch's loss then stopped
    the run, naming that checkpoint as the last good one). Now the run stops before the
    step, and the checkpoints hold finite weights."""
    import convnet.train.loop as loop
    calls = []

    def overflowing_gradient(scores, y, *args):
        calls.append(1)
        loss, dscores = softmax_cross_entropy(scores, y, *args)
        if len(calls) == 4:                     # the batch before the 2nd checkpoint
            dscores[0, 0] = np.inf
        return loss, dscores
    monkeypatch.setattr(loop, "softmax_cross_entropy", overflowing_gradient)
    cfg = TrainConfig(data="digits", model=SMALL, epochs=1, batch_size=32, out=str(tmp_path),
                      checkpoint_every=2)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, batch 4: the loss is [0-9.]+ but "
                                               r"the gradient of \S+ is not finite .*the last "
                                               r"good checkpoint is .*checkpoint"):
        train(cfg, log=lambda *a: None, progress=False)
    weights, _, state = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert (state["epoch"], state["batch"]) == (0, 2)
    assert all(np.isfinite(w).all() for w in weights.values())


def test_a_damaged_checkpoint_is_refused_by_its_checksum(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", "digits", "--model", SMALL, "--epochs", "1", "--quiet",
            "--limit", "200", "--out", str(out)]
    assert main(args) == 0
    ckpt = out / "checkpoint.safetensors"
    good = ckpt.read_bytes()
    header = 8 + int.from_bytes(good[:8], "little")
    load_checkpoint(ckpt)
    capsys.readouterr()
    # Damage that the file's format cannot see: tensor bytes zeroed, and a digit of the
    # JSON changed (the header's length and every tensor's shape stay what they were).
    text = good[8:header].decode()
    digit = 8 + text.index('\\"seed\\": 0') + len('\\"seed\\": ')
    for damaged in (good[:-64] + bytes(64), good[:digit] + b"7" + good[digit + 1:]):
        assert damaged != good
        ckpt.write_bytes(damaged)
        with pytest.raises(ValueError, match="damaged checkpoint: its bytes no longer match"):
            load_checkpoint(ckpt)
        held = {p.name: p.read_bytes() for p in out.iterdir()}
        assert main(args + ["--resume", "--epochs", "2"]) == 1
        err = capsys.readouterr().err
        assert "checkpoint.safetensors: damaged checkpoint" in err and "Traceback" not in err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == held
    # a checkpoint written before there was a checksum still loads
    ckpt.write_bytes(good)
    arrays, metadata = load_tensors(ckpt)
    del metadata["convnet-checkpoint-sha256"]
    save_tensors(arrays, ckpt, metadata=metadata)
    assert load_checkpoint(ckpt)[2]["epoch"] == 1
    # an int of 5,000 digits (Python's int() refuses over 4,300) had escaped unnamed
    metadata["convnet-checkpoint"] = metadata["convnet-checkpoint"].replace(
        '"epoch": 1', '"epoch": ' + "9" * 5000, 1)
    save_tensors(arrays, ckpt, metadata=metadata)
    with pytest.raises(ValueError, match=r"checkpoint\.safetensors: damaged checkpoint "
                                         r"metadata \(ValueError: Exceeds the limit"):
        load_checkpoint(ckpt)


def test_interrupted_checkpoint_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_tensors({"a": np.arange(3.0)}, path)

    def fail(*args):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        save_tensors({"a": np.zeros(5)}, path)
    monkeypatch.undo()
    tensors, _ = load_tensors(path)
    assert np.array_equal(tensors["a"], np.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary left


def test_train_eval_predict_on_digits(tmp_path, capsys):
    result = train(TrainConfig(data="digits", model=SMALL, epochs=10, out=str(tmp_path),
                               seed=1), log=lambda *a: None, progress=False)
    assert result.test_acc > 0.85
    assert main(["eval", str(result.model_path), "--data", "digits", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["accuracy"] == pytest.approx(result.test_acc)
    confusion = np.array(data["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == data["images"] == 359
    assert main(["eval", str(result.model_path), "--data", "digits"]) == 0
    assert "confusion matrix" in capsys.readouterr().out

    from PIL import Image

    from convnet.data import load_dataset
    x, y = load_dataset("digits").test
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray((x[i, 0].astype(np.float32) * 255 / 16).astype(np.uint8)).save(paths[-1])
    assert main(["predict", str(result.model_path), *map(str, paths), "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.count(",") == 1 for line in lines)
    hits = sum(line.split(": ")[1].startswith(str(y[i])) for i, line in enumerate(lines))
    assert hits >= 2
    model = load_model(result.model_path)
    assert model.info["classes"] == [str(i) for i in range(10)]


def test_fashion_mnist_short_run_reaches_a_sane_accuracy(tmp_path):
    """CI's short version of the main job: ~200 steps on a 12,800-image subset."""
    cfg = TrainConfig(data="fashion-mnist", epochs=2, limit=14_222, batch_size=128, lr=2e-3,
                      out=str(tmp_path))
    result = train(cfg, log=lambda *a: None, progress=False)
    assert sum(1 for _ in range(len(result.history))) == 2
    assert result.test_acc > 0.80, result.test_acc


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "nosuchdata"], "nosuchdata"),
    (["train", "--out", "/nonexistent/run", "--resume"], "no checkpoint to resume from"),
    (["train", "--model", "INPUT 8x8x1 -> CONV 8 F3 S2 P0 -> FC 10"], "not an integer"),
    (["train", "--model", "INPUT 8x8x1 -> FC 5"], "10 classes"),
    (["eval", "missing/model.json", "--data", "digits"], "no such model file"),
])
def test_train_errors_are_one_line_and_nonzero(capsys, argv, message, tmp_path):
    if argv[0] == "train" and "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path)]
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_a_validation_loss_that_is_not_finite_stops_the_run_as_diverged(tmp_path):
    """An enormous learning rate: the training loss stays finite, but the moving average
    of the weights overflows and its validation loss is NaN. The run stops there, as for
    a training loss that is not finite, instead of training on to a useless model."""
    with pytest.raises(TrainingDiverged, match=r"epoch 1: the validation loss is nan: the "
                       r"moving average of the weights \(--ema\) no longer give finite "
                       r"scores. Lower the learning rate \(now "):
        train(TrainConfig(data="digits", epochs=2, lr=1e5, optimizer="sgd",
                          out=str(tmp_path / "run")), log=lambda *a: None, progress=False)
    assert not (tmp_path / "run" / "model.json").exists()


def test_nothing_in_a_run_directory_is_a_pickle(tmp_path):
    train(TrainConfig(data="digits", model=SMALL, epochs=1, out=str(tmp_path)),
          log=lambda *a: None, progress=False)
    for path in Path(tmp_path).iterdir():
        head = path.read_bytes()[:2]
        assert head != b"\x80\x04" and head != b"\x80\x02", path


def test_fine_tuning_a_model_that_takes_vectors_is_refused_by_name(tmp_path):
    from convnet.io import save_model
    from convnet.models.notation import from_notation
    model = from_notation("INPUT 64 -> FC 16 -> RELU -> FC 10")
    save_model(model, tmp_path / "mlp.json")
    with pytest.raises(ValueError, match=r"mlp.json: training needs a model whose input is "
                                         r"an image \(C, H, W\); its input_shape is \(64,\)"):
        train(TrainConfig(data="digits", epochs=1, out=str(tmp_path / "run"),
                          init_from=str(tmp_path / "mlp.json")),
              log=lambda *a: None, progress=False)
    assert not (tmp_path / "run").exists()


def test_fine_tuning_freezes_stages_and_replaces_the_head(tmp_path, capsys):
    quiet = dict(log=lambda *a: None, progress=False)
    staged = ("INPUT 8x8x1 -> CONV 8 -> RELU -> POOL -> FC 10")
    base = train(TrainConfig(data="digits", model=staged, epochs=1, out=str(tmp_path / "a")),
                 **quiet)
    before = {k: v.copy() for k, v in base.model.params().items()}
    tuned = train(TrainConfig(data="digits", epochs=1, out=str(tmp_path / "b"),
                              init_from=str(base.model_path), freeze=("0",)), **quiet)
    after = tuned.model.params()
    assert np.array_equal(after["0.weight"], before["0.weight"])   # frozen CONV
    assert not np.array_equal(after["4.weight"], before["4.weight"])  # trained FC
    model = load_model(base.model_path)
    model.freeze("0")
    assert list(model.trainable_params()) == ["4.weight", "4.bias"]
    with pytest.raises(ValueError, match="no stage named 'head'"):
        model.freeze("head")

    from convnet.analysis import summary
    text = summary(model, model.input_shape).to_text()
    assert "frozen 80" in text  # 8 filters of 3x3x1 + 8 biases

    from convnet.models.finetune import replace_head
    name = replace_head(model, 3, np.random.default_rng(0))
    assert name == "4" and model.output_shape(model.input_shape) == (3,)
    assert model["4"].name == "4" and not model["4"].frozen


def test_shifts_pad_with_what_a_zero_pixel_became(tmp_path, monkeypatch):
    """The data is normalized before a batch is shifted, so the shift pads with the
    normalized value of a 0 pixel (torchvision pads the pixels, then normalizes): a 0
    would be the data set's mean grey, a stripe no test image has."""
    from convnet.train import loop
    seen = []
    real_crop = loop.random_crop

    def crop(x, padding, rng, **kwargs):
        seen.append(np.asarray(kwargs.get("fill", 0)))
        return real_crop(x, padding, rng, **kwargs)
    monkeypatch.setattr(loop, "random_crop", crop)
    train(TrainConfig(data="digits", model=SMALL, epochs=1, limit=64, out=str(tmp_path)),
          log=lambda *a: None)
    model_info = json.loads((tmp_path / "model.json").read_text())["info"]
    (mean,), (std,) = model_info["mean"], model_info["std"]
    assert seen and mean > 0.1
    for fill in seen:
        np.testing.assert_allclose(fill, [-mean / std], rtol=1e-6)
    # A run begun before (its checkpoint has no shift_fill) resumes padding as it did.
    config = json.loads(json.dumps(TrainConfig(data="digits").__dict__))
    del config["shift_fill"]
    assert TrainConfig.from_dict(config, "old").shift_fill == "mean"
    assert TrainConfig().shift_fill == "black"
    with pytest.raises(ValueError, match="shift_fill must be one of black, mean, got 'grey'"):
        TrainConfig(shift_fill="grey").check()
    seen.clear()
    train(TrainConfig(data="digits", model=SMALL, epochs=1, limit=64, shift_fill="mean",
                      out=str(tmp_path / "old")), log=lambda *a: None)
    assert seen and all(np.all(fill == 0) for fill in seen)


@pytest.mark.parametrize("model, kind", [
    ("INPUT 8x8x1 -> CONV 4 -> POOL -> POOL -> POOL -> BN -> RELU -> FC 10",
     "a 1x1 volume (BatchNorm2d)"),
    ("INPUT 8x8x1 -> FC 8 -> BN -> RELU -> FC 10", "FC outputs (BatchNorm1d)")])
def test_batch_norm_over_one_value_a_channel_is_refused_before_training(tmp_path, model,
                                                                        kind):
    """A BatchNorm2d over a 1x1 volume at batch 1 had started the run and failed at its
    first step, with a hint for the Python API (.eval()); as BatchNorm1d is, it is
    refused before anything is written, naming --batch-size."""
    with pytest.raises(ValueError, match=re.escape(
            f"batch norm over {kind} needs at least 2 images to normalize, and it would "
            f"get batches of 1 image: raise --batch-size")):
        train(TrainConfig(data="digits", model=model, epochs=1, batch_size=1, limit=40,
                          out=str(tmp_path / "run")), log=lambda *a: None)
    assert not (tmp_path / "run").exists()
    if "CONV" in model:      # over a 2x2 volume, one image gives 4 values a channel
        train(TrainConfig(data="digits", model=model.replace("POOL -> BN", "BN"), epochs=1,
                          batch_size=1, limit=40, out=str(tmp_path / "fine")),
              log=lambda *a: None)


def test_training_without_safetensors_is_refused_before_it_starts(tmp_path, monkeypatch):
    """Without the train extra's safetensors, a run had trained a whole epoch and then
    failed at its first checkpoint, writing nothing."""
    from convnet.train import loop
    monkeypatch.setitem(sys.modules, "safetensors", None)     # import fails
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    monkeypatch.setattr(loop, "load_dataset", lambda *a, **k: pytest.fail("data was read"))
    with pytest.raises(ImportError, match=r"pip install 'convnet\[train\]'"):
        train(TrainConfig(data="digits", model=SMALL, epochs=1, out=str(tmp_path / "r")),
              log=lambda *a: None)
    assert not (tmp_path / "r").exists()


def test_a_train_config_takes_lists_for_its_tuples():
    """freeze=["features"] had been refused as "must be a list of stage names"."""
    config = TrainConfig(init_from="m.json", freeze=["features"], image_size=[8, 8]).check()
    assert config.freeze == ("features",) and config.image_size == (8, 8)
    with pytest.raises(ValueError, match="freeze must be a list of stage names"):
        TrainConfig(freeze=[1]).check()
    # names must be strings, counts ints (a list had raised "unhashable type"; True and
    # 3.0 had passed as 1 and 3, and a log said "3.0 channel(s)")
    for field, value in (("optimizer", ["adam"]), ("schedule", {"cosine": 1}),
                         ("shift_fill", ["black"]), ("channels", True), ("channels", 3.0)):
        with pytest.raises(ValueError, match=f"TrainConfig: {field} must be "):
            TrainConfig(**{field: value}).check()


def test_a_val_fraction_too_small_for_every_class_says_how_it_rounds(tmp_path):
    """30 classes of 4 images: 0.125 of each is 0.5, which rounds to 0, so no image was
    held out, and the message did not say why 12.5% of 120 gave none."""
    from tests.test_data import save_image
    rng = np.random.default_rng(4)
    for split, count in (("train", 4), ("test", 1)):
        for k in range(30):
            for i in range(count):
                save_image(tmp_path / "many" / split / f"c{k:02d}" / f"{i}.png",
                           rng.integers(0, 256, (6, 6), dtype=np.uint8))
    with pytest.raises(ValueError, match=re.escape(
            "120 training images leave no validation images at val_fraction 0.125 (each "
            "class holds out round(val_fraction x its images), 0.5 rounding to 0: above "
            "0.125 the largest class, of 4, gives up one); raise it or add images")):
        train(TrainConfig(data=str(tmp_path / "many"), model="INPUT 6x6x1 -> FC 30",
                          epochs=1, val_fraction=0.125, out=str(tmp_path / "r")),
              log=lambda *a: None)


def test_the_default_shift_is_an_eighth_of_each_side():
    """The default shift had been H/8 on both axes: on 4-pixel-wide images, 8 pixels
    left half the crops blank (and --translate 8 is refused there); a 1-pixel-high image
    was shifted by 1, blank half the time."""
    from convnet.train.loop import _batch, default_shift
    assert default_shift(8, 8) == (1, 1) and default_shift(28, 28) == (3, 3)
    assert default_shift(64, 4) == (8, 1) and default_shift(1, 128) == (0, 16)
    config = TrainConfig(augment=True, flip=False)
    for shape in ((64, 4), (1, 128), (2, 3)):
        x = np.ones((400, 1, *shape), np.float32)
        xb, _ = _batch(x, np.zeros(400, int), np.arange(400), slice(None), config,
                       np.random.default_rng(0))
        assert xb.shape == x.shape and xb.reshape(400, -1).max(axis=1).min() == 1


def rewrite_checkpoint(path, change):
    """The checkpoint at path with change(state) applied to its JSON, written without a
    checksum (as checkpoints of old had none): a hand-made checkpoint."""
    arrays, metadata = load_tensors(path)
    state = json.loads(metadata["convnet-checkpoint"])
    change(state)
    metadata["convnet-checkpoint"] = json.dumps(state)
    del metadata["convnet-checkpoint-sha256"]
    save_tensors(arrays, path, metadata=metadata)


def test_what_a_kill_or_another_machine_leaves_is_handled_on_resume(tmp_path, capsys):
    """From a review of kill and resume: a temporary file a kill left beside the checkpoint
    stayed for good (as large as a checkpoint); a resume with another thread count went on
    silently, though not bit for bit; a history entry without its numbers ended in a
    KeyError; a run directory holding best.* but no checkpoint told the user to resume
    it, which --resume then refused."""
    from convnet.functional.threads import THREADS

    out = tmp_path / "run"
    args = ["train", "--data", "digits", "--model", SMALL, "--epochs", "1", "--limit", "200",
            "--quiet", "--no-report", "--out", str(out)]
    assert main(args) == 0
    ckpt = out / "checkpoint.safetensors"
    good = ckpt.read_bytes()
    (out / ".checkpoint.safetensors.x0_eob.tmp").write_bytes(b"half a checkpoint")
    (out / ".model.json.live.tmp").write_bytes(b"another run writing it now")
    old = time.time() - 3600
    os.utime(out / ".checkpoint.safetensors.x0_eob.tmp", (old, old))
    (out / ".notes.txt.tmp").write_text("not ours")
    (out / ".best.json.y1.tmp").write_text("a run killed now")  # only a run writes best.*
    rewrite_checkpoint(ckpt, lambda state: state.update(threads=THREADS + 1))
    capsys.readouterr()
    assert main(args + ["--resume", "--epochs", "2"]) == 0
    assert (f"the checkpoint was written with {THREADS + 1} thread(s) a process, resumed "
            f"with {THREADS}: ") in capsys.readouterr().out
    assert not (out / ".checkpoint.safetensors.x0_eob.tmp").exists()
    assert not (out / ".best.json.y1.tmp").exists()
    assert (out / ".notes.txt.tmp").exists() and (out / ".model.json.live.tmp").exists()
    (out / ".model.json.live.tmp").unlink()
    ckpt.write_bytes(good)
    rewrite_checkpoint(ckpt, lambda state: state["history"][0].pop("val_loss"))
    assert main(args + ["--resume", "--epochs", "2"]) == 1
    err = capsys.readouterr().err
    assert "checkpoint.safetensors: checkpoint field 'history'" in err and \
        "with epoch, loss, acc, val_loss, val_acc as numbers" in err, err
    for name in ("checkpoint.safetensors", "model.json", "model.safetensors", "history.json",
                 "curve.png", "filters.png"):
        (out / name).unlink()
    (out / ".notes.txt.tmp").unlink()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "already holds files (best.json, best.safetensors): none is a checkpoint to " \
           "resume from (a run stopped in its first epoch); pass --overwrite" in err, err


def test_a_set_aside_folder_that_is_a_link_is_left_alone(tmp_path):
    """recover_set_aside had followed a .replaced-* link to another run's folder and moved
    that run's files into this one."""
    other = tmp_path / "other"
    assert main(["train", "--data", "digits", "--model", SMALL, "--epochs", "1", "--limit",
                 "200", "--quiet", "--no-report", "--out", str(other)]) == 0
    held = {p.name: p.read_bytes() for p in other.iterdir()}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".replaced-zz").symlink_to(other, target_is_directory=True)
    assert main(["train", "--data", "digits", "--model", SMALL, "--epochs", "1", "--limit",
                 "200", "--quiet", "--no-report", "--out", str(tmp_path / "run")]) == 1
    assert {p.name: p.read_bytes() for p in other.iterdir()} == held


def test_a_run_with_a_data_root_of_old_resumes(tmp_path, capsys):
    """--data-root and --download with the digits are refused now; a run that an earlier
    release started with them could not be resumed, its settings being the run's own."""
    out = tmp_path / "run"
    args = ["train", "--data", "digits", "--model", SMALL, "--epochs", "1", "--limit", "200",
            "--quiet", "--no-report", "--out", str(out)]
    assert main(args) == 0
    rewrite_checkpoint(out / "checkpoint.safetensors",
                       lambda state: state["config"].update(data_root=str(tmp_path),
                                                            download=True))
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0, capsys.readouterr().err
    assert "its data_root/download, which digits takes no longer, are left out" in \
        capsys.readouterr().out
    # the run is done: resuming it again only writes its report, from the saved settings
    assert main([a for a in args if a != "--no-report"] + ["--resume"]) == 0
    captured = capsys.readouterr()
    assert "no report.html" not in captured.err and (out / "report.html").exists(), \
        captured.err


@pytest.mark.parametrize("field, value, error", [
    ("data", "nothere", "the run's data folder nothere is not here: give its place now "
                        "with --data PATH"),
    ("channels", 3, "expected 1 input channels"),
    ("freeze", ["nope"], "no stage named 'nope'"),
    ("batch_size", 99999, "batch size 99999 is larger than the 178 training images"),
])
def test_a_checkpoint_setting_that_fails_names_the_checkpoint(tmp_path, capsys, field,
                                                              value, error):
    """A checkpoint's config passes its type and range checks, but a setting then fails
    (its data gone, another channel count): the error had not said that the setting came
    from the checkpoint, not from the command line."""
    out = tmp_path / "run"
    args = ["train", "--data", "digits", "--model", SMALL, "--epochs", "1", "--limit", "200",
            "--quiet", "--no-report", "--out", str(out)]
    assert main(args) == 0
    ckpt = out / "checkpoint.safetensors"
    rewrite_checkpoint(ckpt, lambda state: state["config"].update({field: value}))
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert error in err and (f"(the settings come from {ckpt}, which --resume continues)"
                             in err or err.startswith(f"convnet train: error: {ckpt}: ")), err
    assert "Traceback" not in err


@pytest.mark.parametrize("field", ["schedule", "optimizer", "ema"])
def test_a_checkpoint_whose_step_counts_disagree_with_its_place_is_refused(tmp_path,
                                                                           capsys, field):
    """The schedule's, the parameters' or the EMA's step count set apart from the
    checkpoint's epoch and batch (an edited file, with its checksum made again): the run
    had gone on at the learning rate of another step, with exit status 0."""
    out = tmp_path / "run"
    args = ["train", "--data", "digits", "--model", SMALL, "--epochs", "2", "--limit", "200",
            "--quiet", "--no-report", "--ema", "0.9", "--out", str(out)]
    assert main(args) == 0
    ckpt = out / "checkpoint.safetensors"

    def edit(state):
        if field == "schedule":
            state["schedule"]["last_epoch"] = 10 ** 6
        elif field == "optimizer":
            key = next(iter(state["optimizer"]["steps"]))
            state["optimizer"]["steps"][key] += 1
        else:
            state["ema"]["updates"] = 3
    rewrite_checkpoint(ckpt, edit)
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 1
    err = capsys.readouterr().err
    name = {"schedule": "schedule.last_epoch", "optimizer": "optimizer.steps",
            "ema": "ema.updates"}[field]
    assert f"{ckpt}: checkpoint field '{name}' must count the " in err, err
    assert "Traceback" not in err


def test_a_float64_run_of_a_zoo_net_starts_from_the_same_weights_as_float32(tmp_path):
    """The float64 path had built the model again from its config, each layer drawing
    PyTorch's default init: a zoo net lost the torchvision init the float32 path has."""
    import math
    from dataclasses import replace

    cfg = TrainConfig(data="digits", model="resnet18", image_size=(32, 32), channels=3,
                      epochs=1, limit=64, batch_size=32, val_fraction=0.25, augment=False)
    weights = {}
    for dtype in ("float32", "float64"):
        result = train(replace(cfg, dtype=dtype, out=str(tmp_path / dtype)), progress=False,
                       log=lambda *a: None)
        weights[dtype] = result.model["conv1"].weight
    assert weights["float64"].dtype == np.float64
    for w in weights.values():          # torchvision's N(0, 2 / fan_out), one step away
        assert abs(w.std() / math.sqrt(2 / (64 * 49)) - 1) < 0.1
    assert np.allclose(weights["float32"], weights["float64"], atol=1e-3)


def test_a_model_without_its_flatten_is_told_to_add_one(tmp_path):
    """FC layers now act on the last axis of a volume, as PyTorch's: a model missing its
    Flatten trained up to the class check, which said to end the model with FC 10 when
    it did."""
    from convnet.layers import Conv2d, Linear, ReLU
    from convnet.models import Sequential
    model = Sequential(Conv2d(1, 4, 3, padding=1), ReLU(), Linear(8, 10))
    model.input_shape = (1, 8, 8)
    save_model(model, tmp_path / "flat")
    cfg = TrainConfig(data="digits", model=str(tmp_path / "flat.json"), epochs=1, limit=64,
                      out=str(tmp_path / "r"))
    with pytest.raises(ValueError, match=r"model gives \(4, 8, 10\) scores per image but "
                                         r"digits has 10 classes: it must give one vector of "
                                         r"10 scores: put a Flatten\(\) before its FC layers"):
        train(cfg, progress=False, log=lambda *a: None)
    cfg.model = "INPUT 8x8x1 -> CONV 10 -> GAP"              # no FC layer at all
    with pytest.raises(ValueError, match=r"model gives \(10, 1, 1\) scores per image but "
                                         r"digits has 10 classes: it gives a volume: end it "
                                         r"with FLATTEN -> FC 10"):
        train(cfg, progress=False, log=lambda *a: None)


def test_an_interrupted_runs_progress_bar_is_closed_before_the_message(tmp_path,
                                                                       monkeypatch):
    """Ctrl-C in an epoch left tqdm's bar open, and the command line's message was
    glued to it ("...loss=0.8062]convnet train: interrupted"): the bar is closed (its
    line cleared) as the run ends, however it ends."""
    import tqdm

    import convnet.train.loop as loop
    bars = []

    class Recorded:
        def __init__(self, *args, **kwargs):
            self.closed = False
            bars.append(self)

        def set_postfix(self, **kwargs):
            pass

        def update(self, n):
            pass

        def close(self):
            self.closed = True
    monkeypatch.setattr(tqdm, "tqdm", Recorded)
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return softmax_cross_entropy(*args)
    monkeypatch.setattr(loop, "softmax_cross_entropy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(data="digits", model=SMALL, epochs=1, out=str(tmp_path)),
              log=lambda *a: None, progress=True)
    assert len(bars) == 1 and bars[0].closed


def test_the_python_training_loop_example_learns_the_digits():
    """examples/train_loop.py, the README's loop in Python, runs as written and learns."""
    import runpy
    example = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "train_loop.py"))
    assert example["main"](epochs=3) > 0.85


def set_aside_run(out):
    """A folder as an --overwrite run leaves it before its first checkpoint: the earlier
    run's files ("old NAME") set aside, the new run's first files ("new NAME") in out.
    Returns the SetAside."""
    from convnet.train import loop
    out.mkdir()
    for name in loop.RUN_FILES:
        (out / name).write_text(f"old {name}")
    aside = loop.SetAside(out)
    aside.begin()
    for name in ("best.json", "best.safetensors"):        # the new run's first files
        (out / name).write_text(f"new {name}")
    return aside


def test_a_put_back_cut_short_and_done_again_deletes_nothing_of_the_earlier_run(
        tmp_path, monkeypatch):
    """A restore stopped after moving some files back had left a .replaced-* set whose
    next put_back deleted the files already back (as the failed run's)."""
    from convnet.train import loop
    out = tmp_path / "run"
    aside = set_aside_run(out)
    real, moves = os.replace, []

    def replace(src, dst):
        if str(src).startswith(str(out / loop.RESTORING)):
            moves.append(dst)
            if len(moves) == 3:
                raise KeyboardInterrupt
        return real(src, dst)
    monkeypatch.setattr(loop.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        aside.restore()
    monkeypatch.undo()
    assert len(moves) == 3 and list(out.glob(f"{loop.RESTORING}*"))
    assert loop.recover_set_aside(out) is not None
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        name: f"old {name}" for name in loop.RUN_FILES}


def test_a_missing_model_file_names_a_run_set_aside_beside_it(tmp_path, capsys):
    """An --overwrite run killed before its first checkpoint leaves its own best.json and
    the earlier run in .replaced-*: eval named the killed run's best.json alone."""
    out = tmp_path / "o"
    set_aside_run(out)
    assert main(["eval", str(out / "model.json"), "--data", "digits"]) == 1
    err = capsys.readouterr().err
    assert f"an earlier run in {out} is set aside in .replaced-" in err, err
    assert f"convnet train --out {out} puts it back" in err


def test_a_run_whose_model_fits_the_caps_can_be_resumed(tmp_path, capsys, monkeypatch):
    """The checkpoint holds the model, Adam's two moments and the moving average: four
    times the model, which a model near MAX_ARRAY_BYTES passed, so that train wrote a
    checkpoint --resume refused. (The caps scaled down, as a user may set them.)"""
    from convnet import limits
    model = "INPUT 8x8x1 -> FC 160 -> RELU -> FC 10"        # 12,010 parameters: 48 KB
    monkeypatch.setattr(limits, "MAX_ARRAY_BYTES", 64_000)
    out = tmp_path / "run"
    args = ["train", "--model", model, "--epochs", "2", "--ema", "0.9", "--quiet",
            "--no-report", "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--no-report"]) == 0, \
        capsys.readouterr().err


def test_the_memory_check_counts_the_checkpoints_copies_and_the_moving_average():
    """A model heavy in parameters was estimated at 1.5 GB and peaked at 6 GB: writing its
    checkpoint copies the weights and Adam's moments twice (the safetensors library), and
    --ema keeps one more copy of the weights."""
    from convnet.analysis import summary
    from convnet.models import from_notation
    from convnet.train.loop import training_bytes
    model = from_notation("INPUT 8x8x1 -> FC 1000 -> FC 10")
    weights = model.num_params() * 4
    base = summary(model, (1, 8, 8), batch_size=32, optimizer="adam").memory[
        "training_total"]
    cfg = TrainConfig(batch_size=32, optimizer="adam")
    assert training_bytes(model, (1, 8, 8), cfg) == base + 2 * 3 * weights
    cfg = TrainConfig(batch_size=32, optimizer="adam", ema=0.99)
    assert training_bytes(model, (1, 8, 8), cfg) == base + weights + 2 * 4 * weights
