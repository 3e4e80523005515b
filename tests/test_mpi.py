"""Data-parallel training over MPI: `mpiexec -n 2` against one process, in subprocesses.

Each MPI test writes a small script to tmp and runs it under ``mpiexec -n 2`` (MPICH from
the ``mpi`` extra) with a timeout, so that a hang fails instead of stalling the suite.
Scripts run as ``python -m mpi4py script.py``: an uncaught exception (a failed assert) on
one rank then aborts the whole job. Everything is float64 on the digits data with tiny
nets, so two ranks with global batch B can be held to 1e-10 of one process with batch B.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from convnet.functional.norm import (
    batch_norm_backward,
    batch_norm_forward,
    sync_batch_norm_backward,
    sync_batch_norm_forward,
)
from convnet.io import load_tensors
from convnet.train import distributed
from convnet.train.checkpoint import load_checkpoint
from convnet.train.distributed import Communicator, launch_size
from convnet.train.loop import TrainConfig, train

PLAIN = "INPUT 8x8x1 -> CONV 6 -> RELU -> POOL -> FC 16 -> RELU -> FC 10"
NORMED = "INPUT 8x8x1 -> CONV 6 -> BN -> RELU -> POOL -> FC 16 -> BN -> RELU -> FC 10"
DROPPED = "INPUT 8x8x1 -> CONV 6 -> BN -> RELU -> POOL -> FC 16 -> RELU -> DROPOUT 0.3 -> FC 10"
# 200 images: 180 for training, 12 steps an epoch of the uneven batch 15 (shares 7 and 8).
RUN = dict(data="digits", epochs=2, batch_size=15, limit=200, optimizer="momentum", lr=0.05,
           schedule="cosine", dtype="float64", augment=False)
TIMEOUT = 90
ROOT = Path(__file__).resolve().parents[1]


def mpiexec():
    """The mpiexec beside this Python (the mpich wheel's), else the one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.fail("no mpiexec: install the test extra, pip install -e '.[test]' (mpich)")
    return found


def run_mpi(tmp_path, script, *args, n=2, timeout=TIMEOUT, module=False):
    """Run script (Python source, or with module=True a module name) on n ranks; returns
    the CompletedProcess. One thread per rank: the machine has few cores."""
    if module:
        command = [sys.executable, "-m", script]
    else:
        path = tmp_path / f"script_{abs(hash(script))}.py"
        path.write_text(textwrap.dedent(script))
        command = [sys.executable, "-m", "mpi4py", str(path)]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([mpiexec(), "-n", str(n), *command, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=tmp_path)


def check(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


TRAIN_SCRIPT = """
    import json, sys
    import numpy as np
    from convnet.train.distributed import from_environment
    from convnet.train.loop import TrainConfig, train

    comm = from_environment()
    assert comm.size == 2, comm
    cfg = TrainConfig(**json.loads(sys.argv[1]))
    result = train(cfg, log=print, progress=False)
    np.savez(f"{cfg.out}-rank{comm.rank}.npz", **result.model.state_dict())
"""


def mpi_states(tmp_path, name, **cfg):
    """Train on 2 ranks; returns each rank's final state dict."""
    out = tmp_path / name
    check(run_mpi(tmp_path, TRAIN_SCRIPT, json.dumps(dict(RUN, out=str(out), **cfg))))
    return [dict(np.load(f"{out}-rank{r}.npz")) for r in range(2)]


def single_state(tmp_path, name, **cfg):
    """The same run in this process (one process: the plain communicator)."""
    result = train(TrainConfig(**dict(RUN, out=str(tmp_path / name), **cfg)),
                   log=lambda *a: None, progress=False, comm=Communicator())
    return result.model.state_dict()


def relative_error(a, b):
    """max |a - b| / max |b| over the float arrays of a (a state dict) and b."""
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(b[k]).max(), 1e-300))
               for k in a if a[k].dtype.kind == "f")


def assert_identical(states):
    first = states[0]
    for other in states[1:]:
        assert list(other) == list(first)
        for key in first:
            assert np.array_equal(other[key], first[key]), key


@pytest.mark.parametrize("model", [PLAIN, NORMED], ids=["plain", "batch-norm"])
def test_two_ranks_with_batch_b_match_one_process_with_batch_b(tmp_path, model):
    """Uneven shares (7 and 8 of 15), 24 steps of SGD with momentum and a cosine schedule;
    with batch norm the statistics are synchronized: the whole batch's, as one process."""
    ranks = mpi_states(tmp_path, "mpi", model=model)
    assert_identical(ranks)       # weights and running statistics, bit for bit
    assert relative_error(ranks[0], single_state(tmp_path, "one", model=model)) < 1e-10


def test_adam_with_synchronized_batch_norm_matches_one_process(tmp_path):
    """Adam too, except where the true gradient is zero: a bias right before a batch norm
    (0.bias, 5.bias) does not change the loss, so its gradient is rounding noise (~1e-17)
    that Adam scales up to steps of size lr in both runs, noise the runs cannot share;
    the running means downstream of those biases inherit it."""
    kw = dict(model=NORMED, optimizer="adam", lr=1e-3, batch_size=16)
    ranks = mpi_states(tmp_path, "mpi", **kw)
    assert_identical(ranks)
    one = single_state(tmp_path, "one", **kw)
    noise = {"0.bias", "5.bias", "1.running_mean", "6.running_mean"}
    assert relative_error({k: v for k, v in ranks[0].items() if k not in noise}, one) < 1e-10
    assert relative_error(ranks[0], one) < 1e-6


