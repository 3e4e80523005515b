"""The command line with bad input: range checks at parse time, one line for any failure,
a quiet end in a closed pipe, run directories that are never overwritten silently, files
written with the user's umask, pictures of untrained weights that say so, and resumed
checkpoints whose every field is checked."""

import json
import os
import stat
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from convnet import limits
from convnet.cli import build_parser, main
from convnet.io import load_tensors, save_tensors
from convnet.train.checkpoint import KEY
from convnet.train.loop import RUN_FILES, TrainConfig, train

SMALL = "INPUT 8x8x1 -> CONV 4 -> RELU -> POOL -> FC 10"
QUIET = dict(log=lambda *a: None, progress=False)
BAD_INTS = ["0", "-3", "2.5", "abc", "", "1e3", "99999999999"]

# (command line before the option, option, values it refuses, a value it takes)
OPTIONS = [
    (["train"], "--epochs", BAD_INTS, "3"),
    (["train"], "--batch-size", BAD_INTS, "16"),
    (["train"], "--limit", BAD_INTS[:-1], "100"),
    (["train"], "--lr", ["0", "-1", "nan", "inf", "abc", "", "1_0e-3", "\u0661", " 1"],
     "0.01"),
    (["train"], "--weight-decay", ["-1", "nan", "inf", "x"], "0"),
    (["train"], "--val-fraction", ["0", "1", "-0.1", "1.5", "nan", "x"], "0.2"),
    (["train"], "--test-fraction", ["0", "1", "2", "nan"], "0.2"),
    (["train"], "--seed", ["-1", "x", "1.5", str(2**63)], "7"),
    (["train"], "--checkpoint-every", ["-1", "x", "0.5"], "0"),
    (["train"], "--image-size", ["0", "28x0", "x", "99999", "2x3x4"], "28x32"),
    (["train"], "--optimizer", ["adamax", "SGD", ""], "nesterov"),
    (["train"], "--schedule", ["linear", ""], "onecycle"),
    (["train"], "--label-smoothing", ["-0.1", "1", "2", "nan", "x"], "0.1"),
    (["train"], "--ema", ["-0.5", "1", "1.5", "inf"], "0.999"),
    (["train"], "--translate", ["-1", "2.5", "9999", "x"], "2"),
    (["train"], "--time-limit", ["0", "-5m", "10x", "m", "1e9h", "nan", "1_0m", "\u0661\u0660m"],
     "10m"),
    (["train"], "--conv-algorithm", ["winograd8x8", "", "IM2COL"], "winograd4x4"),
    (["summary", "lenet5"], "--batch", BAD_INTS[:-1], "8"),
    (["summary", "lenet5"], "--classes", BAD_INTS[:-1], "5"),
    (["summary", "lenet5"], "--input", ["32x32", "0x3x3", "3x-1x2", "abc",
                                        "3x100000x100000"], "1x32x32"),
    (["summary", "lenet5"], "--budget", ["lots", "-1GB", "4XB", "9" * 309 + "GB", "9" * 320],
     "4GB"),
    (["summary", "lenet5"], "--optimizer", ["adamax"], "adam"),
    (["predict", "m.json", "x.png"], "--top", ["0", "-2", "x"], "5"),
    (["eval", "m.json", "--data", "digits"], "--classes", ["0", "x"], "10"),
    (["convert", "a.pt", "b.json"], "--classes", ["0", "-5"], "10"),
]
CASES = [(head, option, bad) for head, option, bads, _ in OPTIONS for bad in bads]


@pytest.mark.parametrize("head, option, bad", CASES)
def test_a_bad_number_is_a_usage_error_at_parse_time(capsys, head, option, bad):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*head, f"{option}={bad}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"argument {option}" in err, err


@pytest.mark.parametrize("head, option, good", [(h, o, g) for h, o, _, g in OPTIONS])
def test_a_good_number_parses(head, option, good):
    args = build_parser().parse_args([*head, option, good])
    assert args.command == head[0]


# -- any failure: one line, exit 1; --debug shows the traceback --------------------------

def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import convnet.cli as cli

    def broken(args):
        raise KeyError("surprise")
    monkeypatch.setattr(cli, "cmd_zoo", broken)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_zoo(parser(), broken))
    assert main(["zoo"]) == 1
    err = capsys.readouterr().err
    assert err == "convnet zoo: error: KeyError: 'surprise' (run with --debug for the " \
                  "traceback)\n"
    with pytest.raises(KeyError):
        main(["zoo", "--debug"])


def _with_zoo(parser, func):
    parser._subparsers._group_actions[0].choices["zoo"].set_defaults(func=func)
    return parser


def test_memory_error_is_one_line(monkeypatch, capsys):
    import convnet.zoo as zoo

    def huge():
        raise MemoryError()
    monkeypatch.setattr(zoo, "listing", huge)
    assert main(["zoo"]) == 1
    err = capsys.readouterr().err
    assert "out of memory" in err and "--batch-size" not in err   # zoo has no such option


def test_memory_error_in_train_suggests_its_options(monkeypatch, capsys, tmp_path):
    from convnet.train import loop

    def huge(*args, **kwargs):
        raise MemoryError()
    monkeypatch.setattr(loop, "train", huge)
    assert main(["train", "--out", str(tmp_path / "run")]) == 1
    assert "try a smaller --batch-size or --image-size" in capsys.readouterr().err


def test_an_empty_model_is_named(capsys):
    assert main(["summary", " "]) == 1
    assert "the model is empty: give a zoo name" in capsys.readouterr().err


def test_a_closed_pipe_ends_quietly():
    proc = subprocess.run(f"{sys.executable} -m convnet.cli summary vgg16 | head -n 2",
                          shell=True, capture_output=True, text=True, timeout=120)
    assert proc.stdout.count("\n") == 2
    assert proc.stderr == ""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
@pytest.mark.parametrize("command", ["zoo", "summary vgg16 --json"])
def test_a_failed_write_to_standard_output_is_named(command):
    proc = subprocess.run(f"{sys.executable} -m convnet.cli {command} > /dev/full",
                          shell=True, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == (f"convnet {command.split()[0]}: error: [Errno 28] writing to "
                           f"standard output: No space left on device\n")


@pytest.mark.parametrize("argv, message", [
    (["summary", "{d}/x.pt", "--model", "lenet5"], "not a PyTorch checkpoint"),
    (["summary", "{d}/x.json"], "x.json"),
    (["summary", "{d}/x.onnx"], "x.onnx"),
    (["summary", "{d}/x.safetensors", "--model", "lenet5"], "x.safetensors"),
    (["eval", "{d}/x.json", "--data", "digits"], "x.json"),
    (["predict", "{d}/x.json", "{d}/x.png"], "x.json"),
    (["train", "--data", "{d}", "--out", "{d}-run"], "only one class folder"),
    (["train", "--out", "{d}/ckpt", "--resume"], "checkpoint.safetensors"),
    (["convert", "{d}/x.pt", "{d}/y.json", "--model", "lenet5"], "x.pt"),
    (["show", "filters", "{d}/x.json"], "x.json"),
])
def test_bad_files_on_the_command_line_are_one_line_without_traceback(tmp_path, argv, message):
    """Run as a user would, in a subprocess: stderr is one line, exit status 1."""
    for name in ("x.pt", "x.json", "x.onnx", "x.safetensors", "x.png"):
        (tmp_path / name).write_bytes(b"\x00garbage{[" * 7)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "checkpoint.safetensors").write_bytes(b"\xff" * 40)
    argv = [a.format(d=tmp_path) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "convnet.cli", *argv], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr


# -- run directories ----------------------------------------------------------------------

def test_runs_take_the_next_free_directory_and_resume_the_latest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = dict(data="digits", model=SMALL, epochs=1)
    first = train(TrainConfig(**cfg), **QUIET)
    second = train(TrainConfig(**cfg), **QUIET)
    assert first.model_path.parent == tmp_path / "runs" / "digits" or \
        str(first.model_path.parent) == "runs/digits"
    assert str(second.model_path.parent) == "runs/digits-2"
    lines = []
    train(TrainConfig(**cfg), resume=True, log=lines.append, progress=False)
    assert "runs/digits-2/checkpoint.safetensors" in "\n".join(lines)
    # options given to a resumed run that its own settings override are said, not dropped
    lines = []
    train(TrainConfig(**{**cfg, "lr": 0.5, "seed": 7}), resume=True, log=lines.append,
          progress=False)
    said = [line for line in lines if "ignored:" in line]
    assert len(said) == 1 and said[0].endswith("ignored: lr=0.5, seed=7"), lines
    # the latest is the run whose checkpoint was written last, not the highest number:
    # runs/digits emptied and taken again by a new run, which --resume then continues
    import shutil
    shutil.rmtree("runs/digits")
    train(TrainConfig(**cfg), **QUIET)
    lines = []
    train(TrainConfig(**cfg), resume=True, log=lines.append, progress=False)
    assert "resuming runs/digits/checkpoint.safetensors" in "\n".join(lines), lines
    # a folder without a checkpoint (emptied, or left by a run refused before its first)
    # never wins over one with a checkpoint, however new; equal times: the higher number
    import os
    shutil.rmtree("runs/digits")
    os.mkdir("runs/digits")
    lines = []
    train(TrainConfig(**cfg), resume=True, log=lines.append, progress=False)
    assert "resuming runs/digits-2/checkpoint.safetensors" in "\n".join(lines), lines
    shutil.copytree("runs/digits-2", "runs/digits-3", dirs_exist_ok=True)
    stamp = os.stat("runs/digits-2/checkpoint.safetensors").st_mtime_ns
    for run in ("runs/digits-2", "runs/digits-3"):
        os.utime(f"{run}/checkpoint.safetensors", ns=(stamp, stamp))
    lines = []
    train(TrainConfig(**cfg), resume=True, log=lines.append, progress=False)
    assert "resuming runs/digits-3/checkpoint.safetensors" in "\n".join(lines), lines


