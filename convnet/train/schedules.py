"""Learning-rate schedules: set ``optimizer.lr`` once per epoch or per iteration.

A schedule remembers the optimizer's base learning rate and a counter ``last_epoch``.
Building it sets the lr for epoch 0; each ``step()`` advances the counter by one and sets
the lr for it. Whether a "step" is an epoch or an iteration is the caller's choice, as in
torch.optim.lr_scheduler:

    for epoch in range(epochs):
        train_one_epoch(model, optimizer)
        schedule.step()

Every lr is a closed-form function of ``last_epoch`` (``lr_at``), so a resumed schedule
gives bit-identical rates. ``StepLR`` and ``CosineAnnealingLR`` match PyTorch's rates.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping

import numpy as np

from convnet.layers.base import real
from convnet.train.optim import Named, Optimizer

MAX_COUNT = 1 << 53      # steps of a schedule: every count up to it is exact as a float


def _int(value, name, where, low):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        kind = "positive" if low == 1 else "non-negative"
        raise ValueError(f"{where}: {name} must be a {kind} int, got {value!r:.80}")
    if value > MAX_COUNT:
        raise ValueError(f"{where}: {name} must be at most 2**53, got {value!r:.80}")
    return int(value)


def _float(value, name, where, low=0.0, strict=False):
    expected = f"a finite number {'>' if strict else '>='} {low:g}"
    number = real(value, name, where, expected=expected)
    if number < low or (strict and number == low):
        raise ValueError(f"{where}: {name} must be {expected}, got {value!r:.80}")
    return number


class LRSchedule(Named):
    """A constant learning rate, and the base of every schedule (``make_schedule("none")``).

    Args:
        optimizer: an Optimizer; its current ``lr`` becomes ``base_lr``.

    Subclasses give ``lr_at(epoch)`` and their ``hyperparameters()``.

    >>> from convnet.train.optim import SGD
    >>> optimizer = SGD({"w": np.zeros(1)}, lr=0.1)
    >>> schedule = LRSchedule(optimizer)
    >>> schedule.step()
    >>> schedule.get_last_lr()
    [0.1]
    """

    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise ValueError(f"{self.where}: optimizer must be a convnet Optimizer, "
                             f"got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0
        self._apply()

    def lr_at(self, epoch):
        """The learning rate for step ``epoch`` (0 is the first)."""
        return self.base_lr

    def step(self):
        """Advance one epoch (or iteration) and set the optimizer's lr for it."""
        self.last_epoch += 1
        self._apply()

    def _apply(self):
        self._last_lr = self.optimizer.lr = self.lr_at(self.last_epoch)

    def get_last_lr(self):
        """The lr set by the last step, as a one-element list (PyTorch: one per group)."""
        return [self._last_lr]

    # -- checkpoints ---------------------------------------------------------------------
    def hyperparameters(self):
        return {}

    def _configure(self):
        pass

    def state_dict(self):
        """A JSON-ready dict: type, base_lr, last_epoch and the hyperparameters."""
        return {"type": type(self).__name__, "base_lr": self.base_lr,
                "last_epoch": self.last_epoch, **self.hyperparameters()}

    def load_state_dict(self, state):
        """Restore a ``state_dict`` and set the optimizer's lr for the restored epoch."""
        where = self.where
        if not isinstance(state, Mapping) or state.get("type") != type(self).__name__:
            got = state.get("type") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"{where}: state was saved by {got!r}, not {type(self).__name__}")
        missing = sorted(k for k in ("base_lr", "last_epoch", *self.hyperparameters())
                         if k not in state)
        if missing:
            raise ValueError(f"{where}: state lacks {missing}")
        before, lr = dict(self.__dict__), self.optimizer.lr
        try:
            self._configure(**{k: state[k] for k in self.hyperparameters()})
            self.base_lr = _float(state["base_lr"], "base_lr", where)
            self.last_epoch = _int(state["last_epoch"], "last_epoch", where, low=0)
            self._apply()
        except Exception:    # a state that fails part way changes nothing
            self.__dict__.clear()
            self.__dict__.update(before)
            self.optimizer.lr = lr
            raise


