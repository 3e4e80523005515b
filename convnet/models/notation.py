"""The notes' arrow notation: build a Sequential from text such as

    INPUT 32x32x3 -> [[CONV 32 -> RELU]*2 -> POOL]*3 -> [FC 512 -> RELU]*2 -> FC 10

Items are separated by ``->`` (or ``→``). Keywords are case-insensitive; numbers and
options follow them, separated by spaces, in any order. An option's letter takes its value
right after it, or after an ``=`` as the notes write it (``F3`` or ``F=3``); a bare number
may be named as the notes name it (``CONV K=32``, ``FC n=10``, ``DROPOUT p=0.5``). Sizes
may use the notes' times sign (``32×32×3``, ``F3×5``).

=================================  ======================================================
``INPUT WxHxD`` / ``INPUT WxH``    the input volume in the notes' order, width x height x
                                   depth: 32x32x3 is (C, H, W) = (3, 32, 32); WxH has
                                   D = 1; ``INPUT n`` is a vector of n features.
                                   First item only; bare ``INPUT`` or no INPUT at all
                                   needs ``input_shape=(C, H, W)``.
``CONV K [F] [S] [P] [D] [G]``     Conv2d with K filters. ``F3`` or ``F3x5`` (FH x FW),
``[floor]``                        ``S1``, ``P1`` or ``Psame``, ``D2`` (dilation), ``G2``
                                   (groups), ``floor`` for fit="floor". Defaults are the
                                   notes' sizing rules: F=3, S=1, P=D*(F-1)/2 (keeps the
                                   size; an even F needs an explicit P).
``POOL [F] [S] [P] [D]``           MaxPool2d, F=2, S=F by default (F=2, S=2); ``ceil``
``[ceil|floor]``                   for ceil_mode, ``floor`` for fit="floor".
``AVGPOOL [F] [S] [P] [...]``      AvgPool2d, same options as POOL except D.
``L2POOL [F] [S] [ceil|floor]``    LPPool2d(2, ...): L2-norm pooling, no padding.
``GAP``                            AdaptiveAvgPool2d(1), global average pooling.
``RELU``, ``RELU6``, ``TANH``, ``SIGMOID``    the activations; ``LEAKYRELU [slope]`` (0.01).
``BN``                             BatchNorm2d on a volume, BatchNorm1d on a vector.
``LRN [size [alpha [beta [k]]]]``  LocalResponseNorm, AlexNet's 5, 1e-4, 0.75, 2.
``DROPOUT [p]``                    Dropout, p = 0.5.
``LC K [F] [S] [P] [floor]``       LocallyConnected2d (F=3, S=1, P=0), sized from the
                                   volume it gets.
``FLATTEN``                        Flatten().
``FC n``                           Linear with n outputs, fan-in from the shape before;
                                   a Flatten() is put in front of it (with its own
                                   index) when that shape is a volume.
=================================  ======================================================

Pairs (``F3x5``, ``S2x1``, ``P1x2``, ``D2x1``) are height x width, PyTorch's order.
Repetition: ``[ ... ]*N`` (nestable) or ``LAYER*N``, where N is an int or a name bound by
a keyword argument of ``from_notation`` (``bind_counts`` writes values in: the command
line's ``--count N=2``); ``?`` after a layer or a group marks it optional
(the notes' ``POOL?``). Shapes are checked while building: every error names the layer
in the model (``model[i]``), its text and column, shows the text with a caret under the
layer, and says which volume it got (W x H x D, as the notes write volumes).

The text is checked against the caps of ``convnet.limits`` before anything is built: its
length (MAX_JSON_BYTES, as a model file), bracket nesting (MAX_DEPTH), the layer count
after unrolling, computed by arithmetic (MAX_LAYERS), every volume (MAX_VOLUME) and the
parameters, each layer's and the model's (MAX_PARAMS), counted before they are allocated.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import NamedTuple

import numpy as np

from convnet import limits
from convnet.functional.conv.sizes import conv_output_size, pair
from convnet.layers.activation import LeakyReLU, ReLU, ReLU6, Sigmoid, Tanh
from convnet.layers.base import MultilineError, check_dtype, counting_only, counting_params
from convnet.layers.conv import Conv2d, LocallyConnected2d
from convnet.layers.dropout import Dropout
from convnet.layers.linear import Flatten, Linear
from convnet.layers.norm import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from convnet.layers.pool import AdaptiveAvgPool2d, AvgPool2d, LPPool2d, MaxPool2d
from convnet.models.containers import Sequential, relus_in_place

# -- tokens ----------------------------------------------------------------------------

# A word runs to whitespace, a bracket, '*', '?' or an arrow. The possessive ++ keeps
# the match linear in time and constant in memory however long a hostile word is.
_TOKEN = re.compile(r"\s*+(?:(?P<arrow>->|→)|(?P<punct>[\[\]*?])"
                    r"|(?P<word>(?:[^\s\[\]*?→-]++|-(?!>))++))")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")       # ASCII, as --count NAME=N takes
_INT = re.compile(r"[0-9]+$")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
MAX_WORD = 64      # characters in one keyword, argument or count (far more than any needs)
MAX_ARGS = 16      # arguments after one keyword (CONV, the most, takes 7; more are refused)


class _Token(NamedTuple):
    kind: str          # "->", "[", "]", "*", "?", "word" or "end"
    text: str
    start: int         # offsets into the text: text[start:end] is the token
    end: int


def _tokenize(text):
    """The tokens of the text, one at a time (the parser stops at the first problem, so a
    long hostile text is never split in full), then an "end" token."""
    pos = 0
    while True:
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:   # only whitespace is left
            break
        kind = "->" if match["arrow"] else match["punct"] or "word"
        start = match.start(match.lastgroup)
        yield _Token(kind, text[start:match.end()], start, match.end())
        pos = match.end()
    yield _Token("end", "", len(text.rstrip()), len(text.rstrip()))


_DASHES = {"\u2013": "an en dash", "\u2014": "an em dash", "\u2212": "a minus sign",
           "\u2010": "a hyphen", "\u2011": "a non-breaking hyphen"}


def _lookalike(word, after_group=False):
    """A hint for a word that copies a symbol from typeset text: a dash-arrow ('–>', also
    inside a word: 'RELU–>FC') or a repetition written with a times sign ('×2', 'x2'; an
    x before a name, 'xN', only right after a group's ']'); else ""."""
    if len(word) > MAX_WORD:                 # no hint repeats a word past the cap
        return ""
    dash = next((c for c in _DASHES if c + ">" in word), None)
    if dash is not None:
        return (f"; {dash!r} (U+{ord(dash):04X}) is {_DASHES[dash]}: write the arrow as "
                f"'->'")
    name = r"|[xX][A-Za-z_][A-Za-z0-9_]*" if after_group else ""
    if re.fullmatch(rf"×([0-9]+|[A-Za-z_][A-Za-z0-9_]*)|[xX][0-9]+{name}", word):
        return f"; a repetition is written with '*': *{word[1:]}"
    return ""