def test_unsynchronized_batch_norm_normalizes_each_share_and_still_agrees(tmp_path):
    """sync_bn=False: each rank normalizes its own 7 or 8 images, which is not batch norm
    over 15, so the weights differ from one process's; the ranks still agree (the running
    statistics are averaged over the ranks before evaluation and checkpoints)."""
    ranks = mpi_states(tmp_path, "mpi", model=NORMED, sync_bn=False)
    assert_identical(ranks)
    assert relative_error(ranks[0], single_state(tmp_path, "one", model=NORMED)) > 1e-4
    plain = mpi_states(tmp_path, "plain", model=PLAIN, sync_bn=False)   # no batch norm:
    assert relative_error(plain[0], single_state(tmp_path, "p1", model=PLAIN)) < 1e-10


COMM_SCRIPT = """
    import numpy as np
    from convnet.train.distributed import RanksDiverged, from_environment

    comm = from_environment()
    r = comm.rank
    assert (comm.size, type(comm).__name__) == (2, "MPICommunicator")
    assert [comm.share(15, k) for k in range(2)] == [slice(0, 7), slice(7, 15)]

    a = np.array([1.0, 2.0]) * (r + 1)
    assert comm.allreduce(a) is a and a.tolist() == [3.0, 6.0]
    assert comm.allreduce(a, op="mean").tolist() == [3.0, 6.0]

    # each rank builds its dict in its own key order: the reduction follows sorted keys
    items = [("w", np.full((2, 3), r + 1.0)), ("b", np.array([10.0 * r], np.float32))]
    grads = dict(items if r == 0 else items[::-1])
    before = grads["w"]
    assert comm.average_gradients(grads) is None
    assert grads["w"] is before and np.all(grads["w"] == 1.5) and grads["b"][0] == 5.0
    w = {"g": np.full(4, 2.0)}                       # shares 3 and 1 of a batch of 4
    extra = comm.average_gradients(w, weight=(3, 1)[r] / 4, extra=[r, 1.0])
    assert np.all(w["g"] == 2.0) and extra.tolist() == [1.0, 2.0]

    assert comm.broadcast({"out": f"run{r}"}) == {"out": "run0"}
    x = np.arange(3.0) + r
    comm.broadcast(x)
    assert x.tolist() == [0.0, 1.0, 2.0]
    gathered = comm.gather({"rank": r})
    assert gathered == ([{"rank": 0}, {"rank": 1}] if r == 0 else None)
    comm.barrier()

    state = {"fc.weight": np.ones((2, 2)), "fc.bias": np.zeros(2), "bn.running_var": np.ones(2)}
    comm.check_identical(state)
    if r == 1:
        state["fc.bias"][1] = np.nextafter(0.0, 1.0)     # one ulp on one rank
        state["bn.running_var"][0] = 2.0
    try:
        comm.check_identical(state)
    except RanksDiverged as err:
        text = str(err)
        assert "first 'fc.bias'" in text and "2 of 3 arrays differ" in text, text
        assert "rank 0:" in text and "rank 1:" in text, text
        print(f"rank {r}: diverged ok")
    else:
        raise AssertionError("check_identical missed the difference")
"""


def test_communicator_averages_gradients_and_checks_identical_weights(tmp_path):
    proc = check(run_mpi(tmp_path, COMM_SCRIPT))
    assert "rank 0: diverged ok" in proc.stdout and "rank 1: diverged ok" in proc.stdout


DIVERGE_SCRIPT = """
    import sys
    import convnet.train.loop as loop
    from convnet.train.distributed import from_environment
    from convnet.train.loop import TrainConfig, train

    if from_environment().rank == 1:   # rank 1 nudges one weight by an ulp after step 4
        make = loop.make_optimizer

        def nudging(*args, **kwargs):
            optimizer = make(*args, **kwargs)
            step, steps = optimizer.step, []

            def nudged(grads):
                step(grads)
                steps.append(1)
                if len(steps) == 4:
                    optimizer.params["4.weight"].flat[5] *= 1 + 2**-52
            optimizer.step = nudged
            return optimizer
        loop.make_optimizer = nudging
    train(TrainConfig(data="digits", model=sys.argv[1], epochs=1, limit=200, batch_size=15,
                      checkpoint_every=3, dtype="float64", out=sys.argv[2]),
          log=print, progress=False)
"""


def test_the_loop_stops_when_the_ranks_weights_differ(tmp_path):
    """Checked at every checkpoint and epoch end: an ulp on one rank after step 4 is found
    at the next checkpoint (step 6) on both ranks, which name the first parameter that
    differs; the checkpoint of step 3 is the last one written."""
    proc = run_mpi(tmp_path, DIVERGE_SCRIPT, PLAIN, tmp_path / "run")
    assert proc.returncode != 0
    assert "RanksDiverged: weights differ across the 2 ranks: first '4.weight'" in proc.stderr
    _, _, state = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert (state["epoch"], state["batch"]) == (0, 3)


