"""Model summary: the notes' layer-by-layer table, memory estimate and receptive field.

``summary(model, (C, H, W))`` walks the model's leaf layers in execution order and asks
each one for its ``output_shape``, ``num_params`` and ``macs`` (analysis by calculation,
not hooks). The counting rules, stated once:

- **mult-adds** are per sample (a layer's ``macs``); per batch is that times the batch.
  A CONV or FC layer's are its weights' multiplications, K*OH*OW*(C/G)*FH*FW and
  in*out, without the bias additions (torchinfo counts those too, so its figures are
  larger by one per output value). Batch norm counts 2 per output value (a scale and a
  shift), LRN its size + 1; pooling, RELU and the other elementwise layers count 0.
- **activations**: every layer's output volume, in values, times the batch. A layer that
  writes into its input's buffer (``ReLU(inplace=True)``) or returns a view of it
  (``Flatten``) adds no new values. The input batch is counted once, as miscellaneous.
- **memory** follows the notes' three sources: activations and their gradients
  ("x2 for gradients"); parameters times k, k = 2 (parameters and gradients) plus the
  optimizer's step cache (the notes' "x3" for momentum, Adagrad, RMSProp; x4 for Adam's
  two moments), frozen parameters (``layer.frozen``) counted once; miscellaneous = the
  input batch. Values x 4 bytes (8 for float64), divided by 1024 for KB, MB and GB.
- **inference** memory keeps only the current activations ("a clever implementation
  that runs a ConvNet only at test time"): the largest input + output of one layer, with
  what blocks hold meanwhile (a block's input until the block returns, a Concat's finished
  branches, a residual body's output while the shortcut runs), times the batch, plus the
  parameters once.
- **receptive field** on the input and its **jump** (the input pixels between two adjacent
  neurons), per axis: rf_out = rf_in + (F_eff - 1) * jump_in, jump_out = jump_in * S, with
  F_eff = dilation * (F - 1) + 1. Elementwise layers keep both; an FC layer sees the
  span of its whole input grid (rf + (grid - 1) * jump; on a volume, its rows' width,
  where its outputs along W all see the same rows: jump 0); adaptive pooling takes its
  largest window as F, and its grid spans what its input's did (enlarging adds
  nothing); branches take the largest field.

>>> from convnet.layers.conv import Conv2d
>>> from convnet.models.containers import Sequential
>>> net = Sequential(*[Conv2d(8, 8, 3, padding=1, bias=False) for _ in range(3)])
>>> s = summary(net, (8, 32, 32))
>>> s.receptive_field, s.total_params                       # 7x7 view, 27 * C^2
((7, 7), 1728)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from convnet.layers.activation import LeakyReLU
from convnet.layers.base import Identity, Layer, hw_text
from convnet.layers.conv import Conv2d, LocallyConnected2d
from convnet.layers.dropout import Dropout
from convnet.layers.linear import Flatten, Linear
from convnet.models.containers import Concat, Container, DenseBlock, Residual, Sequential

# k in "parameters x k": the parameters, their gradients, and the optimizer's step cache.
OPTIMIZER_MULTIPLIERS = {
    "sgd": 2,
    "momentum": 3, "nesterov": 3, "adagrad": 3, "rmsprop": 3,
    "adam": 4, "adamw": 4,
}

# The input-size rule of thumb: H and W should be divisible by 2 at least this many times.
MIN_HALVINGS = 3

_UNITS = ("B", "KB", "MB", "GB", "TB", "PB", "EB")
_RULE_INPUT = ('notes, Layer Sizing Patterns: "The input layer should be divisible by 2 '
               'many times" (32, 64, 96, 224, 384, 512)')
_RULE_PAD = ('notes, Layer Sizing Patterns: CONV layers should use S=1 and zero padding '
             'P=(F-1)/2 so that they "do not alter the spatial dimensions of the input"')
_RULE_POOL = ('notes, Layer Sizing Patterns: pooling receptive fields larger than 3 are '
              '"too lossy and aggressive"')
_RULE_FILTER = ('notes, Layer Sizing Patterns: use small filters (3x3, at most 5x5); '
                'bigger ones (7x7) are "only common ... on the very first conv layer"')


def counted(n, noun):
    """'1 epoch', '3 epochs': n and the noun, plural (with an s) unless n is 1.

    >>> counted(1, "epoch"), counted(25, "epoch")
    ('1 epoch', '25 epochs')
    """
    return f"{n} {noun}{'s' * (n != 1)}"


# -- bytes -------------------------------------------------------------------------------
def format_bytes(num_bytes):
    """Bytes in the notes' units: divide by 1024 for KB, MB, GB (3 significant digits).

    >>> format_bytes(512), format_bytes(2048), format_bytes(77_070_336)
    ('512 B', '2.00 KB', '73.5 MB')
    >>> format_bytes(102_399), format_bytes(1024 ** 2 - 100)
    ('100 KB', '1.00 MB')
    """
    if isinstance(num_bytes, bool) or not isinstance(num_bytes, (int, np.integer, float)) \
            or not num_bytes >= 0:
        raise ValueError(f"format_bytes: expected a number of bytes >= 0, got {num_bytes!r}")
    try:
        value, unit = float(num_bytes), 0
    except OverflowError:
        raise ValueError("format_bytes: the number of bytes is too large for a float") from None
    while value >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{int(value)} B"
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    rounded = round(value, digits)      # 99.96 rounds to 100.0: 3 digits are "100"
    if rounded >= 1024 and unit < len(_UNITS) - 1:
        return format_bytes(1024.0 ** (unit + 1))   # 1023.6 KB is 1.00 MB
    if rounded >= (100 if digits == 1 else 10 if digits == 2 else math.inf):
        digits -= 1
    return f"{value:.{digits}f} {_UNITS[unit]}"


def parse_bytes(budget):
    """A memory budget in bytes: an int, or a string like "4GB", "512 MB", "1.5G" (1024s).

    >>> parse_bytes("4GB"), parse_bytes("512MB"), parse_bytes(1000)
    (4294967296, 536870912, 1000)
    """
    if isinstance(budget, (int, np.integer)) and not isinstance(budget, bool):
        if budget < 0:
            raise ValueError(f"budget: expected bytes >= 0, got {budget}")
        return int(budget)
    if isinstance(budget, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgtpe]?)(i?b)?\s*", budget,
                             re.IGNORECASE | re.ASCII)
        if match:
            power = " kmgtpe".index(match.group(2).lower() or " ")
            size = float(match.group(1)) * 1024 ** power
            if size < 2 ** 63:                       # inf for a number of 309+ digits
                return int(size)
            raise ValueError(f"budget: expected a size under 8 EB (2**63 bytes), got "
                             f"{budget.strip()[:40]!r}")
    raise ValueError(f"budget: expected bytes (an int) or a size like '4GB', '512MB', "
                     f"'1.5G' (units of 1024), got {budget!r}")


# -- the table ---------------------------------------------------------------------------
@dataclass
class LayerRow:
    """One row of the summary: a leaf layer with the volume it sees and makes.

    Shapes are per sample, (C, H, W) or (features,). receptive_field and jump are
    (height, width) pairs in input pixels. activation_values counts one sample's new
    values (0 for a RELU in place or a view); activation_bytes is for the whole batch.
    """

    name: str
    type: str
    input_shape: tuple
    output_shape: tuple
    params: int
    macs: int
    receptive_field: tuple
    jump: tuple
    activation_values: int
    activation_bytes: int
    frozen: bool = False
    algorithm: str | None = None   # a CONV's convolution algorithm, in training, this batch
    inference_algorithm: str | None = None   # and at inference, this batch

    def to_dict(self):
        return {"name": self.name, "type": self.type,
                "input_shape": list(self.input_shape),
                "output_shape": list(self.output_shape),
                "output_volume": volume(self.output_shape),
                "params": self.params, "macs": self.macs,
                "receptive_field": _compact(self.receptive_field),
                "jump": _compact(self.jump),
                "activation_values": self.activation_values,
                "activation_bytes": self.activation_bytes, "frozen": self.frozen,
                "algorithm": self.algorithm,
                "inference_algorithm": self.inference_algorithm}


@dataclass
class Summary:
    """What ``summary`` computed: rows, totals, memory, receptive field and advice.

    ``memory`` holds bytes: activations, activation_gradients, parameters (x1),
    parameter_gradients, optimizer_state, parameters_total (= parameters x k for the
    trainable ones), misc (the input batch), training_total and inference_total, with
    parameter_multiplier k and bytes_per_value. ``refused`` says, for each CONV that
    names an algorithm which cannot run it at this batch (in training or at inference),
    why; its column then reads "refused".
    """

    input_shape: tuple
    batch_size: int
    optimizer: str
    dtype: str
    layers: list
    total_params: int
    trainable_params: int
    total_macs: int
    receptive_field: tuple
    jump: tuple
    memory: dict
    budget: int | None = None
    max_batch_size: int | None = None
    advice: list = field(default_factory=list)
    refused: list = field(default_factory=list)   # CONVs whose named algorithm cannot run

    @property
    def frozen_params(self):
        return self.total_params - self.trainable_params

    @property
    def batch_macs(self):
        return self.total_macs * self.batch_size

    def to_dict(self):
        """A JSON-ready dict (ints, strings, lists): json.dumps(s.to_dict()) works."""
        return {"input_shape": list(self.input_shape), "batch_size": self.batch_size,
                "optimizer": self.optimizer, "dtype": self.dtype,
                "layers": [row.to_dict() for row in self.layers],
                "total_params": self.total_params,
                "trainable_params": self.trainable_params,
                "frozen_params": self.frozen_params,
                "total_macs": self.total_macs, "batch_macs": self.batch_macs,
                "receptive_field": _compact(self.receptive_field),
                "jump": _compact(self.jump),
                "memory": dict(self.memory), "budget": self.budget,
                "max_batch_size": self.max_batch_size, "advice": list(self.advice),
                "refused": list(self.refused)}

    def to_text(self, inference=False):
        """The table for a terminal (about 140 columns at most), then totals, memory, advice.
        Its algorithm column is what each CONV runs in training at this batch size, or
        with ``inference=True`` at inference (where the choice can differ: the auto choice
        takes Winograd only there, and fft only in training)."""
        header = ("layer", "type", "infer alg." if inference else "train alg.",
                  "output (WxHxD)", "params", "mult-adds", "RF HxW (jump)", "activations")
        star = " *" if self.frozen_params else ""     # its own place: digits stay aligned
        rows = [(_clip(r.name, 36, left=True), _clip(_short_type(r.type), 36),
                 (r.inference_algorithm if inference else r.algorithm) or "",
                 volume(r.output_shape), f"{r.params:,}" + (star if r.frozen else
                                                           " " * len(star)),
                 f"{r.macs:,}", f"{hw_text(r.receptive_field)} ({hw_text(r.jump)})",
                 format_bytes(r.activation_bytes)) for r in self.layers]
        # the input batch is the memory's "miscellaneous", not an activation of the total
        rows.insert(0, ("input", "", "", volume(self.input_shape), "", "", "1 (1)", ""))
        totals = ("total", "", "", "", f"{self.total_params:,}" + " " * len(star),
                  f"{self.total_macs:,}",
                  f"{hw_text(self.receptive_field)} ({hw_text(self.jump)})",
                  format_bytes(self.memory["activations"]))
        widths = [max(len(row[i]) for row in [header, *rows, totals]) for i in range(8)]
        right = (False, False, False, True, True, True, True, True)

        def line(row):
            cells = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)]
            return "  ".join(cells).rstrip()

        rule = "-" * len(line(header))
        out = [line(header), rule, *map(line, rows), rule, line(totals), ""]
        out += self._totals_text() + [""] + self._memory_text()
        if self.refused:
            out += ["", "Refused (these CONVs name an algorithm that cannot run them here):"]
            out += [f"  - {why}" for why in self.refused]
        if self.advice:
            out += ["", "Advice (rules of thumb from the notes; nothing here is an error):"]
            out += [f"  - {tip}" for tip in self.advice]
        return "\n".join(out)

    def _totals_text(self):
        frozen = f", frozen {self.frozen_params:,} (marked *)" if self.frozen_params else ""
        return [f"params: {self.total_params:,} (trainable {self.trainable_params:,}{frozen})",
                (f"mult-adds: {self.total_macs:,} per sample, {self.batch_macs:,} per batch "
                 f"of {self.batch_size} (bias adds not counted)")]

    def _memory_text(self):
        m, b = self.memory, self.memory["bytes_per_value"]
        k = m["parameter_multiplier"]
        act = m["activations"] // b
        rows = [
            ("activations", f"{act:,} values x {b} B", m["activations"]),
            ("their gradients", "x2 for gradients", m["activation_gradients"]),
            ("parameters", f"{self.trainable_params:,} trainable x {k} ({self.optimizer})"
             + (f" + {self.frozen_params:,} frozen x 1" if self.frozen_params else ""),
             m["parameters_total"]),
            ("miscellaneous", f"input batch {m['misc'] // b:,} values", m["misc"]),
            ("training total", "", m["training_total"]),
            ("inference", "current activations only, params once", m["inference_total"]),
        ]
        width = max(len(r[1]) for r in rows)
        out = [(f"memory (batch {self.batch_size}, {self.dtype}: {b} bytes per value, "
                f"/ 1024 for KB, MB, GB):")]
        out += [f"  {name:<16}{how:<{width}}  {format_bytes(n):>9}" for name, how, n in rows]
        if self.budget is not None:
            out.append(f"  budget {format_bytes(self.budget)}: the largest batch that fits "
                       f"for training is {self.max_batch_size:,}")
        return out

    def __str__(self):
        return self.to_text()


# -- the walk ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Field:
    """Receptive field state of a volume: rf and jump in input pixels, the grid (H, W)
    its neurons sit on (kept through Flatten so an FC layer knows what it sees), and the
    span of that whole grid in input pixels (what an FC layer on it sees)."""

    rf: tuple
    jump: tuple
    grid: tuple
    span: tuple

    @classmethod
    def start(cls, shape):
        """The input's own field: each pixel sees itself."""
        grid = _grid(shape, (1, 1))
        return cls((1, 1), (1, 1), grid, grid)

    def merge(self, other):
        """Two paths into one volume (a sum or a concatenation): the larger view."""
        return _Field(*(tuple(map(max, a, b)) for a, b in (
            (self.rf, other.rf), (self.jump, other.jump))), self.grid,
            tuple(map(max, self.span, other.span)))


