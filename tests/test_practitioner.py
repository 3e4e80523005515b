"""The practitioner's path: an image folder trained with no other option, preprocessing
that travels with the model into eval and predict, defaults per optimizer, every format
on every command, and fine-tuning stages."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from convnet.cli import main
from convnet.data import load_dataset
from convnet.data.folder import load_image_folder
from convnet.io import load_model, save_model, save_tensors
from convnet.models import from_notation
from convnet.train.defaults import default_notation
from convnet.train.loop import TrainConfig, train
from convnet.train.optim import DEFAULT_LR, OPTIMIZERS

SMALL = "INPUT 8x8x1 -> CONV 8 -> BN -> RELU -> POOL -> FC 32 -> RELU -> FC 10"
QUIET = dict(log=lambda *a: None, progress=False)


def stripes(rng, h, w, horizontal):
    """A grayscale image of stripes along one axis, with noise: a learnable class."""
    period = rng.integers(3, 6)
    line = (np.arange(h if horizontal else w) % period < period // 2) * 180 + 40
    img = np.repeat(line[:, None], w, 1) if horizontal else np.repeat(line[None], h, 0)
    return np.clip(img + rng.normal(0, 20, (h, w)), 0, 255).astype(np.uint8)


def make_folder(root, per_class=20, sizes=((16, 16), (20, 12), (24, 20)), colour=(),
                classes=("horizontal", "vertical")):
    """root/<class>/<i>.png, stripes of mixed sizes (H, W); the classes in ``colour`` RGB."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            img = stripes(rng, h, w, horizontal=k % 2 == 0)
            pic = Image.fromarray(img)
            if name in colour:
                pic = pic.convert("RGB")
            pic.save(root / name / f"{i:03d}.png")
    return root


def error_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# -- an image folder, end to end ----------------------------------------------------------

