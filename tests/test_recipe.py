"""The training recipe's parts, each against PyTorch where PyTorch has it: label
smoothing, the one-cycle and triangular schedules, the weights' moving average; flip
test-time augmentation; the loop's use of them (resumable to the bit), the best model by
validation loss, the data's share of an epoch, and --time-limit's plan."""

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from convnet.functional.loss import softmax_cross_entropy
from convnet.io import load_model
from convnet.layers.loss import CrossEntropyLoss
from convnet.models import from_notation
from convnet.train.checkpoint import load_checkpoint
from convnet.train.ema import WeightEMA
from convnet.train.inference import evaluate
from convnet.train.loop import TrainConfig, train
from convnet.train.optim import SGD
from convnet.train.schedules import make_schedule
from tests.torch_models import to_torch

SMALL = "INPUT 8x8x1 -> CONV 8 -> BN -> RELU -> POOL -> FC 32 -> RELU -> DROPOUT 0.3 -> FC 10"
QUIET = dict(log=lambda *a: None, progress=False)


@pytest.mark.parametrize("smoothing", [0.0, 0.05, 0.1, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("n, c", [(1, 2), (7, 10), (64, 100)])
def test_label_smoothing_matches_pytorch(smoothing, n, c):
    rng = np.random.default_rng(n + c)
    scores = rng.standard_normal((n, c)) * 3
    y = rng.integers(0, c, n)
    loss, dscores = softmax_cross_entropy(scores, y, smoothing)
    st = torch.tensor(scores, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(st, torch.tensor(y), label_smoothing=smoothing)
    lt.backward()
    assert loss == pytest.approx(lt.item(), rel=1e-12, abs=1e-12)
    assert np.allclose(dscores, st.grad.numpy(), rtol=1e-10, atol=1e-14)
    layer = CrossEntropyLoss(label_smoothing=smoothing)
    assert layer(scores, y) == pytest.approx(loss, rel=1e-12)
    assert np.array_equal(layer.backward(), dscores)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.1", None])
def test_label_smoothing_out_of_range_is_named(bad):
    with pytest.raises(ValueError, match="label_smoothing"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), bad)


def test_label_smoothing_as_a_numpy_number():
    scores, y = np.random.default_rng(5).standard_normal((4, 3)), np.array([0, 1, 2, 1])
    want = softmax_cross_entropy(scores, y, 0.25)
    for value in (np.float32(0.25), np.float64(0.25)):
        got = softmax_cross_entropy(scores, y, value)
        assert got[0] == want[0] and np.array_equal(got[1], want[1])
    with pytest.raises(ValueError, match="label_smoothing"):
        softmax_cross_entropy(scores, y, True)


@pytest.mark.parametrize("name, anneal", [("onecycle", "cos"), ("triangular", "linear")])
@pytest.mark.parametrize("total, pct", [(100, 0.3), (7, 0.25), (1000, 0.23), (53, 0.6)])
def test_one_cycle_schedules_match_pytorch(name, anneal, total, pct):
    opt = SGD({"w": np.zeros(1)}, lr=0.4)
    schedule = make_schedule(name, opt, total_steps=total, pct_start=pct)
    p = torch.nn.Parameter(torch.zeros(1))
    topt = torch.optim.SGD([p], lr=0.4)
    tsched = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=0.4, total_steps=total,
                                                 pct_start=pct, anneal_strategy=anneal,
                                                 cycle_momentum=False)
    for step in range(total):
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        topt.step()
        schedule.step()
        if step < total - 1:
            tsched.step()
    resumed = make_schedule(name, SGD({"w": np.zeros(1)}, lr=0.4), total_steps=total,
                            pct_start=pct)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.optimizer.lr == opt.lr


@pytest.mark.parametrize("name", ["onecycle", "triangular"])
def test_one_cycle_schedules_refuse_to_step_past_their_cycle(name):
    """As torch's OneCycleLR: total_steps steps are allowed, one more is an error (the
    linear ramp would go on below 0)."""
    schedule = make_schedule(name, SGD({"w": np.zeros(1)}, lr=0.4), total_steps=10)
    for _ in range(10):
        schedule.step()
    with pytest.raises(ValueError, match="stepped 11 times, past its total_steps of 10"):
        schedule.step()


@pytest.mark.parametrize("total", [90, 1000, 1001, 7])
def test_the_step_schedule_decays_twice_over_the_run(total):
    schedule = make_schedule("step", SGD({"w": np.zeros(1)}, lr=1.0), total_steps=total)
    lrs = []
    for _ in range(total):
        lrs.append(schedule.optimizer.lr)
        schedule.step()
    assert sorted(set(lrs), reverse=True) == pytest.approx([1.0, 0.1, 0.01])


def test_the_history_records_the_lr_each_epoch_ended_with(tmp_path):
    """Not the lr after the last step, which no batch used (the triangle's is below 0)."""
    result = train(TrainConfig(data="digits", model="INPUT 8x8x1 -> FC 10", epochs=2,
                               schedule="triangular", optimizer="sgd", lr=0.1,
                               out=str(tmp_path), augment=False), log=lambda _: None,
                   progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.safetensors")[2]["schedule"]
    steps = state["total_steps"]
    assert state["last_epoch"] == steps            # the run took every step of the cycle
    schedule = make_schedule("triangular", SGD({"w": np.zeros(1)}, lr=0.1),
                             total_steps=steps)
    lrs = [schedule.lr_at(t) for t in (steps // 2 - 1, steps - 1)]
    assert [h["lr"] for h in result.history] == pytest.approx(lrs, rel=1e-12)
    # after the last step the lr stays at the end (torch's extrapolation is below 0,
    # which the finished run's checkpoint kept and a resume then refused)
    assert schedule.lr_at(steps) == lrs[1] > 0
    again = train(TrainConfig(out=str(tmp_path)), resume=True, log=lambda _: None,
                  progress=False)
    assert again.history == result.history


def test_weight_ema_matches_pytorch_averaged_model():
    """WeightEMA = torch's AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(decay),
    use_buffers=True) over parameters and buffers, integer buffers included."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    rng = np.random.default_rng(0)
    model = from_notation("INPUT 6x6x2 -> CONV 4 -> BN -> RELU -> FC 3", rng=rng)
    tmodel = to_torch(model)
    averaged = AveragedModel(tmodel, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    ema = WeightEMA(model, decay=0.9)
    for step in range(12):
        for value in model.state_dict().values():   # a step of training, simulated
            if np.issubdtype(value.dtype, np.floating):
                value += rng.standard_normal(value.shape).astype(value.dtype)
            else:
                value += step
        tmodel.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
        averaged.update_parameters(tmodel)
        ema.update()
    theirs = averaged.module.state_dict()
    for key, value in ema.averages.items():
        assert np.allclose(value, theirs[key].numpy(), rtol=1e-5, atol=1e-6), key
        assert value.dtype == theirs[key].numpy().dtype


def test_weight_ema_warmup_follows_the_model_early():
    """warmup=True: update t uses min(decay, (1 + t) / (10 + t)) (TensorFlow's num_updates)."""
    model = from_notation("INPUT 2x2x1 -> FC 1", rng=np.random.default_rng(0))
    weight = model.state_dict()["1.weight"]
    ema = WeightEMA(model, decay=0.99, warmup=True)
    expected = None
    for t in range(1000):
        weight[...] = t
        decay = min(0.99, (1 + t) / (10 + t))
        expected = float(t) if expected is None else decay * expected + (1 - decay) * t
        ema.update()
        assert ema.averages["1.weight"][0, 0] == pytest.approx(expected, rel=1e-4)
    plain = WeightEMA(model, decay=0.99)
    assert plain.current_decay() == 0.99 and ema.current_decay() == 0.99
    assert WeightEMA(model, decay=0.99, warmup=True).current_decay() == pytest.approx(0.1)
    for bad in ("no", 1, None):          # "no" had been taken as True
        with pytest.raises(ValueError, match="WeightEMA: warmup must be True or False"):
            WeightEMA(model, decay=0.99, warmup=bad)


def test_weight_ema_applied_swaps_weights_in_and_out_and_checkpoints():
    rng = np.random.default_rng(1)
    model = from_notation("INPUT 6x6x2 -> CONV 4 -> BN -> RELU -> FC 3", rng=rng)
    ema = WeightEMA(model, decay=0.5)
    ema.update()
    for value in model.params().values():
        value += 1
    ema.update()
    own = {k: v.copy() for k, v in model.state_dict().items()}
    with ema.applied():
        for key, value in model.state_dict().items():
            assert np.array_equal(value, ema.averages[key]), key
    for key, value in model.state_dict().items():
        assert np.array_equal(value, own[key]), key
    arrays, meta = ema.state_dict()
    again = WeightEMA(model, decay=0.5)
    again.load_state_dict(arrays, meta)
    assert again.updates == 2 and all(np.array_equal(again.averages[k], v)
                                      for k, v in ema.averages.items())
    with pytest.raises(ValueError, match="run: EMA arrays do not match"):
        again.load_state_dict({"x": np.zeros(1)}, meta, "run")
    with pytest.raises(ValueError, match="decay must be"):
        WeightEMA(model, decay=1.0)


def test_flip_tta_averages_the_scores_of_each_image_and_its_mirror():
    rng = np.random.default_rng(2)
    model = from_notation("INPUT 7x5x1 -> CONV 3 -> RELU -> FC 4", rng=rng).eval()
    x = rng.standard_normal((9, 1, 5, 7)).astype(np.float32)
    y = rng.integers(0, 4, 9)
    want = (model.infer(x) + model.infer(np.ascontiguousarray(x[..., ::-1]))) / 2
    result = evaluate(model, x, y, batch_size=4, num_classes=4, tta=True)
    assert result["accuracy"] == np.mean(np.argmax(want, axis=1) == y)
    plain = evaluate(model, x, y, num_classes=4)
    assert result["loss"] != plain["loss"]


# -- the loop -----------------------------------------------------------------------------

RECIPE = dict(schedule="onecycle", label_smoothing=0.1, ema=0.9, tta=True, augment=True,
              flip=True, translate=1)


def test_a_run_with_the_whole_recipe_saves_the_averaged_weights(tmp_path):
    lines = []
    result = train(TrainConfig(data="digits", model=SMALL, epochs=2, batch_size=64,
                               out=str(tmp_path), **RECIPE), log=lines.append, progress=False)
    text = "\n".join(lines)
    assert ("recipe: adam lr 0.002, onecycle schedule, batch 64, 2 epochs, augmentation: "
            "shifts of up to 1 px and flips, label smoothing 0.1, weight EMA 0.9, "
            "flip TTA") in text
    *_, averages = load_checkpoint(tmp_path / "checkpoint.safetensors", ema=True)
    saved = load_model(tmp_path / "model.json").state_dict()
    for key, value in saved.items():
        assert np.array_equal(value, averages[key]), key
        assert np.array_equal(value, result.model.state_dict()[key]), key
    assert "% of it on the data" in text
    model = load_model(tmp_path / "model.json")
    assert model.info["tta"] is True
    x, y = result_test_split()
    assert evaluate(model, x, y, tta=True)["accuracy"] == pytest.approx(result.test_acc)
    for row in result.history:
        assert 0 < row["data_seconds"] < row["seconds"]


def result_test_split(seed=0):
    """The digits' test split as train() prepares it (normalized as the run's model)."""
    from convnet.data import load_dataset
    from convnet.train.loop import prepare
    _, _, (x, y), _ = prepare(load_dataset("digits", seed=seed), 0.1, None, seed, np.float32)
    return x, y


def test_eval_uses_flip_tta_as_the_model_was_trained(tmp_path, capsys):
    """convnet eval evaluates as the run did (info.tta), so it repeats train's test
    accuracy; --no-tta and --tta override."""
    from convnet.cli import main
    result = train(TrainConfig(data="digits", model=SMALL, epochs=1, batch_size=64,
                               out=str(tmp_path), **RECIPE), **QUIET)
    printed = {}
    for flag in ([], ["--no-tta"], ["--tta"]):
        assert main(["eval", str(tmp_path / "model.json"), "--data", "digits", "--json",
                     *flag]) == 0
        printed[" ".join(flag)] = json.loads(capsys.readouterr().out)
    assert printed[""]["tta"] is True and printed["--no-tta"]["tta"] is False
    assert printed[""]["accuracy"] == pytest.approx(result.test_acc)
    assert printed["--tta"] == printed[""]
    x, y = result_test_split()
    plain = evaluate(result.model, x, y)["accuracy"]
    assert printed["--no-tta"]["accuracy"] == pytest.approx(plain)


def test_the_best_model_has_the_lowest_validation_loss(tmp_path):
    result = train(TrainConfig(data="digits", model=SMALL, epochs=4, batch_size=64,
                               out=str(tmp_path), **RECIPE), **QUIET)
    losses = [row["val_loss"] for row in result.history]
    _, _, state = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert state["best"]["epoch"] == 1 + int(np.argmin(losses))
    assert state["best"]["val_loss"] == min(losses)


def test_the_kept_best_model_is_not_the_worse_of_the_two(tmp_path):
    """The issue's run: the digits net without the recipe, where validation accuracy hits
    100% early. best.json, chosen by validation loss, is a different model from the final
    one and scores no worse on the test set."""
    result = train(TrainConfig(data="digits", label_smoothing=0.0, ema=0.0, seed=0,
                               out=str(tmp_path)), **QUIET)
    losses = [row["val_loss"] for row in result.history]
    best_epoch = 1 + int(np.argmin(losses))
    assert best_epoch < len(losses)               # the two models differ
    x_test, y_test = result_test_split()
    accuracy = {name: evaluate(load_model(tmp_path / name), x_test, y_test)["accuracy"]
                for name in ("best.json", "model.json")}
    assert accuracy["model.json"] == pytest.approx(result.test_acc)
    assert accuracy["best.json"] >= accuracy["model.json"], accuracy


def test_a_run_with_the_recipe_resumes_to_the_bit(tmp_path, monkeypatch):
    """Interrupted after a mid-epoch checkpoint, the run resumes (EMA, schedule, RNGs) to
    the same weights and history as a straight run."""
    import convnet.train.loop as loop
    cfg = dict(data="digits", model=SMALL, epochs=2, batch_size=64, checkpoint_every=5,
               **RECIPE)
    straight = train(TrainConfig(out=str(tmp_path / "a"), **cfg), **QUIET)
    calls = []
    real = loop.softmax_cross_entropy

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 28:       # epoch 2, after its checkpoint at batch 5
            raise KeyboardInterrupt
        return real(*args)
    monkeypatch.setattr(loop, "softmax_cross_entropy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(tmp_path / "b"), **cfg), **QUIET)
    monkeypatch.undo()
    _, _, state = load_checkpoint(tmp_path / "b" / "checkpoint.safetensors")
    assert (state["epoch"], state["batch"]) == (1, 5)
    resumed = train(TrainConfig(out=str(tmp_path / "b")), resume=True, **QUIET)
    for key, value in straight.model.state_dict().items():
        assert np.array_equal(value, resumed.model.state_dict()[key]), key

    def history(run):
        rows = json.loads((tmp_path / run / "history.json").read_text())
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows]
    assert history("a") == history("b")


def test_time_limit_plans_the_epochs(tmp_path):
    """--time-limit times a few steps and plans the epochs (and the schedule) to fit: a
    longer limit fits more; the plan is said, kept in the checkpoint, and followed."""
    planned = {}
    for limit in (4.0, 25.0):
        lines = []
        result = train(TrainConfig(data="digits", model=SMALL, batch_size=64, time_limit=limit,
                                   out=str(tmp_path / str(limit)), **RECIPE),
                       log=lines.append, progress=False)
        text = "\n".join(lines)
        assert f"time limit {limit:g} s: a step takes" in text and "epoch(s) fit" in text
        _, _, state = load_checkpoint(tmp_path / str(limit) / "checkpoint.safetensors")
        planned[limit] = state["config"]["epochs"]
        assert len(result.history) == planned[limit]
        assert state["schedule"]["total_steps"] == planned[limit] * (1295 // 64)
    assert planned[25.0] > planned[4.0] >= 1


def test_time_limit_times_its_writes_in_the_run_directory(tmp_path, monkeypatch):
    """--time-limit times an epoch's writes in a folder of the run directory it holds.
    A folder a kill left there neither makes the directory "hold files" nor stays once
    stale; and --out . works (timed beside it, the writes had failed where the parent
    was not writable, and with --out . there was no parent: StopIteration)."""
    import os

    from convnet.train import loop
    written, real = [], loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint",
                        lambda path, *a, **k: written.append(Path(path)) or real(path, *a, **k))
    out = tmp_path / "run"
    out.mkdir()
    left = out / f"{loop.PLAN_PREFIX}killed"          # a killed run's timing folder
    left.mkdir()
    (left / "checkpoint.safetensors").write_bytes(b"half")
    old = time.time() - 3600
    os.utime(left, (old, old))
    train(TrainConfig(data="digits", model=SMALL, batch_size=64, time_limit=4.0, out=str(out),
                      **RECIPE), log=lambda *a: None, progress=False)
    probe = [p for p in written if p.parent.name.startswith(loop.PLAN_PREFIX)]
    assert len(probe) == 1 and probe[0].parent.parent == out, written
    assert not left.exists() and not list(out.glob(f"{loop.PLAN_PREFIX}*"))
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    train(TrainConfig(data="digits", model=SMALL, batch_size=64, time_limit=4.0, out=".",
                      **RECIPE), log=lambda *a: None, progress=False)
    assert (here / "model.json").exists()


def test_time_limit_counts_each_epochs_writes(tmp_path, monkeypatch):
    """An epoch's end writes a checkpoint (and the best model): with epochs of a few
    steps these dominate, and a plan of the steps alone overran a 60 s limit by 40%.
    Writes slowed to 0.1 s each: the run still ends near its limit."""
    from convnet.train import loop
    real = loop.save_checkpoint

    def slow(*args, **kwargs):
        time.sleep(0.1)
        return real(*args, **kwargs)
    monkeypatch.setattr(loop, "save_checkpoint", slow)
    monkeypatch.setattr(loop, "FINAL_MARGIN", 1.0)
    lines = []
    result = train(TrainConfig(data="digits", model="INPUT 8x8x1 -> FC 10", batch_size=256,
                               time_limit=8.0, out=str(tmp_path), augment=False),
                   log=lines.append, progress=False)
    planned = re.search(r"(\d+) epoch\(s\) fit", "\n".join(lines))
    assert planned and 5 <= int(planned[1]) <= 80, lines
    assert result.seconds < 8.0 * 1.4, (result.seconds, lines)


def test_the_plan_over_ranks_times_the_allreduce_and_a_share_of_the_evaluation(
        tmp_path, monkeypatch):
    """Under mpiexec the timing copy's steps left out the gradients' Allreduce, and the
    evaluation was counted for every image where each rank evaluates its share; the
    checkpoints --checkpoint-every adds inside an epoch were left out everywhere."""
    from convnet.train import loop
    from convnet.train.distributed import Communicator
    calls = []

    class Two(Communicator):
        size = 2

        def average_gradients(self, grads, weight=None, extra=None):
            calls.append(sorted(grads))
            return super().average_gradients(grads, weight, extra)
    model = from_notation(SMALL, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((300, 1, 8, 8)).astype(np.float32)
    y = np.arange(300) % 10
    # Each reading of the clock 1 s after the last: the 6 timed steps 1 s in all, the
    # inference of 256 images 1 s, the checkpoint 1 s and the model 1 s. An epoch of 10
    # steps and 1,000 validation images, each rank evaluating half: 10/6 + 1000/256/2 +
    # 2 = 5.6 s (on every image, 7.6 s). With a checkpoint every 3 batches, 3 more in the
    # epoch (after batches 3, 6 and 9; the 10th is the epoch's own): 8.6 s (the plan had
    # left them out, and the run overran its limit by a third).
    for every, expected in ((None, 5.6), (3, 8.6)):
        clock = iter(range(10**6))
        cfg = TrainConfig(data="digits", model=SMALL, batch_size=32, time_limit=10**5,
                          out=str(tmp_path), checkpoint_every=every).resolved(
                              "digits", (1, 8, 8), 10)
        lines, calls[:] = [], []
        monkeypatch.setattr(loop.time, "perf_counter", lambda clock=clock: float(next(clock)))
        loop.plan_epochs(cfg, model, x, y, 1000, 2000, 10, 0.0, Two(), lines.append)
        assert len(calls) == loop.PROBE_WARMUP + loop.PROBE_STEPS
        assert calls[0] == sorted(model.trainable_params())
        epoch = re.search(r"an epoch with its validation about ([0-9.]+) s", lines[0])
        assert epoch and float(epoch[1]) == expected, lines


def test_a_run_can_train_with_a_named_conv_algorithm(tmp_path, monkeypatch):
    """conv_algorithm (--conv-algorithm) runs every convolution that can with that
    algorithm, forward and backward; the checkpoint keeps it; a bad name is refused."""
    from convnet import cli
    from convnet.functional import conv
    from convnet.functional.conv import winograd
    backward = conv.BACKWARD[winograd.Cache]
    calls = []
    monkeypatch.setitem(conv.BACKWARD, winograd.Cache,
                        lambda *args: calls.append(1) or backward(*args))
    lines = []
    train(TrainConfig(data="digits", model=SMALL, epochs=1, batch_size=64, limit=256,
                      out=str(tmp_path), conv_algorithm="winograd4x4"),
          log=lines.append, progress=False)
    assert len(calls) == 3          # 256 images less the validation tenth, batches of 64
    assert "convolutions: winograd4x4 wherever it can run" in lines
    _, _, state = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert state["config"]["conv_algorithm"] == "winograd4x4"
    for bad in ("winograd8x8", ["im2col"], None):       # a checkpoint's JSON may hold any
        with pytest.raises(ValueError, match=r"conv_algorithm must be one of auto, im2col, "
                                             r".* got " + re.escape(repr(bad))):
            TrainConfig(conv_algorithm=bad).check()
    assert cli.CONV_ALGORITHMS == tuple(a.value for a in conv.Algorithm)


@pytest.mark.parametrize("data", ["fashion-mnist", "digits", "cifar10"])
def test_another_optimizer_gets_its_own_learning_rate_on_every_data_set(data):
    """Fashion-MNIST's tuned lr (3e-3, for its Adam) had been given to any optimizer:
    --optimizer sgd trained at 0.003 there, not the 0.1 that --help lists."""
    from convnet.train.defaults import defaults_for
    from convnet.train.optim import DEFAULT_LR
    own = defaults_for(data)
    for optimizer in DEFAULT_LR:
        cfg = TrainConfig(optimizer=optimizer).resolved(data, (1, 28, 28), 10)
        want = own["lr"] if optimizer == own["optimizer"] and "lr" in own else \
            DEFAULT_LR[optimizer]
        assert cfg.lr == want, (data, optimizer)
    assert TrainConfig(optimizer="sgd", lr=0.7).resolved(data, (1, 28, 28), 10).lr == 0.7
    if data == "fashion-mnist":
        assert TrainConfig(optimizer="sgd").resolved(data, (1, 28, 28), 10).lr == 0.1
        assert TrainConfig().resolved(data, (1, 28, 28), 10).lr == 3e-3


@pytest.mark.parametrize("data", ["digits", "cifar10"])
def test_adamw_decays_its_weights_unless_told_not_to(data):
    """Every data set's default weight decay had reached AdamW too: with 0.0 it trained
    bit for bit as Adam. It takes its own (torch's) 0.01 unless --weight-decay says."""
    resolved = TrainConfig(optimizer="adamw").resolved(data, (1, 8, 8), 10)
    assert resolved.weight_decay == 0.01 == torch.optim.AdamW([torch.zeros(1)]).defaults[
        "weight_decay"]
    assert TrainConfig(optimizer="adamw", weight_decay=0.0).resolved(
        data, (1, 8, 8), 10).weight_decay == 0.0
    assert TrainConfig(optimizer="adam").resolved(data, (1, 8, 8), 10).weight_decay == \
        TrainConfig().resolved(data, (1, 8, 8), 10).weight_decay


def test_time_limit_with_epochs_stops_at_those_epochs(tmp_path):
    """--epochs with --time-limit is the most epochs: it had been replaced by the plan
    without a word."""
    lines = []
    result = train(TrainConfig(data="digits", model=SMALL, batch_size=64, time_limit=60.0,
                               epochs=2, out=str(tmp_path), **RECIPE),
                   log=lines.append, progress=False)
    assert len(result.history) == 2
    assert any("--epochs 2: the run stops there, before the time limit" in line
               for line in lines)
    _, _, state = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert state["schedule"]["total_steps"] == 2 * (1295 // 64)


def test_resuming_a_finished_run_says_so(tmp_path):
    train(TrainConfig(data="digits", model=SMALL, epochs=1, out=str(tmp_path)),
          log=lambda *a: None, progress=False)
    lines = []
    train(TrainConfig(out=str(tmp_path)), resume=True, log=lines.append, progress=False)
    assert any(line.endswith("its 1 epoch is done; the model is tested and written again "
                             "(to train it further, start a new run from it: convnet train "
                             f"--from {tmp_path / 'model.json'} --epochs N)")
               for line in lines), lines


def test_evaluate_counts_the_models_classes_not_the_labels_seen():
    """Labels that miss the model's last class (or none at all) had raised IndexError."""
    from convnet.models.notation import from_notation
    from convnet.train.inference import evaluate
    model = from_notation("INPUT 4 -> FC 5", rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((30, 4)).astype(np.float32)
    result = evaluate(model, x, np.zeros(30, np.int64))
    assert result["confusion"].shape == (5, 5) and result["confusion"].sum() == 30
    empty = evaluate(model, x[:0], np.zeros(0, np.int64))
    assert empty["confusion"].shape == (5, 5) and empty["accuracy"] == 0.0


def test_ema_rounds_as_torchs_lerp_and_names_a_mismatched_array():
    """The EMA moves each average with torch's lerp (a weight of 0.5 or more, as in
    warm-up, as end - (end - avg) * decay); a checkpoint array of another shape is named."""
    from convnet.layers.linear import Linear
    from convnet.train.ema import WeightEMA
    layer = Linear(2, 1, dtype=np.float64, rng=np.random.default_rng(0))
    for decay in (np.float32(0.0), 0.3):                   # NumPy's floats are taken too
        ema = WeightEMA(layer, decay=decay)
        layer.params["weight"][...] = 1e20
        ema.update()
        layer.params["weight"][...] = 1.0
        ema.update()                       # 1 - (1 - 1e20) * decay; at 0, exactly 1
        t_avg, t_new = torch.full((1, 2), 1e20, dtype=torch.float64), torch.ones(1, 2)
        expected = t_avg.lerp_(t_new.double(), 1 - float(decay)).numpy()
        np.testing.assert_allclose(ema.averages["weight"], expected, rtol=1e-15)
    arrays, meta = ema.state_dict()
    arrays = {**arrays, "weight": np.zeros((2, 1))}
    with pytest.raises(ValueError, match=r"EMA array 'weight' has shape \(2, 1\), the "
                                         r"model's \(1, 2\)"):
        WeightEMA(layer).load_state_dict(arrays, meta)


def test_time_limit_keeps_a_share_of_a_short_limit_and_warns_when_no_epoch_fits(tmp_path):
    """The end of a run (saving, pictures, report) gets 20 s or a tenth of a shorter limit
    (a fixed 20 s had left a 30 s limit 10 s to train); a limit that not even one epoch
    fits in says so, with how long the run will take."""
    from convnet.train import loop
    assert loop.final_margin(30) == 3.0 and loop.final_margin(600) == 20.0
    lines = []
    with pytest.warns(UserWarning, match=r"not even one epoch fits in the time limit .* "
                                         r"takes about \d+ s: give a longer --time-limit"):
        result = train(TrainConfig(data="digits", model=SMALL, batch_size=64,
                                   time_limit=0.01, out=str(tmp_path), **RECIPE),
                       log=lines.append, progress=False)
    text = "\n".join(lines)       # the plan on stdout; the warning on stderr
    assert len(result.history) == 1      # the plan had said "1 epoch(s) fit": none did
    assert "not even one fits: the run trains one" in text and "epoch(s) fit" not in text


def test_a_time_limit_plans_at_most_max_epochs_and_times_the_frozen_model(tmp_path,
                                                                         monkeypatch):
    """A long limit on a small data set had planned 2,013,645 epochs, which a resume
    then refused (a checkpoint's config holds at most MAX_EPOCHS); and the timing copy of
    a model with frozen stages had trained them all, planning far too few epochs."""
    from convnet.train import loop
    monkeypatch.setattr(loop, "MAX_EPOCHS", 3)
    lines = []
    result = train(TrainConfig(data="digits", model=SMALL, limit=64, time_limit=600,
                               out=str(tmp_path / "long"), **RECIPE),
                   log=lines.append, progress=False)
    assert len(result.history) == 3
    assert "fit, the run trains at most 3" in "\n".join(lines)
    timed = []
    real = loop.make_optimizer
    monkeypatch.setattr(loop, "make_optimizer", lambda name, params, *a, **k: (
        timed.append(len(params)), real(name, params, *a, **k))[1])
    first = train(TrainConfig(data="digits", model=SMALL, epochs=1, limit=64,
                              out=str(tmp_path / "a"), **RECIPE), log=lambda *a: None,
                  progress=False)
    timed.clear()
    train(TrainConfig(data="digits", init_from=str(first.model_path), freeze=("0",),
                      limit=64, time_limit=600, out=str(tmp_path / "b"), **RECIPE),
          log=lambda *a: None, progress=False)
    assert len(timed) == 2 and timed[0] == timed[1] < len(first.model.trainable_params())


def test_the_data_share_of_an_epoch_leaves_out_its_checkpoint_writes(tmp_path, monkeypatch):
    """With --checkpoint-every, the writes inside an epoch had been counted as time on
    the data (26% of an epoch where slicing and shifting take 1%)."""
    from convnet.train import loop
    real = loop.save_checkpoint

    def slow(*args, **kwargs):
        time.sleep(0.02)
        return real(*args, **kwargs)
    monkeypatch.setattr(loop, "save_checkpoint", slow)
    result = train(TrainConfig(data="digits", model="INPUT 8x8x1 -> FC 10", epochs=1,
                               batch_size=32, checkpoint_every=1, out=str(tmp_path)),
                   log=lambda *a: None, progress=False)
    entry = result.history[0]
    assert entry["seconds"] > 38 * 0.02                 # the 39 writes inside the epoch
    assert entry["data_seconds"] < 0.2, entry


def test_flip_or_translate_turn_augmentation_on_where_the_default_is_off(tmp_path,
                                                                         monkeypatch):
    """On a data set whose default has no augmentation (MNIST's), --flip and --translate
    had been ignored without a word (with an explicit --no-augment they are an error).
    They turn augmentation on, with only what they ask for; a shift as large as the
    image is refused."""
    from convnet.train import loop
    real = loop.defaults_for
    monkeypatch.setattr(loop, "defaults_for", lambda name: {**real(name), "augment": False})
    for i, (given, shown) in enumerate(((dict(flip=True), "augmentation: flips"),
                                        (dict(translate=2), "augmentation: shifts of up to "
                                                            "2 px"))):
        lines = []
        cfg = TrainConfig(data="digits", model="INPUT 8x8x1 -> FC 10", epochs=1,
                          out=str(tmp_path / str(i)), **given)
        train(cfg, log=lines.append, progress=False)
        assert cfg.augment is None and cfg == TrainConfig(**{**vars(cfg), **given})
        text = "\n".join(lines)
        assert "turns augmentation on (the defaults for digits have none): only what is " \
               "asked for" in text and shown in text, text
    with pytest.raises(ValueError, match=r"--translate 8: shifts of up to that many pixels "
                                         r"move the 8x8 images \(W x H\) out of view; give "
                                         r"at most 7"):
        train(TrainConfig(data="digits", model="INPUT 8x8x1 -> FC 10", epochs=1,
                          translate=8, out=str(tmp_path / "t8")),
              log=lambda *a: None, progress=False)
