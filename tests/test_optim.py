"""Optimizers and lr schedules against torch.optim: long random runs, resumes, errors."""

import itertools
import json

import numpy as np
import pytest
import torch

from convnet.functional import threads
from convnet.layers.linear import Linear
from convnet.models.containers import Sequential
from convnet.train import optim
from convnet.train.optim import (
    OPTIMIZERS,
    SGD,
    Adagrad,
    Adam,
    AdamW,
    Momentum,
    Nesterov,
    RMSprop,
    make_optimizer,
)
from convnet.train.schedules import (
    CosineAnnealingLR,
    LinearWarmup,
    LRSchedule,
    OneCycleLR,
    StepLR,
    make_schedule,
)
from tests.utils import rel_error

# A conv weight, its bias, and an FC weight: the dotted keys of a small model.
SHAPES = {"features.0.weight": (4, 3, 3, 3), "features.0.bias": (4,),
          "classifier.weight": (5, 7)}
TORCH = {SGD: torch.optim.SGD, Momentum: torch.optim.SGD, Nesterov: torch.optim.SGD,
         Adagrad: torch.optim.Adagrad, RMSprop: torch.optim.RMSprop,
         Adam: torch.optim.Adam, AdamW: torch.optim.AdamW}



def make_params(seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def random_grads(rng, dtype=np.float64, frozen=0.2):
    """One step's gradients at a random scale; each key is left out with prob. `frozen`."""
    scale = 10.0 ** rng.uniform(-1, 1)
    grads = {k: (scale * rng.standard_normal(s)).astype(dtype) for k, s in SHAPES.items()}
    return {k: g for k, g in grads.items() if rng.random() >= frozen}


def torch_twin(opt, params):
    """The same optimizer in torch.optim, on tensor copies of ``params``."""
    hyper = dict(opt.hyperparameters())
    if "betas" in hyper:
        hyper["betas"] = tuple(hyper["betas"])
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    return tensors, TORCH[type(opt)](list(tensors.values()), foreach=False, **hyper)


def torch_step(topt, tensors, grads):
    for key, t in tensors.items():
        t.grad = torch.from_numpy(grads[key].copy()) if key in grads else None
    topt.step()


def case_list():
    """Hyperparameter combinations of every optimizer (the registry's variants included)."""
    cases = []
    for mu, damp, nest, wd in itertools.product((0.0, 0.5, 0.9), (0.0, 0.3), (False, True),
                                                (0.0, 1e-2)):
        if not nest or (mu > 0 and damp == 0):
            cases.append((SGD, dict(lr=0.05, momentum=mu, dampening=damp, nesterov=nest,
                                    weight_decay=wd)))
    cases += [(Momentum, dict(lr=0.02)), (Nesterov, dict(lr=0.02, weight_decay=1e-3))]
    for decay, wd, eps, init in itertools.product((0.0, 0.05), (0.0, 1e-2), (1e-10, 1e-4),
                                                  (0.0, 0.5)):
        cases.append((Adagrad, dict(lr=0.1, lr_decay=decay, weight_decay=wd, eps=eps,
                                    initial_accumulator_value=init)))
    for i, (alpha, mu, centered, wd) in enumerate(
            itertools.product((0.99, 0.8), (0.0, 0.9), (False, True), (0.0, 1e-2))):
        cases.append((RMSprop, dict(lr=0.01, alpha=alpha, eps=(1e-8, 1e-3)[i % 2],
                                    weight_decay=wd, momentum=mu, centered=centered)))
    for cls, betas, amsgrad, wd in itertools.product(
            (Adam, AdamW), ((0.9, 0.999), (0.5, 0.9), (0.0, 0.99)), (False, True),
            (0.0, 1e-2)):
        cases.append((cls, dict(lr=0.01, betas=betas, weight_decay=wd, amsgrad=amsgrad)))
    return cases


CASES = case_list()


@pytest.mark.parametrize("index", range(len(CASES)))
def test_matches_torch_over_long_random_runs(index):
    cls, hyper = CASES[index]
    rng = np.random.default_rng(index)
    params = make_params(index)
    opt = cls(params, **hyper)
    tensors, topt = torch_twin(opt, params)
    for step in range(300):
        grads = random_grads(rng)
        opt.step(grads)
        torch_step(topt, tensors, grads)
        if step % 100 == 99:
            for key, p in params.items():
                assert rel_error(p, tensors[key].detach().numpy()) < 1e-12, (step, key)
    arrays, meta = opt.state_dict()
    for key, t in tensors.items():
        tstate = topt.state[t]
        for name in opt._buffer_names():
            assert rel_error(arrays[f"{name}.{key}"], tstate[name].numpy()) < 1e-12, name
        if "step" in tstate:  # per-parameter step counts, frozen steps not counted
            assert meta["steps"][key] == int(tstate["step"])


@pytest.mark.parametrize("cls, hyper", [
    (SGD, dict(lr=0.05)), (SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    (Adagrad, dict(lr=0.1, lr_decay=0.01)), (RMSprop, dict(momentum=0.5, centered=True)),
    (Adam, dict(amsgrad=True, weight_decay=1e-2)), (AdamW, dict(lr=0.01))])
def test_float32_stays_float32_and_close_to_torch(cls, hyper):
    rng = np.random.default_rng(7)
    params = make_params(7, np.float32)
    opt = cls(params, **hyper)
    tensors, topt = torch_twin(opt, params)
    for _ in range(100):
        grads = random_grads(rng, np.float32)
        opt.step(grads)
        torch_step(topt, tensors, grads)
    arrays, _ = opt.state_dict()
    assert all(a.dtype == np.float32 for a in [*params.values(), *arrays.values()])
    for key, p in params.items():
        assert tensors[key].dtype == torch.float32
        assert rel_error(p, tensors[key].detach().numpy()) < 1e-5, key


@pytest.mark.parametrize("index", range(len(CASES)))
def test_updates_in_pieces_equal_whole_updates(index, monkeypatch):
    """Large parameters are updated in pieces split between the threads: bit for bit the
    whole-array update, for every optimizer; the first step (which makes the state) and a
    non-contiguous parameter run whole."""
    monkeypatch.setattr(threads, "PARALLEL_BYTES", 0)   # split however small
    cls, hyper = CASES[index]
    rng = np.random.default_rng(index)
    shapes = {"big": (7, 45), "strided": (9, 20), "small": (3,)}
    start = {k: rng.standard_normal(s) for k, s in shapes.items()}
    steps = [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(4)]
    results = []
    for piece in (1 << 30, 16):    # whole, then pieces of 16 values (and uneven ends)
        monkeypatch.setattr(optim, "UPDATE_PIECE", piece)
        params = {k: v.copy() for k, v in start.items()}
        params["strided"] = np.zeros((9, 40))[:, ::2]
        params["strided"][...] = start["strided"]
        opt = cls(params, **hyper)
        for grads in steps:
            opt.step(grads)
        results.append((params, opt.state_dict()[0]))
    (whole, whole_state), (pieces, pieces_state) = results
    for key in shapes:
        assert np.array_equal(whole[key], pieces[key]), key
    assert whole_state.keys() == pieces_state.keys()
    for key in whole_state:
        assert np.array_equal(whole_state[key], pieces_state[key]), key


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")   # np.matrix's own
def test_updates_in_pieces_of_a_matrix_subclass(monkeypatch):
    """An np.matrix parameter (2-D even when reshaped) is cut into pieces through a plain
    view of it: updated in place as a whole update would."""
    monkeypatch.setattr(optim, "UPDATE_PIECE", 4)
    p = np.asmatrix(np.ones((3, 5)))
    SGD({"w": p}, lr=0.1, momentum=0.9).step({"w": np.ones((3, 5))})  # makes the buffer
    SGD({"w": p}, lr=0.1).step({"w": np.ones((3, 5))})
    assert np.allclose(p, 0.8)


def test_large_updates_are_split_between_the_threads(monkeypatch):
    """A parameter above PARALLEL_BYTES goes through in_parallel in pieces."""
    calls = []
    real = optim.in_parallel
    monkeypatch.setattr(optim, "in_parallel",
                        lambda fn, size, nbytes: calls.append((size, nbytes)) or
                        real(fn, size, nbytes))
    monkeypatch.setattr(optim, "UPDATE_PIECE", 1000)
    p = np.zeros(5000, np.float32)
    opt = Momentum({"w": p}, lr=0.1)
    opt.step({"w": np.ones(5000, np.float32)})      # the first step makes the buffer: whole
    assert calls == []
    opt.step({"w": np.ones(5000, np.float32)})
    assert calls == [(5000, 3 * p.nbytes)]
    assert np.allclose(p, -0.1 - 0.19)


def test_float64_grads_on_float32_params_keep_float32():
    params = make_params(0, np.float32)
    opt = Adam(params, lr=0.01)
    opt.step({k: np.ones(s) for k, s in SHAPES.items()})  # float64 gradients
    assert all(p.dtype == np.float32 for p in params.values())


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_frozen_keys_are_untouched_and_grads_not_modified(name):
    params = make_params(1)
    start = {k: v.copy() for k, v in params.items()}
    opt = make_optimizer(name, params, 0.1, weight_decay=1e-2)
    rng = np.random.default_rng(1)
    for _ in range(5):
        grads = {"features.0.weight": rng.standard_normal(SHAPES["features.0.weight"]),
                 "features.0.bias": None}                       # None: frozen as well
        kept = {k: None if g is None else g.copy() for k, g in grads.items()}
        opt.step(grads)
        assert np.array_equal(grads["features.0.weight"], kept["features.0.weight"])
    for key in ("features.0.bias", "classifier.weight"):
        assert np.array_equal(params[key], start[key]), key
        assert key not in opt.steps and key not in opt.state
    assert not np.array_equal(params["features.0.weight"], start["features.0.weight"])
    assert opt.steps == {"features.0.weight": 5}


def test_updates_are_in_place_so_the_model_sees_them():
    model = Sequential(Linear(3, 2, rng=np.random.default_rng(0)))
    before = model.params()["0.weight"].copy()
    opt = SGD(model.params(), lr=0.5)
    opt.step({"0.weight": np.ones((2, 3), dtype=np.float32)})
    assert np.allclose(model.params()["0.weight"], before - 0.5)


RESUME_CASES = [(SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3)),
                (Nesterov, dict(lr=0.05)),
                (Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
                (RMSprop, dict(lr=0.01, momentum=0.9, centered=True, weight_decay=1e-3)),
                (Adam, dict(lr=0.01, amsgrad=True, weight_decay=1e-2)),
                (AdamW, dict(lr=0.01, betas=(0.8, 0.99)))]


@pytest.mark.parametrize("cls, hyper", RESUME_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_dict_resume_is_bit_identical(cls, hyper, dtype):
    rng = np.random.default_rng(3)
    stream = [random_grads(rng, dtype, frozen=0.3) for _ in range(60)]
    params = make_params(3, dtype)
    opt = cls(params, **hyper)
    for grads in stream[:25]:
        opt.step(grads)
    arrays, meta = opt.state_dict()
    saved = {k: v.copy() for k, v in arrays.items()}
    meta = json.loads(json.dumps(meta))                  # the checkpoint's JSON side
    resumed_params = {k: v.copy() for k, v in params.items()}
    resumed = cls(resumed_params, lr=0.123)              # other hyperparameters: restored
    resumed.load_state_dict(arrays, meta)
    for grads in stream[25:]:
        opt.step(grads)
        resumed.step(grads)
    for key in params:
        assert np.array_equal(params[key], resumed_params[key]), key
        assert resumed_params[key].dtype == dtype
    a1, m1 = opt.state_dict()
    a2, m2 = resumed.state_dict()
    assert m1 == m2 and a1.keys() == a2.keys()
    assert all(np.array_equal(a1[k], a2[k]) and a2[k].dtype == dtype for k in a1)
    assert all(np.array_equal(saved[k], arrays[k]) for k in saved)  # copies, not views


def test_state_dict_layout():
    params = make_params(0)
    opt = Adam(params, amsgrad=True)
    opt.step({"features.0.weight": np.ones(SHAPES["features.0.weight"])})
    arrays, meta = opt.state_dict()
    assert sorted(arrays) == ["exp_avg.features.0.weight", "exp_avg_sq.features.0.weight",
                              "max_exp_avg_sq.features.0.weight"]
    assert meta == {"type": "Adam", "steps": {"features.0.weight": 1},
                    "hyperparameters": {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                                        "weight_decay": 0.0, "amsgrad": True}}


def test_state_multiplier():
    assert [OPTIMIZERS[n].state_multiplier for n in
            ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")] == \
        [0, 1, 1, 1, 1, 2, 2]
    params = make_params(0)
    assert SGD(params, 0.1).state_multiplier == 0
    assert SGD(params, 0.1, momentum=0.9).state_multiplier == 1
    assert RMSprop(params, momentum=0.9).state_multiplier == 2
    assert RMSprop(params, momentum=0.9, centered=True).state_multiplier == 3
    assert Adam(params, amsgrad=True).state_multiplier == 3
    # the multiplier is the number of arrays the state really holds per parameter
    for name in OPTIMIZERS:
        opt = make_optimizer(name, params, 0.01)
        opt.step({k: np.ones(s) for k, s in SHAPES.items()})
        assert len(opt.state_dict()[0]) == opt.state_multiplier * len(SHAPES), name


def test_lr_is_a_public_attribute_read_at_every_step():
    w = np.zeros(2)
    opt = SGD({"w": w}, lr=0.1)
    opt.step({"w": np.ones(2)})
    opt.lr = 0.01
    opt.step({"w": np.ones(2)})
    assert np.allclose(w, -0.11)


# -- errors ------------------------------------------------------------------------------


def test_step_errors():
    params = make_params(0)
    opt = SGD(params, lr=0.1)
    with pytest.raises(ValueError, match="features.9.weight"):
        opt.step({"features.9.weight": np.ones(3)})
    with pytest.raises(ValueError, match=r"features.0.bias.*\(4,\).*\(5,\)"):
        opt.step({"features.0.bias": np.ones(5)})
    with pytest.raises(ValueError, match="floating-point"):
        opt.step({"features.0.bias": np.ones(4, dtype=int)})
    with pytest.raises(ValueError, match="dict"):
        opt.step([np.ones(4)])
    before = params["classifier.weight"].copy()
    with pytest.raises(ValueError):  # nothing is updated when one gradient is bad
        opt.step({"classifier.weight": np.ones((5, 7)), "features.0.bias": np.ones(3)})
    assert np.array_equal(params["classifier.weight"], before)


@pytest.mark.parametrize("cls, kwargs, word", [
    (SGD, dict(lr=-0.1), "lr"), (Adam, dict(lr=-1e-3), "lr"), (Adagrad, dict(lr=-1), "lr"),
    (RMSprop, dict(lr=float("nan")), "lr"), (SGD, dict(lr="0.1"), "lr"),
    (SGD, dict(lr=0.1, momentum=-0.9), "momentum"),
    (SGD, dict(lr=0.1, weight_decay=-1e-4), "weight_decay"),
    (SGD, dict(lr=0.1, nesterov=True), "nesterov"),
    (SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "dampening"),
    (Adam, dict(betas=(1.0, 0.999)), r"betas\[0\]"),
    (Adam, dict(betas=(-0.1, 0.999)), r"betas\[0\]"),
    (AdamW, dict(betas=(0.9, 1.0)), r"betas\[1\]"), (Adam, dict(betas=0.9), "pair"),
    (Adam, dict(eps=-1e-8), "eps"), (RMSprop, dict(alpha=-0.5), "alpha"),
    (RMSprop, dict(momentum=-1), "momentum"), (Adagrad, dict(lr_decay=-1), "lr_decay"),
    (Adagrad, dict(initial_accumulator_value=-1), "initial_accumulator_value"),
    # an int beyond the largest float had raised a bare OverflowError
    (SGD, dict(lr=10 ** 400), "lr must be a finite number >= 0, got 1000"),
    (Adam, dict(betas=(10 ** 400, 0.9)), r"betas\[0\] must be a finite number in \[0, 1\)"),
    (SGD, dict(lr=0.1, dampening=float("nan")), "dampening must be a finite number, got "
                                                "nan$")])
def test_bad_hyperparameters(cls, kwargs, word):
    with pytest.raises(ValueError, match=f"{cls.__name__}: .*{word}"):
        cls(make_params(0), **kwargs)


def test_adam_takes_betas_as_an_array_as_torch_does():
    w = make_params(0)
    ours = Adam(w, betas=np.array([0.8, 0.9]))
    assert ours.betas == (0.8, 0.9)
    with pytest.raises(ValueError, match="betas must be a pair"):
        Adam(w, betas=np.array([[0.8, 0.9]]))


def test_bad_params():
    with pytest.raises(ValueError, match="model.params()"):
        SGD([np.ones(3)], lr=0.1)
    with pytest.raises(ValueError, match="'w'.*floating-point"):
        SGD({"w": np.ones(3, dtype=int)}, lr=0.1)
    frozen = np.ones(3)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        SGD({"w": frozen}, lr=0.1)


def test_make_optimizer():
    params = make_params(0)
    opt = make_optimizer("momentum", params, 0.1)
    assert isinstance(opt, SGD) and opt.momentum == 0.9 and not opt.nesterov
    opt = make_optimizer("nesterov", params, 0.1)
    assert opt.nesterov and opt.momentum == 0.9
    opt = make_optimizer("adamw", params, 1e-3, betas=(0.5, 0.9))
    assert isinstance(opt, AdamW) and opt.betas == (0.5, 0.9) and opt.weight_decay == 1e-2
    with pytest.raises(ValueError, match="sgd, momentum, nesterov, adagrad, rmsprop, adam, "
                                         "adamw"):
        make_optimizer("lbfgs", params, 0.1)
    with pytest.raises(ValueError, match="beta1"):
        make_optimizer("adam", params, 0.1, beta1=0.9)


def test_load_state_dict_errors():
    params = make_params(0)
    opt = Adam(params)
    opt.step({k: np.ones(s) for k, s in SHAPES.items()})
    arrays, meta = opt.state_dict()
    with pytest.raises(ValueError, match="'Adam', not SGD"):
        SGD(params, 0.1).load_state_dict(arrays, meta)
    missing = {k: v for k, v in arrays.items() if k != "exp_avg.features.0.bias"}
    with pytest.raises(ValueError, match=r"missing \['exp_avg.features.0.bias'\]"):
        Adam(params).load_state_dict(missing, meta)
    with pytest.raises(ValueError, match=r"unexpected \['extra.features.0.bias'\]"):
        Adam(params).load_state_dict({**arrays, "extra.features.0.bias": np.ones(4)}, meta)
    other = {k: v for k, v in params.items() if k != "classifier.weight"}
    with pytest.raises(ValueError, match="classifier.weight"):
        Adam(other).load_state_dict(arrays, meta)
    bad = {**arrays, "exp_avg.features.0.bias": np.ones(5)}
    with pytest.raises(ValueError, match=r"shape \(4,\), got float64 \(5,\)"):
        Adam(params).load_state_dict(bad, meta)
    with pytest.raises(ValueError, match="betas"):
        Adam(params).load_state_dict(arrays, {**meta, "hyperparameters": {"betas": [2, 0]}})
    # a count of 10**4000 had passed, to overflow in the bias correction (float(step))
    huge = {**meta, "steps": {**meta["steps"], "features.0.bias": 10**4000}}
    with pytest.raises(ValueError, match=r"step counts must be ints from 0 to "
                                         r"9,007,199,254,740,992, got"):
        Adam(params).load_state_dict(arrays, huge)


# -- schedules ---------------------------------------------------------------------------


def torch_lrs(make, base_lr, steps):
    """The lr sequence of a torch scheduler: get_last_lr() after 0, 1, ... steps."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = make(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return lrs


def our_lrs(schedule, steps):
    lrs = []
    for _ in range(steps):
        assert schedule.optimizer.lr == schedule.get_last_lr()[0]
        lrs.append(schedule.get_last_lr()[0])
        schedule.step()
    return lrs


def toy_optimizer(lr=0.1):
    return SGD({"w": np.zeros(3)}, lr=lr)


@pytest.mark.parametrize("step_size, gamma, base_lr", list(itertools.product(
    (1, 2, 3, 7, 30), (0.1, 0.5, 0.97), (0.1, 3e-4))))
def test_step_lr_matches_torch(step_size, gamma, base_lr):
    ours = our_lrs(StepLR(toy_optimizer(base_lr), step_size, gamma), 100)
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size, gamma),
                       base_lr, 100)
    assert rel_error(ours, theirs) < 1e-12
    assert all(abs(a - b) <= 1e-12 * abs(b) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("T_max, eta_min, base_lr", list(itertools.product(
    (1, 2, 5, 10, 37), (0.0, 1e-3, 0.05), (0.1, 1.5))))
def test_cosine_matches_torch(T_max, eta_min, base_lr):
    steps = 3 * T_max + 5  # past T_max the cosine goes back up, in both
    ours = our_lrs(CosineAnnealingLR(toy_optimizer(base_lr), T_max, eta_min), steps)
    theirs = torch_lrs(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max, eta_min),
        base_lr, steps)
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 1e-12 * base_lr
    assert ours[T_max] == eta_min and ours[0] == base_lr


@pytest.mark.parametrize("warmup", [0, 1, 4, 10])
def test_linear_warmup_values(warmup):
    base = 0.3
    lrs = our_lrs(LinearWarmup(toy_optimizer(base), warmup), warmup + 5)
    expected = [base * (t + 1) / (warmup + 1) for t in range(warmup)] + [base] * 5
    assert lrs == pytest.approx(expected, rel=1e-15)
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1: warmup + 1]))
    if warmup:
        assert lrs[0] <= base / warmup


@pytest.mark.parametrize("warmup", [0, 3, 8])
def test_warmup_hands_over_to_cosine(warmup):
    opt = toy_optimizer(0.2)
    schedule = make_schedule("warmup+cosine", opt, warmup_steps=warmup, T_max=20,
                             eta_min=0.01)
    lrs = our_lrs(schedule, warmup + 30)
    cosine = our_lrs(CosineAnnealingLR(toy_optimizer(0.2), 20, 0.01), 30)
    assert lrs[warmup:] == cosine
    assert lrs[:warmup] == [0.2 * (t + 1) / (warmup + 1) for t in range(warmup)]
    assert schedule.after.last_epoch == 30


def test_warmup_then_step():
    opt = toy_optimizer(1.0)
    schedule = LinearWarmup(opt, 2, after=StepLR(opt, step_size=3, gamma=0.5))
    assert our_lrs(schedule, 9) == [1 / 3, 2 / 3, 1, 1, 1, 0.5, 0.5, 0.5, 0.25]


@pytest.mark.parametrize("name, kwargs", [
    ("none", {}), ("step", dict(step_size=4, gamma=0.5)),
    ("cosine", dict(T_max=13, eta_min=1e-4)),
    ("warmup+cosine", dict(warmup_steps=5, T_max=11))])
def test_schedule_resume_through_json(name, kwargs):
    opt = toy_optimizer(0.1)
    schedule = make_schedule(name, opt, **kwargs)
    our_lrs(schedule, 12)
    state = json.loads(json.dumps(schedule.state_dict()))
    rest = our_lrs(schedule, 20)
    other = toy_optimizer(7.0)
    other_kwargs = {k: v * 2 if isinstance(v, int) else v / 2 for k, v in kwargs.items()}
    resumed = make_schedule(name, other, **other_kwargs)
    resumed.load_state_dict(state)
    assert other.lr == resumed.get_last_lr()[0] == rest[0]
    assert our_lrs(resumed, 20) == rest
    assert resumed.state_dict() == schedule.state_dict()


def test_make_schedule_from_total_steps():
    assert make_schedule("none", toy_optimizer(0.1), total_steps=100).get_last_lr() == [0.1]
    step = make_schedule("step", toy_optimizer(0.1), total_steps=90)
    assert (step.step_size, step.gamma) == (30, 0.1)
    cosine = make_schedule("cosine", toy_optimizer(0.1), total_steps=90)
    assert cosine.T_max == 90 and our_lrs(cosine, 91)[-1] == 0.0  # eta_min at the end
    both = make_schedule("warmup+cosine", toy_optimizer(0.1), total_steps=200)
    assert (both.warmup_steps, both.after.T_max) == (10, 190)
    both = make_schedule("warmup+cosine", toy_optimizer(0.1), total_steps=200,
                         warmup_steps=50)
    assert (both.warmup_steps, both.after.T_max) == (50, 150)
    assert make_schedule("cosine", toy_optimizer(), total_steps=90, T_max=10).T_max == 10
    with pytest.raises(ValueError, match="total_steps must be a positive int, got 0"):
        make_schedule("cosine", toy_optimizer(), total_steps=0)
    with pytest.raises(ValueError, match="T_max.*total_steps"):
        make_schedule("cosine", toy_optimizer())


def test_schedule_errors():
    opt = toy_optimizer()
    with pytest.raises(ValueError, match="StepLR: step_size must be a positive int, got 0"):
        StepLR(opt, 0)
    with pytest.raises(ValueError, match="StepLR: gamma"):
        StepLR(opt, 3, gamma=-0.1)
    with pytest.raises(ValueError, match="StepLR: gamma must be a finite number > 0, got 1000"):
        StepLR(opt, 3, gamma=10 ** 400)             # had raised a bare OverflowError
    with pytest.raises(ValueError, match="StepLR: step_size must be at most 2\\*\\*53"):
        StepLR(opt, 10 ** 400)
    state = CosineAnnealingLR(opt, 10).state_dict()
    with pytest.raises(ValueError, match="last_epoch must be at most 2\\*\\*53"):
        CosineAnnealingLR(opt, 10).load_state_dict({**state, "last_epoch": 10 ** 400})
    with pytest.raises(ValueError, match="CosineAnnealingLR: T_max"):
        CosineAnnealingLR(opt, 0)
    with pytest.raises(ValueError, match="CosineAnnealingLR: eta_min"):
        CosineAnnealingLR(opt, 10, eta_min=-1.0)
    with pytest.raises(ValueError, match="LinearWarmup: warmup_steps"):
        LinearWarmup(opt, -1)
    with pytest.raises(ValueError, match="same optimizer"):
        LinearWarmup(opt, 3, after=StepLR(toy_optimizer(), 3))
    with pytest.raises(ValueError, match="convnet Optimizer"):
        LRSchedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
    with pytest.raises(ValueError, match="none, step, cosine, warmup\\+cosine"):
        make_schedule("linear", opt)
    with pytest.raises(ValueError, match="T_max"):
        make_schedule("cosine", opt, T=10)
    with pytest.raises(ValueError, match="'StepLR', not CosineAnnealingLR"):
        CosineAnnealingLR(opt, 10).load_state_dict(StepLR(opt, 3).state_dict())
    with pytest.raises(ValueError, match="after"):
        LinearWarmup(opt, 2).load_state_dict(make_schedule(
            "warmup+cosine", opt, warmup_steps=2, T_max=5).state_dict())


@pytest.mark.parametrize("index", range(0, len(CASES), 3))
def test_zero_d_parameters_match_torch(index):
    """A 0-d parameter (a scalar such as a temperature) is updated in place like torch's:
    NumPy's operations on 0-d arrays give scalars, which had raised TypeError in Adam,
    Adagrad and RMSprop and frozen SGD's momentum buffer at its first value."""
    cls, hyper = CASES[index]
    rng = np.random.default_rng(index)
    params = {"t": np.array(rng.standard_normal()), "w": rng.standard_normal(3)}
    opt = cls(params, **hyper)
    tensors, topt = torch_twin(opt, params)
    for _ in range(40):
        grads = {"t": np.array(rng.standard_normal()), "w": rng.standard_normal(3)}
        opt.step(grads)
        torch_step(topt, tensors, grads)
    assert params["t"].shape == ()
    assert rel_error(params["t"], tensors["t"].detach().numpy()) < 1e-12
    arrays, meta = opt.state_dict()
    assert all(a.shape == () for name, a in arrays.items() if name.endswith(".t"))
    again = cls({"t": np.array(0.0), "w": np.zeros(3)}, **hyper)
    again.load_state_dict(arrays, meta)          # round-trips


def test_positional_arguments_follow_torch():
    """SGD(params, lr, momentum, dampening, weight_decay, nesterov) and Adagrad(params, lr,
    lr_decay, weight_decay, initial_accumulator_value, eps), as torch.optim: ported
    positional calls had switched Nesterov on and dropped weight decay, or set eps."""
    p = {"w": np.ones(2)}
    sgd = SGD(p, 0.1, 0.9, 0, 1e-4)
    assert (sgd.weight_decay, sgd.nesterov) == (1e-4, False)
    torch_sgd = torch.optim.SGD([torch.zeros(1)], 0.1, 0.9, 0, 1e-4)
    assert torch_sgd.defaults["weight_decay"] == 1e-4
    ada = Adagrad(p, 0.01, 0, 0, 0.1)
    assert (ada.initial_accumulator_value, ada.eps) == (0.1, 1e-10)
    assert SGD(p).lr == torch.optim.SGD([torch.zeros(1)]).defaults["lr"] == 1e-3
    for make, word in ((lambda: SGD(p, 0.1, 0.9, nesterov="no"), "nesterov"),
                       (lambda: RMSprop(p, centered=1), "centered"),
                       (lambda: Adam(p, amsgrad="yes"), "amsgrad")):
        with pytest.raises(ValueError, match=f"{word} must be True or False"):
            make()


@pytest.mark.parametrize("cls, hyper", [(Adam, dict(lr=0.1, betas=(0.0, 0.0))),
                                        (Adam, dict(lr=0.1, betas=(0.3, 0.9))),
                                        (RMSprop, dict(lr=0.1, alpha=0.3, centered=True))])
def test_running_means_round_as_torchs_lerp(cls, hyper):
    """torch moves exp_avg (and centered RMSprop's grad_avg) with lerp_, which for a weight
    of 0.5 or more computes end - (end - self) * (1 - weight): after a gradient of 1e20
    and then 1, beta1 = 0 gives exp_avg = 1 exactly (the other form had given 0)."""
    params = {"w": np.zeros(2)}
    opt = cls(params, **hyper)
    tensors, topt = torch_twin(opt, params)
    for g in (np.array([1e20, 1.0]), np.array([1.0, 1.0]), np.array([-3.0, 2.0])):
        opt.step({"w": g})
        torch_step(topt, tensors, {"w": g})
        arrays, _ = opt.state_dict()
        for name in opt._buffer_names():     # torch's vectorized lerp fuses (FMA)
            np.testing.assert_allclose(arrays[f"{name}.w"],
                                       topt.state[tensors["w"]][name].numpy(), rtol=1e-14)
        np.testing.assert_allclose(params["w"], tensors["w"].detach().numpy(), rtol=1e-14)


def test_an_optimizer_refuses_no_parameters_and_one_array_twice():
    """torch.optim refuses an empty parameter list; the same array under two names would
    be updated twice a step."""
    with pytest.raises(ValueError, match="SGD: params is empty: nothing to optimize"):
        SGD({}, lr=0.1)
    w = np.zeros(3)
    with pytest.raises(ValueError, match="Adam: parameters 'a' and 'b' are the same array"):
        Adam({"a": w, "b": w})


def test_schedule_arguments_and_states_that_fail_change_nothing():
    """A warmup_steps that is not an int is named (it had failed inside a subtraction,
    or blamed a T_max the caller never gave), and a state that fails part way through
    load_state_dict leaves the schedule and the optimizer's lr as they were."""
    opt = SGD({"w": np.zeros(1)}, lr=0.1)
    for bad in ("5", 5.0, None, -1):
        with pytest.raises(ValueError, match=r"make_schedule: warmup_steps must be a "
                                             r"non-negative int, got "):
            make_schedule("warmup+cosine", opt, total_steps=100, warmup_steps=bad)
    schedule = OneCycleLR(opt, 10)
    schedule.step()
    schedule.step()
    before = (dict(schedule.state_dict()), opt.lr)
    state = schedule.state_dict()
    state.update(last_epoch=50, total_steps=20)
    with pytest.raises(ValueError, match="stepped 50 times, past its total_steps of 20"):
        schedule.load_state_dict(state)
    assert (schedule.state_dict(), opt.lr) == before
    schedule.step()                                     # and it goes on as before
    assert schedule.last_epoch == 3


def test_a_warmup_state_that_fails_leaves_its_cosine_part_alone():
    """LinearWarmup loaded its cosine part's state first: a state whose own part failed
    had left the cosine part changed (base_lr 5, T_max 3: the next lrs 5.0, 3.75 ...)."""
    from convnet.train.schedules import make_schedule

    def run(schedule, opt):
        lrs = []
        for _ in range(5):
            schedule.step()
            lrs.append(opt.lr)
        return lrs
    opt = SGD({"w": np.zeros(1)}, lr=0.1)
    schedule = make_schedule("warmup+cosine", opt, warmup_steps=2, T_max=10)
    good = schedule.state_dict()
    bad = dict(good, last_epoch=-1, after=dict(good["after"], base_lr=5.0, T_max=3))
    with pytest.raises(ValueError, match="last_epoch must be a non-negative int, got -1"):
        schedule.load_state_dict(bad)
    assert schedule.state_dict() == good
    fresh = SGD({"w": np.zeros(1)}, lr=0.1)
    assert run(schedule, opt) == run(make_schedule("warmup+cosine", fresh, warmup_steps=2,
                                                   T_max=10), fresh)


def test_an_optimizer_of_the_trainable_params_takes_a_frozen_models_grads():
    """model.grads() gives a frozen layer's keys as None; an optimizer made of
    trainable_params() had refused them as 'keys that are not parameters'."""
    from convnet.functional.loss import softmax_cross_entropy
    from convnet.models import from_notation
    net = from_notation("INPUT 4x4x1 -> CONV 3 -> RELU -> FC 2", dtype=np.float64,
                        rng=np.random.default_rng(0)).freeze("0")
    opt = Adam(net.trainable_params())
    before = {k: v.copy() for k, v in net.params().items()}
    _, d = softmax_cross_entropy(net.forward(np.ones((2, 1, 4, 4))), np.array([0, 1]))
    net.backward(d)
    opt.step(net.grads())
    after = net.params()
    assert all(np.array_equal(after[k], before[k]) == k.startswith("0.") for k in after)
    with pytest.raises(ValueError, match="keys that are not parameters"):
        opt.step({"0.weight": np.zeros_like(after["0.weight"])})   # an array is refused
