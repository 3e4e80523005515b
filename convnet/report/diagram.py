"""The architecture as the notes draw it: every layer's output volume as a box, in SVG.

Data flows down the page. A box's front face is D wide and H tall, and it recedes W deep
(each on a log scale between the model's smallest and largest size, so 7 and 224 both
stay visible). Beside each box: the layer's name and type (K filters, extent F, stride S,
padding P), its output volume W x H x D, parameters and mult-adds; hovering shows every
number of the layer's rows of the summary, receptive field and jump included.

Layers that keep the volume and learn no filters (BN, RELU, dropout, LRN, Flatten) are
folded into the box before them ("CONV -> BN -> RELU" is one box), or into the next box
at the start of a path. Branches:

- a ``Residual`` block splits into its body and its shortcut (the identity, dashed, or a
  projection) and joins in a sum (+);
- a ``Concat`` block (Inception) splits into its branches, joined by concatenation along
  depth: a box of the joined volume;
- a ``DenseBlock`` is a run of such joins: each dense layer is a branch beside the trunk
  of all earlier maps, and the trunk's volume grows by the layer's maps at each join;
- any other container (GoogLeNet's auxiliary heads) is a side branch the input passes.

``architecture_svg(model, summary)`` returns the SVG element as a string.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

from convnet.analysis import volume
from convnet.layers.base import hw_text
from convnet.layers.conv import Conv2d, LocallyConnected2d
from convnet.layers.linear import Flatten, Linear
from convnet.models.containers import Concat, Container, DenseBlock, Residual, Sequential

# Geometry, in pixels. Text is 11 px monospace: CHAR wide per character, LINE per line.
CHAR, LINE = 6.7, 14
T_RANGE = (4, 56)      # front face width: depth D
H_RANGE = (4, 60)      # front face height: H
O_RANGE = (2, 20)      # the receding edge: W
SPINE = T_RANGE[1] / 2 + 4                      # x of the line the data flows along
TEXT_X = SPINE + T_RANGE[1] / 2 + O_RANGE[1] + 10
GAP, LANE_GAP, SPLIT, MARGIN = 8, 22, 10, 10
HEAD = LINE + 3        # a branch block's title line

COLORS = {"input": "#9d9590", "conv": "#4e79a7", "pool": "#f28e2b", "fc": "#59a14f",
          "other": "#9c755f", "concat": "#b07aa1", "add": "#e15759"}
LEGEND = (("input", "input"), ("conv", "CONV"), ("pool", "POOL"), ("fc", "FC"),
          ("concat", "concatenation"), ("add", "sum (residual)"), ("other", "other"))
SHORT = {"BatchNorm1d": "BN", "BatchNorm2d": "BN", "ReLU": "RELU", "ReLU6": "RELU6",
         "LeakyReLU": "LEAKY RELU",
         "Tanh": "TANH", "Sigmoid": "SIGMOID", "Dropout": "DROPOUT",
         "LocalResponseNorm": "LRN", "Flatten": "FLATTEN"}


# -- the model as boxes and branches ----------------------------------------------------
@dataclass
class _Box:
    """One drawn volume: a summary row, with the folded rows applied before and after."""

    row: object
    kind: str
    before: list = field(default_factory=list)
    after: list = field(default_factory=list)


@dataclass
class _Fork:
    """A split into lanes (lists of items; [] is the identity) and their join."""

    name: str
    join: str            # "add", "concat", or "side" (no join: the first lane goes on)
    label: str
    lanes: list
    shape: tuple         # the volume after the join
    after: list = field(default_factory=list)


def _kind(layer, row):
    if isinstance(layer, (Conv2d, LocallyConnected2d)):
        return "conv"
    if isinstance(layer, Linear):
        return "fc"
    if isinstance(layer, Flatten) or tuple(row.output_shape) == tuple(row.input_shape):
        return "fold"
    return "pool" if "Pool" in type(layer).__name__ else "other"


def _items(layer, name, shape, rows):
    """(items, output volume) for ``layer``, named ``name``, on per-sample ``shape``."""
    if not isinstance(layer, Container):
        row = rows[name]
        return [_Box(row, _kind(layer, row))], tuple(row.output_shape)

    def full(key):
        return f"{name}.{key}" if name else key

    def chain(keys, shape):
        items = []
        for key in keys:
            new, shape = _items(layer[key], full(key), shape, rows)
            items += new
        return items, shape

    if isinstance(layer, Residual):
        body, out = chain(layer.body_keys, shape)
        shortcut = chain([layer.shortcut_key], shape)[0] if layer.shortcut_key else []
        fork = _Fork(name, "add", "Residual: body + shortcut", [body, shortcut], out)
        if layer.post_key:
            post, out = chain([layer.post_key], out)
            fork.after = [r for box in post if isinstance(box, _Box)
                          for r in (*box.before, box.row, *box.after)]
            fork.shape = out
        return [fork], out
    if isinstance(layer, Concat):
        lanes = [chain([key], shape)[0] for key, _ in layer.named_children()]
        out = tuple(layer.output_shape(shape))
        return [_Fork(name, "concat", f"Concat: {len(lanes)} branches", lanes, out)], out
    if isinstance(layer, DenseBlock):
        forks = []
        for i, (key, child) in enumerate(layer.named_children()):
            lane, new = _items(child, full(key), shape, rows)
            shape = (shape[0] + new[0], *shape[1:])
            label = (f"the first of {len(layer)} dense layers: each joins its maps to all "
                     f"earlier ones" if i == 0 else "dense layer")
            forks.append(_Fork(full(key), "concat", label, [[], lane], shape))
        return forks, shape
    items, out = chain([key for key, _ in layer.named_children()], shape)
    if type(layer) is not Sequential and tuple(layer.output_shape(shape)) == tuple(shape):
        # a side head (GoogLeNet's AuxClassifier, whose own layers end in its scores):
        # its input passes on unchanged
        return [_Fork(name, "side", f"{type(layer).__name__}: a side branch",
                      [[], items], tuple(shape))], tuple(shape)
    return items, out


def _fold(items):
    """Fold the volume-keeping layers into the box before them (or the next one)."""
    out, pending = [], []
    for item in items:
        if isinstance(item, _Fork):
            item.lanes = [_fold(lane) for lane in item.lanes]
            if pending:
                out.append(_Box(pending[0], "other", after=pending[1:]))
                pending = []
            out.append(item)
        elif item.kind == "fold":
            if out:
                out[-1].after.append(item.row)
            else:
                pending.append(item.row)
        else:
            item.before, pending = pending, []
            out.append(item)
    if pending:
        out.append(_Box(pending[0], "other", after=pending[1:]))
    return out


# -- drawing ------------------------------------------------------------------------------
@dataclass
class _Piece:
    """A laid-out part: its size, the x of its spine, and paint(x, y, out) -> SVG."""

    w: float
    h: float
    spine: float
    paint: object


def _whd(shape):
    shape = tuple(shape)
    if len(shape) == 3:
        return shape[2], shape[1], shape[0]
    return 1, 1, math.prod(shape)


class _Scale:
    """Box sizes on a log scale between 1 and the model's largest W, H and D."""

    def __init__(self, shapes):
        dims = [_whd(s) for s in shapes]
        self.top = [max(2, *(d[i] for d in dims)) for i in range(3)]

    def __call__(self, shape):
        """(front width from D, front height from H, receding edge from W) in pixels."""
        w, h, d = _whd(shape)

        def log(value, top, span):
            return span[0] + (span[1] - span[0]) * math.log(max(value, 1)) / math.log(top)

        return (log(d, self.top[2], T_RANGE), log(h, self.top[1], H_RANGE),
                log(w, self.top[0], O_RANGE))


