"""Optimizers: torch.optim's update rules on NumPy arrays, applied in place.

An optimizer holds the model's parameter arrays by their dotted keys (``model.params()``)
and changes them in place, so the model sees every update. ``step(grads)`` takes the
gradients under the same keys; a key left out (or None) is frozen for that step.

Memory (the notes' "parameter sizes"): besides the parameters and their gradients, an
optimizer keeps a step cache per parameter. Momentum, Adagrad and RMSProp keep one (so
the parameter vector's memory is multiplied by 3), Adam two (x4). ``state_multiplier``
counts these extra arrays per parameter, as configured (AMSGrad keeps a third, a centred
RMSprop with momentum two); the summary's estimate takes each optimizer's default
configuration (``analysis.OPTIMIZER_MULTIPLIERS``).

Every update follows PyTorch's single-tensor implementation, term by term, so that runs
match torch.optim to rounding: ``SGD`` (plain, momentum, Nesterov), ``Adagrad``,
``RMSprop``, ``Adam`` and ``AdamW``. State is created at a parameter's first update,
as in PyTorch, and every parameter counts its own steps. A large parameter is updated in
pieces that stay in the cache, split between the threads (the same result, bit for bit).

>>> w = np.ones(3, dtype=np.float32)
>>> opt = SGD({"fc.weight": w}, lr=0.1, momentum=0.9)
>>> opt.step({"fc.weight": np.ones(3, dtype=np.float32)})
>>> w
array([0.9, 0.9, 0.9], dtype=float32)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping

import numpy as np

from convnet.functional.threads import in_parallel
from convnet.layers.base import real

# An update runs over pieces of this many values of a parameter at a time (see
# Optimizer._update_in_pieces): 1 MB a float32 array, so a piece of the parameter, its
# gradient and its state stay in the cache between the update's passes. Measured on
# LeNet-like's 3.3M parameters (SGD with momentum, Adam): 0.5-0.65x the time of whole
# arrays; pieces of 16K to 128K values were slower (each piece is a few NumPy calls).
UPDATE_PIECE = 1 << 18
MAX_STEPS = 1 << 53      # a parameter's step count in a saved state: exact as a float


def _number(value, name, where, low=0.0, below=None):
    """A finite real hyperparameter with low <= value (< below); a clear error otherwise
    (an int too large for a float too)."""
    bound = (f" in [{low:g}, {below:g})" if below is not None else
             f" >= {low:g}" if low > -math.inf else "")
    expected = f"a finite number{bound}"
    number = real(value, name, where, expected=expected)
    if number < low or (below is not None and number >= below):
        raise ValueError(f"{where}: {name} must be {expected}, got {value!r:.80}")
    return number  # a Python float keeps float32 arithmetic in float32


def _flag(value, name, where):
    """True or False (NumPy's bool too): torch.optim's flags; anything else is an error
    (bool("no") would have been True)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where}: {name} must be True or False, got {value!r:.80}")
    return bool(value)


def _lerp(a, b, weight, tmp):
    """a += weight * (b - a) in place, in torch's lerp_'s two forms: for a weight of 0.5
    or more, b - (b - a) * (1 - weight), which gives b exactly at weight 1 (the other
    form cancels: a of 1e20 and b of 1 give 0). torch fuses each multiply and add (FMA),
    so the last bit can differ. tmp: a scratch array of a's shape."""
    np.subtract(b, a, out=tmp)
    if weight < 0.5:
        tmp *= weight
        a += tmp
    else:
        tmp *= 1 - weight
        np.subtract(b, tmp, out=a)


def _check_params(params, where):
    if not isinstance(params, Mapping):
        raise ValueError(f"{where}: params must be a dict {{dotted name: array}} such as "
                         f"model.params(), got {type(params).__name__}")
    if not params:
        raise ValueError(f"{where}: params is empty: nothing to optimize (a model whose "
                         f"layers are all frozen gives none)")
    seen = {}
    for key, p in params.items():
        if not isinstance(key, str):
            raise ValueError(f"{where}: parameter names must be strings, got {key!r}")
        if id(p) in seen:      # it would be updated twice a step
            raise ValueError(f"{where}: parameters {seen[id(p)]!r} and {key!r} are the same "
                             f"array; give each once")
        seen[id(p)] = key
        if not isinstance(p, np.ndarray) or not np.issubdtype(p.dtype, np.floating):
            got = p.dtype if isinstance(p, np.ndarray) else type(p).__name__
            raise ValueError(f"{where}: parameter {key!r} must be a floating-point NumPy "
                             f"array (float32 or float64), got {got}")
        if not p.flags.writeable:
            raise ValueError(f"{where}: parameter {key!r} is read-only; updates are in place")
    return params