def _shown(word):
    """A word for an error message: cut short when it is longer than MAX_WORD."""
    return word if len(word) <= MAX_WORD else f"{word[:MAX_WORD]}... ({len(word):,} characters)"


# -- errors ----------------------------------------------------------------------------

def _volume(shape):
    """The notes' way to write a per-sample shape: (C, H, W) -> 'WxHxD'."""
    if len(shape) == 3:
        c, h, w = shape
        return f"{w}x{h}x{c}"
    if len(shape) == 1:
        return f"a vector of {shape[0]}"
    return str(tuple(shape))


_LINE = 960    # the longest line an error shows whole (the CLI cuts lines over 1,000)


def _error(text, start, end, what, problem, got=None):
    """A ValueError (MultilineError): '<what> at <column> [got <volume>]: <problem>', then
    the text's line with carets under text[start:end]."""
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", start)
    line_end = len(text) if line_end < 0 else line_end
    column = start - line_start + 1
    where = f"column {column}"
    if "\n" in text.strip():
        where = f"line {text.count(chr(10), 0, start) + 1}, {where}"
    head = f"{what} at {where}" + (f" got {_volume(got)}" if got is not None else "")
    line = text[line_start:line_end]
    width = max(1, min(end, line_end, start + _LINE // 2) - start)
    if len(line) > _LINE:         # a window of the line around the carets
        left = max(0, column - 1 - _LINE // 2)
        line, column = line[left:left + _LINE], column - left
    # one printable character a column, so that the carets stay under the layer: any
    # whitespace (tab, form feed, \x1c..\x1f) as a space, anything else unprintable as "?"
    line = "".join(c if c.isprintable() else " " if c.isspace() else "?" for c in line)
    carets = " " * (column - 1) + "^" * width
    return MultilineError(f"from_notation: {head}: {problem}", f"    {line}", f"    {carets}")


class _Parse(Exception):
    """Raised inside the parser with a token; turned into the ValueError above."""

    def __init__(self, token, problem):
        super().__init__(problem)
        self.token, self.problem = token, problem


# -- the syntax tree -------------------------------------------------------------------

class _Layer(NamedTuple):
    keyword: str       # upper case, e.g. "CONV"
    args: dict         # parsed hyperparameters, e.g. {"K": 32, "F": (3, 3)}
    start: int
    end: int
    number: int        # 1, 2, ... in the order of the text (INPUT is 0)


class _Group(NamedTuple):
    items: list
    start: int
    end: int


class _Item(NamedTuple):
    node: object       # a _Layer or a _Group
    count: object      # None, an int, or the _Token of a name
    optional: bool


# Arguments of each keyword: the bare numbers in order, the one-letter options, the flags.
# Kinds: "int" (> 0), "float", "pair" (> 0), "pair0" (>= 0), "pad" (pair0 or "same").
_BARE = {"CONV": [("K", "int")], "LC": [("K", "int")], "FC": [("n", "int")],
         "LEAKYRELU": [("slope", "float")], "DROPOUT": [("p", "float")],
         "LRN": [("size", "int"), ("alpha", "float"), ("beta", "float"), ("k", "float")],
         "INPUT": [("size", "volume")]}
_OPTIONS = {"CONV": {"F": "pair", "S": "pair", "P": "pad", "D": "pair", "G": "int"},
            "LC": {"F": "pair", "S": "pair", "P": "pair0"},
            "POOL": {"F": "pair", "S": "pair", "P": "pair0", "D": "pair"},
            "AVGPOOL": {"F": "pair", "S": "pair", "P": "pair0"},
            "L2POOL": {"F": "pair", "S": "pair"}}
_FLAGS = {"CONV": {"floor"}, "LC": {"floor"}, "POOL": {"ceil", "floor"},
          "AVGPOOL": {"ceil", "floor"}, "L2POOL": {"ceil", "floor"}}
_REQUIRED = {"CONV": "the number of filters K, e.g. 'CONV 32'",
             "LC": "the number of filters K, e.g. 'LC 32'",
             "FC": "the number of neurons n, e.g. 'FC 10'"}
KEYWORDS = ("INPUT", "CONV", "POOL", "AVGPOOL", "L2POOL", "GAP", "RELU", "RELU6", "LEAKYRELU",
            "TANH", "SIGMOID", "BN", "LRN", "DROPOUT", "LC", "FLATTEN", "FC")
_EXAMPLES = {"int": "a positive int such as 3", "float": "a number such as 0.5",
             "pair": "a positive int or HxW such as 3 or 3x5",
             "pair0": "a non-negative int or HxW such as 1 or 1x2",
             "pad": "a non-negative int, HxW or 'same', such as 1",
             "volume": "WxHxD such as 32x32x3, WxH such as 28x28, or n such as 784"}


def _value(text, kind):
    """Parse one number of the given kind; None when the text is not one."""
    if kind == "float":     # a plain decimal: no digit underscores, nan or inf
        if not _FLOAT.match(text):
            return None
        value = float(text)
        return value if math.isfinite(value) else None
    if kind == "pad" and text.lower() == "same":
        return "same"
    parts = text.lower().replace("×", "x").split("x")   # 32×32×3, as the notes write it
    if not all(_INT.match(part) for part in parts):
        return None
    nums = tuple(int(part) for part in parts)
    low = 0 if kind in ("pair0", "pad") else 1
    if any(n < low for n in nums):
        return None
    if kind == "int":
        return nums[0] if len(nums) == 1 else None
    if kind == "volume":
        if len(nums) == 1:
            return nums                               # a vector of n features
        if len(nums) == 2:
            nums = (*nums, 1)                         # WxH: depth 1
        if len(nums) != 3:
            return None
        w, h, d = nums
        return (d, h, w)                              # (C, H, W)
    if len(nums) == 1:
        return (nums[0], nums[0])
    return nums if len(nums) == 2 else None


def _parse_args(keyword, tokens):
    """The hyperparameters of one layer from its argument tokens: {"K": 32, "F": (3, 3)}."""
    bare = _BARE.get(keyword, [])
    options = _OPTIONS.get(keyword, {})
    flags = _FLAGS.get(keyword, set())
    args = {}
    for tok in tokens:
        word = tok.text
        if len(word) > MAX_WORD:
            raise _Parse(tok, f"{keyword}: an argument of {len(word):,} characters; it "
                              f"takes {_describe(keyword)}")
        if word.upper() in KEYWORDS and word.upper() not in options:
            raise _Parse(tok, f"{keyword} does not take {word!r}; a missing '->' before it?")
        if word.lower() in flags:
            if word.lower() in args:
                raise _Parse(tok, f"{keyword}: {word!r} is given twice")
            if {"ceil", "floor"} <= set(args) | {word.lower()}:
                raise _Parse(tok, f"{keyword}: 'ceil' and 'floor' exclude each other")
            args[word.lower()] = True
            continue
        named = word.partition("=")[0]
        named = next((entry for entry in bare if "=" in word
                      and entry[0].lower() == named.lower()), None)
        if named is not None:           # the notes' K=4096, n=10, p=0.5
            name, kind = named
            if name in args:
                raise _Parse(tok, f"{keyword}: {name} is given twice")
            value = _value(word.partition("=")[2], kind)
            if value is None:
                raise _Parse(tok, f"{keyword}: {name} must be {_EXAMPLES[kind]}, got {word!r}"
                                  f"{_lookalike(word)}")
            args[name] = value
            continue
        if word[0].isdigit() or word[0] in "+-.":
            free = [entry for entry in bare if entry[0] not in args]
            if not free:
                takes = (f"at most {len(bare)} number(s): "
                         + ", ".join(name for name, _ in bare)) if bare else "no bare number"
                hint = f"; options are {_describe(keyword)}" if options or flags else ""
                raise _Parse(tok, f"{keyword} takes {takes}, got an extra {word!r}{hint}")
            name, kind = free[0]
            value = _value(word, kind)
            if value is None:
                raise _Parse(tok, f"{keyword}: {name} must be {_EXAMPLES[kind]}, got {word!r}"
                                  f"{_lookalike(word)}")
            args[name] = value
            continue
        letter = word[0].upper()
        if letter not in options:
            hint = _lookalike(word) or f"; it takes {_describe(keyword)}"
            raise _Parse(tok, f"{keyword} does not take {word!r}{hint}")
        if letter in args:
            raise _Parse(tok, f"{keyword}: option {letter} is given twice")
        value = _value(word[1:].removeprefix("="), options[letter])   # F3, or F=3
        if value is None:
            raise _Parse(tok, f"{keyword}: {letter} must be {_EXAMPLES[options[letter]]} "
                              f"written right after it (e.g. {letter}2), got {word!r}"
                              f"{_lookalike(word)}")
        args[letter] = value
    return args


def _describe(keyword):
    """The arguments a keyword takes, for error messages."""
    parts = [name for name, _ in _BARE.get(keyword, [])]
    parts += [f"{letter}<{kind}>" for letter, kind in _OPTIONS.get(keyword, {}).items()]
    parts += sorted(_FLAGS.get(keyword, ()))
    return ", ".join(parts) if parts else "no arguments"


class _Parser:
    """Recursive descent over: seq := item ('->' item)*; item := (layer | '[' seq ']')
    ('*' count | '?')*; layer := KEYWORD argument*."""

    def __init__(self, text):
        self.tokens = _tokenize(text)
        self.next = next(self.tokens)
        self.layers = 0     # layers in the text so far, before unrolling
        self.depth = 0      # brackets open

    def peek(self):
        return self.next

    def take(self):
        tok = self.next
        if tok.kind != "end":
            self.next = next(self.tokens)
        return tok

    def parse(self):
        if self.peek().kind == "end":
            raise _Parse(self.peek(), "the text is empty; write layers such as "
                                      "'INPUT 32x32x3 -> CONV 16 -> RELU -> POOL -> FC 10'")
        items = self.seq()
        tok = self.peek()
        if tok.kind == "]":
            raise _Parse(tok, "']' without a matching '['")
        if tok.kind != "end":
            last = items[-1].node
            hint = ("; the size follows INPUT without brackets: INPUT 32x32x3"
                    if tok.kind == "[" and isinstance(last, _Layer)
                    and last.keyword == "INPUT" and not last.args else "")
            hint = hint or _lookalike(tok.text, after_group=isinstance(items[-1].node,
                                                                        _Group))
            raise _Parse(tok, f"expected '->' before {_shown(tok.text)!r}{hint}")
        return items

    def seq(self):
        items = [self.item()]
        while self.peek().kind == "->":
            self.take()
            items.append(self.item())
        return items

    def item(self):
        tok = self.peek()
        if tok.kind == "[":
            self.take()
            self.depth += 1
            if self.depth > limits.MAX_DEPTH:
                raise _Parse(tok, f"brackets nested deeper than {limits.MAX_DEPTH} "
                                  f"(convnet.limits.MAX_DEPTH)")
            items = self.seq()
            self.depth -= 1
            close = self.peek()
            if close.kind == "end":
                raise _Parse(tok, "this '[' is never closed: add a ']'")
            if close.kind != "]":
                raise _Parse(close, f"expected '->' or ']' before {_shown(close.text)!r}"
                                    f"{_lookalike(close.text, after_group=True)}")
            self.take()
            node = _Group(items, tok.start, close.end)
        elif tok.kind == "word":
            node = self.layer()
        else:
            if tok.kind == "end":      # after a '->': the empty text is parse()'s
                raise _Parse(tok, "a '->' at the end: a layer must follow it, got the end "
                                  "of the text")
            raise _Parse(tok, f"expected a layer or '[' here, got {tok.text!r}")
        count, optional = None, False
        while self.peek().kind in ("*", "?"):
            mark = self.take()
            if mark.kind == "?":
                if optional:
                    raise _Parse(mark, "'?' is given twice")
                optional = True
                continue
            if count is not None:
                raise _Parse(mark, "a second '*' count; write one product, or nest brackets")
            tok = self.take()
            if tok.kind == "word" and _INT.match(tok.text):
                count = _count(tok)
            elif tok.kind == "word" and len(tok.text) <= MAX_WORD and _NAME.match(tok.text):
                count = tok
            else:
                raise _Parse(tok if tok.kind != "end" else mark,
                             "'*' must be followed by a count: an int such as 2 or a name "
                             "such as N bound by from_notation(..., N=2)")
        return _Item(node, count, optional)

    def layer(self):
        tok = self.take()
        keyword = tok.text.upper()
        if keyword not in KEYWORDS:
            if len(tok.text) > MAX_WORD:
                raise _Parse(tok, f"unknown layer {_shown(tok.text)!r}; known layers are "
                                  + ", ".join(KEYWORDS))
            dash = _lookalike(tok.text)
            if dash:                    # RELU–>FC: a dash-arrow without spaces
                raise _Parse(tok, f"unknown layer {tok.text!r}{dash}")
            close = difflib.get_close_matches(keyword, KEYWORDS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise _Parse(tok, f"unknown layer {tok.text!r}; {hint}known layers are "
                              + ", ".join(KEYWORDS))
        args = []
        while self.peek().kind == "word" and len(args) <= MAX_ARGS:  # _parse_args refuses
            args.append(self.take())                                  # MAX_ARGS + 1
        number = 0 if keyword == "INPUT" else self.layers + 1
        self.layers += keyword != "INPUT"
        if self.layers > limits.MAX_LAYERS:
            raise _Parse(tok, f"more than {limits.MAX_LAYERS:,} layers in the text "
                              f"(convnet.limits.MAX_LAYERS)")
        end = args[-1].end if args else tok.end
        try:
            parsed = _parse_args(keyword, args)
        except _Parse as exc:
            exc.problem = f"layer {number} in the text ({keyword}): {exc.problem}"
            raise
        if keyword in _REQUIRED and not any(name in parsed for name, _ in _BARE[keyword]):
            raise _Parse(_Token("word", keyword, tok.start, end),
                         f"layer {number} in the text: {keyword} needs {_REQUIRED[keyword]}")
        return _Layer(keyword, parsed, tok.start, end, number)


def _count(tok):
    """The int of a count token (digits), at most limits.MAX_LAYERS."""
    if len(tok.text) > MAX_WORD or int(tok.text) > limits.MAX_LAYERS:
        raise _Parse(tok, f"the count {_shown(tok.text)} is over the cap of "
                          f"{limits.MAX_LAYERS:,} layers (convnet.limits.MAX_LAYERS)")
    return int(tok.text)


# -- building --------------------------------------------------------------------------

def _conv_padding(args):
    """CONV's padding: given, 'same', or the notes' P = D*(F-1)/2 that keeps the size."""
    if "P" in args:
        return args["P"]
    (fh, fw), (dh, dw) = args.get("F", (3, 3)), args.get("D", (1, 1))
    if dh * (fh - 1) % 2 or dw * (fw - 1) % 2:
        raise ValueError(f"the default padding P = D*(F-1)/2 = {dh * (fh - 1) / 2:g} x "
                         f"{dw * (fw - 1) / 2:g} is not an integer for an even F; give P "
                         f"explicitly, e.g. P0"
                         + (f" or P{dh * (fh - 1) // 2}" if dh * (fh - 1) > 1 else "")
                         + ", or Psame (the size kept, one more row and column of padding "
                           "after than before, as PyTorch pads)")
    return (dh * (fh - 1) // 2, dw * (fw - 1) // 2)


def _check_conv_volume(k, shape, kernel, stride, padding, dilation, groups, fit):
    """A CONV's output volume against limits.MAX_VOLUME before its filters are made (K
    filters of a huge K would be allocated first, and refused only after). Sizes that do
    not fit and filters over limits.MAX_PARAMS are left to the layer, whose own checks
    name them before it allocates anything."""
    try:      # sizes that do not fit are the layer's to name
        kernel, stride, dilation = pair(kernel, "F"), pair(stride, "S"), pair(dilation, "D")
        if k * (shape[0] // max(1, groups)) * kernel[0] * kernel[1] > limits.MAX_PARAMS:
            return
        if padding == "same":                 # the size kept (stride 1: the layer's rule)
            out = list(shape[1:])
        else:
            padding = pair(padding, "P", allow_zero=True)
            out = [conv_output_size(shape[1 + i], kernel[i], stride[i], padding[i],
                                    dilation[i], fit) for i in (0, 1)]
    except ValueError:
        return
    limits.check_count(k * out[0] * out[1], "MAX_VOLUME",
                       f"its output {out[1]}x{out[0]}x{k}: values per sample", "CONV")


def _fit(args):
    return "floor" if args.get("floor") else "exact"


def _need_volume(keyword, shape):
    if len(shape) != 3:
        raise ValueError(f"{keyword} needs a volume W x H x D, got {_volume(shape)} (put it "
                         f"before FC/FLATTEN, or start from a volume)")


def _build(layer, shape, dtype, rng):
    """The layers for one item of the text, given the per-sample shape it receives."""
    kw, a = layer.keyword, layer.args
    if kw in ("CONV", "LC", "POOL", "AVGPOOL", "L2POOL", "GAP", "LRN"):
        _need_volume(kw, shape)
    if kw == "CONV":
        _check_conv_volume(a["K"], shape, a.get("F", 3), a.get("S", 1), _conv_padding(a),
                           a.get("D", 1), a.get("G", 1), _fit(a))
        return [Conv2d(shape[0], a["K"], a.get("F", 3), a.get("S", 1), _conv_padding(a),
                       a.get("D", 1), a.get("G", 1), fit=_fit(a), dtype=dtype, rng=rng)]
    if kw == "LC":
        return [LocallyConnected2d(shape[0], a["K"], shape[1:], a.get("F", 3), a.get("S", 1),
                                   a.get("P", 0), fit=_fit(a), dtype=dtype, rng=rng)]
    if kw in ("POOL", "AVGPOOL", "L2POOL"):
        kernel = a.get("F", (2, 2))
        stride = a.get("S", kernel)
        ceil = bool(a.get("ceil"))
        if kw == "POOL":
            return [MaxPool2d(kernel, stride, a.get("P", 0), a.get("D", 1), ceil_mode=ceil,
                              fit=_fit(a))]
        if kw == "AVGPOOL":
            return [AvgPool2d(kernel, stride, a.get("P", 0), ceil, fit=_fit(a))]
        return [LPPool2d(2, kernel, stride, ceil, _fit(a))]
    if kw == "GAP":
        return [AdaptiveAvgPool2d(1)]
    if kw == "FC":
        if len(shape) == 1:
            return [Linear(shape[0], a["n"], dtype=dtype, rng=rng)]
        return [Flatten(), Linear(math.prod(shape), a["n"], dtype=dtype, rng=rng)]
    if kw == "BN":
        if len(shape) == 3:
            return [BatchNorm2d(shape[0], dtype=dtype)]
        return [BatchNorm1d(shape[0], dtype=dtype)]
    if kw == "LRN":
        return [LocalResponseNorm(a.get("size", 5), a.get("alpha", 1e-4), a.get("beta", 0.75),
                                  a.get("k", 2.0))]
    if kw == "DROPOUT":
        return [Dropout(a.get("p", 0.5), rng=rng)]
    if kw == "LEAKYRELU":
        return [LeakyReLU(a.get("slope", 0.01))]
    simple = {"RELU": ReLU, "RELU6": ReLU6, "TANH": Tanh, "SIGMOID": Sigmoid, "FLATTEN": Flatten}
    return [simple[kw]()]


def _names(items):
    """Every count name in the tree, as tokens, in text order (a group's own count comes
    after its contents: ``[... ]*M``)."""
    for item in items:
        if isinstance(item.node, _Group):
            yield from _names(item.node.items)
        if isinstance(item.count, _Token):
            yield item.count


def _all_items(items):
    """Every item in the tree, a group before its contents, in text order."""
    for item in items:
        yield item
        if isinstance(item.node, _Group):
            yield from _all_items(item.node.items)


def _check_counts(counts, where):
    for name, value in counts.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{where}: the count {name} must be an int >= 0, "
                             f"got {value!r:.80}")
        limits.check_count(value, "MAX_LAYERS", f"the count {name}", where)


def bind_counts(text, counts, every=False):
    """The text with each repetition count named in ``counts`` written as its value:

    >>> bind_counts("INPUT 32x32x3 -> [[CONV 32 -> RELU]*N -> POOL?]*M -> FC 10",
    ...             {"N": 2, "M": 3})
    'INPUT 32x32x3 -> [[CONV 32 -> RELU]*2 -> POOL?]*3 -> FC 10'

    What the command line's --count does, so that a run records the net it built. A
    name the text does not use is an error (a typo would otherwise pass silently), and
    with ``every=True`` so is a name of the text that ``counts`` leaves out; a text that
    does not parse is returned as it is, for from_notation to name its problem."""
    if not isinstance(text, str):
        raise ValueError(f"bind_counts: text must be a str, got {type(text).__name__}")
    _check_counts(counts, "bind_counts")
    limits.check_count(len(text), "MAX_JSON_BYTES", "characters in the text", "bind_counts")
    try:
        tokens = list(_names(_Parser(text).parse()))
    except _Parse:
        return text
    used = {tok.text for tok in tokens}
    unknown = sorted(set(counts) - used)
    if unknown:
        raise ValueError(f"bind_counts: the text has no count named {', '.join(unknown)}; "
                         f"its names: {', '.join(sorted(used)) or 'none'}")
    missing = sorted(used - set(counts)) if every else []
    if missing:
        given = ", ".join(f"{k}={v}" for k, v in counts.items())
        raise ValueError(f"bind_counts: the text's count {', '.join(missing)} has no value; "
                         f"names given: {given}")
    for tok in sorted(tokens, key=lambda t: t.start, reverse=True):
        if tok.text in counts:
            text = f"{text[:tok.start]}{int(counts[tok.text])}{text[tok.end:]}"
    return text


def _times(item, counts, optional):
    """How many times an item is repeated: its count, 1, or 0 when optional parts go."""
    if item.optional and not optional:
        return 0
    if isinstance(item.count, _Token):
        return counts[item.count.text]
    return 1 if item.count is None else item.count


def _unrolled(items, counts, optional):
    """How many layers _expand would give, by arithmetic: nothing is unrolled."""
    return sum(_times(item, counts, optional) * (
        _unrolled(item.node.items, counts, optional) if isinstance(item.node, _Group) else 1)
        for item in items)


def _expand(items, counts, optional, out):
    """Unroll repetitions and drop optional parts: the flat list of _Layer to build."""
    for item in items:
        for _ in range(_times(item, counts, optional)):
            if isinstance(item.node, _Group):
                _expand(item.node.items, counts, optional, out)
            else:
                out.append(item.node)
    return out


def _check_shape(input_shape):
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if shape is None or len(shape) not in (1, 3) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
            for v in shape):
        raise ValueError(f"from_notation: input_shape must be a per-sample (C, H, W) of "
                         f"positive ints (or (features,)), got {input_shape!r:.80}")
    shape = tuple(int(v) for v in shape)
    limits.check_count(math.prod(shape), "MAX_VOLUME", f"input_shape {shape}: values per "
                       "sample", "from_notation")
    return shape


_ARGUMENTS = ("text", "input_shape", "optional", "dtype", "rng")   # from_notation's own


def from_notation(text, input_shape=None, optional=True, dtype=np.float32, rng=None,
                  **counts):
    """Build a Sequential from the notes' arrow notation, checking every shape on the way.

    Args:
        text: e.g. ``"INPUT 32x32x3 -> [CONV 16 -> RELU -> POOL]*2 -> FC 10"``; the
            grammar is in this module's docstring. Keywords are case-insensitive.
        input_shape: per-sample (C, H, W), needed when the text has no ``INPUT WxHxD``
            (and, if both are given, equal to it).
        optional: keep the parts marked ``?`` (True) or drop them (False).
        dtype: float32 or float64, for every layer with parameters.
        rng: np.random.Generator shared by the initializers and Dropout (a fresh one when
            None); the same seed gives the same weights.
        **counts: the names used as repetition counts, e.g. ``N=2, M=3`` (ints >= 0);
            a name the text does not use is an error (a misspelt count, or an argument
            from_notation does not take, such as seed: pass rng).

    Returns a Sequential with children "0", "1", ... (an FC after a volume takes two:
    Flatten, then Linear) and the attribute ``input_shape`` (per-sample (C, H, W)).
    Any problem is a ValueError that names the layer (``model[i]``), its text and column,
    the volume it got (W x H x D), the layer's own explanation, and the text with carets.
    The caps of ``convnet.limits`` (layers, nesting, volumes, parameters) are checked
    before anything over them is allocated; raise one there to build a larger model.

    >>> net = from_notation("INPUT 32x32x3 -> [[CONV 32 -> RELU]*N -> POOL]*3 -> FC 10", N=2)
    >>> len(net), net.output_shape(net.input_shape), net[16].in_features
    (17, (10,), 512)
    """
    if not isinstance(text, str):
        raise ValueError(f"from_notation: text must be a str, got {type(text).__name__}")
    if not isinstance(optional, (bool, np.bool_)):
        raise ValueError(f"from_notation: optional must be True or False, got {optional!r}")
    dtype = check_dtype(dtype, "from_notation")
    if rng is None:
        rng = np.random.default_rng()
    elif not isinstance(rng, np.random.Generator):
        raise ValueError(f"from_notation: rng must be an np.random.Generator or None, got "
                         f"{type(rng).__name__}; use np.random.default_rng(seed)")
    _check_counts(counts, "from_notation")
    limits.check_count(len(text), "MAX_JSON_BYTES", "characters in the text", "from_notation")

    items = _parse_checked(text, counts)
    items, shape = _take_input(text, items, input_shape)
    total = _unrolled(items, counts, optional)
    if total > limits.MAX_LAYERS:
        raise _error(text, 0, len(text.rstrip()), "the text",
                     f"the repetitions unroll to {total:,} layers, over the cap of "
                     f"{limits.MAX_LAYERS:,} (convnet.limits.MAX_LAYERS)")
    specs = _expand(items, counts, optional, [])
    with counting_params(), counting_only():   # the total, before a weight is written
        _build_layers(text, specs, shape, dtype, rng)
    with counting_params():
        layers = _build_layers(text, specs, shape, dtype, rng)
    model = relus_in_place(Sequential(*layers))
    model.input_shape = shape
    return model


def check_notation(text):
    """Check notation's syntax, layer names and counts (bound with bind_counts) without
    building it: what from_notation would refuse before it knows the input volume, as a
    ValueError with its message. (The layers' sizes are checked when it is built.)"""
    if not isinstance(text, str):
        raise ValueError(f"from_notation: text must be a str, got {type(text).__name__}")
    limits.check_count(len(text), "MAX_JSON_BYTES", "characters in the text", "from_notation")
    _parse_checked(text, {})


def _parse_checked(text, counts):
    """The parsed items of text, every count name in it bound by counts, and every count
    given used; else the ValueError from_notation raises."""
    try:
        items = _Parser(text).parse()
    except _Parse as exc:
        tok = exc.token
        raise _error(text, tok.start, tok.end, repr(_shown(tok.text)), exc.problem) from None
    used = set()
    for tok in _names(items):
        used.add(tok.text)
        if tok.text not in counts:
            bound = ", ".join(f"{k}={v}" for k, v in counts.items()) or "none"
            call = (f"from_notation(bind_counts(text, {{{tok.text!r}: 2}})) (it is an "
                    f"argument of from_notation)" if tok.text in _ARGUMENTS else
                    f"from_notation(..., {tok.text}=2)")
            raise _error(text, tok.start, tok.end, f"count {tok.text!r}",
                         f"the name {tok.text} is not bound: give its value, as "
                         f"{call} or on the command line --count {tok.text}=2; names "
                         f"given: {bound}")
    unused = sorted(set(counts) - used)
    if unused:   # a misspelt count (Nn=3), or an argument from_notation has not (seed=0)
        raise ValueError(f"from_notation: the text has no count named "
                         f"{', '.join(unused)} (its counts: "
                         f"{', '.join(sorted(used)) or 'none'})")
    return items


def _take_input(text, items, input_shape):
    """Split off the INPUT item; return the other items and the per-sample input shape."""
    head = items[0].node
    has_input = isinstance(head, _Layer) and head.keyword == "INPUT"
    for item in _all_items(items):          # inside brackets too
        node = item.node
        if isinstance(node, _Layer) and node.keyword == "INPUT" and (
                node is not head or item.count is not None or item.optional):
            raise _error(text, node.start, node.end, "INPUT",
                         "INPUT must be the first item, once, without '*' or '?'")
    given = head.args.get("size") if has_input else None
    if has_input:
        items = items[1:]
        if not items:
            raise _error(text, head.start, head.end, "INPUT",
                         "no layers after INPUT; add some, e.g. 'INPUT 32x32x3 -> FC 10'")
    if input_shape is not None:
        input_shape = _check_shape(input_shape)
        if given is not None and given != input_shape:
            raise _error(text, head.start, head.end, "INPUT",
                         f"the text says {_volume(given)} (C, H, W) = {given}, but "
                         f"input_shape={input_shape} is {_volume(input_shape)}")
    shape = input_shape if input_shape is not None else given
    if given is not None and math.prod(given) > limits.MAX_VOLUME:
        raise _error(text, head.start, head.end, "INPUT",
                     f"the volume {_volume(given)} holds {math.prod(given):,} values per "
                     f"sample, over the cap of {limits.MAX_VOLUME:,} "
                     f"(convnet.limits.MAX_VOLUME)")
    if shape is None:
        start, end = (head.start, head.start + len("INPUT")) if has_input else (
            head.start, head.end)
        raise _error(text, start, end, "the input",
                     "the input volume is unknown: start the text with INPUT WxHxD "
                     "(e.g. INPUT 32x32x3) or pass input_shape=(C, H, W) (on the command "
                     "line --input CxHxW)")
    return items, shape


def _build_layers(text, specs, shape, dtype, rng):
    """Build every layer in order, following the per-sample shape; errors point at the text."""
    layers = []
    for spec in specs:
        try:
            for layer in _build(spec, shape, dtype, rng):
                layer.name = str(len(layers))        # as the Sequential will name it
                new_shape = layer.output_shape(shape)
                limits.check_count(math.prod(new_shape), "MAX_VOLUME",
                                   f"its output {_volume(new_shape)}: values per sample",
                                   layer.where)
                limits.check_count(len(layers) + 1, "MAX_LAYERS", "layers", "the model")
                layers.append(layer)
                shape = new_shape
        except ValueError as exc:
            problem = str(exc)
            if "ceil_mode=True" in problem:
                problem += " (in the notation: add the word 'floor' or 'ceil' to the layer)"
            elif "fit='floor'" in problem:
                problem += " (in the notation: add the word 'floor' to the layer)"
            segment = " ".join(text[spec.start:spec.end].split())
            raise _error(text, spec.start, spec.end, f"model[{len(layers)}] = {segment!r}",
                         problem, got=shape) from exc
    if not layers:
        raise _error(text, 0, len(text.rstrip()), "the text",
                     "no layers left after the repetitions and optional parts "
                     "(every count is 0 or optional=False)")
    return layers