def _mix(color, other, amount):
    a = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    b = [int(other[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * amount):02x}" for x, y in zip(a, b))


def _cuboid(x, y, t, h, o, color):
    """A box whose top-left front corner is at (x, y + o): front, top and side faces."""
    fy = y + o
    top = f"{x},{fy} {x + o},{y} {x + t + o},{y} {x + t},{fy}"
    side = f"{x + t},{fy} {x + t + o},{y} {x + t + o},{y + h} {x + t},{fy + h}"
    return (f'<rect x="{x:.1f}" y="{fy:.1f}" width="{t:.1f}" height="{h:.1f}" '
            f'fill="{color}"/><polygon points="{_pts(top)}" fill="{_mix(color, "#ffffff", .4)}"'
            f'/><polygon points="{_pts(side)}" fill="{_mix(color, "#000000", .3)}"/>')


def _pts(text):
    return " ".join(",".join(f"{float(v):.1f}" for v in p.split(",")) for p in text.split())


def _count(n):
    """A count for a label: exact below 10,000, else 3 digits and K, M or G."""
    if n < 10_000:
        return f"{n:,}"
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _text(x, y, bold, rest=""):
    bold = f'<tspan font-weight="bold">{html.escape(bold)}</tspan>' if bold else ""
    return f'<text x="{x:.1f}" y="{y:.1f}">{bold}{html.escape(rest)}</text>'


def _line(x1, y1, x2, y2, dashed=False):
    dash = ' stroke-dasharray="4 3"' if dashed else ""
    return (f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
            f'class="flow"{dash}/>')


def _row_title(row):
    return (f"{row.name}: {row.type}\n  {volume(row.input_shape)} -> "
            f"{volume(row.output_shape)}, {row.params:,} parameters, {row.macs:,} "
            f"mult-adds, receptive field {hw_text(row.receptive_field)} "
            f"(jump {hw_text(row.jump)})")


def _relative(name, prefix):
    return name[len(prefix) + 1:] if prefix and name.startswith(prefix + ".") else name


def _volume_piece(scale, shape, kind, lines, title, circle=False):
    """A box (or the sum's circle) with up to two text lines beside it."""
    t, h, o = (16, 16, 0) if circle else scale(shape)
    width = TEXT_X + max(len(bold) + len(rest) for bold, rest in lines) * CHAR
    height = max(h + o, len(lines) * LINE + 4)
    color = COLORS[kind]

    def paint(x, y, out):
        out.append(f'<g class="volume {kind}"><title>{html.escape(title)}</title>')
        if circle:
            cx, cy = x + SPINE, y + 8
            out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="8" fill="{color}"/>'
                       f'<path d="M{cx - 4:.1f},{cy:.1f}h8M{cx:.1f},{cy - 4:.1f}v8" '
                       f'stroke="#fff" stroke-width="2"/>')
        else:
            out.append(_cuboid(x + SPINE - t / 2, y, t, h, o, color))
        for i, (bold, rest) in enumerate(lines):
            out.append(_text(x + TEXT_X, y + (i + 1) * LINE - 3, bold, rest))
        out.append("</g>")

    return _Piece(width, height, SPINE, paint)