def _pair(value, default=1):
    if value is None:
        value = default
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _grid(shape, fallback):
    return tuple(shape[1:]) if len(shape) == 3 else fallback


def _adaptive_window(size, out):
    """The largest window of PyTorch's adaptive pooling from ``size`` to ``out``."""
    return max(-(-(j + 1) * size // out) - (j * size // out) for j in range(out))


def _next_field(layer, state, in_shape, out_shape):
    """The receptive field of ``layer``'s output from that of its input."""
    grid = _grid(out_shape, state.grid)
    if isinstance(layer, Linear) and len(in_shape) == 3:   # FC on a volume's rows: W
        # each output sees its whole row; along W (now features) all see the same row
        return _Field((state.rf[0], state.span[1]), (state.jump[0], 0), grid,
                      (state.span[0], state.span[1]))
    if isinstance(layer, Linear):                   # FC: sees the whole grid, gives 1x1
        jump = tuple(j * g for j, g in zip(state.jump, state.grid))
        return _Field(state.span, jump, (1, 1), state.span)
    if hasattr(layer, "kernel_size"):               # CONV, locally connected, POOL
        kernel = _pair(layer.kernel_size)
        stride = _pair(getattr(layer, "stride", None), kernel)
        dilation = _pair(getattr(layer, "dilation", 1))
        extent = [d * (f - 1) + 1 for f, d in zip(kernel, dilation)]  # F_eff
    elif len(in_shape) == 3 and len(out_shape) == 3 and in_shape[1:] != out_shape[1:]:
        # adaptive pooling (or any resize without a kernel): windows over the whole grid;
        # its grid covers what its input's did, enlarging or in uneven windows
        extent = [_adaptive_window(i, o) for i, o in zip(in_shape[1:], out_shape[1:])]
        stride = [max(1, i // o) for i, o in zip(in_shape[1:], out_shape[1:])]
        rf = tuple(min(r + (f - 1) * j, s) for r, f, j, s in zip(
            state.rf, extent, state.jump, state.span))
        jump = tuple(j * s for j, s in zip(state.jump, stride))
        return _Field(rf, jump, grid, state.span)
    else:                                           # elementwise, Flatten: unchanged
        return _Field(state.rf, state.jump, grid, state.span)
    rf = tuple(r + (f - 1) * j for r, f, j in zip(state.rf, extent, state.jump))
    jump = tuple(j * s for j, s in zip(state.jump, stride))
    # The grid's span grows by what padding adds and shrinks by what the stride leaves
    # out: the difference of the two spans of an evenly spaced grid, added to the
    # input's own span (which an adaptive pool before may have left uneven)
    grid_in = _grid(in_shape, state.grid)
    span = tuple(s + (r2 + (g2 - 1) * j2) - (r1 + (g1 - 1) * j1) for s, r1, g1, j1, r2, g2, j2
                 in zip(state.span, state.rf, grid_in, state.jump, rf, grid, jump))
    return _Field(tuple(map(min, rf, span)), jump, grid, span)


def _shares_input(layer):
    """True when the output occupies the input's memory in training: a RELU in place, a
    reshaped view, or the input itself (Identity). (LeakyReLU and Dropout with
    inplace=True write into their input at inference only: in training their output is a
    new array.)"""
    if isinstance(layer, (LeakyReLU, Dropout)):
        return False
    return (getattr(layer, "inplace", False) is True
            or isinstance(layer, (Flatten, Identity)))


class _Merge:
    """A row for an array a block makes of its own, which no layer's row counts: a
    residual block's sum (body + shortcut, before post), a concatenation along depth
    (Concat's, and DenseBlock's running one after each layer). Training keeps it as the
    next layer's input, so it counts among the activations; it has no parameters and no
    multiplications."""

    params = {}

    def __init__(self, what):
        self.what = what

    def num_params(self):
        return 0

    def macs(self, input_shape):
        return 0

    def __repr__(self):
        return self.what


def _merge_name(name, what):
    return f"{name} ({what})" if name else f"({what})"


class _Walker:
    """Visits the leaves in execution order with the volume and field each one sees, and
    the arrays blocks make of their own (_Merge). For each row it also counts the values
    (per sample) that inference holds while the row runs (``live``): the row's input and
    output, and what enclosing blocks hold meanwhile (``held``): a block's input, which its
    caller keeps until the block returns; a Concat's finished branches; a residual body's
    output while the shortcut runs."""

    def __init__(self):
        self.rows = []   # (name, layer, in_shape, out_shape, field, frozen)
        self.live = []   # values held at inference while each row runs, per sample

    def _row(self, row, live):
        self.rows.append(row)
        self.live.append(live)

    def visit(self, layer, name, shape, state, frozen=False, held=0):
        """Walk ``layer`` on per-sample input ``shape`` while enclosing blocks hold
        ``held`` other values; return (out shape, field)."""
        frozen = frozen or bool(getattr(layer, "frozen", False))
        if not isinstance(layer, Container):
            out = tuple(layer.output_shape(shape))
            new = _next_field(layer, state, shape, out)
            made = 0 if _shares_input(layer) else math.prod(out)
            self._row((name, layer, tuple(shape), out, new, frozen),
                      held + math.prod(shape) + made)
            return out, new
        children = [(f"{name}.{key}" if name else key, child)
                    for key, child in layer.named_children()]
        block_input = math.prod(shape)          # the caller keeps it until the block returns
        if isinstance(layer, Residual):
            return self._residual(layer, name, shape, state, frozen, held)
        if isinstance(layer, Concat):                # every branch sees the block input
            outs, done = [], 0
            for n, child in children:
                outs.append(self.visit(child, n, shape, state, frozen, held + done))
                done += math.prod(outs[-1][0])
            merged = outs[0][1]
            for _, other in outs[1:]:
                merged = merged.merge(other)
            out = tuple(layer.output_shape(shape))  # checks the branches' H x W agree
            field = _Field(merged.rf, merged.jump, _grid(out, merged.grid), merged.span)
            self._row((_merge_name(name, "concat"), _Merge("concatenation"), tuple(shape),
                       out, field, frozen), held + block_input + done + math.prod(out))
            return out, field
        if isinstance(layer, DenseBlock):
            for index, (n, child) in enumerate(children):  # each sees the running concat
                kept = held + (block_input if index else 0)
                new_shape, new_state = self.visit(child, n, shape, state, frozen, kept)
                joined = (shape[0] + new_shape[0], *shape[1:])
                state = state.merge(new_state)
                self._row((_merge_name(n, "concat"), _Merge("running concatenation"),
                           tuple(shape), joined, state, frozen),
                          kept + math.prod(shape) + math.prod(new_shape) + math.prod(joined))
                shape = joined
            return shape, state
        start = shape, state
        for index, (n, child) in enumerate(children):  # Sequential, and any other chain
            shape, state = self.visit(child, n, shape, state, frozen,
                                      held + (block_input if index else 0))
        if type(layer) is not Sequential and shape != start[0] \
                and tuple(layer.output_shape(start[0])) == tuple(start[0]):
            return start        # a side head (GoogLeNet's AuxClassifier): x passes on
        return shape, state

    def _residual(self, block, name, shape, state, frozen, held):
        """Body on x, the shortcut on x (or the identity), their sum, then post."""
        def full(key):
            return f"{name}.{key}" if name else key

        x = math.prod(shape)
        out, body = shape, state
        for index, key in enumerate(block.body_keys):
            out, body = self.visit(block[key], full(key), out, body, frozen,
                                   held + (x if index else 0))
        skip = state
        if block.shortcut_key:                      # while the body's output waits
            _, skip = self.visit(block[block.shortcut_key], full(block.shortcut_key),
                                 shape, state, frozen, held + math.prod(out))
        block.output_shape(shape)                   # checks that body and shortcut agree
        merged = body.merge(skip)
        summed = math.prod(out) * (2 if block.shortcut_key else 1)   # added in place
        self._row((_merge_name(name, "sum"), _Merge("body + shortcut"), tuple(out),
                   tuple(out), merged, frozen), held + x + summed)
        if block.post_key:
            out, merged = self.visit(block[block.post_key], full(block.post_key), out,
                                     merged, frozen, held + x)
        return out, merged


# -- advice ------------------------------------------------------------------------------
def _halvings(n):
    count = 0
    while n > 0 and n % 2 == 0:
        n //= 2
        count += 1
    return count


def _advice(input_shape, walked):
    tips = []
    if len(input_shape) == 3:
        odd = [f"{n} = 2^{_halvings(n)} x {n >> _halvings(n)}"
               for n in dict.fromkeys(input_shape[1:]) if _halvings(n) < MIN_HALVINGS]
        if odd:
            tips.append(f"input {volume(input_shape)}: {', '.join(odd)} divides by 2 fewer "
                        f"than {MIN_HALVINGS} times, so halving it soon gives odd sizes; "
                        f"{_RULE_INPUT}")
    convs = 0
    # Whether a spatial CONV (wider than 1x1) or an FC layer comes after each row: an FC
    # layer slid as a CONV has neither after it (fc_to_conv's heads: 1x1 CONVs alone).
    later, spatial = [], False
    for _, layer, *_ in reversed(walked):
        later.append(spatial)
        spatial = spatial or isinstance(layer, (Linear, LocallyConnected2d)) or (
            isinstance(layer, Conv2d) and _pair(layer.kernel_size) != (1, 1))
    later.reverse()

    def slid(index):
        """Whether row index is an FC layer as a CONV (fc_to_conv): it spans its whole
        input at the size the net was trained for, and half or more of it at the larger
        sizes it slides over, with only 1x1 CONVs after it: no feature detector to be
        made of stacked 3x3 CONVs, and meant to shrink the volume."""
        _, layer, in_shape, *_ = walked[index]
        if not isinstance(layer, (Conv2d, LocallyConnected2d)):
            return False
        extent = [d * (f - 1) + 1 for f, d in zip(_pair(layer.kernel_size),
                                                   _pair(getattr(layer, "dilation", 1)))]
        return not later[index] and _pair(layer.padding) == (0, 0) and all(
            2 * e >= size for e, size in zip(extent, in_shape[1:]))

    for index, (name, layer, in_shape, out_shape, _, _) in enumerate(walked):
        label = f"{name} {layer!r}" if name else repr(layer)
        is_conv = isinstance(layer, (Conv2d, LocallyConnected2d))
        if is_conv:
            kernel = _pair(layer.kernel_size)
            dilation = _pair(getattr(layer, "dilation", 1))
            extent = [d * (f - 1) + 1 for f, d in zip(kernel, dilation)]
            slid_fc = slid(index)
            if convs and max(kernel) > 5 and not slid_fc:
                tips.append(f"{label}: a {kernel[0]}x{kernel[1]} filter after the first "
                            f"CONV layer; three stacked 3x3 CONVs see 7x7 with 27C^2 "
                            f"parameters instead of 49C^2; {_RULE_FILTER}")
            convs += 1
            shrinks = [in_shape[1 + a] > out_shape[1 + a] and extent[a] % 2 == 1
                       for a in (0, 1)]
            if _pair(layer.stride) == (1, 1) and any(shrinks) and not slid_fc:
                keep = [(f - 1) // 2 for f in extent]
                rule = "(F-1)/2" if dilation == (1, 1) else "D*(F-1)/2"
                tips.append(f"{label}: S=1 shrinks {volume(in_shape)} to "
                            f"{volume(out_shape)}; P={rule}={hw_text(keep)} would keep the "
                            f"size; {_RULE_PAD}")
        elif hasattr(layer, "kernel_size") and len(out_shape) == 3 \
                and out_shape[1:] != (1, 1):        # a POOL (global pooling is exempt)
            kernel = _pair(layer.kernel_size)
            # global pooling slid by fc_to_conv: stride 1, then the FC's CONV dilated by
            # the pool's window
            after = next((j for j in range(index + 1, len(walked))
                          if isinstance(walked[j][1], (Conv2d, LocallyConnected2d))), None)
            global_slid = (_pair(layer.stride) == (1, 1) and after is not None
                           and not later[after]
                           and _pair(getattr(walked[after][1], "dilation", 1)) == kernel)
            if max(kernel) > 3 and not global_slid:
                tips.append(f"{label}: pooling with F={hw_text(kernel)} > 3; {_RULE_POOL}")
    return tips


# -- summary -----------------------------------------------------------------------------
def layer_inputs(model, input_shape):
    """(name, layer, per-sample input shape) of every leaf of ``model`` in execution
    order, as summary names and sizes them.

    >>> from convnet.models import from_notation
    >>> [(n, s) for n, _, s in layer_inputs(from_notation("INPUT 4x4x1 -> CONV 4 -> FC 2"),
    ...                                      (1, 4, 4))]
    [('0', (1, 4, 4)), ('1', (4, 4, 4)), ('2', (64,))]
    """
    walker = _Walker()
    shape = _check_shape(input_shape, "layer_inputs")
    walker.visit(model, "", shape, _Field.start(shape))
    return [(name, layer, in_shape) for name, layer, in_shape, *_ in walker.rows]


def summary(model, input_shape, batch_size=1, optimizer="sgd", dtype=None, budget=None):
    """The notes' layer-by-layer table of a model, with its memory and receptive field.

    Args:
        model: a Layer or a container (Sequential, Residual, Concat, DenseBlock).
        input_shape: one sample's shape without the batch axis, (C, H, W) (the notes'
            W x H x D volume) or (features,).
        batch_size: N, for the activation and input memory and the mult-adds per batch.
        optimizer: the step cache that multiplies parameter memory: "sgd" (x2: params
            and grads), "momentum", "nesterov", "adagrad", "rmsprop" (x3), "adam",
            "adamw" (x4).
        dtype: float32 (4 bytes per value) or float64 (8); None takes the model's.
        budget: memory in bytes, or a string like "4GB" (units of 1024); the summary then
            reports the largest batch whose training memory fits (0 if none).

    Returns a Summary: ``.layers`` (one LayerRow per leaf, and one per array a block
    makes of its own: a residual sum, "NAME (sum)", a concatenation, "NAME (concat)"; a
    CONV's with the convolution
    algorithm it runs at this batch size in training and at inference, at dtype's bytes
    per value), totals, ``.memory`` in bytes, ``.advice``, ``.refused``; ``.to_text()``
    for a terminal and ``.to_dict()`` for JSON.

    Memory for training, in values x bytes per value:
        2 * batch * sum(outputs) + k * trainable + frozen + batch * prod(input_shape)

    >>> from convnet.layers.conv import Conv2d
    >>> s = summary(Conv2d(3, 64, 3, padding=1), (3, 224, 224))
    >>> s.total_params, s.total_macs, format_bytes(s.memory["activations"])
    (1792, 86704128, '12.2 MB')
    """
    where = "summary"
    if not isinstance(model, Layer):
        raise ValueError(f"{where}: model must be a Layer or a container, "
                         f"got {type(model).__name__}")
    input_shape = _check_shape(input_shape, where)
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) \
            or batch_size < 1:
        raise ValueError(f"{where}: batch_size must be a positive int, got {batch_size!r}")
    batch_size = int(batch_size)
    key = optimizer.lower() if isinstance(optimizer, str) else None
    if key not in OPTIMIZER_MULTIPLIERS:
        raise ValueError(f"{where}: optimizer must be one of "
                         f"{sorted(OPTIMIZER_MULTIPLIERS)}, got {optimizer!r}")
    walker = _Walker()
    # rows named as in named_layers()
    _, final = walker.visit(model, "", input_shape, _Field.start(input_shape))
    dtype = _bytes_dtype(dtype, [layer for _, layer, *_ in walker.rows], where)
    b = dtype.itemsize
    rows, trainable, refusals = [], 0, []
    for name, layer, in_shape, out_shape, state, frozen in walker.rows:
        values = 0 if _shares_input(layer) else math.prod(out_shape)
        params = int(layer.num_params())
        trainable += 0 if frozen else params
        name = name or layer.name or type(layer).__name__        # a bare layer as the model
        algorithms = ((_algorithm(layer, in_shape, batch_size, True, b, refusals),
                       _algorithm(layer, in_shape, batch_size, False, b, refusals))
                      if hasattr(layer, "algorithm_for") else (None, None))
        rows.append(LayerRow(name, repr(layer), in_shape, out_shape, params,
                             int(layer.macs(in_shape)), state.rf, state.jump, values,
                             values * batch_size * b, frozen, *algorithms))
    total_params = sum(row.params for row in rows)
    memory = _memory(rows, walker.live, input_shape, batch_size, total_params, trainable,
                     OPTIMIZER_MULTIPLIERS[key], b)
    max_batch = None
    if budget is not None:
        budget = parse_bytes(budget)
        max_batch = _max_batch(memory, budget)
    return Summary(input_shape, batch_size, key, dtype.name, rows, total_params, trainable,
                   sum(row.macs for row in rows), final.rf, final.jump, memory, budget,
                   max_batch, _advice(input_shape, walker.rows), refusals)


def _algorithm(layer, in_shape, batch, training, itemsize, refusals):
    """The algorithm a CONV runs (training or inference) at this batch and item size,
    or "refused" where the algorithm it names cannot run there, the reason then added
    to refusals."""
    try:
        return layer.algorithm_for(in_shape, batch, training, itemsize)
    except ValueError as error:
        refusals.append(f"{error} ({'in training' if training else 'at inference'}, "
                        f"batch {batch})")
        return "refused"


def _memory(rows, live, input_shape, batch, total_params, trainable, k, b):
    """The notes' three sources in bytes, and the inference estimate (live: the values
    held while each row runs, per sample)."""
    act = sum(row.activation_values for row in rows) * batch * b
    params_total = (trainable * k + (total_params - trainable)) * b
    misc = math.prod(input_shape) * batch * b
    # only the current activations: the most that one layer's input and output (a layer
    # that writes into its input: the input alone), with what blocks hold meanwhile, take
    live = max(max(live, default=0), math.prod(input_shape))
    return {"bytes_per_value": b, "batch_size": batch,
            "activations": act, "activation_gradients": act,
            "parameters": total_params * b, "parameter_gradients": trainable * b,
            "optimizer_state": trainable * (k - 2) * b, "parameter_multiplier": k,
            "parameters_total": params_total, "misc": misc,
            "training_total": 2 * act + params_total + misc,
            "inference_total": live * batch * b + total_params * b}


def _max_batch(memory, budget):
    """The largest N with training memory <= budget: it grows by the same bytes per sample."""
    batch = memory["batch_size"]
    per_sample = (2 * memory["activations"] + memory["misc"]) // batch
    fixed = memory["parameters_total"]
    if budget < fixed + per_sample:
        return 0
    return (budget - fixed) // per_sample


def _check_shape(input_shape, where):
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if not shape or len(shape) > 3 or any(
            not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 1
            for s in shape):
        raise ValueError(f"{where}: input_shape must be one sample's shape without the batch "
                         f"axis, (C, H, W) or (features,) of positive ints, got {input_shape!r}")
    return tuple(int(s) for s in shape)


def _bytes_dtype(dtype, leaves, where):
    if dtype is None:
        kinds = [p.dtype for layer in leaves for p in layer.params.values()]
        dtype = max(kinds, key=lambda d: d.itemsize) if kinds else np.float32
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        dtype = None
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"{where}: dtype must be float32 (4 bytes per value) or float64 "
                         f"(8), got {dtype!r}")
    return dtype


# -- formatting --------------------------------------------------------------------------
def volume(shape):
    """A per-sample shape in the notes' W x H x D order: (64, 224, 112) -> '112x224x64'."""
    shape = tuple(shape)
    if len(shape) == 3:
        return f"{shape[2]}x{shape[1]}x{shape[0]}"
    if len(shape) == 1:
        return f"1x1x{shape[0]}"
    return "x".join(str(s) for s in reversed(shape))


def _compact(pair):
    """A square pair as one int, a rectangular one as [H, W] (JSON-ready)."""
    return int(pair[0]) if pair[0] == pair[1] else [int(pair[0]), int(pair[1])]



def _clip(text, width, left=False):
    """Shorten to width with "...": at the left for dotted names (the leaf's end matters),
    where it can at a dot, so that whole names are shown ("...denseblock1.denselayer1")."""
    if len(text) <= width:
        return text
    if left:
        tail = text[3 - width:]
        dot = tail.find(".")
        return "..." + (tail[dot + 1:] if 0 <= dot < len(tail) - 1 else tail)
    return text[: width - 3] + "..."


# The table's type column in the notes' letters: Conv2d(K=256, F=5, S=1, P=2, G=2).
_SHORT_TYPES = (("groups=", "G="), ("dilation=", "D="), ("bias=False", "no bias"),
                ("LocalResponseNorm(", "LRN("))


def _short_type(text):
    for long, short in _SHORT_TYPES:
        text = text.replace(long, short)
    return text