FAIL_SCRIPT = """
    import sys
    import convnet.train.loop as loop
    from convnet.cli import main
    from convnet.train.distributed import from_environment

    if from_environment().rank == 1:     # rank 1 fails in its 30th step, rank 0 does not
        calls = []
        real = loop.softmax_cross_entropy

        def failing(scores, y, *args):
            calls.append(1)
            if len(calls) == 30:
                raise RuntimeError("the disk of rank 1 is on fire")
            return real(scores, y, *args)
        loop.softmax_cross_entropy = failing
    sys.exit(main(sys.argv[1:]))
"""
CLI_RUN = ["train", "--data", "digits", "--model", DROPPED, "--epochs", "3", "--limit", "400",
           "--batch-size", "16", "--checkpoint-every", "3", "--augment", "--quiet"]


def test_a_failing_rank_ends_the_job_and_the_run_resumes_to_the_same_weights(tmp_path):
    """Rank 1 raises while rank 0 waits in an Allreduce: the CLI prints the rank and the
    error and aborts every rank (no hang). The last checkpoint (epoch 2, batch 6: 22 steps
    an epoch) loads, and resuming it under mpiexec ends with the weights and history of
    an uninterrupted 2-rank run, bit for bit, dropout and augmentation included."""
    straight = check(run_mpi(tmp_path, "convnet.cli", *CLI_RUN, "--out", "straight",
                             module=True))
    lines = straight.stdout.splitlines()
    assert lines[0].startswith("running on 2 processes (MPI: MPICH"), lines[0]
    assert re.search(r" x \d+ threads? each \(BLAS: 1\)", lines[0]), lines[0]
    assert sum(line.startswith("epoch 3/3") for line in lines) == 1   # rank 0 alone logs

    failed = run_mpi(tmp_path, FAIL_SCRIPT, *CLI_RUN, "--out", "killed")
    assert failed.returncode != 0
    assert ("rank 1: convnet train: error: RuntimeError: the disk of rank 1 is on fire"
            in failed.stderr)
    assert "ending all 2 processes" in failed.stderr
    killed = tmp_path / "killed"
    assert not (killed / "model.json").exists()
    _, _, state = load_checkpoint(killed / "checkpoint.safetensors")
    assert (state["epoch"], state["batch"], state["processes"]) == (1, 6, 2)
    assert len(state["dropout_rng_ranks"]) == 2
    assert state["dropout_rng_ranks"][0] != state["dropout_rng_ranks"][1]

    resumed = check(run_mpi(tmp_path, "convnet.cli", "train", "--out", "killed", "--resume",
                            "--quiet", module=True))
    assert "resuming" in resumed.stdout
    a, _ = load_tensors(tmp_path / "straight" / "model.safetensors")
    b, _ = load_tensors(killed / "model.safetensors")
    assert_identical([a, b])
    def history(run):   # everything but the wall-clock times, which no run repeats
        rows = json.loads((run / "history.json").read_text())
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows]
    assert history(tmp_path / "straight") == history(killed)


def test_with_debug_a_failing_rank_shows_its_traceback_and_still_ends_the_job(tmp_path):
    """--debug shows the traceback, and then ends every rank as without it: re-raising
    had left the failing rank to exit while the other waited in an Allreduce forever.
    The script runs as plain Python, as `mpiexec convnet train` does (mpi4py's runner
    would abort on the uncaught exception by itself)."""
    script = tmp_path / "fail.py"
    script.write_text(textwrap.dedent(FAIL_SCRIPT))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(script), *CLI_RUN,
                           "--out", "run", "--debug"], capture_output=True,
                          text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "RuntimeError: the disk of rank 1 is on fire" in proc.stderr
    assert "ending all 2 processes" in proc.stderr


