"""The Layer base: state lives here, the math lives in convnet.functional.

A layer keeps its hyperparameters, ``params`` and ``grads`` dicts with the same keys
(``weight``, ``bias`` as in PyTorch), non-trainable ``buffers`` (batch norm's running
statistics), the cache of its last forward, and a ``training`` flag.

Shapes given to ``output_shape`` and ``macs`` are per sample, without the batch axis:
(C, H, W) for an image volume (the notes' D x H x W), (features,) for a vector.
``macs`` counts multiply-adds for one sample.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
from typing import NamedTuple

import numpy as np

from convnet import limits
from convnet.functional.conv import check_input, pair


class StateDictError(ValueError, RuntimeError):
    """A state dict that ``load_state_dict`` refuses (missing, unexpected, mistyped or
    mis-shaped keys): a ValueError, as convnet's other refusals, and a RuntimeError, as
    PyTorch's ``Module.load_state_dict`` raises, so either ``except`` catches it."""


class MultilineError(ValueError):
    """A ValueError of several lines by design (a notation error's text with carets under
    it, a hint under a message): ``lines``, each shown as a line of its own. Any other
    error's line breaks come from text it quotes (a file name), and the command line
    shows them as \\n."""

    def __init__(self, *lines):
        super().__init__("\n".join(lines))
        self.lines = lines


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` returns, PyTorch's ``_IncompatibleKeys``: the model's keys
    the state lacked and the state's keys the model lacks (a tuple: it unpacks as
    ``missing, unexpected``)."""

    missing_keys: list
    unexpected_keys: list

    def __repr__(self):
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"     # PyTorch's words
        return (f"IncompatibleKeys(missing_keys={self.missing_keys!r}, "
                f"unexpected_keys={self.unexpected_keys!r})")


def _join(prefix, key):
    """A dotted name: "features" and "0" give "features.0"; an empty prefix adds nothing."""
    return f"{prefix}.{key}" if prefix else key


class Layer:
    """Base class of every layer: forward, backward, params/grads, train/eval, analysis."""

    # True where backward(dout, input_grad=False) can skip the input gradient: a net's
    # first layer, whose input is the data, needs only its parameters' gradients.
    skips_input_grad = False

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.training = True
        self.frozen = False  # frozen: grads() gives None for its parameters (see freeze)
        self.cache = None
        self.name = None  # set by the model that holds the layer, e.g. "features.0"

    # -- the two passes ----------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    # -- PyTorch's attribute access: conv.weight, bn.running_mean ------------------------
    # Parameters and buffers a layer of this kind may be made without (a CONV's bias with
    # bias=False): their names read None then, as PyTorch's do (``if m.bias is not None``).
    optional_arrays = ()
    holds_layers = False     # a container's children are its layers; a layer holds none

    def __getattr__(self, name):
        """A parameter or buffer by name, as in PyTorch (``conv.weight``, ``conv.bias``,
        ``bn.running_var``): the array itself, which the layer uses (change it in place,
        ``conv.weight[...] = w``); None for one of ``optional_arrays`` the layer was made
        without. Called only where no attribute has the name."""
        for store in ("params", "buffers"):
            values = self.__dict__.get(store)
            if isinstance(values, dict) and name in values:
                return values[name]
        if name in type(self).optional_arrays:    # made without it: None, as in PyTorch
            return None
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        """Assigning to a parameter's or buffer's name would leave the layer using its own
        array: an error that says how to change it."""
        d = self.__dict__
        if name not in d and any(isinstance(d.get(store), dict) and name in d[store]
                                 for store in ("params", "buffers")):
            raise AttributeError(f"{self.where}: {name} is the layer's own array: change it "
                                 f"in place ({name}[...] = values) or with load_state_dict")
        if isinstance(value, Layer) and not type(self).holds_layers:
            raise AttributeError(
                f"{self.where}: {name}: a layer kept inside a layer would not be trained, "
                f"saved or switched by train() and eval() with the model; build the two "
                f"as a container of children (convnet.models.Sequential, or a subclass of "
                f"convnet.models.Container given them as its children)")
        if name in type(self).optional_arrays and value is not None and "params" in d:
            option = ("track_running_stats=True" if name.startswith(("running", "num_"))
                      else "affine=True" if hasattr(self, "affine") else f"{name}=True")
            raise AttributeError(f"{self.where}: the layer was made without {name}, and an "
                                 f"array assigned would not be used: make it with {option}")
        object.__setattr__(self, name, value)

    def infer(self, x):
        """Forward without keeping a cache: at test time only the current activations live."""
        out = self.forward(x)
        self.cache = None
        return out

    def _cached(self):
        """The cache of the last forward; a clear error if there is none."""
        if self.cache is None:
            raise RuntimeError(f"{self.where}: backward called before forward "
                               "(or after the cache was cleared)")
        return self.cache

    # -- state -------------------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (the default for a new layer, as in PyTorch); mode: a bool."""
        self.training = flag(mode, "mode", f"{type(self).__name__}.train")
        return self

    def state_dict(self):
        """Parameters and buffers by name ("weight", "running_mean"), as PyTorch's."""
        return {**self.params, **self.buffers}

    # -- PyTorch's module API: children, modules, parameters, buffers -------------------
    def named_children(self):
        """(name, layer) pairs of the direct children, in order, as PyTorch's
        ``named_children()``: none for a leaf layer (a container yields its own)."""
        yield from ()

    def children(self):
        """The direct child layers, in order, as PyTorch's ``children()`` (their names:
        ``named_children()``)."""
        for _, child in self.named_children():
            yield child

    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        """(dotted name, layer) for this layer (named ``prefix``, "" by default) and every
        layer below it, each container before its children, as PyTorch's
        ``named_modules()``: ("", model), ("features", ...), ("features.0", ...), ...
        memo: a set of layers to leave out (and to add the ones yielded to, unless
        remove_duplicate=False), as PyTorch's."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if self in memo:
                return
            memo.add(self)
        yield prefix, self
        for key, child in self.named_children():
            yield from child.named_modules(memo, _join(prefix, key), remove_duplicate)

    def modules(self, remove_duplicate=True):
        """This layer and every layer below it, in ``named_modules()``'s order."""
        for _, layer in self.named_modules(remove_duplicate=remove_duplicate):
            yield layer

    def _own(self, store):
        """The layer's own "params" or "buffers" dict; {} for a container (whose come
        from its children)."""
        own = self.__dict__.get(store)
        return own if isinstance(own, dict) else {}

    def _named_arrays(self, store, prefix, recurse, remove_duplicate):
        layers = (self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate)
                  if recurse else [(prefix, self)])
        seen = set()
        for name, layer in layers:
            for key, value in layer._own(store).items():
                if remove_duplicate and id(value) in seen:
                    continue
                seen.add(id(value))
                yield _join(name, key), value

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        """(dotted name, array) for every parameter, as PyTorch's ``named_parameters()``:
        the names are the state_dict's keys (``features.0.weight``), the arrays the
        layers' own (change them in place). recurse=False: this layer's own only."""
        yield from self._named_arrays("params", prefix, recurse, remove_duplicate)

    def parameters(self, recurse=True):
        """Every parameter array, in ``named_parameters()``'s order, as PyTorch's
        ``parameters()`` (frozen layers' too, as PyTorch's with requires_grad=False)."""
        for _, value in self.named_parameters(recurse=recurse):
            yield value

    def named_buffers(self, prefix="", recurse=True, remove_duplicate=True):
        """(dotted name, array) for every buffer (batch norm's running statistics), as
        PyTorch's ``named_buffers()``: the names are the state_dict's keys. (``buffers``
        stays convnet's: a dict, a method on containers.)"""
        yield from self._named_arrays("buffers", prefix, recurse, remove_duplicate)

    def load_state_dict(self, state, strict=True):
        """Copy arrays from ``state`` into the model, in place and in each array's dtype.

        Float parameters and buffers take floating arrays (float16, float32, float64: cast
        to the model's dtype), integer buffers integer arrays; anything else, or a value
        that is not a NumPy array, is a mistyped key. With strict=True (the default),
        missing, unexpected, mistyped and mis-shaped keys are all listed by name (with
        both dtypes or shapes) in one StateDictError (a ValueError and a RuntimeError,
        PyTorch's type), and nothing is copied; with strict=False only missing and
        unexpected keys are allowed. Returns IncompatibleKeys(missing_keys,
        unexpected_keys), as PyTorch does (a tuple: ``missing, unexpected = ...``).

        A missing ``num_batches_tracked`` (batch norm's counter, which checkpoints from
        before PyTorch 0.4.1 do not have) is not a missing key: the counter keeps its value
        (0 in a new model), as PyTorch's ``_BatchNorm._load_from_state_dict`` fills it.
        One that is given must be a single int from 0 to 2**62.
        """
        own = self.state_dict()
        missing, unexpected = self.check_state_dict(state, strict, own)
        for key, value in own.items():
            if key in state:
                value[...] = state[key]
        return IncompatibleKeys(missing, unexpected)

    def check_state_dict(self, state, strict=True, own=None):
        """What load_state_dict checks, without copying: raises its StateDictError, else
        returns (missing, unexpected) keys. own: self.state_dict(), when the caller has
        it."""
        where = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, dict):
            raise ValueError(f"{where}: expected a dict of arrays, got {type(state).__name__}")
        own = self.state_dict() if own is None else own
        missing = [key for key in own if key not in state and not _counter(key)]
        unexpected = [str(key) for key in state if key not in own]
        dtype_problems = {key: _dtype_problem(own[key], state[key])
                          for key in own if key in state}
        types = [f"{key}: {problem}" for key, problem in dtype_problems.items() if problem]
        types += [f"{key}: a count must be a single int from 0 to 2**62, got "
                  f"{_shown_count(state[key])}" for key, problem in dtype_problems.items()
                  if not problem and _counter(key) and not _count_in_range(state[key])]
        shapes = [f"{key}: model {own[key].shape}, file {state[key].shape}"
                  for key, problem in dtype_problems.items()
                  if not problem and own[key].shape != state[key].shape]
        if types or shapes or (strict and (missing or unexpected)):
            problems = []
            if missing:
                problems.append(f"missing keys: {_first(missing, ', ')}")
            if unexpected:
                problems.append(f"unexpected keys: {_first(unexpected, ', ')}")
            if types:
                problems.append(f"mistyped keys: {_first(types, '; ')}")
            if shapes:
                problems.append(f"mis-shaped keys: {_first(shapes, '; ')}")
            raise StateDictError(f"{where}: " + " | ".join(problems))
        return missing, unexpected

    def eval(self):
        """Evaluation mode: batch norm uses running statistics, dropout is the identity."""
        return self.train(False)

    def zero_grad(self):
        for key, value in self.params.items():
            self.grads[key] = np.zeros(value.shape, value.dtype)

    def _init_param(self, key, value):
        self.params[key] = value
        # np.zeros, not zeros_like: its pages stay unmapped until a backward pass writes
        # them, so a model that only infers (summary, predict, eval) holds no gradients.
        self.grads[key] = np.zeros(value.shape, value.dtype)

    # -- analysis ----------------------------------------------------------------------
    def output_shape(self, input_shape):
        """Per-sample output shape for a per-sample input shape; checks that sizes fit."""
        return tuple(input_shape)

    def num_params(self):
        return sum(int(p.size) for p in self.params.values())

    def macs(self, input_shape):
        """Multiply-adds for one sample (0 for layers without multiplications)."""
        return 0

    def get_config(self):
        """The constructor arguments as a JSON-ready dict, with the layer's type."""
        return {"type": type(self).__name__}

    # -- naming ------------------------------------------------------------------------
    def __getstate__(self):
        """What copy.deepcopy and pickle keep: everything but the link to the container
        (a weak reference; the copied container links its children again)."""
        state = self.__dict__.copy()
        state.pop("_parent", None)
        return state

    @property
    def where(self):
        """How errors name this layer: its model name if it has one, and its repr."""
        return f"{self.name} {self!r}" if self.name else repr(self)

    def __repr__(self):
        return f"{type(self).__name__}()"


def _first(items, sep, shown=8):
    """The first ``shown`` items joined, and how many more: an error stays one readable
    line when a whole architecture's keys are missing."""
    more = f"{sep}... ({len(items) - shown:,} more, {len(items):,} in all)" if (
        len(items) > shown) else ""
    return sep.join(items[:shown]) + more


def _counter(key):
    """Whether a state-dict key is batch norm's num_batches_tracked, which PyTorch fills
    with the module's own value when a file lacks it (files from before PyTorch 0.4.1)."""
    return key == "num_batches_tracked" or key.endswith(".num_batches_tracked")


def _count_in_range(value):
    """Whether batch norm's counter (an integer array, its dtype checked) holds one value
    from 0 to 2**62: a negative count divides by 0 or averages backwards."""
    return value.size == 1 and 0 <= int(value.reshape(-1)[0]) <= 2 ** 62


def _shown_count(value):
    return int(value.reshape(-1)[0]) if value.size == 1 else f"{value.size} values"


def _dtype_problem(own, value):
    """Why ``value`` cannot be copied into the model's array ``own``, or None: a float
    parameter or buffer takes only floating arrays (cast to its dtype), an integer buffer
    (num_batches_tracked) only integer arrays. An int32 label on float32 bytes would
    otherwise load as integers."""
    if not isinstance(value, np.ndarray):
        return f"model {own.dtype}, file a {type(value).__name__} (not a NumPy array)"
    kinds = "f" if own.dtype.kind == "f" else "iu"
    if value.dtype.kind not in kinds:
        takes = "floating" if kinds == "f" else "integer"
        return f"model {own.dtype}, file {value.dtype} (it takes {takes} arrays)"
    return None


def uniform_init(rng, shape, fan_in, dtype):
    """PyTorch's default init for Conv and Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in));
    zeros, drawing nothing from rng, inside ``counting_only``."""
    if _COUNTING_ONLY.get():
        return np.zeros(shape, dtype=dtype)   # calloc: no page is written
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    u = rng.random(shape, dtype=dtype)  # [0, 1), drawn directly in the target dtype
    u *= 2 * bound
    u -= bound
    return u


def generator(rng, where):
    """rng, an np.random.Generator, or a fresh one for None; else a ValueError naming the
    layer (a seed or a RandomState had failed inside the initializer)."""
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{where}: rng must be an np.random.Generator or None, got "
                         f"{type(rng).__name__}; use np.random.default_rng(seed)")
    return rng


def positive_int(value, name, where):
    """A positive int (not a bool), or a ValueError naming the layer and the argument."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive int, got {value!r:.80}")
    return int(value)


def flag(value, name, where):
    """True or False (NumPy's bool too); 0, 1 and other values are a ValueError."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where}: {name} must be True or False, got {value!r:.80}")
    return bool(value)


def real(value, name, where, low=None, high=None, expected=None):
    """A finite real number (not a bool), optionally within [low, high]; as a float.

    The error says ``name`` must be ``expected`` (say, "a number in [0, 1]"); without it,
    "a real number" or the bounds, whichever failed.
    """
    number = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:              # an int beyond the largest float
            number = math.inf
    if number is None or not math.isfinite(number):
        raise ValueError(f"{where}: {name} must be {expected or 'a real number'}, got "
                         f"{value!r:.80}")
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{where}: {name} must be {expected or bounds}, got {value!r:.80}")
    return number


def window_pair(value, name, where, allow_zero=False):
    """A window's (height, width) (kernel size, stride, padding, dilation) or a pooled
    output size, as ``functional.conv.pair`` checks it, each at most
    limits.MAX_IMAGE_SIDE: no window is wider than the largest image side, so a larger
    value is a typo or a hostile file (and error hints stay quick to compute)."""
    hw = pair(value, name, where, allow_zero)
    if max(hw) > limits.MAX_IMAGE_SIDE:
        raise ValueError(f"{where}: {name} must be at most {limits.MAX_IMAGE_SIDE:,} "
                         f"(convnet.limits.MAX_IMAGE_SIDE, the largest image side), got "
                         f"{value!r:.80}")
    return hw


# -- the parameter budget ------------------------------------------------------------------

class ParamCount:
    """A model's running total of parameters while a builder makes its layers, held to
    limits.MAX_PARAMS and to ``cap`` values (when given) that ``source`` holds."""

    def __init__(self, cap=None, source=None):
        self.total = 0
        self.cap = cap
        self.source = source

    def add(self, count, layer):
        self.total += count
        limits.check_count(self.total, "MAX_PARAMS", "the model's total of parameters", layer)
        if self.cap is not None and self.total > self.cap:
            raise ValueError(f"{layer}: the layers so far have {self.total:,} parameters "
                             f"and buffers, more than the {self.cap:,} values in "
                             f"{self.source}; refusing to allocate them")


_MODEL_COUNT = contextvars.ContextVar("convnet_param_count", default=None)


@contextlib.contextmanager
def counting_params(cap=None, source=None):
    """Inside this block every layer's ``check_param_count`` also adds to one model's
    total (a ParamCount, yielded), so a builder refuses the layer that would take the
    model over limits.MAX_PARAMS, or over ``cap`` values when given (the values of the
    weights ``source`` that the model will load), before that layer allocates.

    >>> with counting_params() as count:
    ...     check_param_count(34944, "Conv2d")
    ...     check_param_count(130, "Linear")
    34944
    130
    >>> count.total
    35074
    """
    count = ParamCount(cap, source)
    token = _MODEL_COUNT.set(count)
    try:
        yield count
    finally:
        _MODEL_COUNT.reset(token)


_COUNTING_ONLY = contextvars.ContextVar("convnet_counting_only", default=False)


@contextlib.contextmanager
def counting_only():
    """Inside this block layers take zeros for their initial weights (``uniform_init``),
    writing no memory and drawing nothing from their rng: a builder run in it, inside
    ``counting_params``, counts a model's parameters before the real build writes any."""
    token = _COUNTING_ONLY.set(True)
    try:
        yield
    finally:
        _COUNTING_ONLY.reset(token)


def counting_only_active():
    """Whether this code runs inside ``counting_only`` (no weight is to be drawn)."""
    return _COUNTING_ONLY.get()


def check_param_count(count, where):
    """Called by every layer with parameters before it allocates them: ``count`` values
    (parameters and buffers) against limits.MAX_PARAMS, and against the model's running
    total inside ``counting_params``. Returns count.

    >>> check_param_count(34944, "Conv2d")
    34944
    """
    limits.check_count(count, "MAX_PARAMS", "parameters", where)
    model = _MODEL_COUNT.get()
    if model is not None:
        model.add(count, where)
    return count


def hw_text(pair):
    """(3, 3) -> '3', (3, 5) -> '3x5': the notes' compact form of an (H, W) pair."""
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def check_dtype(dtype, where):
    """np.float32 or np.float64 (as a type, a dtype or a name such as "float32")."""
    try:
        parsed = None if dtype is None else np.dtype(dtype)
    except (TypeError, ValueError):
        parsed = None
    if parsed not in (np.float32, np.float64):
        got = parsed if parsed is not None else repr(dtype)
        raise ValueError(f"{where}: dtype must be float32 or float64, got {got!s:.80}")
    return parsed


def check_array(x, where):
    """Check that x is a floating NumPy array of any rank; say what is wrong."""
    check_input(x, None, where, rank=np.ndim(x))


def check_dout(dout, shape, where):
    """Check that the upstream gradient has the shape of the last forward's output."""
    got = dout.shape if isinstance(dout, np.ndarray) else type(dout).__name__
    if got != tuple(shape):
        raise ValueError(f"{where}: expected dout with the shape of the last output "
                         f"{tuple(shape)}, got {got}")


def check_volume(input_shape, channels, where):
    """Check a per-sample (C, H, W) shape for a layer expecting ``channels`` channels."""
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ValueError(f"{where}: expected a per-sample volume (C, H, W), got {shape}")
    if channels is not None and shape[0] != channels:
        raise ValueError(f"{where}: expected {channels} input channels (depth D), "
                         f"got volume {shape}")
    return shape


class Identity(Layer):
    """Passes its input through unchanged (PyTorch's nn.Identity); a placeholder layer.

    Any arguments are accepted and ignored, as PyTorch's ``Identity(*args, **kwargs)``
    does, so a head can be swapped for it whatever the call site passes.

    >>> Identity(54, unused_argument=0.1)(np.ones(2))
    array([1., 1.])
    """

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x

    def backward(self, dout):
        return dout