def test_a_folder_of_class_folders_trains_evaluates_and_predicts(tmp_path, capsys):
    data = make_folder(tmp_path / "stripes")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--epochs", "4", "--quiet",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"split {data} (40 images): 4 held out for testing (10% of each class, seed 0)" \
        in text
    # the range of each side (sorted by size, 20x12 had been left out of "16x16 to 20x24")
    assert ("come in 3 sizes (W from 12 to 20, H from 16 to 24): resized to 16x20 (W x H), "
            "the median of each side (bilinear); --image-size HxW chooses another (this one "
            "is --image-size 20x16)") in text
    assert "model: INPUT 16x20x1 -> [CONV 32 -> BN -> RELU]*2 -> POOL floor" in text
    assert text.count("FC 2") == 1
    test_acc = float(re.search(r"test accuracy ([0-9.]+) \(4 images\)", text)[1])

    info = json.loads((out / "model.json").read_text())["info"]
    assert info["classes"] == ["horizontal", "vertical"] and info["channels"] == "L"
    assert len(info["mean"]) == len(info["std"]) == 1 and info["resize"] == "bilinear"
    assert 0 <= info["brightness"][0] <= info["brightness"][1] <= 1

    # eval holds out the same test images, prepared the same way
    assert main(["eval", str(out / "model.json"), "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 4 and result["classes"] == ["horizontal", "vertical"]
    assert round(result["accuracy"], 4) == test_acc

    # predict converts an RGB image of another size the way training did, and says so
    rgb = Image.fromarray(stripes(np.random.default_rng(5), 30, 40, True)).convert("RGB")
    rgb.save(tmp_path / "big.png")
    assert main(["predict", str(out / "model.json"), str(tmp_path / "big.png")]) == 0
    captured = capsys.readouterr()
    assert "big.png: 40x30 RGB, converted to 16x20 L (bilinear)" in captured.err
    assert re.fullmatch(r".*big\.png: (horizontal|vertical) [0-9.]+, (horizontal|vertical) "
                        r"[0-9.]+\n", captured.out)


def test_train_val_and_test_sub_folders_are_used_as_given(tmp_path, capsys):
    for split, count in (("train", 12), ("val", 3), ("test", 4)):
        make_folder(tmp_path / "d" / split, per_class=count, sizes=((12, 12),),
                    colour=("b",), classes=("a", "b", "c"))
    cfg = TrainConfig(data=str(tmp_path / "d"), epochs=1, batch_size=8, out=str(tmp_path / "r"))
    lines = []
    result = train(cfg, log=lines.append, progress=False)
    text = "\n".join(lines)
    assert "36 images 12x12x3, 9 for validation, 12 for test" in text
    assert "38 of the 57 images are grayscale: all are read as RGB" in text
    assert result.model.output_shape(result.model.input_shape) == (3,)
    assert result.model.input_shape == (3, 12, 12)


def test_eval_takes_a_folder_of_some_of_the_models_classes(tmp_path, capsys):
    """New photos of two of a model's three classes had been refused ("3 outputs but
    2 classes"; one class: "a classifier needs at least 2"); a test/ folder lacking one
    of the training classes had been refused too."""
    make_folder(tmp_path / "d" / "train", per_class=8, sizes=((12, 12),),
                classes=("cat", "dog", "fox"))
    make_folder(tmp_path / "d" / "test", per_class=3, sizes=((12, 12),),
                classes=("cat", "fox"))
    result = train(TrainConfig(data=str(tmp_path / "d"), epochs=1, batch_size=8,
                               out=str(tmp_path / "r")), log=lambda *a: None, progress=False)
    assert result.test_acc is not None
    make_folder(tmp_path / "new", per_class=4, sizes=((12, 12),), classes=("dog", "cat"))
    make_folder(tmp_path / "one", per_class=4, sizes=((12, 12),), classes=("fox",))
    model = str(tmp_path / "r" / "model.json")
    for folder, count in (("new", 8), ("one", 4)):
        assert main(["eval", model, "--data", str(tmp_path / folder), "--all-images",
                     "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["classes"] == ["cat", "dog", "fox"] and shown["images"] == count
        matrix = np.array(shown["confusion"])
        assert matrix.sum() == count and matrix[[0, 1, 2]].sum(axis=1).tolist() == (
            [4, 4, 0] if folder == "new" else [0, 0, 4])
    make_folder(tmp_path / "odd", per_class=2, sizes=((12, 12),), classes=("cat", "owl"))
    assert main(["eval", model, "--data", str(tmp_path / "odd"), "--all-images"]) == 1
    assert "class folders ['owl'] are not among the classes ['cat', 'dog', 'fox']" in \
        capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("empty", "empty: class folder holds no image files"),
    ("unreadable", "notes.txt: unreadable image"),
    ("one class", "only one class folder ('horizontal'); a classifier needs at least 2"),
    ("classes differ", "class folders ['x'] are not among the classes ['horizontal', "
                       "'vertical']"),
    ("too few", "too few to hold out 10% of each class"),
    ("float image", "32-bit float images are not supported"),
    ("integer image", "32-bit integer images are not supported"),
])
def test_a_bad_image_folder_is_one_line_naming_the_path(tmp_path, capsys, case, message):
    data = tmp_path / "d"
    if case == "empty":
        make_folder(data, per_class=4)
        (data / "empty").mkdir()
    elif case == "unreadable":
        make_folder(data, per_class=4)
        (data / "vertical" / "notes.txt").write_text("not an image")
    elif case == "one class":
        make_folder(data, per_class=4, classes=("horizontal",))
    elif case == "classes differ":
        make_folder(data / "train", per_class=4)
        make_folder(data / "test", per_class=2, classes=("horizontal", "x"))
    elif case == "too few":
        make_folder(data, per_class=2)
    else:       # enough images that a test split can be drawn: the image is what fails
        make_folder(data, per_class=10)
        dtype = np.float32 if case == "float image" else np.int32  # 8-bit values, 32 bits
        Image.fromarray(np.full((8, 8), 200, dtype)).save(data / "vertical" / "f.tiff")
    assert main(["train", "--data", str(data), "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "r")]) == 1
    err = error_line(capsys)
    assert message in err and str(data) in err
    if case in ("unreadable", "float image", "integer image"):  # one file: what to do
        assert err.rstrip().endswith("; remove or fix it"), err
    assert not (tmp_path / "r" / "model.json").exists()


@pytest.mark.parametrize("header", [b"P5 4 1 1023\n", b"P2 4 1 65535\n"])
def test_sixteen_bit_pgms_of_any_maxval_are_read(tmp_path, header):
    """A PGM of maxval 1023, or a plain-text one, had been refused as a 32-bit image."""
    (tmp_path / "a").mkdir()
    values = [0, 257, 511, 1023] if b"1023" in header else [0, 257, 32768, 65535]
    body = (np.array(values, ">u2").tobytes() if header.startswith(b"P5")
            else " ".join(map(str, values)).encode() + b"\n")
    (tmp_path / "a" / "x.pgm").write_bytes(header + body)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.pgm").write_bytes(header + body)
    x, _, _ = load_image_folder(tmp_path, grayscale=True)
    assert x[0, 0, 0, -1] == 255 and x[0, 0, 0, 0] == 0


@pytest.mark.parametrize("ext", ["png", "tiff", "pgm"])
def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path, ext):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(values).save(tmp_path / name / f"x.{ext}")
    assert Image.open(tmp_path / "a" / f"x.{ext}").mode.startswith("I")  # PGM's: "I"
    x, _, _ = load_image_folder(tmp_path, grayscale=True)
    assert x[0, 0, 0].tolist() == [0, 1, 128, 255]


@pytest.mark.parametrize("shape", [(1, 2, 3), (1, 3, 3), (1, 8, 8), (3, 16, 12), (1, 28, 28),
                                   (3, 33, 47), (3, 65, 64), (3, 100, 75), (3, 224, 224),
                                   (1, 300, 17)])
@pytest.mark.parametrize("classes", [2, 7, 100])
def test_the_default_net_fits_any_image_size_and_class_count(shape, classes):
    model = from_notation(default_notation(shape, classes), rng=np.random.default_rng(0))
    assert model.output_shape(shape) == (classes,)
    assert model.input_shape == shape


def test_folders_of_any_size_train_with_the_default_net(tmp_path):
    """A 2-class colour folder of 40x52 images: the net built for it trains a step."""
    make_folder(tmp_path / "d", per_class=10, sizes=((40, 52),), colour=("horizontal",
                                                                          "vertical"))
    result = train(TrainConfig(data=str(tmp_path / "d"), epochs=1, batch_size=6,
                               out=str(tmp_path / "r")), **QUIET)
    assert result.model.input_shape == (3, 40, 52)
    assert len(result.history) == 1 and np.isfinite(result.history[0]["loss"])


def test_large_images_are_scaled_down_unless_a_size_is_given(tmp_path):
    make_folder(tmp_path / "d", per_class=10, sizes=((200, 300),))
    data = load_dataset(tmp_path / "d")
    assert data.input_shape == (1, 85, 128)
    assert any("are 300x200 (W x H): resized to 128x85, at most 128 pixels a side" in note
               for note in data.notes)
    assert load_dataset(tmp_path / "d", image_size=(200, 300)).input_shape == (1, 200, 300)


# -- optimizers and their defaults --------------------------------------------------------

@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_learns_the_digits_with_its_defaults(tmp_path, name):
    result = train(TrainConfig(data="digits", optimizer=name, out=str(tmp_path)), **QUIET)
    assert result.test_acc >= 0.90, (name, result.test_acc)


def test_train_help_shows_each_optimizers_default_learning_rate(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, lr in DEFAULT_LR.items():
        assert f"{name} (lr {lr:g}" in text
    assert set(DEFAULT_LR) == set(OPTIMIZERS)


def test_the_learning_rate_follows_the_optimizer_unless_given(tmp_path):
    lines = []
    train(TrainConfig(data="digits", model=SMALL, epochs=1, optimizer="sgd",
                      out=str(tmp_path / "a")), log=lines.append, progress=False)
    assert "sgd lr=0.1," in "\n".join(lines)
    lines.clear()
    train(TrainConfig(data="digits", model=SMALL, epochs=1, optimizer="sgd", lr=0.03,
                      out=str(tmp_path / "b")), log=lines.append, progress=False)
    assert "sgd lr=0.03," in "\n".join(lines)


# -- every format on every command --------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small digits model, and its weights alone as .pt and as .safetensors."""
    root = tmp_path_factory.mktemp("formats")
    result = train(TrainConfig(data="digits", model=SMALL, epochs=3, out=str(root / "run")),
                   **QUIET)
    state = result.model.state_dict()
    torch.save({k: torch.tensor(v) for k, v in state.items()}, root / "w.pt")
    save_tensors(state, root / "w.safetensors")
    return root, result


@pytest.mark.parametrize("suffix", ["pt", "safetensors"])
def test_weights_files_work_on_every_command_with_model(trained, tmp_path, capsys, suffix):
    root, result = trained
    weights = str(root / f"w.{suffix}")
    assert main(["summary", weights, "--model", SMALL, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_params"] == result.model.num_params()

    assert main(["eval", weights, "--model", SMALL, "--data", "digits", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["accuracy"] > 0.6
    assert "records no preprocessing" in captured.err

    assert main(["convert", weights, str(tmp_path / "m.json"), "--model", SMALL]) == 0
    converted = load_model(tmp_path / "m.json")
    assert all(np.array_equal(v, result.model.state_dict()[k])
               for k, v in converted.state_dict().items())

    assert main(["train", "--from", weights, "--model", SMALL, "--data", "digits",
                 "--epochs", "1", "--quiet", "--out", str(tmp_path / "ft")]) == 0
    assert "fine-tuning" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["summary", "{w}"], ["eval", "{w}", "--data", "digits"], ["convert", "{w}", "{o}"],
    ["train", "--from", "{w}", "--data", "digits"], ["predict", "{w}", "{w}"],
])
@pytest.mark.parametrize("suffix", ["pt", "safetensors"])
def test_a_bare_weights_file_without_model_names_the_file_and_the_fix(
        trained, tmp_path, capsys, argv, suffix):
    root, _ = trained
    weights = str(root / f"w.{suffix}")
    argv = [a.format(w=weights, o=tmp_path / "o.json") for a in argv]
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "r")]
    assert main(argv) == 1
    err = error_line(capsys)
    assert f"{weights}: a weights file holds no architecture: name it with --model" in err


def test_weights_of_another_architecture_name_the_file(trained, capsys):
    root, _ = trained
    assert main(["summary", str(root / "w.pt"), "--model", "lenet5"]) == 1
    err = error_line(capsys)
    assert f"{root / 'w.pt'}: does not fit the architecture given by --model" in err


def test_eval_and_predict_refuse_untrained_weights(capsys):
    assert main(["eval", "lenet5", "--data", "digits"]) == 1
    assert "needs trained weights" in error_line(capsys)


# -- fine-tuning stages -------------------------------------------------------------------

def test_freeze_by_name_range_and_a_wrong_name_lists_the_stages(trained, tmp_path, capsys):
    root, result = trained
    model_file = str(root / "run" / "model.json")
    before = load_model(model_file).state_dict()
    assert main(["train", "--from", model_file, "--freeze", "0-3", "--data", "digits",
                 "--epochs", "1", "--quiet", "--out", str(tmp_path / "a")]) == 0
    after = load_model(tmp_path / "a" / "model.json").state_dict()
    assert np.array_equal(after["0.weight"], before["0.weight"])        # frozen CONV
    assert not np.array_equal(after["7.weight"], before["7.weight"])    # trained FC
    capsys.readouterr()
    assert main(["train", "--from", model_file, "--freeze", "features", "--data", "digits",
                 "--quiet", "--out", str(tmp_path / "b")]) == 1
    err = error_line(capsys)
    assert "no stage named 'features'" in err and "0, 1, 2, 3, 4, 5, 6, 7" in err
    assert f"--freeze features: --from {model_file} has no stage named" in err


@pytest.mark.parametrize("args, message", [
    (["--model", "INPUT 8x8x1 -> CONVV 8 -> FC 10"], "unknown layer 'CONVV'; did you mean "
                                                     "CONV?"),
    (["--model", "vgg17"], "model 'vgg17' is not a zoo name"),
    (["--no-augment", "--flip"], "flip=True shapes the augmentation, and augment=False"),
])
def test_settings_wrong_whatever_the_data_are_refused_before_it_is_read(
        tmp_path, capsys, monkeypatch, args, message):
    """A typo in --model was named after the data set was read and made floats (Fashion-
    MNIST: 0.9 GB and 3.4 s; at --image-size 512, 7 GB); at --image-size 100 a MemoryError
    came first, and the typo was never named."""
    from convnet.train import loop

    def unread(*args, **kwargs):
        raise AssertionError("the data was read")
    monkeypatch.setattr(loop, "load_dataset", unread)
    assert main(["train", *args, "--out", str(tmp_path / "r")]) == 1
    assert message in capsys.readouterr().err


def test_a_wrong_freeze_is_refused_before_the_data_is_read(trained, tmp_path, capsys,
                                                           monkeypatch):
    """The stage names had been checked after reading the whole data set (Fashion-MNIST:
    a peak of 937 MB before a typo was named)."""
    from convnet.train import loop
    root, _ = trained

    def unread(*args, **kwargs):
        raise AssertionError("the data was read")
    monkeypatch.setattr(loop, "load_dataset", unread)
    assert main(["train", "--from", str(root / "run" / "model.json"), "--freeze", "typo",
                 "--data", "digits", "--out", str(tmp_path / "r")]) == 1
    assert "has no stage named 'typo'" in error_line(capsys)


# -- preprocessing travels with the model -------------------------------------------------

def test_predict_warns_about_images_far_from_the_training_data(trained, tmp_path, capsys):
    root, _ = trained
    x, y = load_dataset("digits").test
    digit = (x[0, 0].astype(np.float64) * 255 / 16).astype(np.uint8)       # light on dark
    Image.fromarray(digit).save(tmp_path / "as_trained.png")
    Image.fromarray(255 - digit).save(tmp_path / "inverted.png")
    model_file = str(root / "run" / "model.json")
    assert main(["predict", model_file, str(tmp_path / "as_trained.png"),
                 str(tmp_path / "inverted.png")]) == 0
    err = capsys.readouterr().err
    assert "as_trained.png" not in err
    assert "inverted.png: its mean intensity" in err
    assert "light on dark, this one is the reverse: invert it" in err


def test_predict_names_the_first_ten_far_images_and_counts_the_rest(trained, tmp_path,
                                                                    capsys):
    """Every image far from the training data's brightness had its own warning: a folder
    of 10,000 inverted scans gave 10,000 lines."""
    from convnet.train.inference import MAX_IMAGE_NOTES
    root, _ = trained
    x, _ = load_dataset("digits").test
    files = []
    for i in range(MAX_IMAGE_NOTES + 3):
        digit = (x[i, 0].astype(np.float64) * 255 / 16).astype(np.uint8)
        Image.fromarray(255 - digit).save(tmp_path / f"{i}.png")      # dark on light
        files.append(str(tmp_path / f"{i}.png"))
    assert main(["predict", str(root / "run" / "model.json"), *files]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == len(files)
    named = [line for line in captured.err.splitlines() if ": its mean intensity" in line]
    assert len(named) == MAX_IMAGE_NOTES
    assert captured.err.strip().splitlines()[-1] == (
        "convnet predict: warning: 3 more images' intensity lies far outside the "
        "training images'")


def _overflowing(model_file, out):
    """A copy of the model file whose weights overflow float32 in its first layer."""
    model = load_model(model_file)
    state = model.state_dict()
    state["0.weight"][...] = 1e38
    model.load_state_dict(state)
    save_model(model, out, **model.info)
    return str(out)


def test_predict_and_eval_refuse_scores_that_are_not_finite(trained, tmp_path, capsys):
    """Weights that overflow float32 gave "0 nan, 1 nan, 2 nan" from predict and an
    accuracy (every image taken as class 0) from eval, both with exit status 0."""
    root, _ = trained
    model_file = _overflowing(root / "run" / "model.json", tmp_path / "big.json")
    x, _ = load_dataset("digits").test
    Image.fromarray((x[0, 0].astype(np.float64) * 255 / 16).astype(np.uint8)).save(
        tmp_path / "a.png")
    assert main(["predict", model_file, str(tmp_path / "a.png")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (f"{model_file} gives class scores that are not finite (NaN or infinite) for 1 "
            f"of 1 images ({tmp_path / 'a.png'})") in captured.err
    assert "warning: overflow" not in captured.err
    assert main(["eval", model_file, "--data", "digits"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (f"{model_file} gives class scores that are not finite (NaN or infinite) for "
            f"359 of 359 images of digits") in captured.err


def test_predict_predicts_the_readable_images_and_names_the_others(trained, tmp_path,
                                                                  capsys):
    """One bad file among many had stopped every prediction."""
    root, _ = trained
    x, _ = load_dataset("digits").test
    for i in range(2):
        Image.fromarray((x[i, 0].astype(np.float64) * 255 / 16).astype(np.uint8)).save(
            tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    files = [str(tmp_path / name) for name in ("0.png", "notes.txt", "1.png", "empty.png")]
    capsys.readouterr()
    assert main(["predict", str(root / "run" / "model.json"), *files]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split(":")[0] for line in lines] == [files[0], files[2]], lines
    err = captured.err.strip().splitlines()[-1]
    assert err.startswith("convnet predict: error: 2 of 4 files are not images convnet can "
                          "read"), captured.err
    assert "notes.txt: unreadable image" in err and "empty.png: unreadable image: the " \
        "file is empty (0 bytes)" in err and "Traceback" not in captured.err
    # every file unreadable: named too (brightness had failed on no images at all)
    assert main(["predict", str(root / "run" / "model.json"), files[1], files[3]]) == 1
    err = capsys.readouterr().err
    assert "2 of 2 files are not images convnet can read" in err, err


def test_fine_tuning_on_the_same_classes_in_another_order_keeps_the_head(trained, tmp_path,
                                                                        capsys):
    """A model whose classes are the data's in another order (folders are read sorted by
    name): its trained head had been replaced by a random one ("the model's 10 classes
    are not the data's"), where eval matched the classes by name. Its outputs are now
    reordered."""
    import shutil
    root, _ = trained
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    x, y = load_dataset("digits").train
    for k, name in enumerate(names):
        (tmp_path / "named" / name).mkdir(parents=True)
        for j in np.flatnonzero(y == k)[:30]:
            Image.fromarray((x[j, 0].astype(np.float64) * 255 / 16).astype(np.uint8)).save(
                tmp_path / "named" / name / f"{j}.png")
    document = json.loads((root / "run" / "model.json").read_text())
    document["info"]["classes"] = names                   # the same net, named classes
    (tmp_path / "perm").mkdir()
    (tmp_path / "perm" / "model.json").write_text(json.dumps(document))
    shutil.copy(root / "run" / "model.safetensors", tmp_path / "perm")
    assert main(["train", "--from", str(tmp_path / "perm" / "model.json"), "--data",
                 str(tmp_path / "named"), "--epochs", "1", "--lr", "1e-12", "--no-report",
                 "--out", str(tmp_path / "ft")]) == 0
    out = capsys.readouterr().out
    assert "its outputs reordered: the data's classes are the model's in another order" in \
        out, out
    # at a learning rate of 1e-12 the head is the model's, its rows in the data's order
    before = load_model(tmp_path / "perm" / "model.json").state_dict()
    after = load_model(tmp_path / "ft" / "model.json").state_dict()
    order = [names.index(name) for name in sorted(names)]
    for key in ("7.weight", "7.bias"):
        np.testing.assert_allclose(after[key], before[key][order], atol=1e-6)


def test_the_model_file_records_the_preprocessing(trained):
    root, result = trained
    info = load_model(root / "run" / "model.json").info
    assert info["classes"] == [str(d) for d in range(10)]
    assert info["channels"] == "L" and info["scale"] == 16 and info["resize"] is None
    assert info["split_seed"] == 0 and info["test_fraction"] == 0.1
    assert len(info["mean"]) == 1 and info["std"][0] > 0
    assert info["optimizer"] == "adam"     # the digits default


def test_summary_counts_a_trained_models_memory_by_its_optimizer(trained, capsys):
    """summary had counted a run's model by SGD's x2 where its run kept Adam's x4."""
    root, _ = trained
    assert main(["summary", str(root / "run" / "model.json"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["optimizer"] == "adam" and shown["memory"]["parameter_multiplier"] == 4
    assert main(["summary", str(root / "run" / "model.json"), "--optimizer", "sgd",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["memory"]["parameter_multiplier"] == 2


def test_predict_reads_and_predicts_a_batch_at_a_time(trained, tmp_path, capsys,
                                                      monkeypatch):
    """predict had decoded every file before the first prediction: 1.35 MB an image at
    224x224, so 20,000 photos wanted 27 GB. A batch at a time, the answers are the same,
    each printed as its batch is done, and the notes are named up to their cap."""
    from convnet.train import inference
    root, _ = trained
    x, _ = load_dataset("digits").test
    files = []
    for i in range(7):            # 16x16: each is converted to the model's 8x8
        big = np.kron(x[i, 0], np.ones((2, 2))).astype(np.float64) * 255 / 16
        Image.fromarray(big.astype(np.uint8)).save(tmp_path / f"{i}.png")
        files.append(str(tmp_path / f"{i}.png"))
    (tmp_path / "bad.png").write_bytes(b"")
    files.insert(3, str(tmp_path / "bad.png"))
    model_file = str(root / "run" / "model.json")
    capsys.readouterr()
    assert main(["predict", model_file, *files]) == 1
    whole = capsys.readouterr()
    sizes = []
    real = inference.load_images

    def load(paths, *args, **kwargs):
        sizes.append(len(paths))
        return real(paths, *args, **kwargs)
    monkeypatch.setattr(inference, "load_images", load)
    monkeypatch.setattr(inference, "inference_batch", lambda model, shape: 3)
    monkeypatch.setattr(inference, "MAX_IMAGE_NOTES", 4)
    assert main(["predict", model_file, *files]) == 1
    parts = capsys.readouterr()
    assert sizes == [3, 3, 2]
    assert parts.out == whole.out and len(parts.out.splitlines()) == 7
    notes = [line for line in parts.err.splitlines() if "converted to 8x8 L" in line]
    assert len(notes) == 5 and notes[-1].endswith(
        "... and 3 more images converted to 8x8 L, the model's input"), notes
    assert "bad.png: unreadable image" in parts.err.splitlines()[-1]


def test_eval_refuses_a_folder_whose_files_changed_since_training(tmp_path, capsys):
    """A test split drawn from one folder is drawn again by eval: one image added had
    moved half the test images into training, silently. The model records the folder's
    files, and eval refuses another set of them, saying what changed."""
    data = make_folder(tmp_path / "shapes", per_class=20)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--epochs", "1", "--quiet", "--no-report",
                 "--out", str(out)]) == 0
    info = json.loads((out / "model.json").read_text())["info"]
    assert info["split_files"]["files"] == 40 and len(info["split_files"]["sha256"]) == 64
    assert main(["eval", str(out / "model.json"), "--data", str(data)]) == 0
    capsys.readouterr()
    (data / "vertical" / "019.png").rename(data / "vertical" / "019b.png")
    assert main(["eval", str(out / "model.json"), "--data", str(data)]) == 1
    assert "holds other files (renamed, moved or replaced): the test images" in \
        error_line(capsys)
    (data / "vertical" / "019b.png").rename(data / "vertical" / "019.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(data / "vertical" / "new.png")
    assert main(["eval", str(out / "model.json"), "--data", str(data)]) == 1
    err = error_line(capsys)
    assert f"{data} holds 41 images where training had 40: the test images" in err
    assert ("use the folder as it was, or train on train/ and test/ folders; to score "
            "every image of another folder: --all-images") in err
    # --resume draws the split again too: refused the same way, nothing rewritten
    before = (out / "model.json").read_bytes()
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2", "--quiet",
                 "--no-report"]) == 1
    assert "holds 41 images where training had 40: the test images the run held out" in \
        error_line(capsys)
    assert (out / "model.json").read_bytes() == before


def test_resume_refuses_a_train_and_test_folder_whose_training_images_changed(tmp_path,
                                                                             capsys):
    """From a review of resume: with train/ and test/ folders no split is drawn, so
    nothing was checked. Images added since the run began were trained on without a
    word (the validation split drawn again, the normalization's mean recomputed);
    images removed were blamed on the checkpoint ("field 'batch' must be ...")."""
    data = tmp_path / "shapes"
    make_folder(data / "train", per_class=20)
    make_folder(data / "test", per_class=4)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--epochs", "1", "--quiet", "--no-report",
            "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    before = (out / "model.json").read_bytes()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(data / "train" / "vertical" / "n.png")
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--no-report"]) == 1
    err = error_line(capsys)
    assert (f"{data} now holds 41 training and validation images where the run had 40: "
            f"the run cannot go on as it began") in err, err
    (data / "train" / "vertical" / "n.png").unlink()
    (data / "train" / "vertical" / "000.png").write_bytes(
        (data / "train" / "vertical" / "001.png").read_bytes())
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--no-report"]) == 1
    assert "holds other training or validation images than the run's" in error_line(capsys)
    assert (out / "model.json").read_bytes() == before


def test_resume_finds_a_relative_data_folder_from_anywhere_and_a_moved_one(
        tmp_path, capsys, monkeypatch):
    """A run on --data shapes (relative) could be resumed only from the folder it began
    in: from anywhere else it was "unknown data set 'shapes'", and a --data naming the
    folder was ignored."""
    monkeypatch.chdir(tmp_path)
    make_folder(tmp_path / "shapes", per_class=20)
    assert main(["train", "--data", "shapes", "--epochs", "1", "--quiet", "--no-report",
                 "--out", "run"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", "../run", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert f"its data folder shapes is read where the run began: {tmp_path / 'shapes'}" \
        in out, out
    # a --data naming the same folder is not "ignored", however it is spelled
    assert main(["train", "--resume", "--out", "../run", "--data", "../shapes",
                 "--no-report"]) == 0
    assert "ignored" not in capsys.readouterr().out
    # moved: where to is asked for, then the --data given is read, and the data's
    # digest says it is the same
    (tmp_path / "shapes").rename(tmp_path / "moved")
    assert main(["train", "--resume", "--out", "../run", "--no-report"]) == 1
    err = capsys.readouterr().err
    assert (f"the run's data folder shapes is not here, nor where the run began "
            f"({tmp_path / 'shapes'}): give its place now with --data PATH") in err, err
    assert main(["train", "--resume", "--out", "../run", "--data", "../moved",
                 "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "its data folder shapes is not here; reading ../moved" in out
    assert "ignored" not in out


def test_eval_all_images_scores_every_image_of_another_folder(tmp_path, capsys):
    """A folder of images the model never trained on could not be scored: eval drew a
    test split from it (10% of its images, or refused it as the training folder
    changed). --all-images scores every image, of one folder or of split folders, with
    no split drawn."""
    data = make_folder(tmp_path / "shapes", per_class=10)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--epochs", "1", "--quiet", "--no-report",
                 "--out", str(out)]) == 0
    other = make_folder(tmp_path / "other", per_class=6)
    model = str(out / "model.json")
    assert main(["eval", model, "--data", str(other)]) == 1
    assert "--all-images" in error_line(capsys)
    assert main(["eval", model, "--data", str(other), "--all-images", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["images"] == 12 and np.sum(result["confusion"]) == 12
    assert "held out" not in captured.err
    # the report scores them too
    page = tmp_path / "other.html"
    assert main(["report", model, "--data", str(other), "--all-images", "--out",
                 str(page)]) == 0
    capsys.readouterr()
    assert f" on the 12 images of {other}" in page.read_text()
    assert main(["report", model, "--all-images", "--out", str(tmp_path / "x.html")]) == 1
    assert "--all-images is for the images of --data: give --data" in error_line(capsys)
    assert main(["report", model, "--data", str(other), "--out", str(page),
                 "--overwrite"]) == 1
    err = error_line(capsys)
    assert "holds 12 images where training had 20" in err and "--all-images" in err
    split = tmp_path / "split"
    for part, n in (("train", 2), ("test", 1)):
        make_folder(split / part, per_class=n)
    assert main(["eval", model, "--data", str(split)]) == 0
    assert " on 2 test images of " in capsys.readouterr().out
    assert main(["eval", model, "--data", str(split), "--all-images"]) == 0
    captured = capsys.readouterr()   # test/'s images copy train/'s: no note, all are scored
    assert " on 6 images of " in captured.out and "identical" not in captured.err
    # the folder it trained on: scored whole, with a note that says so
    assert main(["eval", model, "--data", str(data), "--all-images"]) == 0
    captured = capsys.readouterr()
    assert " on 20 images of " in captured.out
    assert "was trained on this folder's images (the same files): its training images " \
           "are scored too" in captured.err
    # a folder named like the data set a model trained on: said as a possibility only
    digits_model = train(TrainConfig(data="digits", model="INPUT 8x8x1 -> FC 10", epochs=1,
                                     out=str(tmp_path / "d")), **QUIET).model_path
    named = make_folder(tmp_path / "digits", per_class=2, sizes=((8, 8),),
                        classes=[str(i) for i in range(10)])
    assert main(["eval", str(digits_model), "--data", str(named), "--all-images"]) == 0
    err = capsys.readouterr().err
    assert "was trained on data named digits: if this is that data" in err, err
    assert main(["eval", str(digits_model), "--data", "digits", "--all-images"]) == 0
    assert "was trained on the training images of digits: they are scored too" in \
        capsys.readouterr().err
    # and a model of a folder named digits, scored on the embedded digits: a possibility
    split = tmp_path / "own" / "digits"
    for part in ("train", "test"):
        make_folder(split / part, per_class=2, sizes=((8, 8),),
                    classes=[str(i) for i in range(10)])
    own = train(TrainConfig(data=str(split), model="INPUT 8x8x1 -> FC 10", epochs=1,
                            batch_size=4, val_fraction=0.5, out=str(tmp_path / "o")),
                **QUIET).model_path
    assert main(["eval", str(own), "--data", "digits", "--all-images"]) == 0
    assert "was trained on data named digits: if this is that data" in \
        capsys.readouterr().err


def test_eval_json_prints_no_accuracy_when_the_scores_are_not_finite(trained, tmp_path,
                                                                     capsys):
    """Weights so large that the scores overflow: `eval --json` had printed an accuracy
    (every image taken as class 0) and the loss as null; it now prints nothing on stdout
    and says why on stderr. (A file of NaN weights is refused when it is read.)"""
    root, result = trained
    state = {k: np.full_like(v, 1e30) if k.endswith("weight") else v
             for k, v in result.model.state_dict().items()}
    save_tensors(state, tmp_path / "nan.safetensors")
    assert main(["eval", str(tmp_path / "nan.safetensors"), "--model", SMALL, "--data",
                 "digits", "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "gives class scores that are not finite" in captured.err


def test_fine_tuning_on_the_same_folder_with_another_split_is_refused(tmp_path, capsys):
    """--from a model trained on this folder, with another --seed or --test-fraction: the
    test split was drawn again, and held out images the model had trained on (all 6 of
    6 in the review's case) without a word. The same split, or other data, is taken."""
    data = make_folder(tmp_path / "data", per_class=15, sizes=((8, 8),))
    base = ["train", "--data", str(data), "--epochs", "1", "--quiet", "--no-report"]
    assert main(base + ["--out", str(tmp_path / "r0")]) == 0
    start = ["--from", str(tmp_path / "r0" / "model.json")]
    for option, given in (("--seed", "--seed"), ("--test-fraction", "--test-fraction")):
        value = "1" if option == "--seed" else "0.2"
        assert main(base + start + [option, value, "--out", str(tmp_path / "r1")]) == 1
        line = error_line(capsys)
        assert f"was trained on {data} with its test images held out by seed 0 and test " \
               f"fraction 0.1; this run's {given} holds out others, some of which the " \
               f"model trained on: give --seed 0 --test-fraction 0.1" in line, line
        assert not (tmp_path / "r1").exists()
    assert main(base + start + ["--out", str(tmp_path / "r2")]) == 0
    # the folder changed since (one image more): the split can't be checked, so it is said
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / "vertical" / "new.png")
    capsys.readouterr()
    assert main(base + start + ["--seed", "1", "--out", str(tmp_path / "r4")]) == 0
    err = capsys.readouterr().err
    assert "warning: --from" in err and "that held other files (30 images; now 31): if " \
        "it is this folder, changed, the test images held out now may include" in err, err
    other = make_folder(tmp_path / "other", per_class=16, sizes=((8, 8),))
    assert main(["train", "--data", str(other), "--epochs", "1", "--quiet", "--no-report",
                 *start, "--seed", "1", "--out", str(tmp_path / "r3")]) == 0
