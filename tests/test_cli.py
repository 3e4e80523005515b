"""The command line: help, version, zoo, summary (text and JSON), errors and exit codes."""

import json
import subprocess
import sys

import numpy as np
import pytest

import convnet
from convnet.cli import main


def test_version_and_help_run_as_a_console_script():
    out = subprocess.run([sys.executable, "-m", "convnet.cli", "--version"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"convnet {convnet.__version__}"
    out = subprocess.run([sys.executable, "-m", "convnet.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "summary" in out and "zoo" in out


def test_zoo_lists_every_model(capsys):
    from convnet.zoo import MODELS
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    for name in MODELS:
        assert name in out
    assert "138,357,544" in out


def test_summary_json_of_arrow_notation(capsys):
    text = "INPUT 32x32x3 -> [[CONV 32 -> RELU]*2 -> POOL]*3 -> [FC 512 -> RELU]*2 -> FC 10"
    assert main(["summary", text, "--json", "--batch", "8"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["layers"][0]["type"] == "Conv2d(K=32, F=3, S=1, P=1)"
    assert data["total_params"] == sum(row["params"] for row in data["layers"])
    assert data["total_macs"] == sum(row["macs"] for row in data["layers"])
    assert data["layers"][-1]["output_shape"] == [10]


def test_summary_shows_the_training_or_the_inference_algorithm(capsys):
    # VGG-16's 64-channel 3x3 layers at batch 1: shifted in training, Winograd at
    # inference (its rule is for inference only).
    def second_conv(argv):
        assert main(["summary", "vgg16", *argv]) == 0
        lines = capsys.readouterr().out.splitlines()
        return lines[0], next(line for line in lines if line.startswith("features.2 "))
    header, row = second_conv([])
    assert "train alg." in header and " shifted " in row
    header, row = second_conv(["--inference"])
    assert "infer alg." in header and " winograd4x4 " in row


def test_summary_of_a_zoo_model_with_input_and_budget(capsys):
    assert main(["summary", "lenet5", "--input", "1x32x32", "--budget", "1MB"]) == 0
    out = capsys.readouterr().out
    assert "61,706" in out and "largest batch" in out


@pytest.mark.parametrize("argv, message", [
    (["summary", "nonet"], "not a zoo name"),
    (["summary", "VGG16"], "; did you mean vgg16 or "),
    (["summary", "resnet"], "; did you mean resnet"),
    (["summary", "missing.json"], "missing.json: no such model file"),
    (["summary", "INPUT 10x10x3 -> CONV 8 F3 S2 P0"], "4.5 is not an integer"),
    # the formula's F is the dilated extent: said, since the layer reads F=3
    (["summary", "INPUT 10x10x1 -> CONV 4 F3 S2 P0 D2"], "(10 - 5 + 2*0)/2 + 1 = 3.5 is not "
                                                         "an integer (F=5: F=3 at dilation 2)"),
])
def test_bad_input_is_one_error_and_exit_code_1(capsys, argv, message):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"convnet {argv[0]}: error:") and message in err


@pytest.mark.parametrize("text, size", [("28", (28, 28)), ("32x28", (32, 28)), ("7X9", (7, 9))])
def test_train_image_size_parses(text, size):
    from convnet.cli import build_parser
    args = build_parser().parse_args(["train", "--image-size", text])
    assert args.image_size == size
    assert build_parser().parse_args(["train"]).image_size is None


@pytest.mark.parametrize("text", ["0", "28x0", "28x", "x28", "-3", "2.5", "ax3", "2x3x4", "",
                                  "2_8", "\uff12\uff18", "\u0662\u0668", " 28"])
def test_train_bad_image_size_is_a_usage_error(capsys, text):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--image-size", text])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--image-size: expected a size such as 28 or 32x28" in err and repr(text) in err


@pytest.mark.parametrize("argv, message", [
    # int() takes these and reads them as other numbers: 3_2 as 32
    (["summary", "lenet5", "--input", "3_2x32x32"], "--input: input shape must be C x H x W"),
    (["summary", "lenet5", "--input", "\uff13x32x32"], "--input: input shape must be"),
    (["summary", "lenet5", "--input", "3 x 32 x 32"], "--input: input shape must be"),
    (["summary", "lenet5", "--batch", "1_0"], "--batch-size: expected an int from 1 to 1,000,000"),
    (["train", "--epochs", "\u0663"], "--epochs: expected an int from 1 to 1,000,000"),
    # an unbounded batch had overflowed format_bytes (OverflowError, no option named)
    (["summary", "lenet5", "--batch", "9" * 400], "--batch-size: expected an int from 1 to 1,"),
    (["summary", "lenet5", "--batch", "1000001"], "--batch-size: expected an int from 1 to 1,"),
])
def test_counts_on_the_command_line_are_ascii_digits_within_bounds(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err) < 300, err


def test_summary_at_the_largest_batch_prints_its_memory(capsys):
    assert main(["summary", "vgg16", "--batch", "1000000"]) == 0
    assert "training total" in capsys.readouterr().out
    from convnet.analysis import format_bytes
    assert format_bytes(5 << 50) == "5.00 PB" and format_bytes(3 << 60) == "3.00 EB"
    with pytest.raises(ValueError, match="too large"):
        format_bytes(10 ** 400)


def test_train_image_size_reaches_the_data_and_the_default_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--image-size", "12x10", "--epochs", "1",
                 "--limit", "80", "--batch-size", "24", "--quiet", "--out", str(out)]) == 0
    out_text = capsys.readouterr().out
    assert "71 images 10x12x1, 9 for validation" in out_text      # W x H x D, as the notes
    assert "66,026 parameters" in out_text                         # the digits default net
    saved = json.loads((out / "model.json").read_text())
    assert saved["input_shape"] == [1, 12, 10] and saved["info"]["scale"] == 16


def test_summary_writes_no_weights():
    """A summary is arithmetic on shapes: a fresh model's weights are zeros that are never
    written (counting_only), so a 307M-parameter FC layer takes no 1.2 GB of memory (its
    random init had taken 1.2 GB and seconds)."""
    code = ("import json, sys\n"
            "from convnet.cli import main\n"
            "main(['summary', 'INPUT 32x32x3 -> FC 100000', '--json'])\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print(int(hwm.split()[1]) * 1024, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout)["total_params"] == 3072 * 100_000 + 100_000
    assert int(done.stderr.strip().splitlines()[-1]) < 400 << 20     # 1.2 GB written before


def test_count_binds_the_notations_names(tmp_path, capsys):
    """The notes' pattern with its counts from the command line; the run records the net
    it built, the counts written in."""
    text = "INPUT 32x32x3 -> [[CONV 8 -> RELU]*N -> POOL?]*M -> FC 10"
    assert main(["summary", text, "--count", "N=2", "--count", "M=3", "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert sum(row["type"].startswith("Conv2d") for row in layers) == 6
    assert main(["summary", text]) == 1
    assert "--count N=2" in capsys.readouterr().err
    assert main(["summary", text, "--count", "N=2"]) == 1     # had said "names given: none"
    assert "--count: the text's count M has no value; names given: N=2" in (
        capsys.readouterr().err)
    assert main(["summary", "CONV 8 -> FC 2"]) == 1
    assert "(on the command line --input CxHxW)" in capsys.readouterr().err
    # every command that takes notation takes --count, as its errors say
    small = "INPUT 8x8x1 -> [CONV 4 -> RELU]*N -> FC 10"
    for argv in (["report", small, "--out", str(tmp_path / "r.html")],
                 ["show", "filters", small, "--out", str(tmp_path / "f.png")],
                 ["convert", small, str(tmp_path / "c.json")]):
        assert main(argv + ["--count", "N=2"]) == 0, argv
    children = json.loads((tmp_path / "c.json").read_text())["architecture"]["children"]
    assert [c["type"] for _, c in children].count("Conv2d") == 2
    assert main(["summary", text, "--count", "N=2", "--count", "K=1"]) == 1
    assert "has no count named K" in capsys.readouterr().err
    assert main(["summary", "vgg16", "--count", "N=2"]) == 1
    assert "--count binds the names of arrow notation, but MODEL is 'vgg16'" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(["summary", text, "--count", "N=two"])
    assert "--count: expected NAME=N" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["train", "--model", "INPUT 8x8x1 -> [CONV 8 -> RELU]*N -> FC 10", "--count",
                 "N=2", "--epochs", "1", "--limit", "100", "--quiet", "--no-report",
                 "--out", str(out)]) == 0
    from convnet.train.checkpoint import load_checkpoint
    config = load_checkpoint(out / "checkpoint.safetensors")[2]["config"]
    assert config["model"] == "INPUT 8x8x1 -> [CONV 8 -> RELU]*2 -> FC 10"


def test_a_model_file_whose_path_has_an_arrow_is_a_file_not_notation(tmp_path, capsys):
    """A run folder named 'a->b' had made its model file read as arrow notation:
    "unknown layer 'a'"."""
    out = tmp_path / "a->b"
    assert main(["train", "--model", "INPUT 8x8x1 -> FC 10", "--epochs", "1", "--quiet",
                 "--no-report", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["summary", str(out / "model.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_params"] == 650
    assert main(["eval", str(out / "model.json"), "--data", "digits"]) == 0
    assert capsys.readouterr().out.startswith("accuracy ")


def test_the_confusion_matrix_text_is_aligned_and_keeps_names():
    """Each row's counts sit under their column's index whatever the names' lengths (rows
    of 7- and 8-character names had been shifted), and names keep 16 characters (eval had
    cut "Ankle boot" to "Ankle bo")."""
    from convnet.cli import confusion_text
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Ankle boot", "a" * 20]
    confusion = np.arange(36).reshape(6, 6) * 37
    lines = confusion_text(confusion, classes).splitlines()
    assert len({len(line) for line in lines}) == 1
    header = lines[0]
    for i, line in enumerate(lines[1:]):
        assert line.startswith(f"{i} {classes[i][:16]}")
        for j, count in enumerate(confusion[i]):
            end = header.index(f" {j}") + len(f" {j}") if j < 10 else None
            assert line[:end].endswith(f" {count}"), (i, j, line)


def test_repeated_list_options_add_up():
    """--freeze 0-2 --freeze 15 had frozen stage 15 alone; report's --images likewise."""
    from convnet.cli import build_parser
    args = build_parser().parse_args(["train", "--freeze", "0-2", "--freeze", "15", "6"])
    assert args.freeze == ["0-2", "15", "6"]
    args = build_parser().parse_args(["report", "m.json", "--images", "a.png", "--images",
                                      "b.png"])
    assert args.images == ["a.png", "b.png"]


def test_an_unknown_option_points_to_its_commands_help(capsys):
    """It had pointed to 'convnet --help', which lists no command's options; summary's
    --batch takes train's spelling, --batch-size, too."""
    with pytest.raises(SystemExit):
        main(["summary", "vgg16", "--bogus", "3"])
    assert capsys.readouterr().err == ("convnet summary: error: unrecognized arguments: "
                                       "--bogus 3 (see 'convnet summary --help')\n")
    assert main(["summary", "lenet5", "--batch-size", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["batch_size"] == 64