def test_a_rank_error_before_training_ends_the_job_too(tmp_path):
    """Every rank refuses a run directory that holds files (rank 0 decides, the others
    hear it): the job ends with the error, it does not hang waiting for rank 0."""
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    proc = run_mpi(tmp_path, "convnet.cli", "train", "--model", PLAIN, "--epochs", "1",
                   "--out", "taken", "--quiet", module=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.count("holds files that are not a run's (notes.txt)") == 1, proc.stderr
    assert "rank 0: convnet train: error: " in proc.stderr
    assert "ending all 2 processes" in proc.stderr


def launch_in_folders(tmp_path, args_a, args_b, common=()):
    """mpiexec with rank 0 in tmp_path/a and rank 1 in tmp_path/b, each running the CLI
    with common + its own arguments; returns the CompletedProcess."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [mpiexec()]
    for rank, args in (("a", args_a), ("b", args_b)):
        command += ["-n", "1", "-wdir", str(tmp_path / rank), sys.executable, "-m",
                    "convnet.cli", *common, *args, ":"]
    return subprocess.run(command[:-1], capture_output=True, text=True, timeout=60,
                          env=env, cwd=tmp_path)


def test_an_error_every_rank_meets_is_printed_once(tmp_path):
    """Every rank refuses a batch smaller than the processes: rank 0 prints it and its
    abort ends rank 1 before rank 1 prints the same line."""
    proc = run_mpi(tmp_path, "convnet.cli", "train", "--model", PLAIN, "--epochs", "1",
                   "--batch-size", "1", "--out", "run", "--quiet", module=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.count("batch size 1 is smaller than the 2 processes") == 1, proc.stderr
    assert "rank 0: convnet train: error: " in proc.stderr


def test_mpi_that_cannot_start_is_said_once(tmp_path):
    """Without mpi4py (an import that fails) there is no MPI to end the other ranks
    through: each rank had printed the same error."""
    shim = tmp_path / "shim" / "mpi4py"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('no mpi4py here')\n")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=f"{tmp_path / 'shim'}{os.pathsep}{ROOT}")
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "convnet.cli", "train",
                           "--model", PLAIN, "--epochs", "1", "--out", "run", "--quiet"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.count("cannot import mpi4py (no mpi4py here): install the mpi "
                             "extra") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    # a launcher whose count MPI does not share: a user's setup to mend, not a bug (it
    # had been shown as "RuntimeError: ... (run with --debug for the traceback)")
    env = dict(os.environ, PMI_SIZE="2", PMI_RANK="0", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "convnet.cli", "train", "--model", PLAIN,
                           "--epochs", "1", "--out", "run", "--quiet"], capture_output=True,
                          text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("convnet train: error: the MPI launcher started 2 "
                                  "processes but MPI sees 1: mpi4py is using another MPI "
                                  "library (MPICH Version: "), proc.stderr
    assert "RuntimeError" not in proc.stderr and "--debug" not in proc.stderr


def test_a_warning_every_rank_meets_is_said_once(tmp_path):
    """A folder named like the named data set: every rank had printed the warning."""
    (tmp_path / "digits").mkdir()
    proc = check(run_mpi(tmp_path, "convnet.cli", "train", "--data", "digits", "--model",
                         PLAIN, "--epochs", "1", "--limit", "100", "--out", "run",
                         "--quiet", "--no-report", module=True, timeout=90))
    assert proc.stderr.count("warning: digits is the named data set; a folder digits") \
        == 1, proc.stderr


def test_a_usage_error_in_one_of_several_programs_ends_the_job(tmp_path):
    """mpiexec's MPMD form (A : B): a rank whose own command line argparse refused had
    exited alone, and the other waited in its first collective for good."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cli = [sys.executable, "-m", "convnet.cli", "train"]
    proc = subprocess.run([mpiexec(), "-n", "1", *cli, "--bogus", ":", "-n", "1", *cli,
                           "--model", PLAIN, "--epochs", "1", "--quiet", "--out", "run"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode != 0
    assert "unrecognized arguments: --bogus" in proc.stderr
    assert "rank 0: convnet: its command line was refused (above); ending all 2 processes" \
        in proc.stderr, proc.stderr


def test_argparse_says_a_usage_error_once_and_a_ranks_own_in_its_abort_line(tmp_path):
    """Every rank had printed argparse's usage error (and --help); the same error on
    every rank is now said by rank 0 alone, and one that rank 1's own command line of
    mpiexec's several programs meets (rank 0's is fine) in rank 1's abort line."""
    proc = run_mpi(tmp_path, "convnet.cli", "train", "--epochs", "0", module=True,
                   timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.count("argument --epochs: expected an int from 1") == 1, proc.stderr
    proc = run_mpi(tmp_path, "convnet.cli", "--help", module=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.count("usage: convnet") == 1, proc.stdout
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cli = [sys.executable, "-m", "convnet.cli", "train"]
    proc = subprocess.run([mpiexec(), "-n", "1", *cli, "--model", PLAIN, "--epochs", "1",
                           "--quiet", "--out", "run", ":", "-n", "1", *cli, "--bogus"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode != 0
    assert "rank 1: convnet train: error: unrecognized arguments: --bogus" in proc.stderr, \
        proc.stderr


def test_commands_other_than_train_refuse_several_processes_once(tmp_path):
    """eval, predict, report and convert had run whole on every rank: eval --json printed
    two documents, and two ranks wrote one file at once."""
    proc = run_mpi(tmp_path, "convnet.cli", "zoo", module=True, timeout=60)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.count("this command runs in one process (under mpiexec only train "
                             "shares its work): run it without mpiexec") == 1, proc.stderr


INTERRUPT_SCRIPT = """
    import sys
    import convnet.train.loop as loop
    from convnet.cli import main
    from convnet.train.distributed import from_environment

    if from_environment().rank == 1:     # Ctrl-C reaches rank 1 in its 3rd step
        calls = []
        real = loop.softmax_cross_entropy

        def interrupted(scores, y, *args):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return real(scores, y, *args)
        loop.softmax_cross_entropy = interrupted
    sys.exit(main(sys.argv[1:]))
"""


def test_an_interrupt_on_rank_1_of_an_overwrite_says_the_earlier_run_is_kept(tmp_path):
    """Rank 1 had said to resume an --overwrite run that had written no checkpoint yet
    (SetAside is rank 0's): the hint resumed the earlier run instead."""
    args = ["train", "--model", PLAIN, "--epochs", "2", "--quiet", "--no-report",
            "--out", "run"]
    check(run_mpi(tmp_path, "convnet.cli", *args, module=True))
    proc = run_mpi(tmp_path, INTERRUPT_SCRIPT, *args, "--overwrite")
    assert proc.returncode != 0
    assert ("rank 1: convnet train: interrupted; the new run had written no checkpoint "
            "yet: run keeps the earlier run") in proc.stderr, proc.stderr
    assert "--resume" not in proc.stderr


def test_debug_shows_the_failing_ranks_traceback_once(tmp_path):
    """With --debug, every rank but 0 had printed a second traceback of a RootsError
    repeating rank 0's error."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("an earlier run's")
    proc = run_mpi(tmp_path, "convnet.cli", "train", "--model", PLAIN, "--epochs", "1",
                   "--out", "run", "--debug", module=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.count("Traceback") == 1 and "RootsError" not in proc.stderr, \
        proc.stderr
    # an error every rank meets (a batch smaller than the processes): one traceback too
    proc = run_mpi(tmp_path, "convnet.cli", "train", "--model", PLAIN, "--epochs", "1",
                   "--batch-size", "1", "--out", "every", "--debug", module=True, timeout=60)
    assert proc.returncode != 0 and proc.stderr.count("Traceback") == 1, proc.stderr


def test_a_bad_thread_count_is_said_once(tmp_path):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT),
               CONVNET_THREADS="x")
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "convnet.cli", "train"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.count("CONVNET_THREADS must be a positive int") == 1, proc.stderr


def test_ranks_that_load_different_data_or_settings_are_named(tmp_path):
    """Two machines whose data folders differ (here: each rank in its own working
    directory, the folder given by a relative path): rank 0 names what differs, once,
    before anything is trained or written. So do different settings."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for rank in "ab":
        for name in ("dots", "lines"):
            (tmp_path / rank / "imgs" / name).mkdir(parents=True)
            for i in range(12):
                pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / rank / "imgs" / name / f"{i}.png")
    common = ["train", "--model", "INPUT 8x8x1 -> FC 2", "--epochs", "1", "--batch-size", "4",
              "--quiet", "--out", "run"]

    def launch(args_a, args_b):
        return launch_in_folders(tmp_path, args_a, args_b, common)

    for args_a, args_b, first in (
            (["--data", "imgs"], ["--data", "imgs"], "'train images'"),
            (["--data", "digits"], ["--data", "digits", "--seed", "1"], "'settings'")):
        proc = launch(args_a, args_b)
        assert proc.returncode != 0
        assert proc.stderr.count("error: the data or settings differ across the 2 ranks: "
                                 f"first {first} (") == 1, proc.stderr
        assert "Every rank must load the same data" in proc.stderr
        assert "truncated" not in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "a" / "run").exists()
    # the same data in both folders trains
    for name in ("dots", "lines"):
        for i in range(12):
            (tmp_path / "b" / "imgs" / name / f"{i}.png").write_bytes(
                (tmp_path / "a" / "imgs" / name / f"{i}.png").read_bytes())
    check(launch(["--data", "imgs"], ["--data", "imgs"]))
    assert (tmp_path / "a" / "run" / "model.json").exists()


def test_ranks_that_start_from_different_models_or_checkpoints_are_named(tmp_path):
    """Each rank reads the model file of --from, or the checkpoint of --resume, itself:
    stale copies on one machine are named before training, not met as MPI's "Message
    truncated" or as weights that differ after an epoch."""
    from convnet.io import save_model
    from convnet.models.notation import from_notation
    from convnet.train.checkpoint import save_checkpoint
    for rank in "ab":
        (tmp_path / rank).mkdir()
    common = ["train", "--data", "digits", "--epochs", "1", "--batch-size", "16", "--quiet",
              "--out", "run"]

    def models(a, b):
        for rank, (text, seed) in zip("ab", (a, b)):
            save_model(from_notation(text, rng=np.random.default_rng(seed)),
                       tmp_path / rank / "start.json")
        return launch_in_folders(tmp_path, ["--from", "start.json"], ["--from", "start.json"],
                                 common)

    def refused(proc, what, first):
        assert proc.returncode != 0
        assert proc.stderr.count(f"error: {what} differ across the 2 ranks: first {first} "
                                 "(") == 1, proc.stderr
        assert "Every rank must start from the same files" in proc.stderr
        assert "truncated" not in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "a" / "run").exists()

    small, large = "INPUT 8x8x1 -> CONV 4 -> RELU -> FC 10", "INPUT 8x8x1 -> CONV 8 -> FC 10"
    refused(models((small, 0), (large, 0)), "the starting model or checkpoint",
            "'architecture'")
    refused(models((small, 0), (small, 1)), "the starting weights", "'0.weight'")
    check(models((small, 0), (small, 0)))

    # a checkpoint one batch further on one machine: the same settings, another position
    run = tmp_path / "a" / "run"
    model_state, optim_arrays, state = load_checkpoint(run / "checkpoint.safetensors")
    shutil.copytree(run, tmp_path / "b" / "run")
    state.update(epoch=0, batch=5, history=[])
    save_checkpoint(run / "checkpoint.safetensors", model_state, optim_arrays, state)
    proc = launch_in_folders(tmp_path, [], [], ["train", "--out", "run", "--resume", "--quiet"])
    assert proc.returncode != 0
    assert proc.stderr.count("error: the starting model or checkpoint differ across the 2 "
                             "ranks: first 'checkpoint position' (") == 1, proc.stderr
    assert "truncated" not in proc.stderr and "Traceback" not in proc.stderr


def test_batch_norm_over_one_image_a_share_is_planned_and_refused_as_training_is(tmp_path):
    """A batch of 2 on 2 ranks: each share is one image. Synchronized batch norm sees the
    whole batch, so the run trains, --time-limit's timing copy included (it had
    normalized each share alone and refused); without synchronization an FC's batch norm
    gets one image, refused before training with the share named."""
    model = "INPUT 8x8x1 -> FC 32 -> BN -> RELU -> FC 10"
    common = ["train", "--data", "digits", "--limit", "100", "--batch-size", "2",
              "--model", model, "--quiet", "--no-report"]
    planned = check(run_mpi(tmp_path, "convnet.cli", *common, "--out", "planned",
                            "--time-limit", "20", module=True))
    assert (tmp_path / "planned" / "model.json").exists(), planned.stderr
    ghost = run_mpi(tmp_path, "convnet.cli", *common, "--out", "ghost", "--epochs", "1",
                    "--no-sync-bn", module=True)
    assert ghost.returncode != 0
    assert ("BatchNorm1d) needs at least 2 images to normalize, and it would get a share "
            "of 1 image (of each batch of 2 on 2 processes, --no-sync-bn): raise "
            "--batch-size or synchronize batch norm" in ghost.stderr), ghost.stderr
    # resumed on more processes than its batch allows: the options a resume ignores are
    # not offered (it had said to raise --batch-size, which the resume then ignored)
    check(run_mpi(tmp_path, "convnet.cli", *common, "--out", "one", "--epochs", "2",
                  "--no-sync-bn", module=True, n=1))
    resumed = run_mpi(tmp_path, "convnet.cli", "train", "--resume", "--out", "one",
                      "--batch-size", "8", "--quiet", module=True)
    assert resumed.returncode != 0
    assert ("and it would get a share of 1 image (of each batch of 2 on 2 processes, "
            "--no-sync-bn): resume it on at most 1 process (a resumed run keeps its batch "
            "size and batch norm)" in resumed.stderr), resumed.stderr


# -- in this process: no MPI -------------------------------------------------------------

def test_a_plain_run_says_one_process_and_never_imports_mpi4py(tmp_path):
    code = ("import sys\nfrom convnet.cli import main\n"
            f"main(['train', '--model', {PLAIN!r}, '--epochs', '1', '--limit', '100', "
            f"'--quiet', '--out', {str(tmp_path / 'run')!r}])\n"
            "assert 'mpi4py' not in sys.modules, 'mpi4py was imported'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "OMPI", "PMIX"))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("running on 1 process x "), proc.stdout


def test_launch_detection_and_the_missing_extra(monkeypatch):
    assert launch_size({}) == 0
    assert launch_size({"PMI_RANK": "0", "PMI_SIZE": "4"}) == 4
    assert launch_size({"OMPI_COMM_WORLD_SIZE": "2"}) == 2
    assert launch_size({"PMIX_RANK": "1"}) is None
    monkeypatch.setattr(distributed, "_WORLD", None)
    monkeypatch.setenv("PMI_SIZE", "1")                  # mpiexec -n 1: a plain run
    assert type(distributed.from_environment()) is Communicator
    monkeypatch.setattr(distributed, "_WORLD", None)
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)     # not installed
    with pytest.raises(ImportError, match=r"pip install 'convnet\[mpi\]'"):
        distributed.from_environment()
    monkeypatch.setattr(distributed, "_WORLD", None)


def test_a_launcher_that_mpi4py_does_not_share_is_named():
    """Started by another MPI's mpiexec (here: PMI_SIZE says 3, MPICH sees 1 process),
    each process would train alone and all would write one run directory: refused."""
    code = "from convnet.train.distributed import from_environment; from_environment()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT, env=dict(os.environ, PMI_SIZE="3"))
    assert proc.returncode != 0
    assert "the MPI launcher started 3 processes but MPI sees 1" in proc.stderr


def test_the_cli_turns_synchronized_batch_norm_off_on_request():
    from convnet.cli import build_parser

    assert build_parser().parse_args(["train"]).sync_bn is True
    assert build_parser().parse_args(["train", "--no-sync-bn"]).sync_bn is False
    assert TrainConfig.from_dict({k: v for k, v in vars(TrainConfig()).items()
                                  if k != "sync_bn"}, "old checkpoint").sync_bn is True


@pytest.mark.parametrize("local, threads, blas, hint", [
    (2, 1, 1, None),
    (2, 2, 1, "2 processes here want 4 threads on 2 cores: set CONVNET_THREADS=1"),
    (2, 1, 2, "2 processes here want 4 threads on 2 cores: set OPENBLAS_NUM_THREADS=1"),
    (2, 2, 2, "2 processes here want 4 threads on 2 cores: set CONVNET_THREADS=1 and "
              "OPENBLAS_NUM_THREADS=1"),
    (3, 1, 1, "3 processes here on 2 cores: start at most 2 on this machine"),
    (3, 2, 2, "3 processes here on 2 cores: start at most 2 on this machine")])
def test_the_first_line_hints_at_what_oversubscribes_the_cores(monkeypatch, local, threads,
                                                               blas, hint):
    """More processes than cores is named as such: no thread setting fixes it. Too many
    threads name the setting that makes them: convnet's own threads had been told to set
    OPENBLAS_NUM_THREADS=1 with BLAS at 1 already."""
    import convnet.functional.threads as threads_module

    class Ranks(Communicator):
        size, local_size, kind = local, local, "MPI: test"
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads_module, "THREADS", threads)
    monkeypatch.setattr(distributed, "_blas_threads", lambda: blas)
    line = distributed.describe(Ranks())
    assert line.startswith(f"running on {local} processes (MPI: test)"), line
    assert (hint is None and ";" not in line) or line.endswith(f"; {hint}") or \
        line.endswith(f"; {hint} (docs/distributed.md)"), line


def test_one_process_with_more_threads_than_cores_is_told_too(monkeypatch):
    """The hint had been given under mpiexec only: CONVNET_THREADS=8 on 2 cores said
    nothing."""
    import convnet.functional.threads as threads_module
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(distributed, "_blas_threads", lambda: 2)
    monkeypatch.setattr(threads_module, "THREADS", 8)
    assert distributed.describe(Communicator()) == (
        "running on 1 process x 8 threads (BLAS: 2); it wants 8 threads on 2 cores: set "
        "CONVNET_THREADS=2 (docs/distributed.md)")
    monkeypatch.setattr(threads_module, "THREADS", 2)
    assert distributed.describe(Communicator()) == "running on 1 process x 2 threads (BLAS: 2)"


def test_the_cores_are_those_the_process_may_run_on(monkeypatch):
    """taskset, a cpuset or mpiexec's binding: os.cpu_count() had counted the machine's."""
    from convnet import limits
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {7})
    assert limits.cores() == 1
    monkeypatch.delattr(os, "sched_getaffinity")            # macOS, Windows
    assert limits.cores() == 64
    # The cores it may use divided among the processes: under a cpuset for the whole job
    # (8 cores, 4 ranks) 2 each, not the machine's 64 / 4; at least 1.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert limits.cores_per_process(4) == 2 and limits.cores_per_process(16) == 1


def test_the_plain_communicator_is_the_identity():
    comm = Communicator()
    grads = {"b": np.array([1.0, 2.0]), "a": np.ones((2, 2), np.float32)}
    assert comm.average_gradients(grads, extra=[3.0]).tolist() == [3.0]
    assert grads["b"].tolist() == [1.0, 2.0]
    comm.average_gradients(grads, weight=0.5)           # one rank with half the batch
    assert grads["b"].tolist() == [0.5, 1.0] and grads["a"].dtype == np.float32
    assert comm.allreduce(np.ones(3), op="mean").tolist() == [1.0] * 3
    assert comm.broadcast({"x": 1}) == {"x": 1} and comm.gather(5) == [5]
    comm.check_identical({"w": np.ones(2)})
    with pytest.raises(ValueError, match="writable C-contiguous float array"):
        comm.allreduce(np.ones(3, dtype=np.int64))
    with pytest.raises(ValueError, match="op must be one of sum, mean"):
        comm.allreduce(np.ones(3), op="max")


@pytest.mark.parametrize("shape", [(6, 3), (5, 4, 7), (4, 3, 5, 5)])
def test_sync_batch_norm_on_one_process_is_batch_norm(shape):
    """With allreduce the identity, the synchronized forms are the reference's to
    rounding; two shares with a summing 'allreduce' played in turn give the whole batch's
    statistics."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) * 3 + 5
    w, b = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    dout = rng.standard_normal(shape)
    out, cache = batch_norm_forward(x, w, b)
    sync_out, sync_cache = sync_batch_norm_forward(x, w, b, 1e-5, lambda buf: buf)
    np.testing.assert_allclose(sync_out, out, rtol=0, atol=1e-13)
    assert sync_cache.count == cache.count
    for got, want in zip(sync_batch_norm_backward(dout, sync_cache),
                         batch_norm_backward(dout, cache)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)

    # Two "ranks" in one process, each in a thread, their allreduce a real sum.
    half = shape[0] // 2
    parts = play_ranks([x[:half], x[half:]],
                       lambda share, allreduce: sync_batch_norm_forward(share, w, b, 1e-5,
                                                                        allreduce))
    np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), out, atol=1e-12)
    np.testing.assert_allclose(parts[0][1].var, cache.var, atol=1e-12)
    grads = play_ranks([(dout[:half], parts[0][1]), (dout[half:], parts[1][1])],
                       lambda share, allreduce: sync_batch_norm_backward(
                           share[0], share[1]._replace(allreduce=allreduce)))
    dx, dw, db = batch_norm_backward(dout, cache)
    np.testing.assert_allclose(np.concatenate([g[0] for g in grads]), dx, atol=1e-12)
    np.testing.assert_allclose(grads[0][1] + grads[1][1], dw, atol=1e-12)
    np.testing.assert_allclose(grads[0][2] + grads[1][2], db, atol=1e-12)


def play_ranks(shares, call):
    """[call(share, allreduce)] for each share, run as one rank each in its own thread,
    with an allreduce that sums the ranks' buffers in place, as MPI's does."""
    barrier = threading.Barrier(len(shares), timeout=30)
    sent, results, errors = [None] * len(shares), [None] * len(shares), []

    def rank(r):
        def allreduce(buf):
            sent[r] = buf.copy()
            barrier.wait()
            total = sum(sent)                   # the same order, so the same sum, on each
            barrier.wait()
            buf[...] = total
        try:
            results[r] = call(shares[r], allreduce)
        except BaseException as err:            # noqa: BLE001 (re-raised below)
            errors.append(err)
            barrier.abort()
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(len(shares))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("offset", [1e4, 1e6, 1e8])
def test_sync_batch_norm_keeps_the_variance_of_a_large_mean(offset):
    """The ranks' variances are merged about the whole batch's mean (Chan et al.):
    E[x^2] - mean^2 had lost the variance of values near 1e6 to 1e-4, and near 1e8
    entirely, where one process's two-pass batch norm keeps it."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 3, 4, 4)) + offset
    _, cache = batch_norm_forward(x, None, None)
    parts = play_ranks([x[:5], x[5:]], lambda share, allreduce: sync_batch_norm_forward(
        share, None, None, 1e-5, allreduce))
    for _, sync_cache in parts:
        np.testing.assert_allclose(sync_cache.var, cache.var, rtol=1e-7)
        np.testing.assert_allclose(sync_cache.mean, cache.mean, rtol=1e-15)


@pytest.mark.parametrize("seed", range(12))
def test_sync_batch_norm_over_ranks_matches_pytorch_and_central_differences(seed):
    """Random shapes, 2 or 3 ranks with uneven shares, with and without the affine
    parameters: the ranks' outputs and gradients together are PyTorch's batch norm of
    the whole batch (float64), and dx is the central differences of the whole pass."""
    from tests.utils import numerical_grad, rel_error
    rng = np.random.default_rng(600 + seed)
    ranks = int(rng.integers(2, 4))
    n = int(rng.integers(ranks + 1, 9))
    spatial = rng.integers(1, 4, int(rng.integers(0, 3)))
    shape = (n, int(rng.integers(1, 4)), *(int(v) for v in spatial))
    cuts = np.sort(rng.choice(np.arange(1, n), ranks - 1, replace=False))
    affine = bool(rng.integers(0, 2))
    x = rng.standard_normal(shape) * rng.uniform(0.5, 4) + rng.uniform(-5, 5)
    w, b = (rng.standard_normal(shape[1]), rng.standard_normal(shape[1])) if affine \
        else (None, None)
    dout = rng.standard_normal(shape)

    def forward():
        parts = play_ranks(np.split(x, cuts), lambda share, allreduce:
                           sync_batch_norm_forward(share, w, b, 1e-5, allreduce))
        return parts, np.concatenate([p[0] for p in parts])
    parts, out = forward()
    grads = play_ranks(list(zip(np.split(dout, cuts), [p[1] for p in parts])),
                       lambda share, allreduce: sync_batch_norm_backward(
                           share[0], share[1]._replace(allreduce=allreduce)))
    dx = np.concatenate([g[0] for g in grads])
    xt = torch.tensor(x, requires_grad=True)
    # without the affine parameters, those of weight 1 and bias 0 (the same forward): the
    # gradients returned for them are theirs
    wt, bt = (torch.tensor(v, requires_grad=True) for v in (
        (w, b) if affine else (np.ones(shape[1]), np.zeros(shape[1]))))
    ot = torch.nn.functional.batch_norm(xt, None, None, wt, bt, training=True, eps=1e-5)
    ot.backward(torch.tensor(dout))
    assert rel_error(out, ot.detach().numpy()) < 1e-12
    assert rel_error(dx, xt.grad.numpy()) < 1e-10
    assert rel_error(sum(g[1] for g in grads), wt.grad.numpy()) < 1e-10
    assert rel_error(sum(g[2] for g in grads), bt.grad.numpy()) < 1e-10
    assert rel_error(dx, numerical_grad(lambda: forward()[1], x, dout)) < 1e-7


def test_a_pmix_launch_of_one_process_runs_any_command(monkeypatch, capsys):
    """A PMIx launcher names the rank but not the size (srun --mpi=pmix -n 1): every
    command but train had been refused as if it ran on several processes."""
    from convnet.cli import main
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PMIX_RANK", "0")
    assert launch_size() is None
    monkeypatch.setattr(distributed, "from_environment", lambda: Communicator())
    assert main(["summary", "INPUT 8x8x1 -> FC 10"]) == 0
    assert "params" in capsys.readouterr().out


def test_rank_0s_error_passed_on_is_not_renamed_as_a_resumed_setting():
    """On --resume, errors from the checkpoint's settings name the checkpoint; rank 0's
    error passed to the other ranks (a RootsError, which rank 0 alone prints) had been
    turned into another error, and printed again."""
    from convnet.train.distributed import RootsError
    from convnet.train.loop import _resumed_settings
    with pytest.raises(RootsError) as info:
        with _resumed_settings("run/checkpoint.safetensors"):
            raise RootsError("rank 0's error")
    assert str(info.value) == "rank 0's error"
    with pytest.raises(ValueError, match=r"(?s)bad.*settings come from run/checkpoint"):
        with _resumed_settings("run/checkpoint.safetensors"):
            raise ValueError("bad")


@pytest.mark.parametrize("name", ["MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_SIZE",
                                  "OMPI_COMM_WORLD_SIZE", "PMI_RANK"])
def test_a_launchers_setting_that_is_no_count_is_ignored(name):
    """A superscript digit in a launcher's setting had been a traceback at import."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "convnet.cli", "zoo"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, name: "\u00b2"})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