class Named:
    """What optimizers and schedules share: ``where``, the name errors start with, and a
    repr of the constructor arguments that ``hyperparameters()`` gives."""

    @property
    def where(self):
        return type(self).__name__

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class Optimizer(Named):
    """Base of every optimizer: params by key, in-place ``step``, exact ``state_dict``.

    Args:
        params: {dotted name: np.ndarray}, e.g. ``model.params()``; updated in place.
        lr: learning rate, a public attribute that schedules set between steps.
        weight_decay: L2 penalty: weight_decay * param is added to each gradient.

    Subclasses name their per-parameter buffers (``_buffer_names``) after PyTorch's
    state ("momentum_buffer", "exp_avg", ...) and implement ``_update`` for one array.
    """

    state_multiplier = 0  # step-cache arrays kept per parameter (besides params and grads)

    def __init__(self, params, lr, weight_decay=0.0):
        self.params = _check_params(params, self.where)
        self.lr = _number(lr, "lr", self.where)
        self.weight_decay = _number(weight_decay, "weight_decay", self.where)
        self.state: dict[str, dict[str, np.ndarray]] = {}  # param key -> {buffer: array}
        self.steps: dict[str, int] = {}                     # param key -> updates so far

    # -- the update ----------------------------------------------------------------------
    def step(self, grads):
        """Update every parameter that has a gradient in ``grads``, in place.

        grads: {dotted name: array of the parameter's shape}. A parameter missing from
        grads (or mapped to None) is frozen: neither it nor its state or step count moves.
        A None may also name a parameter this optimizer does not hold (model.grads() of a
        model with frozen layers, given an optimizer of its trainable_params()).
        """
        if not isinstance(grads, Mapping):
            raise ValueError(f"{self.where}: grads must be a dict {{dotted name: array}}, "
                             f"got {type(grads).__name__}")
        unknown = sorted(str(k) for k, g in grads.items()   # a frozen one's None: left
                         if k not in self.params and g is not None)
        if unknown:
            raise ValueError(f"{self.where}: grads has keys that are not parameters: "
                             f"{unknown}; known parameters: {sorted(self.params)}")
        checked = {}  # validate everything before touching any parameter
        for key, g in grads.items():
            if g is not None:
                checked[key] = self._check_grad(key, g)
        for key, p in self.params.items():
            if key in checked:
                if key not in self.state:
                    self.state[key] = self._init_state(p)
                self.steps[key] = self.steps.get(key, 0) + 1
                self._update_in_pieces(p, checked[key], self.state[key], self.steps[key])

    def _update_in_pieces(self, p, g, state, step):
        """_update over pieces of UPDATE_PIECE values of p, g and the state at a time,
        split between the threads: every pass of the update reads a piece the pass before
        left in the cache, so the arrays go through memory once rather than once a pass.
        Every update is elementwise, so the pieces give exactly the whole update. Small
        or non-contiguous arrays, and a first step that still makes its state, run whole;
        a 0-d parameter as a 1-element view (NumPy's operations on 0-d arrays give
        scalars, which cannot be updated in place).
        """
        if p.ndim == 0:
            views = {name: a.reshape(1) for name, a in state.items()}
            self._update(p.reshape(1), g.reshape(1), views, step)
            for name, view in views.items():       # a buffer the first step made
                state.setdefault(name, view.reshape(()))
            return
        arrays = (p, *state.values())
        if (p.size <= UPDATE_PIECE or set(state) != set(self._buffer_names())
                or not all(a.flags.c_contiguous for a in arrays)):
            self._update(p, g, state, step)
            return
        flat_p, flat_g = np.asarray(p).reshape(-1), np.asarray(g).reshape(-1)  # views of p
        flat_state = {name: np.asarray(a).reshape(-1) for name, a in state.items()}

        def run(part):
            for s in range(part.start, part.stop, UPDATE_PIECE):
                piece = slice(s, min(part.stop, s + UPDATE_PIECE))
                self._update(flat_p[piece], flat_g[piece],
                             {name: a[piece] for name, a in flat_state.items()}, step)
        in_parallel(run, p.size, (2 + len(state)) * p.nbytes)

    def _check_grad(self, key, g):
        p = self.params[key]
        if not isinstance(g, np.ndarray) or not np.issubdtype(g.dtype, np.floating):
            got = g.dtype if isinstance(g, np.ndarray) else type(g).__name__
            raise ValueError(f"{self.where}: gradient of {key!r} must be a floating-point "
                             f"NumPy array, got {got}")
        if g.shape != p.shape:
            raise ValueError(f"{self.where}: gradient of {key!r} must have the parameter's "
                             f"shape {p.shape}, got {g.shape}")
        return np.asarray(g, dtype=p.dtype)  # no copy when the dtypes already agree

    def _decayed(self, p, g):
        """g + weight_decay * p (the L2 penalty's gradient) as a new array; g if no decay."""
        if not self.weight_decay:
            return g
        out = np.multiply(p, self.weight_decay)
        out += g
        return out

    def _buffer_names(self):
        """Names of the per-parameter state arrays this configuration keeps."""
        return ()

    def _init_state(self, p):
        return {name: np.zeros_like(p) for name in self._buffer_names()}

    def _update(self, p, g, state, step):
        raise NotImplementedError

    # -- checkpoints ---------------------------------------------------------------------
    def hyperparameters(self):
        """The constructor arguments (besides params) as a JSON-ready dict."""
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def state_dict(self):
        """Everything a resume needs: (arrays, meta).

        arrays: copies of the step caches keyed "<buffer>.<param key>", e.g.
        "momentum_buffer.features.0.weight". meta: JSON-ready {"type", "hyperparameters",
        "steps"}, with the step count of every parameter updated so far.
        """
        arrays = {f"{name}.{key}": a.copy()
                  for key, state in self.state.items() for name, a in state.items()}
        meta = {"type": type(self).__name__, "hyperparameters": self.hyperparameters(),
                "steps": dict(self.steps)}
        return arrays, meta

    def load_state_dict(self, arrays, meta):
        """Restore a ``state_dict`` exactly (hyperparameters included); strict on keys."""
        where = self.where
        if not isinstance(meta, Mapping) or meta.get("type") != type(self).__name__:
            got = meta.get("type") if isinstance(meta, Mapping) else type(meta).__name__
            raise ValueError(f"{where}: state was saved by {got!r}, not {type(self).__name__}")
        hyper, steps = meta.get("hyperparameters"), meta.get("steps")
        if not isinstance(hyper, Mapping) or not isinstance(steps, Mapping):
            raise ValueError(f"{where}: state needs 'hyperparameters' and 'steps' dicts, got "
                             f"{type(hyper).__name__} and {type(steps).__name__}")
        try:
            fresh = type(self)(self.params, **hyper)  # checked as in __init__
        except TypeError as err:
            raise ValueError(f"{where}: bad hyperparameters in state: {err}") from None
        if not all(type(n) is int and 0 <= n <= MAX_STEPS for n in steps.values()):
            raise ValueError(f"{where}: step counts must be ints from 0 to {MAX_STEPS:,}, got "
                             f"{dict(steps)!r:.100}")
        steps = {str(k): n for k, n in steps.items()}
        unknown = sorted(k for k in steps if k not in self.params)
        if unknown:
            raise ValueError(f"{where}: state has step counts for unknown parameters {unknown}")
        expected = {f"{name}.{key}": key for key, n in steps.items() if n > 0
                    for name in fresh._buffer_names()}
        missing = sorted(set(expected) - set(arrays))
        unexpected = sorted(set(arrays) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{where}: state arrays do not match: missing {missing}, "
                             f"unexpected {unexpected}")
        for name, key in expected.items():
            array = arrays[name]
            if (not isinstance(array, np.ndarray) or array.shape != self.params[key].shape
                    or not np.issubdtype(array.dtype, np.floating)):
                got = (f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray)
                       else type(array).__name__)
                raise ValueError(f"{where}: state array {name!r} must be a float array of "
                                 f"shape {self.params[key].shape}, got {got}")
        for attr, value in vars(fresh).items():
            if attr not in ("params", "state", "steps"):
                setattr(self, attr, value)
        self.steps = {k: n for k, n in steps.items() if n > 0}
        self.state = {key: {} for key in self.steps}
        for name, key in expected.items():
            buffer = name[: -len(key) - 1]
            self.state[key][buffer] = np.array(arrays[name], dtype=self.params[key].dtype)