def test_a_directory_a_live_run_holds_is_refused_and_a_killed_runs_lock_is_taken(
        tmp_path, monkeypatch, capsys):
    """Two runs started close together had both written runs/digits (the directory was
    made only at the first checkpoint, an epoch later), each over the other's files; a
    --resume or --overwrite of a run in progress had raced it the same way. A run holds
    its directory with a kernel lock, which ends with the process however it ends."""
    import signal
    import socket

    from convnet.train.loop import LOCK
    monkeypatch.chdir(tmp_path)
    live = tmp_path / "runs" / "digits"
    holder = subprocess.Popen(   # another process holding runs/digits, as a run does
        [sys.executable, "-c", "import sys; from convnet.train.loop import RunLock\n"
         f"with RunLock({str(live)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    try:
        assert holder.stdout.readline() == "held\n"
        cfg = dict(data="digits", model=SMALL, epochs=1, limit=200)
        second = train(TrainConfig(**cfg), **QUIET)
        assert str(second.model_path.parent) == "runs/digits-2"
        assert sorted(p.name for p in live.iterdir()) == [LOCK]      # left alone
        assert not (tmp_path / "runs" / "digits-2" / LOCK).exists()  # released at the end
        for extra in ([], ["--overwrite"], ["--resume"]):
            assert main(["train", "--model", SMALL, "--epochs", "1", "--quiet", "--out",
                         str(live), *extra]) == 1
            err = capsys.readouterr().err
            assert f"{live}: a run is using it (pid {holder.pid} on " \
                   f"{socket.gethostname()}): wait for it to end" in err, err
        # runs started together: the free name chosen was taken meanwhile (lock_holder
        # saw no holder), and the run takes the next one, where it had failed
        import convnet.train.loop as loop
        monkeypatch.setattr(loop, "lock_holder", lambda out: None)
        third = train(TrainConfig(**cfg), **QUIET)
        assert str(third.model_path.parent) == "runs/digits-3"
        monkeypatch.undo()
        monkeypatch.chdir(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)           # killed: its LOCK file stays, held
        holder.wait()                                # by nothing
    assert (live / LOCK).exists()
    assert main(["train", "--model", SMALL, "--epochs", "1", "--limit", "200", "--quiet",
                 "--no-report", "--out", str(live)]) == 0
    assert (live / "model.json").exists() and not (live / LOCK).exists()


def test_a_lock_file_that_is_no_file_is_a_named_error(tmp_path, capsys):
    """A FIFO planted at the lock file had hung `convnet train` on opening it."""
    from convnet.train.loop import LOCK
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / LOCK)
    assert main(["train", "--model", SMALL, "--epochs", "1", "--out", str(out)]) == 1
    assert f"{out / LOCK}: the run's lock file cannot be made: not a regular file" in \
        capsys.readouterr().err


def test_ctrl_c_while_the_report_is_written_offers_no_resume(tmp_path, monkeypatch, capsys):
    """The run is done when the report is written: a Ctrl-C there had said to resume it."""
    import convnet.cli as cli

    def interrupted(args, result):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_train_report", interrupted)
    assert main(["train", "--model", SMALL, "--epochs", "1", "--limit", "200", "--quiet",
                 "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "convnet train: interrupted", err


def test_the_report_is_written_while_the_run_holds_its_directory(tmp_path, monkeypatch):
    """The command line's report.html had come after train() let the directory go: a
    second run could replace the model the report was being made of."""
    import convnet.cli as cli
    from convnet.train.loop import lock_holder
    seen, real = [], cli._train_report
    monkeypatch.setattr(cli, "_train_report", lambda args, result: seen.append(
        lock_holder(result.model_path.parent)) or real(args, result))
    assert main(["train", "--model", SMALL, "--epochs", "1", "--limit", "200", "--quiet",
                 "--out", str(tmp_path / "run")]) == 0
    assert len(seen) == 1 and seen[0].startswith(f"pid {os.getpid()} on ")
    assert (tmp_path / "run" / "report.html").exists()
    assert lock_holder(tmp_path / "run") is None


def test_an_overwrite_leaves_the_earlier_run_in_place_until_its_first_epoch_ends(
        tmp_path, monkeypatch, capsys):
    """The earlier run's files had been moved into a hidden .replaced-* folder before
    training began: under mpiexec, where another rank's failure ends rank 0 before it can
    put them back, the folder then looked empty to eval until a later run recovered
    them. Now they stay until the new run writes its first file."""
    import convnet.train.loop as loop
    from convnet.train.loop import LOCK
    out = tmp_path / "run"
    args = ["train", "--model", SMALL, "--epochs", "1", "--limit", "200", "--quiet",
            "--no-report", "--out", str(out)]
    assert main(args) == 0
    held = {p.name: p.read_bytes() for p in out.iterdir()}
    seen, real = [], loop.softmax_cross_entropy

    def interrupted(*a, **k):
        seen.append(sorted(p.name for p in out.iterdir()))
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(loop, "softmax_cross_entropy", interrupted)
    capsys.readouterr()
    assert main(args + ["--overwrite", "--seed", "1"]) == 130
    assert seen[-1] == sorted([*held, LOCK])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == held
    assert f"the new run had written no checkpoint yet: {out} holds the earlier run again, " \
           f"as it was" in capsys.readouterr().err


def test_a_checkpoint_given_as_weights_says_what_to_give(tmp_path, capsys):
    """A run's checkpoint.safetensors given as weights had failed on a list of missing
    and unexpected keys (model.*, optim.*, ema.*)."""
    out = tmp_path / "run"
    assert main(["train", "--model", SMALL, "--epochs", "1", "--limit", "200", "--quiet",
                 "--no-report", "--out", str(out)]) == 0
    ckpt = str(out / "checkpoint.safetensors")
    for argv in (["eval", ckpt, "--model", SMALL, "--data", "digits"],
                 ["summary", ckpt, "--model", SMALL],
                 ["train", "--from", ckpt, "--model", SMALL, "--out", str(tmp_path / "b")],
                 # without --model: said first (it had said to give --model)
                 ["summary", ckpt], ["eval", ckpt, "--data", "digits"],
                 ["train", "--from", ckpt, "--out", str(tmp_path / "b")]):
        capsys.readouterr()
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"{ckpt}: a training run's checkpoint, not a model's weights: give the run's " \
               f"model, {out / 'model.json'} or {out / 'best.json'}, or continue" in err, err
    # a run that stopped early: only the files it has are named (it had named model.json)
    for name in ("model.json", "model.safetensors", "history.json"):
        (out / name).unlink()
    for spec, says in ((ckpt, f"{ckpt}: a training run's checkpoint, not a model's "
                              f"weights: give the run's model, {out / 'best.json'}, or "),
                       (str(out), f"{out}: a training run's folder without its final model "
                                  f"(a run that stopped early?): give the run's model, "
                                  f"{out / 'best.json'}, or continue the run with convnet "
                                  f"train --resume --out {out}"),
                       (str(out / "model.json"), f"{out / 'model.json'}: no such model file "
                                                 f"(the run stopped before writing it? "
                                                 f"{out / 'best.json'} is the best model it "
                                                 f"kept)")):
        assert main(["summary", spec]) == 1
        assert says in capsys.readouterr().err
    for name in ("best.json", "best.safetensors"):
        (out / name).unlink()
    assert main(["summary", str(out)]) == 1
    assert "it has no model file yet; continue the run with convnet train --resume" in \
        capsys.readouterr().err
    assert main(["summary", str(out / "model.json")]) == 1
    assert (f"model.json: no such model file (the run stopped before writing it? continue "
            f"it with convnet train --resume --out {out})") in capsys.readouterr().err


def test_a_run_that_fails_its_checks_leaves_no_directory(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    assert main(["train", "--model", SMALL, "--data", str(tmp_path / "missing"), "--out",
                 str(out)]) == 1
    assert not (tmp_path / "new").exists()


def test_an_existing_run_is_never_overwritten_silently(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", SMALL, "--epochs", "1", "--quiet", "--out", str(out)]
    assert main(args) == 0
    before = (out / "model.safetensors").read_bytes()
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(args + ["--seed", "3"]) == 1
    err = capsys.readouterr().err
    assert "already holds files" in err and "--resume" in err and "--overwrite" in err
    assert (out / "model.safetensors").read_bytes() == before
    # --overwrite with bad input fails before it removes anything of the earlier run
    held = {p.name: p.read_bytes() for p in out.iterdir()}
    for bad in (["--data", str(tmp_path / "missing")], ["--from", str(tmp_path / "no.json")],
                ["--model", "INPUT 8x8x1 -> FC 3"]):
        assert main(args + ["--seed", "3", "--overwrite", *bad]) == 1
        assert {p.name: p.read_bytes() for p in out.iterdir()} == held, bad
    # ... and so does a run that fails in training before its first checkpoint (the
    # earlier run had been deleted before training began)
    assert main(args + ["--seed", "3", "--overwrite", "--optimizer", "sgd", "--lr",
                        "1e30"]) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == held
    capsys.readouterr()
    assert main(args + ["--seed", "3", "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() != before
    assert (out / "notes.txt").read_text() == "mine"        # not ours: left alone
    assert {p.name for p in out.iterdir()} == set(RUN_FILES) | {"notes.txt"}
    # --resume and --overwrite contradict each other: refused, the run left as it was
    held = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(args + ["--resume", "--overwrite"])
    assert exit_.value.code == 2
    assert "--overwrite: not allowed with argument --resume" in capsys.readouterr().err
    with pytest.raises(ValueError, match="resume=True .* overwrite=True"):
        train(TrainConfig(model=SMALL, epochs=1, out=str(out)), resume=True, overwrite=True,
              progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == held


def test_files_are_written_with_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        train(TrainConfig(data="digits", model=SMALL, epochs=1, out=str(tmp_path / "r")),
              **QUIET)
    finally:
        os.umask(old)
    for path in (tmp_path / "r").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# -- pictures -----------------------------------------------------------------------------

def test_pictures_of_untrained_weights_say_so(tmp_path, capsys, monkeypatch):
    import convnet.plot as plot
    titles = []
    original = plot.plot_filters

    def spy(model, path, **kwargs):
        titles.append(kwargs.get("title"))
        return original(model, path, **kwargs)
    monkeypatch.setattr(plot, "plot_filters", spy)
    assert main(["show", "filters", "alexnet", "--out", str(tmp_path / "a.png")]) == 0
    assert "untrained (random initial weights" in titles[-1]
    assert "random initial weights" in capsys.readouterr().err
    run = train(TrainConfig(data="digits", model=SMALL, epochs=1, out=str(tmp_path / "r")),
                **QUIET)
    assert main(["show", "filters", str(run.model_path), "--out", str(tmp_path / "b.png")]) == 0
    assert titles[-1] is None
    from PIL import Image
    untitled = Image.open(tmp_path / "b.png").size
    plot.plot_filters(run.model, tmp_path / "c.png", title="untrained")
    assert Image.open(tmp_path / "c.png").size[1] > untitled[1]


# -- resumed checkpoints: every field checked ---------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-epoch run (with dropout), whose checkpoint a resume only finishes."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    model = "INPUT 8x8x1 -> CONV 4 -> RELU -> POOL -> FC 16 -> DROPOUT 0.2 -> FC 10"
    train(TrainConfig(data="digits", model=model, epochs=1, out=str(out)), **QUIET)
    tensors, metadata = load_tensors(out / "checkpoint.safetensors")
    return tensors, json.loads(metadata[KEY])


JUNK = [None, 5, -1, "x", [], {}, True, 1e308, [1, 2]]
STATE_FIELDS = ["config", "architecture", "optimizer", "schedule", "epoch", "batch",
                "history", "best", "sums", "dropout_rng"]
CONFIG_BAD = {"epochs": [0, -1, "3", 2.5, 10**9], "batch_size": [0, "8", 1e9],
              "image_size": [[2**20, 2**20], [0, 8], "8x8", [8]], "seed": [-1, "0"],
              "optimizer": ["adamax", 3], "lr": [-1, "fast", 0], "val_fraction": [0, 1, 7],
              "data": [5, None], "freeze": ["features", [3]], "dtype": ["float16", 1],
              "schedule": ["none+"], "unknown_field": [1], "augment": ["yes"],
              "channels": [2, "RGB"]}


def mutations(state):
    """(name, mutated state) for every field of a checkpoint's JSON: dropped or mistyped."""
    for field in STATE_FIELDS:
        dropped = dict(state)
        del dropped[field]
        yield f"no {field}", dropped
        for value in JUNK:
            if field == "config" and value is None:
                continue
            yield f"{field}={value!r:.20}", {**state, field: value}
    for key, values in CONFIG_BAD.items():
        for value in values:
            yield f"config.{key}={value!r:.20}", {**state, "config": {**state["config"],
                                                                      key: value}}
    yield "epoch past the end", {**state, "epoch": 5}
    yield "history too short", {**state, "history": []}
    yield "optimizer steps", {**state, "optimizer": {**state["optimizer"], "steps": 5}}
    yield "optimizer type", {**state, "optimizer": {**state["optimizer"], "type": "Adam2"}}
    yield "schedule lr", {**state, "schedule": {**state["schedule"], "base_lr": "x"}}
    rng = state["dropout_rng"]
    name = next(iter(rng))
    yield "rng kind", {**state, "dropout_rng": {name: {**rng[name], "bit_generator": "MT"}}}
    yield "rng state", {**state, "dropout_rng": {name: {**rng[name], "state": "x"}}}
    yield "rng name", {**state, "dropout_rng": {"other": rng[name]}}
    yield "architecture type", {**state, "architecture": {"type": "Nothing"}}
    # counts that had ended in a ZeroDivisionError, or passed: seen < 0, a fraction
    yield "sums seen", {**state, "sums": {**state["sums"], "seen": -32}}
    yield "sums correct", {**state, "sums": {**state["sums"], "correct": 1}}  # of 0 seen
    yield "best epoch", {**state, "best": {**state["best"], "epoch": 1.5}}
    yield "best epoch late", {**state, "best": {**state["best"], "epoch": 7}}


def test_every_damaged_checkpoint_field_is_a_named_error(finished_run, tmp_path):
    tensors, state = finished_run
    count = 0
    for i, (what, damaged) in enumerate(mutations(state)):
        out = tmp_path / str(i)
        save_tensors(tensors, out / "checkpoint.safetensors",
                     metadata={KEY: json.dumps(damaged)})
        with pytest.raises(ValueError, match=str(out)) as info:
            train(TrainConfig(out=str(out)), resume=True, **QUIET)
        assert not isinstance(info.value, (KeyError, TypeError)), what
        count += 1
    assert count > 120


@pytest.mark.parametrize("what", ["drop a weight", "relabel a weight", "drop optimizer state",
                                  "metadata not JSON", "metadata a list", "deep metadata",
                                  "metadata of too many values", "nan weight",
                                  "nan optimizer state"])
def test_damaged_checkpoint_arrays_and_metadata_are_named_errors(finished_run, tmp_path, what):
    tensors, state = dict(finished_run[0]), finished_run[1]
    text = json.dumps(state)
    key = next(k for k in tensors if k.startswith("model.") and k.endswith("weight"))
    if what == "drop a weight":
        del tensors[key]
    elif what == "relabel a weight":
        tensors[key] = tensors[key].view(np.int32)
    elif what == "drop optimizer state":
        tensors = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
    elif what.startswith("nan"):       # had resumed, then blamed the learning rate
        key = key if what == "nan weight" else next(k for k in tensors if "optim." in k)
        tensors[key] = np.where(np.arange(tensors[key].size).reshape(tensors[key].shape)
                                == 0, np.nan, tensors[key]).astype(tensors[key].dtype)
    elif what == "metadata not JSON":
        text = text[:-10]
    elif what == "metadata a list":
        text = "[1, 2]"
    elif what == "metadata of too many values":
        text = json.dumps(state)[:-1] + ', "x": [' + "[]," * 1_100_000 + "[]]}"
    else:
        text = "[" * 100_000 + "]" * 100_000
    save_tensors(tensors, tmp_path / "checkpoint.safetensors", metadata={KEY: text})
    with pytest.raises(ValueError, match=str(tmp_path / "checkpoint.safetensors")) as info:
        train(TrainConfig(out=str(tmp_path)), resume=True, **QUIET)
    assert what != "metadata of too many values" or "MAX_JSON_VALUES" in str(info.value)
    assert not what.startswith("nan") or "holds NaN or infinite values" in str(info.value)


@pytest.mark.parametrize("extra, message", [
    ("model.zz_extra", "unexpected keys"), ("optim.m.zz", "'optim.m.zz' of shape"),
    ("ema.0.weight", "'ema.0.weight' of shape"), ("other.x", "'other.x' of shape")])
def test_a_checkpoint_tensor_that_fits_no_place_is_refused_before_it_is_read(
        finished_run, tmp_path, extra, message):
    """A checkpoint's tensors had all been read (and checksummed) before any was
    checked: an extra tensor of 1 GiB took 2.1 GB to refuse. Its header is checked
    against the model its metadata names first."""
    tensors, state = dict(finished_run[0]), finished_run[1]
    tensors[extra] = np.ones(8 << 20, np.float32)                # 32 MB
    message = f"damaged checkpoint, or one edited: its tensors do not fit .*{message}"
    save_tensors(tensors, tmp_path / "checkpoint.safetensors",
                 metadata={KEY: json.dumps(state)})
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=message) as info:
            train(TrainConfig(out=str(tmp_path)), resume=True, **QUIET)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(tmp_path / "checkpoint.safetensors") in str(info.value)
    assert peak < 16 << 20, peak


def test_a_checkpoint_architecture_larger_than_its_weights_is_refused_before_building(
        finished_run, tmp_path):
    tensors, state = finished_run
    architecture = json.loads(json.dumps(state["architecture"]))
    fc = architecture["children"][-1][1]
    assert fc["type"] == "Linear"
    fc["out_features"] = 50_000_000            # 800 MB of weights the file does not hold
    save_tensors(tensors, tmp_path / "checkpoint.safetensors",
                 metadata={KEY: json.dumps({**state, "architecture": architecture})})
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="model tensors") as info:
            train(TrainConfig(out=str(tmp_path)), resume=True, **QUIET)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(tmp_path) in str(info.value) and peak < 100 << 20, (peak, info.value)


def test_the_undamaged_checkpoint_resumes(finished_run, tmp_path):
    tensors, state = finished_run
    save_tensors(tensors, tmp_path / "checkpoint.safetensors", metadata={KEY: json.dumps(state)})
    result = train(TrainConfig(out=str(tmp_path)), resume=True, **QUIET)
    assert result.test_acc > 0.1 and len(result.history) == 1


@pytest.mark.parametrize("text, seconds", [("10m", 600), ("90s", 90), ("1h", 3600),
                                           ("600", 600), ("2.5m", 150), (" 10M ", 600)])
def test_time_limit_reads_minutes_seconds_and_hours(text, seconds):
    assert build_parser().parse_args(["train", "--time-limit", text]).time_limit == seconds


def test_an_fc_only_net_trains_and_ends_without_a_filters_picture(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "INPUT 8x8x1 -> FC 10", "--epochs", "1", "--quiet",
                 "--out", str(out), "--no-report"]) == 0
    assert (out / "model.json").is_file() and (out / "curve.png").is_file()
    assert not (out / "filters.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["report", "lenet5", "--out", "{d}/model.json"], "the report is an HTML page"),
    (["show", "filters", "lenet5", "--out", "{d}/model.json"], "expected a picture file"),
    (["show", "filters", "lenet5", "--out", "{d}/picture"], "expected a picture file"),
])
def test_report_and_show_write_only_their_own_kind_of_file(tmp_path, capsys, argv, message):
    (tmp_path / "model.json").write_text("{}")
    assert main([a.format(d=tmp_path) for a in argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert (tmp_path / "model.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]


@pytest.mark.parametrize("memory, message", [
    (1 << 20, "for the data set as floats (1,438 training images at 1x8x8)"),
    (3 << 20, "for the data and a batch of 32 with its activations"),
])
def test_a_run_too_large_for_the_machine_is_refused_before_it_starts(
        tmp_path, capsys, monkeypatch, memory, message):
    # A large --image-size had run until the OS killed the process, with no message.
    monkeypatch.setattr(limits, "machine_memory", lambda: memory)
    assert main(["train", "--out", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert message in err and "more than this machine's" in err and "--image-size" in err
    # the data set's floats do not depend on the batch: it is not offered
    assert ("--batch-size" in err) == ("batch" in message), err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_the_memory_check_counts_every_process_on_the_machine(tmp_path, monkeypatch):
    """Under mpiexec each rank holds the data and its share of the batch: two ranks on a
    machine need twice what one does, which each had checked alone."""
    from convnet.train.distributed import Communicator
    from convnet.train.loop import TrainConfig, train
    with pytest.raises(ValueError, match=r"^training needs at least 1.00 KB of memory for "
                       r"the data in each of the 3 processes on this machine, 3.00 KB in "
                       r"all, more than this machine's 2.00 KB: smaller"):
        monkeypatch.setattr(limits, "machine_memory", lambda: 2048)
        limits.check_memory(1024, "training", "the data", "smaller", processes=3)
    limits.check_memory(1024, "training", "the data", "smaller", processes=2)
    monkeypatch.undo()
    checked = []
    real = limits.check_memory

    def check(need, task, what, hint, processes=1):
        checked.append((what, processes))
        return real(need, task, what, hint, processes)
    monkeypatch.setattr(limits, "check_memory", check)

    class TwoHere(Communicator):
        local_size = 2
    train(TrainConfig(data="digits", epochs=1, limit=64, out=str(tmp_path)),
          log=lambda *a: None, comm=TwoHere())
    assert [p for _, p in checked] == [2, 2] and "a batch of 32 with" in checked[1][0]


def test_evaluating_at_a_models_large_input_is_refused_before_the_floats(
        tmp_path, capsys, monkeypatch):
    """A model file's input_shape sets the size eval resizes the data to: at 1x1000x1000
    the digits (1.8 GB as bytes) were made floats until the OS killed the process at
    24 GB. The model has no recorded statistics, so eval fits them on the training
    images as floats: at 1x600x600 about 2.8 GB, refused on a machine taken to have
    2 GiB."""
    monkeypatch.setattr(limits, "machine_memory", lambda: 2 << 30)
    from convnet.io import save_model
    from convnet.models import from_notation
    model = from_notation("INPUT 600x600x1 -> POOL F600 -> FC 10",
                          rng=np.random.default_rng(0))
    model.input_shape = (1, 600, 600)
    path = save_model(model, tmp_path / "model")
    started = time.perf_counter()
    tracemalloc.start()
    try:
        assert main(["eval", str(path), "--data", "digits"]) == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err
    assert "evaluating needs at least" in err and "1x600x600, the model's input" in err, err
    assert "more than this machine's" in err and "Traceback" not in err
    assert peak < 0.8e9 and time.perf_counter() - started < 60


def test_inference_batches_are_sized_to_the_models_input():
    from convnet.models import from_notation
    from convnet.train import inference
    small = from_notation("INPUT 8x8x1 -> CONV 16 -> FC 10")
    assert inference.inference_batch(small, (1, 8, 8)) == 256
    # 64 x 224 x 224 float32 out of a 3 x 224 x 224 input: 13.4 MB live per image
    large = from_notation("INPUT 224x224x3 -> CONV 64 -> POOL F224 -> FC 10")
    per_image = (3 + 64) * 224 * 224 * 4
    assert inference.inference_batch(large, (3, 224, 224)) == (1 << 30) // per_image == 79
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    idx, probs = inference.top_k(small, x, 3, batch_size=2)
    whole = inference.top_k(small, x, 3, batch_size=5)
    np.testing.assert_array_equal(idx, whole[0])
    np.testing.assert_allclose(probs, whole[1], rtol=1e-6)
    assert idx.shape == probs.shape == (5, 3)
    assert inference.top_k(small, x[:0], 3)[0].shape == (0, 3)


def test_classes_is_checked_alike_for_every_kind_of_model(tmp_path, capsys):
    """--classes sets a zoo model's classes; for notation, a model file and an ONNX file
    it must match the scores the model gives (it had been ignored for the first two and
    refused even when it matched for ONNX)."""
    from convnet.io import save_model
    from convnet.io.onnx_export import export_onnx
    from convnet.models import from_notation
    text = "INPUT 8x8x1 -> CONV 4 -> RELU -> POOL -> FC 10"
    model = from_notation(text, rng=np.random.default_rng(0))
    json_path = save_model(model, tmp_path / "model")
    export_onnx(model, tmp_path / "model.onnx")
    for spec in (text, str(json_path), str(tmp_path / "model.onnx")):
        assert main(["summary", spec, "--classes", "10"]) == 0, spec
        capsys.readouterr()
        assert main(["summary", spec, "--classes", "3"]) == 1, spec
        err = capsys.readouterr().err
        assert f"{spec} gives 10 scores per image, not the --classes 3" in err, err
    bare = from_notation("INPUT 64 -> FC 10", rng=np.random.default_rng(0))
    bare.input_shape = None                   # a model file without an input size
    bare_path = str(save_model(bare, tmp_path / "bare"))
    assert main(["convert", bare_path, str(tmp_path / "b.json"), "--classes", "10"]) == 0
    assert main(["convert", bare_path, str(tmp_path / "b2.json"), "--classes", "3"]) == 1
    assert f"{bare_path} gives 10 scores per image" in capsys.readouterr().err
    onnx, out = str(tmp_path / "model.onnx"), str(tmp_path / "c.json")
    assert main(["convert", onnx, out, "--classes", "3"]) == 1
    assert f"{onnx} gives 10 scores per image" in capsys.readouterr().err
    assert main(["convert", onnx, out, "--classes", "10"]) == 0
    from convnet.spec import resolve_model
    zoo = resolve_model("lenet5", num_classes=3)
    assert zoo.output_shape(zoo.input_shape) == (3,)


@pytest.mark.parametrize("input_shape", [None, (64,)])
@pytest.mark.parametrize("command", ["predict", "eval", "show"])
def test_a_model_without_an_image_input_is_named_by_the_image_commands(
        tmp_path, capsys, input_shape, command):
    from PIL import Image

    from convnet.io import save_model
    from convnet.models import from_notation
    model = from_notation("INPUT 64 -> FC 10", rng=np.random.default_rng(0))
    model.input_shape = input_shape
    path = save_model(model, tmp_path / "model")
    Image.new("L", (8, 8)).save(tmp_path / "x.png")
    argv = {"predict": ["predict", str(path), str(tmp_path / "x.png")],
            "eval": ["eval", str(path), "--data", "digits"],
            "show": ["show", "activations", str(path), str(tmp_path / "x.png"),
                     "--out", str(tmp_path / "a.png")]}[command]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"{path}: {argv[0]} needs a model whose input is an image (C, H, W)" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["predict", "eval", "show", "report"])
def test_image_commands_refuse_other_channel_counts_and_score_maps(tmp_path, capsys,
                                                                    command):
    """A model of 4 input channels had got a NumPy broadcast error from predict; a net
    converted to CONV (scores as a K x 1 x 1 map) a TypeError, and eval an error about
    the loss's shapes. A 1 x 1 map is taken as the scores; a larger map and 4 channels
    are refused, naming the file."""
    from PIL import Image

    from convnet.io import save_model
    from convnet.models import fc_to_conv, from_notation
    Image.new("L", (8, 8), 100).save(tmp_path / "x.png")

    def argv(path):
        return {"predict": ["predict", str(path), str(tmp_path / "x.png")],
                "eval": ["eval", str(path), "--data", "digits"],
                "show": ["show", "activations", str(path), str(tmp_path / "x.png"),
                         "--out", str(tmp_path / "a.png"), "--overwrite"],
                "report": ["report", str(path), "--images", str(tmp_path / "x.png"),
                           "--out", str(tmp_path / "r.html"), "--overwrite"]}[command]

    four = save_model(from_notation("INPUT 8x8x4 -> CONV 4 -> FC 10"), tmp_path / "four")
    assert main(argv(four)) == 1
    err = capsys.readouterr().err
    assert f"{four}: " in err and "needs a model of 1 or 3 input channels (images are " \
        "read as grayscale or RGB); this one takes 4" in err, err
    net = from_notation("INPUT 8x8x1 -> CONV 4 -> RELU -> FC 10", rng=np.random.default_rng(0))
    net.trained = True
    fc = save_model(net, tmp_path / "fc")
    conv = save_model(fc_to_conv(net, (1, 8, 8)), tmp_path / "conv")
    if command == "report":                   # its samples' predictions, from the map
        assert main(argv(conv)) == 0
        assert "predicted: " in (tmp_path / "r.html").read_text()
    if command in ("predict", "eval"):        # the same scores, as a 1 x 1 map
        assert main(argv(fc)) == 0
        first = capsys.readouterr().out.replace(str(fc), "M")
        assert main(argv(conv)) == 0
        assert capsys.readouterr().out.replace(str(conv), "M") == first
        slid = fc_to_conv(net, (1, 8, 8))
        slid.input_shape = (1, 9, 9)                                # gives a 2 x 2 map
        wide = save_model(slid, tmp_path / "wide")
        assert main(argv(wide)) == 1
        assert f"{wide}: {command} needs a score per class; the model gives 2x2x10 per " \
               f"image" in capsys.readouterr().err


def test_an_unwritable_run_directory_is_named_before_training(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    started = time.perf_counter()
    assert main(["train", "--model", SMALL, "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "afile" / "run")]) == 1
    err = capsys.readouterr().err
    assert "afile/run: the run directory (--out) cannot be made" in err, err
    assert "afile is a file" in err
    assert time.perf_counter() - started < 5 and (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize("argv, message", [
    (["train", "--freeze", "0-3"], "freeze (--freeze) keeps stages of the model that "
                                   "init_from (--from) starts from"),
    (["train", "--count", "N=2"], "--count binds the names of arrow notation: give the "
                                  "notation with --model"),
    (["summary", "INPUT 8x8x1 -> FC 2*N", "--count", "M=1"],
     "--count: the text has no count named M; its names: N"),
    (["train", "--data", "{file}"], "{file} is a file: expected a data set name"),
])
def test_options_that_cannot_apply_are_named(tmp_path, capsys, argv, message):
    """--freeze without --from had frozen random layers; the other messages had shown
    internal names (--model is None, bind_counts:, load_dataset's unknown data set)."""
    file = tmp_path / "notes.txt"
    file.write_text("not a data set")
    argv = [arg.format(file=file) for arg in argv]
    message = message.format(file=file)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_a_net_built_for_another_size_names_the_options_that_fit_the_data(tmp_path, capsys):
    """A zoo net or notation whose own input differs from the data's: the size error
    says both volumes and the options that bring the data to the net's (it had named a
    layer's filter and a 2-pixel plane only); --channels reads the images in the net's
    channels."""
    assert main(["train", "--model", "lenet5", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert ("the data's images are 8x8x1 and lenet5 is built for 32x32x1: --image-size "
            "32x32 brings them to it") in err
    # train has no --input: the first line had named it
    assert "and the data's volume 1x8x8 does not fit it" in err and "--input" not in err
    assert main(["train", "--model", "INPUT 16x16x3 -> CONV 4 -> POOL -> FC 10",
                 "--epochs", "1"]) == 1
    assert "--image-size 16x16 --channels 3 brings them to it" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["train", "--model", "INPUT 16x16x3 -> CONV 4 -> POOL -> FC 10",
                 "--image-size", "16x16", "--channels", "3", "--epochs", "1", "--limit",
                 "120", "--quiet", "--no-report", "--out", str(out)]) == 0
    saved = json.loads((out / "model.json").read_text())
    assert saved["input_shape"] == [3, 16, 16] and saved["info"]["channels"] == "RGB"


def test_an_interrupted_run_says_how_to_continue(tmp_path, capsys, monkeypatch):
    """Ctrl-C during train names the run directory and the command that continues it
    (it had said only "interrupted"), or that no checkpoint was written yet."""
    import convnet.train.loop as loop
    real = loop.softmax_cross_entropy
    for stop_at, expected in ((3, "has no checkpoint yet"),
                              (45, "continue the run with: convnet train --resume --out")):
        calls = []

        def interrupted(*args, stop_at=stop_at, calls=calls):
            calls.append(1)
            if len(calls) == stop_at:
                raise KeyboardInterrupt
            return real(*args)
        monkeypatch.setattr(loop, "softmax_cross_entropy", interrupted)
        out = tmp_path / f"run{stop_at}"
        assert main(["train", "--epochs", "3", "--quiet", "--no-report", "--batch-size",
                     "64", "--out", str(out)]) == 130
        err = capsys.readouterr().err
        assert err.startswith("convnet train: interrupted; ") and expected in err, err
        assert str(out) in err
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--no-report"]) == 0


def test_the_resume_hint_keeps_mpiexec_and_quotes_the_folder(tmp_path, monkeypatch):
    """Under mpiexec the hint had said plain "convnet train --resume", which continues on
    one process (not bit for bit); a folder with a space had come out unquoted."""
    from convnet.cli import _resume_hint
    out = tmp_path / "my run"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(b"")
    interrupt = KeyboardInterrupt()
    interrupt.run_directory = out
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_RANK",
                 "PMIX_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert f"with: convnet train --resume --out '{out}' (" in _resume_hint(interrupt)
    monkeypatch.setenv("PMI_SIZE", "4")
    assert f"with: mpiexec -n 4 convnet train --resume --out '{out}' (" in _resume_hint(
        interrupt)


def test_a_file_is_not_written_into_a_folder_that_does_not_exist(tmp_path, capsys):
    """convert, report and show write into an existing folder only: a typo in the path
    had become a tree of new folders (convert had made /nonexistent/dir at the root)."""
    from convnet.io import save_model
    from convnet.models import from_notation
    model = save_model(from_notation("INPUT 8x8x1 -> FC 10"), tmp_path / "m")
    missing = tmp_path / "no" / "such"
    for argv in (["convert", str(model), str(missing / "m.onnx")],
                 ["report", str(model), "--out", str(missing / "r.html")],
                 ["show", "filters", "lenet5", "--out", str(missing / "f.png")]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"the directory {missing} does not exist" in err, err
    assert not (tmp_path / "no").exists()


def test_fixes_from_the_review_of_the_days_changes(tmp_path, capsys, monkeypatch):
    """--seed takes its 19-digit maximum; --count binds --model's notation for a weights
    file; a path with a literal ~ is refused (its writer would make ./~); --channels and
    --budget take ASCII digits only, --budget up to EB; a run of old with --freeze and no
    --from is a config that still reads (so it can resume)."""
    from convnet.cli import build_parser
    from convnet.train.loop import TrainConfig
    assert build_parser().parse_args(["train", "--seed", str(2**63 - 1)]).seed == 2**63 - 1
    from convnet.io import save_tensors
    from convnet.models import from_notation
    text = "INPUT 8x8x1 -> [CONV 4 -> RELU]*N -> FC 3"
    weights = tmp_path / "n.safetensors"
    save_tensors(from_notation(text, N=2).state_dict(), weights)
    capsys.readouterr()
    assert main(["summary", str(weights), "--model", text, "--count", "N=2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_params"] > 0
    monkeypatch.chdir(tmp_path)
    assert main(["show", "filters", "lenet5", "--out", "~/f.png"]) == 1
    assert "the directory ~ does not exist" in capsys.readouterr().err
    assert not (tmp_path / "~").exists()
    for argv in (["train", "--channels", "\uff13"], ["summary", "lenet5", "--budget", "\uff14GB"]):
        with pytest.raises(SystemExit):
            main(argv)
        capsys.readouterr()
    assert build_parser().parse_args(["summary", "x", "--budget", "2PB"]).budget == 2 << 50
    import dataclasses
    old = {**dataclasses.asdict(TrainConfig()), "freeze": ["0"]}        # as saved
    config = TrainConfig.from_dict(old, "checkpoint")
    assert config.freeze == ("0",) and config.init_from is None


def test_a_run_is_never_written_into_its_data_folder(tmp_path, capsys, monkeypatch):
    """--data . had written runs/ into the image folder (a third class on the next run),
    and --data .. into the class folder the command ran in."""
    from PIL import Image
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((8, 8), 10 * i + 100 * (name == "a"), np.uint8)).save(
                tmp_path / "data" / name / f"{i}.png")
    held = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for cwd, data, out in (("data", ".", None), ("data/a", "..", None),
                           (".", "data", "data/b/run")):
        monkeypatch.chdir(tmp_path / cwd)
        argv = ["train", "--data", data, "--epochs", "1", "--quiet", "--no-report"]
        assert main(argv + (["--out", out] if out else [])) == 1
        assert "the run directory is inside the data folder" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == held
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "data", "--epochs", "1", "--quiet", "--no-report"]) == 0
    assert (tmp_path / "runs" / "data" / "model.json").exists()


def test_odd_arguments_get_one_short_clear_line(tmp_path, capsys):
    """From a fuzzing of the command line: a split leaving no training images had ended in
    a ZeroDivisionError, --from "" trained from scratch, show --out "" wrote filters.png,
    a 100,000-character model name was echoed whole, and control characters in a file or
    folder name reached the terminal raw."""
    cases = [
        (["train", "--epochs", "1", "--limit", "100", "--val-fraction", "0.99", "--out",
          str(tmp_path / "a")], "are all held out for validation, none left to train on"),
        (["train", "--from", "", "--epochs", "1", "--out", str(tmp_path / "b")],
         "init_from must be a non-empty string or null, got ''"),
        (["show", "filters", "lenet5", "--out", ""], "expected a picture file name"),
        (["summary", "a" * 100_000], "), not a file, and not arrow notation"),
        (["summary", "b" * 300], "), not a file, and not arrow notation"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert message in err and len(err) < 2_000 and "Traceback" not in err, err[:300]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not os.path.exists("filters.png")
    from convnet.cli import _one_line
    line = _one_line(ValueError("start " + "x" * 5000 + " end"))
    assert line.startswith("start ") and line.endswith(" end") and len(line) < 1_100
    assert "... (4,010 characters left out) ..." in line
    from PIL import Image
    for name in ("a", "b\x1b[31m"):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "data" / name / "0.png")
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "/b\\x1b[31m': a class folder's name must be printable" in err
    from convnet.io import save_model
    from convnet.models import from_notation
    model = save_model(from_notation("INPUT 8x8x1 -> FC 3"), tmp_path / "m")
    odd = tmp_path / "x\x1b[2J.png"
    Image.new("L", (8, 8)).save(odd)
    assert main(["predict", str(model), str(odd)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.startswith(repr(str(odd)) + ": ")
    odd = tmp_path / "y\nconvnet predict: all good\x1b[2K.png"     # converted: a note names it
    Image.new("RGB", (10, 10)).save(odd, format="PNG")
    assert main(["predict", str(model), str(odd)]) == 0
    err = capsys.readouterr().err
    assert "10x10" in err and "\x1b" not in err and "\nconvnet predict: all" not in err, err


def test_a_model_path_that_is_no_regular_file_says_what_it_is(tmp_path, capsys):
    """A folder, a FIFO or a looping link given as a model had been "no such model file";
    an empty .onnx had been "a convnet model has one input; the graph has 0"."""
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "dir.onnx").mkdir()
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "loop.pt").symlink_to(tmp_path / "loop.pt")
    (tmp_path / "empty.onnx").write_bytes(b"")
    for argv, message in ((["dir.json"], "dir.json: a folder, not a model file"),
                          (["dir.onnx"], "dir.onnx: a folder, not an ONNX file"),
                          (["fifo.json"], "fifo.json: not a regular file (a FIFO, socket or "
                                          "device), not a model file"),
                          (["loop.pt", "--model", "lenet5"], "loop.pt: a link to nothing"),
                          (["empty.onnx"], "empty.onnx: the file is empty (0 bytes), not an "
                                           "ONNX model"),
                          (["a" * 300 + ".json"], "not a name the system takes (File name too "
                                                  "long)"),
                          (["a" * 300 + ".pt", "--model", "lenet5"], "not a name the system "
                                                                     "takes")):
        assert main(["summary", str(tmp_path / argv[0]), *argv[1:]]) == 1
        assert message in capsys.readouterr().err, argv


def test_closed_output_broken_links_and_a_huge_weight_decay(tmp_path, capsys):
    """convnet zoo >&- had ended in an AttributeError; convert replaced a broken link
    without --overwrite (exists() is False for it); --weight-decay 1e30 trained to inf."""
    proc = subprocess.run(["sh", "-c", f'"{sys.executable}" -m convnet.cli zoo >&-'],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 0 and "Error" not in proc.stderr, proc.stderr
    from convnet.io import save_model
    from convnet.models import from_notation
    model = save_model(from_notation("INPUT 8x8x1 -> FC 3"), tmp_path / "m")
    (tmp_path / "gone.onnx").symlink_to(tmp_path / "nowhere.onnx")
    assert main(["convert", str(model), str(tmp_path / "gone.onnx")]) == 1
    assert "already there; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "gone.onnx").is_symlink()
    with pytest.raises(SystemExit):
        main(["train", "--weight-decay", "1e30"])
    assert "--weight-decay: expected a number in [0, 1], got '1e30'" in capsys.readouterr().err


def test_odd_entries_where_runs_and_classes_go(tmp_path, capsys, monkeypatch):
    """A file at runs/digits had stopped train with an errno ("Not a directory"); two class
    folders whose names differ only in Unicode form had been refused with two lists that
    look the same."""
    import unicodedata

    from PIL import Image
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "digits").write_text("a note")
    assert main(["train", "--epochs", "1", "--limit", "100", "--quiet", "--no-report"]) == 0
    assert (tmp_path / "runs" / "digits-2" / "model.json").exists()
    for form in ("NFC", "NFD"):
        folder = tmp_path / "data" / unicodedata.normalize(form, "café")
        folder.mkdir(parents=True)
        Image.new("L", (8, 8)).save(folder / "0.png")
    assert main(["train", "--data", str(tmp_path / "data"), "--out", "x"]) == 1
    assert "have one name in two Unicode forms (composed and decomposed): merge them" in \
        capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--no-augment", "--translate", "2"], "translate=2 shapes the augmentation, "
                                                    "and augment=False turns it off"),
    (["train", "--no-augment", "--flip"], "flip=True shapes the augmentation"),
    (["summary", "INPUT 8x8x1 -> [FC 4]*N -> FC 2", "--count", "N=2", "--count", "N=3"],
     "--count gives N more than once"),
])
def test_contradicting_options_are_refused(tmp_path, capsys, argv, message):
    """They had been taken silently: the augmentation off, the last --count kept. Options
    that agree with --no-augment (--no-flip, --translate 0) stay allowed."""
    assert main(argv + (["--out", str(tmp_path / "r")] if argv[0] == "train" else [])) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    if argv[0] == "train":                 # those that agree with it: trained as asked
        assert main(argv[:2] + ["--no-flip", "--translate", "0", "--epochs", "1", "--limit",
                                "100", "--quiet", "--no-report", "--out",
                                str(tmp_path / "ok")]) == 0
    with pytest.raises(ValueError, match=r"weight_decay must be a number in \[0, 1\]"):
        TrainConfig(weight_decay=1e30).check()


def test_an_output_that_is_a_folder_or_a_fifo_is_refused_by_name(tmp_path, capsys):
    """--overwrite onto a FIFO had ended in "File or stream is not seekable" and onto a
    folder in an errno naming convert's temporary file."""
    from convnet.io import save_model
    from convnet.models import from_notation
    model = save_model(from_notation("INPUT 8x8x1 -> CONV 2 -> FC 3"), tmp_path / "m")
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "d.json").mkdir()
    for argv, message in (
            (["show", "filters", str(model), "--out", str(tmp_path / "fifo.png"),
              "--overwrite"], "fifo.png: not a regular file (a FIFO, socket or device), not "
                              "a file to replace"),
            (["convert", str(model), str(tmp_path / "d.json"), "--overwrite"],
             "d.json: a folder, not a file to replace; choose another OUT")):
        assert main(argv) == 1
        assert message in capsys.readouterr().err
    assert (tmp_path / "d.json").is_dir() and not any((tmp_path / "d.json").iterdir())


def test_an_overwrite_stopped_early_gives_the_earlier_run_back(tmp_path, capsys, monkeypatch):
    """Ctrl-C before the new run's first checkpoint: the earlier run is put back and the
    hint says so (it had offered to resume the run just replaced). A set-aside folder left
    by a killed run (mpiexec's abort kills rank 0 before it restores) is put back by the
    next command on that directory."""
    import convnet.train.loop as loop
    out = tmp_path / "run"
    args = ["train", "--model", SMALL, "--epochs", "1", "--quiet", "--no-report", "--out",
            str(out)]
    assert main(args) == 0
    held = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = loop.softmax_cross_entropy, []

    def interrupted(*a):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a)
    monkeypatch.setattr(loop, "softmax_cross_entropy", interrupted)
    capsys.readouterr()
    assert main(args + ["--overwrite", "--seed", "2"]) == 130
    assert "the new run had written no checkpoint yet: " in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == held
    monkeypatch.undo()
    aside = out / ".replaced-x1"
    aside.mkdir()
    for name in held:
        os.replace(out / name, aside / name)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "set aside by an --overwrite that stopped before its first checkpoint is put " \
        "back" in err and "already holds files" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == held


def test_an_overwrite_cut_short_while_setting_aside_or_dropping_loses_nothing(
        tmp_path, capsys, monkeypatch):
    """A kill or Ctrl-C in the middle of moving the earlier run aside had made put_back
    delete the earlier run's files that were not moved yet (and say it was kept); one
    while deleting the set-aside files, once the new run had its first checkpoint, had
    restored a half-deleted earlier run over the new run's checkpoint."""
    import shutil

    import convnet.train.loop as loop
    out = tmp_path / "run"
    args = ["train", "--model", SMALL, "--epochs", "1", "--quiet", "--no-report", "--out",
            str(out)]
    assert main(args) == 0
    held = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(held) >= 6
    # a kill after two moves: the next command puts them back, and keeps the rest
    cut = out / ".replacing-x1"
    cut.mkdir()
    for name in ("checkpoint.safetensors", "model.json"):
        os.replace(out / name, cut / name)
    assert main(args) == 1
    assert "is put back" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == held
    # a Ctrl-C on the third move: all back, and said
    real, moves = os.replace, []

    def replace(src, dst):
        if ".replacing-" in str(dst):
            moves.append(dst)
            if len(moves) == 3:
                raise KeyboardInterrupt
        return real(src, dst)
    monkeypatch.setattr(loop.os, "replace", replace)
    assert main(args + ["--overwrite", "--seed", "2"]) == 130
    assert "the new run had written no checkpoint yet: " in capsys.readouterr().err
    monkeypatch.undo()
    assert len(moves) == 3 and {p.name: p.read_bytes() for p in out.iterdir()} == held
    # a Ctrl-C while the earlier run's files are deleted: the new run's checkpoint stays
    rmtree = shutil.rmtree

    def halfway(path, ignore_errors=False):
        if ".replaced-" in str(path):
            next(path.iterdir()).unlink()
            raise KeyboardInterrupt
        return rmtree(path, ignore_errors=ignore_errors)
    monkeypatch.setattr(loop.shutil, "rmtree", halfway)
    assert main(args + ["--overwrite", "--seed", "2"]) == 130
    assert "the new run had written no checkpoint yet" not in capsys.readouterr().err
    monkeypatch.undo()
    assert (out / "checkpoint.safetensors").read_bytes() != held["checkpoint.safetensors"]
    assert main(args + ["--resume"]) == 0                      # the new run goes on
    assert not list(out.glob(".replac*"))


def test_a_full_disk_in_training_says_how_to_continue(tmp_path, capsys, monkeypatch):
    """A full disk had ended a run with '[Errno 28] No space left on device', naming
    neither the file nor that the run can be resumed."""
    import errno

    import convnet.train.loop as loop
    out = tmp_path / "run"
    real, calls = loop.save_checkpoint, []

    def full(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kwargs)
    monkeypatch.setattr(loop, "save_checkpoint", full)
    assert main(["train", "--model", SMALL, "--epochs", "2", "--quiet", "--no-report",
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"No space left on device: '{out / 'checkpoint.safetensors'}'; continue the " \
           f"run with: convnet train --resume --out {out}" in err, err
    # an OSError that is no failed write (data not found) gets no such hint
    assert main(["train", "--data", "fashion-mnist", "--data-root", str(tmp_path / "none"),
                 "--epochs", "1", "--quiet", "--out", str(tmp_path / "f")]) == 1
    err = capsys.readouterr().err
    assert "Fashion-MNIST not found" in err and "--resume" not in err and \
        "no checkpoint" not in err, err


def test_run_folder_refusals_say_what_is_there(tmp_path, capsys, monkeypatch):
    """A folder of the user's own files had been refused as 'a run stopped in its first
    epoch', with --overwrite to 'replace them' (it writes beside them); a link to nothing
    as --out had given '[Errno 17] File exists'; a read-only run folder to resume, 'delete
    the lock file' (there is none)."""
    import errno

    import convnet.train.loop as loop
    args = ["train", "--model", SMALL, "--epochs", "1", "--quiet", "--no-report", "--out"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(args + [str(mine)]) == 1
    assert f"{mine} holds files that are not a run's (notes.txt): give another --out, or " \
           "--overwrite to write the run beside them (it replaces only a run's own " \
           "files: checkpoint.safetensors, " in capsys.readouterr().err
    assert main(args + [str(mine), "--overwrite"]) == 0
    assert (mine / "notes.txt").read_text() == "mine" and (mine / "model.json").exists()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere" / "x")
    assert main(args + [str(link)]) == 1
    assert f"{link}: --out is a link to nothing ({tmp_path / 'nowhere' / 'x'}): give an " \
           "existing folder or a new name" in capsys.readouterr().err
    real = os.open

    def read_only(path, *a, **k):
        if str(path).endswith(loop.LOCK):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(path, *a, **k)
    monkeypatch.setattr(loop.os, "open", read_only)
    assert main(args + [str(mine), "--resume"]) == 1
    assert f"{mine}: the run directory is not writable (Read-only file system)" in \
        capsys.readouterr().err
    # the same with a killed run's lock left there: it had said to delete the lock,
    # which a read-only folder does not allow and which would not help
    (mine / loop.LOCK).write_text("1 host\n")
    assert main(args + [str(mine), "--resume"]) == 1
    assert f"{mine}: the run directory is not writable (Read-only file system)" in \
        capsys.readouterr().err


def test_data_root_and_download_with_the_embedded_digits(tmp_path, capsys, monkeypatch):
    """--data-root and --download with the default digits (a forgotten --data) had been
    ignored, and the run trained on the digits."""
    monkeypatch.chdir(tmp_path)
    for extra in (["--data-root", str(tmp_path)], ["--download"]):
        assert main(["train", "--epochs", "1", "--quiet", *extra]) == 1
        err = capsys.readouterr().err
        assert err.startswith("convnet train: ") and "Traceback" not in err, err
        assert ("the digits are embedded" if extra[0] == "--data-root"
                else "got 'digits'") in err, err
    assert not (tmp_path / "runs").exists()


def test_show_filters_refuses_an_image(tmp_path, capsys, monkeypatch):
    """show filters MODEL IMAGE had drawn the filters and ignored IMAGE without a word."""
    monkeypatch.chdir(tmp_path)
    for what in ("filters", "reuse"):
        assert main(["show", what, "lenet5", "cat.png"]) == 1
        assert (f"show {what} draws the model alone: IMAGE (cat.png) is for show "
                f"activations") in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    # a model with nothing to draw is named (the error had said "the model")
    for what, says in (("filters", "no CONV layer"), ("reuse", "no DenseBlock")):
        assert main(["show", what, "INPUT 8x8x1 -> FC 10"]) == 1
        assert f"INPUT 8x8x1 -> FC 10: the model has {says}" in capsys.readouterr().err


def test_text_from_files_reaches_the_terminal_escaped_and_long_notation_stays_aligned(
        tmp_path, capsys):
    """A weights file's keys (in the unexpected-keys error) and a warning had reached the
    terminal with their escape sequences raw; a notation error over 1,000 characters had
    been cut in the middle of all three lines, its carets then pointing at nothing."""
    from safetensors.numpy import save_file
    save_file({"\x1b]0;title\x07\x1b[2Jw": np.zeros(1, np.float32)}, tmp_path / "e.safetensors")
    assert main(["convert", str(tmp_path / "e.safetensors"), str(tmp_path / "o.json"),
                 "--model", "INPUT 4 -> FC 2"]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\\x1b]0;title\\x07\\x1b[2Jw" in err, err
    stages = " -> ".join(["CONV 8 F3 S1 P1 -> RELU"] * 40)
    text = f"INPUT 16x16x3 -> {stages} -> POOL F3 S2"
    assert len(text) > 1_000
    assert main(["summary", text]) == 1
    lines = capsys.readouterr().err.rstrip("\n").split("\n")
    assert len(lines) == 3 and "characters left out" not in lines[1], lines[1][:200]
    column = lines[2].index("^")
    assert lines[1][column:].startswith("POOL F3 S2"), (lines[1][column - 5:], column)


def test_a_line_break_in_a_file_name_cannot_pass_for_a_line_of_convnet(tmp_path, capsys):
    """Control characters were escaped, but a file name's line break started a line of
    its own, which could read as convnet's: "convnet train: done, ...". The size hint
    under a message, indented, stays a line of its own."""
    from PIL import Image
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "data" / name / "0.png")
    (tmp_path / "data" / "a" / "x\nconvnet train: done.png").write_bytes(b"not an image")
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "\nconvnet train: done" not in err and "x\\nconvnet train: done.png" in err, err
    # an indented line cannot pass either
    from convnet.cli import _one_line
    assert _one_line(ValueError("data/x\n convnet train: done.png: bad")) == \
        "data/x\\n convnet train: done.png: bad"
    assert main(["train", "--model", "lenet5", "--epochs", "1"]) == 1
    lines = capsys.readouterr().err.rstrip("\n").split("\n")
    assert len(lines) == 2 and lines[1].startswith("    (the data's images are 8x8x1"), lines


def test_walkthrough_inputs_get_what_to_give(tmp_path, capsys):
    """A run's folder given as the model names its model.json (and best.json); a zoo name
    or notation converts as summary reads it (a new net); a data folder that is not there
    says so, with the path it looked for."""
    from convnet.cli import main
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--model", "INPUT 8x8x1 -> FC 10", "--epochs",
                 "1", "--quiet", "--no-report", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["predict", str(run), str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert (f"{run}: a folder (a training run's?): give its model, {run / 'model.json'} "
            f"(or {run / 'best.json'}, the best by validation)") in err, err
    assert main(["convert", "lenet5", str(tmp_path / "lenet5.onnx")]) == 0
    assert main(["convert", "INPUT 8x8x1 -> FC 3", str(tmp_path / "n.json")]) == 0
    capsys.readouterr()
    assert main(["convert", "INPUT 8x8x1 -> FC 3", str(tmp_path / "k.json"),
                 "--classes", "5"]) == 1                  # as summary: not 5 scores
    assert "gives 3 scores per image, not the --classes 5" in capsys.readouterr().err
    assert not (tmp_path / "k.json").exists()
    assert main(["train", "--data", str(tmp_path / "photos"), "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert f"unknown data set '{tmp_path / 'photos'}': no folder {tmp_path / 'photos'} is " \
           f"there" in err, err


def test_input_is_refused_where_it_cannot_apply(tmp_path, capsys):
    """report --input had resized a trained model's test images (the page showed 15%
    where eval gave 97%); convert of a zoo net with an --input it does not take had
    written a model file that no longer loaded; report --data-root without --data was
    ignored. A model file that records no input size takes --input."""
    from convnet.io import save_model
    from convnet.layers.conv import Conv2d
    from convnet.layers.linear import Flatten, Linear
    from convnet.models import Sequential
    run = train(TrainConfig(data="digits", model=SMALL, epochs=1, out=str(tmp_path / "r")),
                **QUIET)
    model = str(run.model_path)
    assert main(["report", model, "--data", "digits", "--input", "1x16x16", "--out",
                 str(tmp_path / "a.html")]) == 1
    assert "this model file records its own" in capsys.readouterr().err
    weights = str(run.model_path.with_suffix(".safetensors"))    # the model file's half
    assert main(["eval", weights, "--data", "digits", "--input", "1x16x16"]) == 1
    assert "this model file records its own" in capsys.readouterr().err
    assert main(["eval", weights, "--model", SMALL, "--data", "digits", "--input",
                 "1x8x8"]) == 0                                # read as weights: --model's
    capsys.readouterr()
    assert main(["report", model, "--data-root", str(tmp_path), "--out",
                 str(tmp_path / "a.html")]) == 1
    assert "--data-root is for the images of --data: give --data" in capsys.readouterr().err
    assert main(["convert", "lenet5", str(tmp_path / "l.json"), "--input", "1x28x28"]) == 1
    assert "lenet5: it takes 1x32x32 (C x H x W), and --input 1x28x28 does not fit it: " \
        in capsys.readouterr().err
    assert not (tmp_path / "l.json").exists()
    assert main(["summary", "resnet18", "--input", "3x64x64", "--json"]) == 0   # one that fits
    assert json.loads(capsys.readouterr().out)["input_shape"] == [3, 64, 64]
    bare = save_model(Sequential(Conv2d(1, 2, 3), Flatten(), Linear(72, 3)), tmp_path / "b")
    assert json.loads(bare.read_text())["input_shape"] is None
    assert main(["convert", str(bare), str(tmp_path / "b.onnx"), "--input", "1x8x8"]) == 0
    capsys.readouterr()
    # notation without an INPUT takes --input, as its error said to (show had refused it,
    # saying that the model recorded its own size)
    assert main(["show", "filters", "CONV 8 -> RELU -> FC 10", "--input", "3x32x32",
                 "--out", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").is_file()
    capsys.readouterr()
    for command in (["predict", str(tmp_path / "gone.json"), "x.png"],
                    ["convert", str(tmp_path / "gone.json"), str(tmp_path / "g.onnx")]):
        assert main([*command, "--input", "1x8x8"]) == 1     # had said "records its own"
        assert "gone.json: no such model file" in capsys.readouterr().err


def test_the_weights_half_of_a_model_file_is_the_file_its_json_reads(tmp_path, capsys):
    """m.safetensors beside an m.json whose "weights" names another file had been read
    as that other file's model: the weights given were never read."""
    from convnet.io import save_model
    from convnet.models import from_notation
    path = save_model(from_notation(SMALL, rng=np.random.default_rng(0)), tmp_path / "m")
    other = from_notation(SMALL, rng=np.random.default_rng(1))
    save_tensors(other.state_dict(), tmp_path / "b.safetensors")
    document = json.loads(path.read_text())
    document["weights"] = "b.safetensors"
    path.write_text(json.dumps(document))
    assert main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "o.json")]) == 1
    assert ("m.safetensors: the model file beside it, m.json, reads its weights from "
            "b.safetensors, not this file") in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "o.json"),
                 "--model", SMALL]) == 0          # these weights, with the architecture
    written = load_tensors(tmp_path / "o.safetensors")[0]
    kept = load_tensors(tmp_path / "m.safetensors")[0]
    assert all(np.array_equal(written[k], kept[k]) for k in kept)


def test_a_fraction_the_data_does_not_use_is_said(tmp_path, capsys):
    """--test-fraction on a data set with its own test images (the digits) had been
    ignored without a word, and recorded as if used."""
    out = tmp_path / "r"
    assert main(["train", "--model", SMALL, "--epochs", "1", "--limit", "200", "--quiet",
                 "--no-report", "--out", str(out), "--test-fraction", "0.5"]) == 0
    assert "--test-fraction 0.5 is not used: digits has its own test images" in \
        capsys.readouterr().out
    assert json.loads((out / "model.json").read_text())["info"]["test_fraction"] == 0.1
    # a resume says nothing of it (a run of old recorded the default 0.1 as if given)
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--no-report"]) == 0
    assert "is not used" not in capsys.readouterr().out


def test_a_pipe_or_an_empty_name_is_named_as_such(tmp_path, capsys):
    """A pipe given as an image had been 'empty (0 bytes)'; an empty name, '.': 'a
    folder'."""
    run = train(TrainConfig(data="digits", model=SMALL, epochs=1, out=str(tmp_path / "r")),
                **QUIET)
    model = str(run.model_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for argv, message in [(["predict", model, str(fifo)], "not a regular file (a pipe or a "
                                                          "device): save the image to a file"),
                          (["predict", model, ""], "an empty file name: give an image file"),
                          (["report", model, "--out", ""], "an empty file name: give the "
                                                           "report a name ending in .html"),
                          (["convert", model, ""], "an empty output file name")]:
        assert main(argv) == 1
        assert message in capsys.readouterr().err, argv


def test_paths_on_standard_output_cannot_pass_for_lines_of_their_own(tmp_path, capsys):
    """train's log lines and the commands' 'wrote ...' printed a path raw: a line break
    or a terminal escape in it split or coloured the output."""
    out = tmp_path / "e\x1b[31mred\nfake"
    assert main(["train", "--model", SMALL, "--epochs", "1", "--limit", "200", "--quiet",
                 "--no-report", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "\x1b" not in text and "\nfake" not in text and "e\\x1b[31mred\\nfake" in text
    assert main(["show", "filters", str(out / "model.json"), "--out",
                 str(tmp_path / "a\nb.png")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path}/a\\nb.png\n"


def test_a_folder_named_like_a_data_set_is_named_when_the_set_is_read(tmp_path, capsys,
                                                                       monkeypatch):
    """--data digits, with a folder ./digits here, had read the embedded digits without a
    word about the folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits" / "a").mkdir(parents=True)
    assert main(["train", "--data", "digits", "--model", SMALL, "--epochs", "1", "--limit",
                 "200", "--quiet", "--no-report", "--out", "r"]) == 0
    assert "digits is the named data set; a folder digits is here too, not read: give " \
           "--data ./digits to read it" in capsys.readouterr().err
    # CIFAR's folders are looked for under --data-root, never as ./cifar10: said there too
    (tmp_path / "cifar10").mkdir()
    assert main(["train", "--data", "cifar10", "--data-root", ".", "--epochs", "1",
                 "--quiet", "--out", "c"]) == 1
    assert "a folder cifar10 is here too, not read" in capsys.readouterr().err
    # where the folder is where the named set is looked for (--data-root .), nothing said
    (tmp_path / "mnist").mkdir()
    assert main(["train", "--data", "mnist", "--data-root", ".", "--epochs", "1",
                 "--quiet", "--out", "m"]) == 1
    err = capsys.readouterr().err
    assert "MNIST not found" in err and "here too" not in err, err


def test_weights_of_a_net_that_takes_other_sizes_take_input(tmp_path, capsys):
    """--input had been refused for every weights file: a ResNet-18's weights could not
    be summarized or run at 64x64."""
    import torch

    from convnet.models import from_notation
    from convnet.zoo import get_model
    net = get_model("resnet18", num_classes=3)
    torch.save({k: torch.from_numpy(v) for k, v in net.state_dict().items()},
               tmp_path / "r.pt")
    assert main(["summary", str(tmp_path / "r.pt"), "--model", "resnet18", "--input",
                 "3x64x64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_shape"] == [3, 64, 64]
    assert main(["convert", str(tmp_path / "r.pt"), str(tmp_path / "r.json"), "--model",
                 "resnet18", "--input", "3x64x64"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["input_shape"] == [3, 64, 64]
    lenet = get_model("lenet5")
    torch.save({k: torch.from_numpy(v) for k, v in lenet.state_dict().items()},
               tmp_path / "l.pt")
    assert main(["summary", str(tmp_path / "l.pt"), "--model", "lenet5", "--input",
                 "1x28x28"]) == 1
    assert "lenet5: it takes 1x32x32 (C x H x W), and --input 1x28x28 does not fit it" in \
        capsys.readouterr().err
    torch.save({k: torch.from_numpy(v) for k, v in from_notation(
        "INPUT 8x8x1 -> CONV 4 -> RELU -> POOL -> FC 10").state_dict().items()},
        tmp_path / "n.pt")                     # an FC whose inputs --input changes
    assert main(["summary", str(tmp_path / "n.pt"), "--model",
                 "CONV 4 -> RELU -> POOL -> FC 10", "--input", "1x16x16"]) == 1
    err = capsys.readouterr().err
    assert "mis-shaped keys: 4.weight" in err and "classes" not in err, err


def test_a_checkpoint_of_an_unknown_layer_is_not_called_damaged(finished_run, tmp_path):
    tensors, state = finished_run
    architecture = json.loads(json.dumps(state["architecture"]))
    architecture["children"][0][1]["type"] = "FancyConv"     # a later version's layer
    save_tensors(tensors, tmp_path / "checkpoint.safetensors",
                 metadata={KEY: json.dumps({**state, "architecture": architecture})})
    with pytest.raises(ValueError, match="unknown layer type 'FancyConv'") as info:
        train(TrainConfig(out=str(tmp_path)), resume=True, **QUIET)
    assert "damaged" not in str(info.value)