def _folded(rows):
    return [SHORT.get(r.type.split("(")[0], r.type.split("(")[0]) for r in rows]


def _box_piece(box, scale, prefix, narrow=False):
    """A layer's box; narrow (in a block of three or more branches) puts the name, the
    type and the numbers on three lines instead of two."""
    row = box.row
    rows = [*box.before, row, *box.after]
    label = " -> ".join([*_folded(box.before), row.type.replace(", bias=False", ""),
                         *_folded(box.after)])
    params = sum(r.params for r in rows)
    macs = sum(r.macs for r in rows)
    numbers = volume(row.output_shape)
    if params or macs:
        numbers += f"  {_count(params)} params, {_count(macs)} mult-adds"
    name = _relative(row.name, prefix)
    lines = ([(name, ""), ("", label), ("", numbers)] if narrow else
             [(name, "  " + label), ("", numbers)])
    title = "\n".join(_row_title(r) for r in rows)
    return _volume_piece(scale, row.output_shape, box.kind, lines, title)


def _chain(pieces):
    """Pieces one below the other, their spines on one line."""
    spine = max(p.spine for p in pieces)
    width = max(spine - p.spine + p.w for p in pieces)
    height = sum(p.h for p in pieces) + GAP * (len(pieces) - 1)

    def paint(x, y, out):
        out.append(_line(x + spine, y, x + spine, y + height))
        for p in pieces:
            p.paint(x + spine - p.spine, y, out)
            y += p.h + GAP

    return _Piece(width, height, spine, paint)