class StepLR(LRSchedule):
    """Multiply the lr by gamma every step_size steps (torch.optim.lr_scheduler.StepLR).

    Args:
        optimizer: an Optimizer. step_size: steps between decays (positive int).
        gamma: the decay factor (> 0).

    lr_t = base_lr * gamma ** (t // step_size).

    >>> from convnet.train.optim import SGD
    >>> optimizer = SGD({"w": np.zeros(1)}, lr=0.1)
    >>> schedule = StepLR(optimizer, step_size=2, gamma=0.5)
    >>> lrs = []
    >>> for epoch in range(5):
    ...     lrs.append(optimizer.lr)      # ... train one epoch with this lr ...
    ...     schedule.step()
    >>> lrs
    [0.1, 0.1, 0.05, 0.05, 0.025]
    """

    def __init__(self, optimizer, step_size, gamma=0.1):
        self._configure(step_size, gamma)
        super().__init__(optimizer)

    def _configure(self, step_size, gamma):
        self.step_size = _int(step_size, "step_size", self.where, low=1)
        self.gamma = _float(gamma, "gamma", self.where, strict=True)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)

    def hyperparameters(self):
        return {"step_size": self.step_size, "gamma": self.gamma}


class CosineAnnealingLR(LRSchedule):
    """Cosine annealing from base_lr down to eta_min over T_max steps (SGDR, no restarts).

    Args:
        optimizer: an Optimizer. T_max: steps of the half cosine (positive int).
        eta_min: the lowest lr (>= 0).

    lr_t = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2. Past T_max the
    cosine goes on (back up towards base_lr), as PyTorch's does.

    >>> from convnet.train.optim import SGD
    >>> optimizer = SGD({"w": np.zeros(1)}, lr=0.1)
    >>> schedule = CosineAnnealingLR(optimizer, T_max=4)
    >>> lrs = []
    >>> for epoch in range(5):
    ...     lrs.append(round(optimizer.lr, 4))
    ...     schedule.step()
    >>> lrs
    [0.1, 0.0854, 0.05, 0.0146, 0.0]
    """

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self._configure(T_max, eta_min)
        super().__init__(optimizer)

    def _configure(self, T_max, eta_min):
        self.T_max = _int(T_max, "T_max", self.where, low=1)
        self.eta_min = _float(eta_min, "eta_min", self.where)

    def lr_at(self, epoch):
        cosine = 1 + math.cos(math.pi * epoch / self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * cosine / 2

    def hyperparameters(self):
        return {"T_max": self.T_max, "eta_min": self.eta_min}


class LinearWarmup(LRSchedule):
    """Linear warm-up from ~0 to base_lr over warmup_steps, then another schedule.

    Args:
        optimizer: an Optimizer.
        warmup_steps: W, the number of warm-up steps (0: hand over at once).
        after: the schedule that takes over at step W, built on the same optimizer and
            run from its own step 0; None keeps base_lr constant.

    lr_t = base_lr * (t + 1) / (W + 1) for t < W (as nanoGPT), then after.lr_at(t - W).
    base_lr is after's base_lr when there is one.

    >>> from convnet.train.optim import SGD
    >>> optimizer = SGD({"w": np.zeros(1)}, lr=0.1)
    >>> cosine = CosineAnnealingLR(optimizer, T_max=2)
    >>> schedule = LinearWarmup(optimizer, warmup_steps=3, after=cosine)
    >>> lrs = []
    >>> for step in range(6):
    ...     lrs.append(round(optimizer.lr, 4))
    ...     schedule.step()
    >>> lrs
    [0.025, 0.05, 0.075, 0.1, 0.05, 0.0]
    """

    def __init__(self, optimizer, warmup_steps, after=None):
        self._configure(warmup_steps)
        if after is not None:
            if not isinstance(after, LRSchedule):
                raise ValueError(f"{self.where}: after must be a schedule or None, "
                                 f"got {type(after).__name__}")
            if after.optimizer is not optimizer:
                raise ValueError(f"{self.where}: after must schedule the same optimizer")
        self.after = after
        super().__init__(optimizer)
        if after is not None:
            self.base_lr = after.base_lr
            self._apply()

    def _configure(self, warmup_steps):
        self.warmup_steps = _int(warmup_steps, "warmup_steps", self.where, low=0)

    def lr_at(self, epoch):
        if epoch < self.warmup_steps:
            return self.base_lr * (epoch + 1) / (self.warmup_steps + 1)
        if self.after is None:
            return self.base_lr
        return self.after.lr_at(epoch - self.warmup_steps)

    def _apply(self):
        super()._apply()
        if self.after is not None:  # keep the inner schedule's counter in step
            self.after.last_epoch = max(self.last_epoch - self.warmup_steps, 0)
            self.after._last_lr = self.after.lr_at(self.after.last_epoch)

    def hyperparameters(self):
        return {"warmup_steps": self.warmup_steps}

    def state_dict(self):
        after = None if self.after is None else self.after.state_dict()
        return {**super().state_dict(), "after": after}

    def load_state_dict(self, state):
        saved = state.get("after") if isinstance(state, Mapping) else None
        if (saved is None) != (self.after is None):
            raise ValueError(f"{self.where}: state has after={saved!r} but this schedule "
                             f"has after={self.after!r}")
        if self.after is None:
            super().load_state_dict(state)
            return
        before, lr = dict(self.after.__dict__), self.optimizer.lr
        self.after.load_state_dict(saved)
        try:
            super().load_state_dict(state)
        except Exception:    # this one's state failed: the after schedule's goes back too
            self.after.__dict__.clear()
            self.after.__dict__.update(before)
            self.optimizer.lr = lr
            raise


class OneCycleLR(LRSchedule):
    """One cycle (Smith and Topin's super-convergence, torch's OneCycleLR): the lr climbs
    from base_lr / div_factor to base_lr over the first pct_start of total_steps, then
    falls to base_lr / div_factor / final_div_factor by the last step.

    Args:
        optimizer: an Optimizer; its lr is the peak (torch's max_lr).
        total_steps: steps of the whole cycle (positive int); step total_steps - 1 is the
            last, at the lowest lr, and the lr set by the step after it stays there (torch
            extrapolates it: the linear ramp's is below 0, which a finished run's
            checkpoint would keep). Stepping more than total_steps times is a ValueError,
            as in torch.
        pct_start: the share of the steps spent climbing, in (0, 1).
        anneal: "cos" (half cosines, torch's default) or "linear" (a triangle: the
            "triangular" schedule).
        div_factor, final_div_factor: the start is base_lr / div_factor, the end the
            start / final_div_factor.

    The rates are torch.optim.lr_scheduler.OneCycleLR's with cycle_momentum=False
    (convnet does not cycle momentum).

    >>> from convnet.train.optim import SGD
    >>> optimizer = SGD({"w": np.zeros(1)}, lr=1.0)
    >>> schedule = OneCycleLR(optimizer, total_steps=5, pct_start=0.4, anneal="linear",
    ...                       div_factor=10, final_div_factor=10)
    >>> lrs = []
    >>> for step in range(5):
    ...     lrs.append(round(optimizer.lr, 4))
    ...     schedule.step()
    >>> lrs
    [0.1, 1.0, 0.67, 0.34, 0.01]
    """

    def __init__(self, optimizer, total_steps, pct_start=0.3, anneal="cos", div_factor=25.0,
                 final_div_factor=1e4):
        self._configure(total_steps, pct_start, anneal, div_factor, final_div_factor)
        super().__init__(optimizer)

    def _configure(self, total_steps, pct_start, anneal, div_factor, final_div_factor):
        self.total_steps = _int(total_steps, "total_steps", self.where, low=1)
        self.pct_start = _float(pct_start, "pct_start", self.where, strict=True)
        if not self.pct_start < 1:
            raise ValueError(f"{self.where}: pct_start must be in (0, 1), got {pct_start!r}")
        if anneal not in ("cos", "linear"):
            raise ValueError(f"{self.where}: anneal must be 'cos' or 'linear', got "
                             f"{anneal!r}")
        self.anneal = anneal
        self.div_factor = _float(div_factor, "div_factor", self.where, strict=True)
        self.final_div_factor = _float(final_div_factor, "final_div_factor", self.where,
                                       strict=True)

    def lr_at(self, epoch):
        if epoch > self.total_steps:
            raise ValueError(f"{self.where}: stepped {epoch} times, past its total_steps "
                             f"of {self.total_steps}")
        start = self.base_lr / self.div_factor
        end = start / self.final_div_factor
        peak = float(self.pct_start * self.total_steps) - 1      # torch's first phase end
        if epoch <= peak:
            a, b, pct = start, self.base_lr, epoch / peak if peak > 0 else 1.0
        else:               # after the last step (epoch == total_steps) it stays at the end
            last = self.total_steps - 1
            a, b, pct = self.base_lr, end, min((epoch - peak) / (last - peak), 1.0)
        if self.anneal == "cos":
            return b + (a - b) / 2 * (math.cos(math.pi * pct) + 1)
        return (b - a) * pct + a

    def hyperparameters(self):
        return {"total_steps": self.total_steps, "pct_start": self.pct_start,
                "anneal": self.anneal, "div_factor": self.div_factor,
                "final_div_factor": self.final_div_factor}


def _triangular(optimizer, total_steps, pct_start=0.25, div_factor=25.0,
                final_div_factor=1e4):
    """One cycle of linear ramps: up over pct_start of the steps, down to ~0 after."""
    return OneCycleLR(optimizer, total_steps, pct_start, "linear", div_factor,
                      final_div_factor)


def _warmup_cosine(optimizer, warmup_steps, T_max, eta_min=0.0):
    """Warm up over warmup_steps, then a cosine over T_max more steps."""
    return LinearWarmup(optimizer, warmup_steps,
                        after=CosineAnnealingLR(optimizer, T_max, eta_min))


SCHEDULES = {"none": LRSchedule, "step": StepLR, "cosine": CosineAnnealingLR,
             "warmup+cosine": _warmup_cosine, "onecycle": OneCycleLR,
             "triangular": _triangular}


WARMUP_FRACTION = 0.05  # "warmup+cosine" with total_steps: warm up over 5% of the run


def _from_total(name, total, kwargs):
    """Arguments that ``total_steps`` fills in when they are not given."""
    if name == "step":
        return {"step_size": -(-total // 3)}                # two decays by gamma
    if name == "cosine":
        return {"T_max": total}
    if name in ("onecycle", "triangular"):
        return {"total_steps": total}
    if name == "warmup+cosine":
        warmup = (_int(kwargs["warmup_steps"], "warmup_steps", "make_schedule", low=0)
                  if "warmup_steps" in kwargs else int(total * WARMUP_FRACTION))
        return {"warmup_steps": warmup, "T_max": max(total - warmup, 1)}
    return {}


def make_schedule(name, optimizer, total_steps=None, **kwargs):
    """Build a schedule by name: make_schedule("cosine", optimizer, T_max=50).

    Names and arguments: "none" (constant lr), "step" (step_size, gamma), "cosine"
    (T_max, eta_min), "warmup+cosine" (warmup_steps, T_max, eta_min: T_max counts the
    steps after the warm-up), "onecycle" (OneCycleLR: total_steps, pct_start, anneal,
    div_factor, final_div_factor), "triangular" (one cycle of linear ramps, pct_start
    0.25).

    total_steps: how many times ``step()`` will be called over the run (epochs x batches
    when stepping per iteration). It fills the arguments not given: "step" decays at
    1/3 and 2/3 of the run (step_size = total / 3 rounded up; a run of 4 steps decays
    once), "cosine" anneals over the whole run
    (T_max = total), "warmup+cosine" warms up over 5% of it and anneals over the rest,
    "onecycle" and "triangular" take it as their cycle.

    >>> from convnet.train.optim import SGD
    >>> optimizer = SGD({"w": np.zeros(1)}, lr=0.1)
    >>> schedule = make_schedule("warmup+cosine", optimizer, total_steps=1000)
    >>> schedule.warmup_steps, schedule.after.T_max
    (50, 950)
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid names: {', '.join(SCHEDULES)}")
    if total_steps is not None:
        total_steps = _int(total_steps, "total_steps", f"schedule {name!r}", low=1)
        kwargs = {**_from_total(name, total_steps, kwargs), **kwargs}
    build = SCHEDULES[name]
    signature = inspect.signature(build)
    accepted = [k for k in signature.parameters if k != "optimizer"] + ["total_steps"]
    try:
        signature.bind(optimizer, **kwargs)
    except TypeError as err:
        raise ValueError(f"schedule {name!r}: {err}; accepted arguments: {accepted}") from None
    return build(optimizer, **kwargs)