class SGD(Optimizer):
    """Stochastic gradient descent: plain, with momentum, or Nesterov's, as torch.optim.SGD.

    Args:
        params: {dotted name: array}, updated in place. lr: learning rate (1e-3).
        momentum: mu; 0 is vanilla SGD. dampening: scales the new gradient in the buffer.
        weight_decay: L2 penalty added to the gradient.
        nesterov: Nesterov momentum (needs momentum > 0 and dampening 0).
    In torch.optim.SGD's order, so that its positional calls carry over.

    Update, with g = dx + weight_decay * x (v starts as the first g):
        vanilla:  x -= lr * g
        momentum: v = mu * v + (1 - dampening) * g;  x -= lr * v
        nesterov: v as above;                         x -= lr * (g + mu * v)

    Momentum keeps one step cache per parameter (memory x3 with params and grads).

    >>> w = np.zeros(2)
    >>> opt = SGD({"w": w}, lr=0.1, momentum=0.9)
    >>> for _ in range(2):
    ...     opt.step({"w": np.ones(2)})        # v = 1, then 0.9 * 1 + 1 = 1.9
    >>> w                                      # -0.1 - 0.19
    array([-0.29, -0.29])
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        super().__init__(params, lr, weight_decay)
        self.momentum = _number(momentum, "momentum", self.where)
        self.dampening = _number(dampening, "dampening", self.where, low=-math.inf)
        self.nesterov = _flag(nesterov, "nesterov", self.where)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(f"{self.where}: nesterov=True needs momentum > 0 and dampening "
                             f"0, got momentum={momentum!r}, dampening={dampening!r}")
        self.state_multiplier = len(self._buffer_names())

    def _buffer_names(self):
        return ("momentum_buffer",) if self.momentum else ()

    def _init_state(self, p):
        return {}  # PyTorch starts the momentum buffer as a copy of the first gradient

    def _update(self, p, g, state, step):
        g = self._decayed(p, g)
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= self.momentum
                buf += g if self.dampening == 0 else (1 - self.dampening) * g
            if self.nesterov:
                nxt = np.multiply(buf, self.momentum)
                nxt += g
                g = nxt
            else:
                g = buf
        p -= self.lr * g

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
                "nesterov": self.nesterov, "weight_decay": self.weight_decay}


class Momentum(SGD):
    """SGD with momentum 0.9 by default (registry "momentum"), in torch.optim.SGD's form:
    v = mu * v + dx; x -= lr * v. The cs231n form, v = mu * v - lr * dx; x += v, gives the
    same steps while lr is constant, and differs where a schedule changes lr between them
    (the buffer here holds gradients, there steps already scaled by the lr of their time)."""

    state_multiplier = 1

    def __init__(self, params, lr=1e-3, momentum=0.9, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        super().__init__(params, lr, momentum, dampening, weight_decay, nesterov)


class Nesterov(SGD):
    """SGD with Nesterov momentum 0.9 by default (registry "nesterov")."""

    state_multiplier = 1

    def __init__(self, params, lr=1e-3, momentum=0.9, dampening=0.0, weight_decay=0.0,
                 nesterov=True):
        super().__init__(params, lr, momentum, dampening, weight_decay, nesterov)


class Adagrad(Optimizer):
    """Adagrad: per-parameter step sizes from the running sum of squared gradients.

    Args:
        params, lr (default 1e-2), weight_decay as in SGD.
        lr_decay: the step size at step t is lr / (1 + (t - 1) * lr_decay).
        initial_accumulator_value: the sum's starting value.
        eps: added to the root of the sum (avoids division by zero).
    In torch.optim.Adagrad's order.

    Update (torch.optim.Adagrad): cache += g**2;  x -= clr * g / (sqrt(cache) + eps).
    Keeps one step cache per parameter (memory x3 with params and grads).

    >>> w = np.zeros(2)
    >>> opt = Adagrad({"w": w}, lr=0.1)
    >>> opt.step({"w": np.array([10.0, 0.1])})  # the same first step, whatever the scale
    >>> w
    array([-0.1, -0.1])
    """

    state_multiplier = 1

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10):
        super().__init__(params, lr, weight_decay)
        self.lr_decay = _number(lr_decay, "lr_decay", self.where)
        self.eps = _number(eps, "eps", self.where)
        self.initial_accumulator_value = _number(
            initial_accumulator_value, "initial_accumulator_value", self.where)

    def _buffer_names(self):
        return ("sum",)

    def _init_state(self, p):
        return {"sum": np.full_like(p, self.initial_accumulator_value)}

    def _update(self, p, g, state, step):
        g = self._decayed(p, g)
        clr = self.lr / (1 + (step - 1) * self.lr_decay)
        tmp = np.square(g)
        state["sum"] += tmp
        np.sqrt(state["sum"], out=tmp)
        tmp += self.eps                     # std
        np.divide(g, tmp, out=tmp)
        tmp *= clr
        p -= tmp

    def hyperparameters(self):
        return {"lr": self.lr, "lr_decay": self.lr_decay, "weight_decay": self.weight_decay,
                "eps": self.eps, "initial_accumulator_value": self.initial_accumulator_value}


class RMSprop(Optimizer):
    """RMSProp: divide by a leaky running average of squared gradients (torch.optim.RMSprop).

    Args:
        params, lr (default 1e-2), weight_decay as in SGD.
        alpha: decay rate of the running average. eps: added to its root.
        momentum: if > 0, a momentum buffer over the normalized steps.
        centered: subtract the squared running mean of the gradient (a variance estimate).

    Update: cache = alpha * cache + (1 - alpha) * g**2;  x -= lr * g / (sqrt(cache) + eps).
    Keeps one step cache per parameter (memory x3 with params and grads), one more with
    momentum and one more when centered.

    >>> w = np.zeros(2)
    >>> opt = RMSprop({"w": w}, lr=0.01, alpha=0.99)
    >>> opt.step({"w": np.array([5.0, -5.0])})  # cache = 0.01 g**2: a first step of 10 lr
    >>> w
    array([-0.1,  0.1])
    """

    state_multiplier = 1

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, centered=False):
        super().__init__(params, lr, weight_decay)
        self.alpha = _number(alpha, "alpha", self.where)
        self.eps = _number(eps, "eps", self.where)
        self.momentum = _number(momentum, "momentum", self.where)
        self.centered = _flag(centered, "centered", self.where)
        self.state_multiplier = len(self._buffer_names())

    def _buffer_names(self):
        return (("square_avg",) + ("momentum_buffer",) * (self.momentum > 0)
                + ("grad_avg",) * self.centered)

    def _update(self, p, g, state, step):
        g = self._decayed(p, g)
        square_avg = state["square_avg"]
        square_avg *= self.alpha
        tmp = np.multiply(g, 1 - self.alpha)
        tmp *= g
        square_avg += tmp                           # alpha * cache + (1 - alpha) * g**2
        if self.centered:
            grad_avg = state["grad_avg"]
            _lerp(grad_avg, g, 1 - self.alpha, tmp)  # alpha * mean + (1 - alpha) * g
            np.square(grad_avg, out=tmp)
            np.subtract(square_avg, tmp, out=tmp)
            np.sqrt(tmp, out=tmp)
        else:
            np.sqrt(square_avg, out=tmp)
        tmp += self.eps                             # avg: the per-element step divisor
        np.divide(g, tmp, out=tmp)
        if self.momentum > 0:
            buf = state["momentum_buffer"]
            buf *= self.momentum
            buf += tmp
            np.multiply(buf, self.lr, out=tmp)
        else:
            tmp *= self.lr
        p -= tmp

    def hyperparameters(self):
        return {"lr": self.lr, "alpha": self.alpha, "eps": self.eps,
                "weight_decay": self.weight_decay, "momentum": self.momentum,
                "centered": self.centered}


class Adam(Optimizer):
    """Adam: momentum on the gradient plus RMSProp's per-parameter scaling, bias-corrected.

    Args:
        params, lr (default 1e-3) as in SGD. betas: (beta1, beta2), each in [0, 1).
        eps: added to the root of the second moment.
        weight_decay: L2 penalty added to the gradient (AdamW decouples it instead).
        amsgrad: divide by the running maximum of the second moment.

    Update at step t (torch.optim.Adam):
        m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g**2
        x -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Keeps two step caches per parameter, m and v (memory x4 with params and grads);
    amsgrad adds a third.

    >>> w = np.zeros(2)
    >>> opt = Adam({"w": w}, lr=1e-3, betas=(0.9, 0.999))
    >>> opt.step({"w": np.array([100.0, -0.01])})  # bias-corrected: a first step of lr
    >>> w
    array([-0.001,  0.001])
    """

    state_multiplier = 2
    decoupled = False  # AdamW: decay the weights directly instead of the gradient

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False):
        super().__init__(params, lr, weight_decay)
        if not (isinstance(betas, (tuple, list)) or (isinstance(betas, np.ndarray)
                                                     and betas.ndim == 1)) or len(betas) != 2:
            raise ValueError(f"{self.where}: betas must be a pair (beta1, beta2), "
                             f"got {betas!r:.80}")
        self.betas = tuple(_number(b, f"betas[{i}]", self.where, below=1.0)
                           for i, b in enumerate(betas))
        self.eps = _number(eps, "eps", self.where)
        self.amsgrad = _flag(amsgrad, "amsgrad", self.where)
        self.state_multiplier = len(self._buffer_names())

    def _buffer_names(self):
        return ("exp_avg", "exp_avg_sq") + ("max_exp_avg_sq",) * self.amsgrad

    def _update(self, p, g, state, step):
        beta1, beta2 = self.betas
        if self.weight_decay and self.decoupled:
            p *= 1 - self.lr * self.weight_decay
        elif self.weight_decay:
            g = self._decayed(p, g)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        tmp = np.empty_like(exp_avg)
        _lerp(exp_avg, g, 1 - beta1, tmp)           # m = beta1 * m + (1 - beta1) * g
        exp_avg_sq *= beta2
        np.multiply(g, 1 - beta2, out=tmp)
        tmp *= g
        exp_avg_sq += tmp                           # v = beta2 * v + (1 - beta2) * g**2
        if self.amsgrad:
            exp_avg_sq = np.maximum(state["max_exp_avg_sq"], exp_avg_sq,
                                    out=state["max_exp_avg_sq"])
        step_size = self.lr / (1 - beta1**step)
        np.sqrt(exp_avg_sq, out=tmp)
        tmp /= (1 - beta2**step) ** 0.5
        tmp += self.eps                             # denom
        np.divide(exp_avg, tmp, out=tmp)
        tmp *= step_size
        p -= tmp

    def hyperparameters(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "amsgrad": self.amsgrad}


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW): x *= 1 - lr * weight_decay
    before the Adam step, instead of adding weight_decay * x to the gradient.

    Args as Adam, with weight_decay defaulting to 1e-2. Memory x4, as Adam.

    >>> w = np.ones(2)
    >>> opt = AdamW({"w": w}, lr=0.1, weight_decay=0.5)
    >>> opt.step({"w": np.zeros(2)})  # no gradient, still decayed: 1 - 0.1 * 0.5
    >>> w
    array([0.95, 0.95])
    """

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adagrad": Adagrad,
              "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW}
# The learning rate each optimizer gets when none is given (convnet train's default):
# values that train the notes' small nets with batch norm well, at batch sizes 32-128.
# Momentum and Nesterov keep momentum 0.9, Adam and AdamW betas (0.9, 0.999).
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.05,
              "rmsprop": 1e-3, "adam": 2e-3, "adamw": 2e-3}


def make_optimizer(name, params, lr, **kwargs):
    """Build a registered optimizer by name: make_optimizer("adam", model.params(), 1e-3).

    Names: see ``OPTIMIZERS``; kwargs are the class's other hyperparameters.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}")
    cls = OPTIMIZERS[name]
    accepted = [k for k in inspect.signature(cls).parameters if k not in ("params", "lr")]
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown hyperparameters {unknown}; "
                         f"accepted: {accepted}")
    return cls(params, lr, **kwargs)