def _fork_piece(fork, scale, prefix):
    """A fork: title, split line, lanes side by side, join line and the join's volume."""
    name = _relative(fork.name, prefix)
    identity = {"add": "identity", "concat": "all earlier maps", "side": ""}[fork.join]
    narrow = len(fork.lanes) > 2
    lanes = [_chain([_piece(item, scale, fork.name, narrow) for item in lane]) if lane
             else None for lane in fork.lanes]
    node = None
    if fork.join != "side":
        after = _folded(fork.after)
        what = "sum" if fork.join == "add" else "concatenation"
        lines = [("", " -> ".join([what, *after])), ("", volume(fork.shape))]
        title = "\n".join([f"{fork.name}: {what} -> {volume(fork.shape)}",
                           *(_row_title(r) for r in fork.after)])
        node = _volume_piece(scale, fork.shape, "add" if fork.join == "add" else "concat",
                             lines, title, circle=fork.join == "add")
    spine = max(SPINE, lanes[0].spine if lanes[0] else 0)
    xs, spines, right = [], [], 0.0
    for i, lane in enumerate(lanes):
        lane_spine = lane.spine if lane else 4
        left = spine - lane_spine if i == 0 else right + LANE_GAP
        xs.append(left)
        spines.append(left + lane_spine)
        right = left + (lane.w if lane else lane_spine + 8 + len(identity) * CHAR)
    lane_h = max([18.0] + [lane.h for lane in lanes if lane])
    node_h = node.h if node else 0
    head = len(name) + len(fork.label) + 2
    width = max(right, spine + 10 + head * CHAR,
                spine - node.spine + node.w if node else 0)
    height = HEAD + SPLIT + lane_h + SPLIT + node_h

    def paint(x, y, out):
        out.append(f'<g class="fork {fork.join}" data-lanes="{len(lanes)}">')
        out.append(_text(x + spine + 10, y + LINE - 3, name, "  " + fork.label))
        sy, ty = y + HEAD, y + HEAD + SPLIT
        jy = ty + lane_h + SPLIT
        out.append(_line(x + spine, sy, x + spines[-1], sy))
        if node:
            out.append(_line(x + spine, jy, x + spines[-1], jy))
        for lane, left, lane_x in zip(lanes, xs, spines):
            end = jy if node or lane is None else ty + lane.h
            out.append(_line(x + lane_x, sy, x + lane_x, end, dashed=lane is None))
            if lane is None:
                out.append(_text(x + lane_x + 6, ty + lane_h / 2 + 4, "", identity))
            else:
                lane.paint(x + left, ty, out)
        if node:
            node.paint(x + spine - node.spine, jy, out)
        out.append("</g>")

    return _Piece(width, height, spine, paint)


def _piece(item, scale, prefix, narrow=False):
    if isinstance(item, _Fork):
        return _fork_piece(item, scale, prefix)
    return _box_piece(item, scale, prefix, narrow)


def architecture_svg(model, summary):
    """The model drawn as the notes draw it (see the module docstring): an <svg> string.

    summary: ``analysis.summary(model, input_shape)``; its rows give every number shown.
    """
    rows = {row.name: row for row in summary.layers}
    shape = tuple(summary.input_shape)
    if isinstance(model, Container):
        items, _ = _items(model, "", shape, rows)
    else:
        row = summary.layers[0]
        items = [_Box(row, "conv" if _kind(model, row) == "fold" else _kind(model, row))]
    items = _fold(items)
    scale = _Scale([shape, *(row.output_shape for row in summary.layers)])
    first = _volume_piece(scale, shape, "input", [("INPUT", ""), ("", volume(shape))],
                          f"input: {volume(shape)} (W x H x D)")
    drawing = _chain([first, *(_piece(item, scale, "") for item in items)])
    out = []
    drawing.paint(MARGIN, MARGIN, out)
    width, height = drawing.w + 2 * MARGIN, drawing.h + 2 * MARGIN
    return (f'<svg class="architecture" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
            f'aria-label="the architecture, one box per output volume">'
            + "".join(out) + "</svg>")


def legend_html():
    """The colours of the drawing, as a line of HTML."""
    return " ".join(f'<span class="key"><i style="background:{COLORS[kind]}"></i>{text}</span>'
                    for kind, text in LEGEND)
