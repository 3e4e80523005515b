"""Gather what the report shows and write the page.

The sections, each with a stable id: ``status`` (trained or not, at the top),
``architecture``, ``summary``, ``training``, ``filters``, ``activations`` and
``evaluation``. Every section is always there; one with nothing to show says why.

Page size. Activation maps are the bulk of a page: every stage's maps for one image go
into one palette PNG (one byte per pixel), each map shrunk by area averaging so that a
stage takes at most about IMAGE_PIXELS / (number of stages) pixels, and the number of
sample images is cut so the page holds at most PAGE_PIXELS pixels of maps. VGG-16 or
DenseNet-121 at 224 x 224 thus gives a page of a few MB that a browser opens in well
under a second.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import tempfile
from pathlib import Path

import numpy as np

import convnet
from convnet import limits
from convnet.analysis import OPTIMIZER_MULTIPLIERS, counted, format_bytes, summary, volume
from convnet.io.weights import atomic_write
from convnet.models.containers import Concat, Container, DenseBlock, Residual
from convnet.plot import stages as _stages
from convnet.report.diagram import architecture_svg, legend_html
from convnet.report.page import (
    data_value,
    document,
    esc,
    key_value_list,
    notes_list,
    section,
)
from convnet.report.pictures import (
    BACKGROUND,
    activation_grid,
    display_images,
    file_uri,
    grid_shape,
    image_uri,
    png_uri,
    require,
    tile_size,
)
from convnet.train.checkpoint import HISTORY_KEYS, is_epoch_record

MAX_SAMPLES = 4                 # sample images whose activations are drawn, at most
IMAGE_PIXELS = 2_000_000        # pixels of activation maps for one image, all stages
PAGE_PIXELS = 5_000_000         # ... and for all sample images together
STAGE_PIXELS = (16_384, 262_144)  # bounds on one stage's share for one image
MAX_WRONG = 8                   # most confidently wrong test images shown
# Classes up to which the confusion matrix is a table of counts (K^2 cells of about 100
# bytes each); above it, a picture of the shares and a table of the most confused pairs.
MAX_TABLE_CLASSES = 100
MAX_PAIRS = 20                  # most confused pairs listed beside the picture
MAX_SHOWN_WIDTH = 1100          # CSS pixels: wider pictures are shown scaled down
SECTIONS = ("status", "architecture", "summary", "training", "filters", "activations",
            "evaluation")


# -- the run directory ------------------------------------------------------------------
def run_directory(source):
    """The run directory of the model file ``source``: its folder, when that holds a
    training run's history.json or checkpoint.safetensors; else None."""
    from convnet.spec import is_notation

    if not source or is_notation(str(source)):
        return None
    path = Path(source)
    if path.suffix.lower() not in (".json", ".safetensors") or not path.is_file():
        return None
    folder = path.parent
    if (folder / "history.json").is_file() or (folder / "checkpoint.safetensors").is_file():
        return folder
    return None


def checkpoint_state(path):
    """The JSON state a checkpoint keeps in its metadata, read from the file's header
    alone (no tensors); None when there is no file. A damaged one is a ValueError."""
    from convnet.train.checkpoint import KEY

    path = Path(path)
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open
    except ImportError:
        raise ImportError("checkpoints need the safetensors package: "
                          "pip install 'convnet[train]'") from None
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # the library raises its own error types for bad headers
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    text = metadata.get(KEY)
    if text is None:
        raise ValueError(f"{path}: not a convnet checkpoint (no {KEY!r} metadata)")
    limits.check_json(text, path, "checkpoint metadata")
    try:
        state = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{path}: damaged checkpoint metadata ({err})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: checkpoint metadata must be a JSON object")
    return state


def _run_summary_settings(config):
    """summary's batch_size and optimizer as the run's config gives them ({} for what
    it does not): the memory the run's training needed."""
    if not isinstance(config, dict):
        return {}
    out = {}
    batch, optimizer = config.get("batch_size"), config.get("optimizer")
    if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0:
        out["batch_size"] = batch
    if isinstance(optimizer, str) and optimizer in OPTIMIZER_MULTIPLIERS:
        out["optimizer"] = optimizer
    return out


@contextlib.contextmanager
def _frozen_as_run(model, config):
    """The run's --freeze applied to ``model`` for the block, so that the summary counts
    the parameters the run trained (and their optimizer state); each layer's own flag
    is put back after. A freeze that names no stage of this model is left out."""
    stages = config.get("freeze") if isinstance(config, dict) else None
    if not (isinstance(model, Container) and isinstance(stages, list) and stages
            and all(isinstance(s, str) for s in stages)):
        yield
        return
    layers = [layer for _, layer in model.named_layers()]
    before = [layer.frozen for layer in layers]
    try:
        model.freeze(*stages)
    except ValueError:
        pass
    try:
        yield
    finally:
        for layer, frozen in zip(layers, before):
            layer.frozen = frozen


def _label_smoothing(state, info):
    """The run's label smoothing E from its checkpoint: 0.0 where the config predates
    the option (as a resume reads it); without the checkpoint, as the model file records
    it (info, checked when the file was read); None when neither says, or E is not a
    number in [0, 1]."""
    config = (state or {}).get("config")
    if not isinstance(config, dict):
        return info.get("label_smoothing")
    e = config.get("label_smoothing", 0.0)
    if isinstance(e, (int, float)) and not isinstance(e, bool) and 0 <= e <= 1:
        return float(e)
    return None


def smoothed_entropy(e, k):
    """The entropy of label-smoothed targets, (1 - e) one_hot + e / k over k classes:
    the least a training loss with label smoothing e can be (its cross-entropy with
    any prediction is this plus a KL divergence >= 0).

    >>> round(smoothed_entropy(0.1, 10), 4)
    0.5003
    """
    high, low = 1 - e + e / k, e / k
    return -high * math.log(high) - (k - 1) * low * math.log(low)


def run_config(run_dir):
    """The training configuration (TrainConfig as a dict) in a run directory's
    checkpoint, or None when there is none."""
    state = checkpoint_state(Path(run_dir) / "checkpoint.safetensors")
    config = (state or {}).get("config")
    return config if isinstance(config, dict) else None


def _history(value, where):
    """value, if it is a training history: a non-empty list of epochs with numbers (NaN
    and infinities included: a diverged run's curves are drawn with gaps; history.json
    writes them as null, read here as NaN)."""
    if isinstance(value, list):
        value = [{k: math.nan if v is None else v for k, v in entry.items()}
                 if isinstance(entry, dict) else entry for entry in value]
    if not (isinstance(value, list) and value and all(map(is_epoch_record, value))):
        raise ValueError(f"{where}: expected a list of epochs, each with "
                         f"{', '.join(HISTORY_KEYS)} as numbers")
    return value


def _read_run(run_dir, note):
    """{"history", "state", "dir"} of a run directory; a file that cannot be read is a
    note, and the other is still used."""
    run = {"dir": run_dir, "history": None, "state": None}
    if run_dir is None:
        return run
    try:
        run["state"] = checkpoint_state(Path(run_dir) / "checkpoint.safetensors")
    except (ValueError, OSError) as err:
        note(f"training settings skipped: {err}")
        run["unreadable"] = True      # (it may have held the history)
    path = Path(run_dir) / "history.json"
    damaged = None
    try:
        if path.is_file():
            limits.check_count(path.stat().st_size, "MAX_JSON_BYTES", "bytes", path)
            text = limits.check_json(path.read_bytes(), path)
            try:
                history = json.loads(text)
            except (ValueError, RecursionError) as err:
                raise ValueError(f"{path}: not JSON ({err})") from None
            run["history"] = _history(history, path)
    except (ValueError, OSError) as err:
        damaged = err
    if run["history"] is None and (run["state"] or {}).get("history"):
        try:       # the checkpoint keeps the history too, as of its epoch
            run["history"] = _history(run["state"]["history"], f"{run_dir}: checkpoint")
            if damaged is not None:
                note(f"{damaged}: the training curves are the checkpoint's record of them")
                damaged = None
        except ValueError as err:
            damaged = damaged or err
    if damaged is not None:
        note(f"training curves skipped: {damaged}")
        run["unreadable"] = True
    return run


# -- images, stages and activations -----------------------------------------------------
def _stage_label(layer):
    """What a stage is: a layer's repr, or a block's kind and size."""
    if not isinstance(layer, Container):
        return repr(layer).replace(", bias=False", "")
    if isinstance(layer, Residual):
        return "Residual block"
    if isinstance(layer, Concat):
        return f"Concat of {len(layer)} branches"
    if isinstance(layer, DenseBlock):
        return f"DenseBlock of {len(layer)} dense layers"
    kinds = [type(child).__name__ for child in layer]
    runs = [(kind, len(list(group))) for kind, group in itertools.groupby(kinds)]
    return " -> ".join(kind if n == 1 else f"{kind} x{n}" for kind, n in runs)


def _plan(stages, input_shape, count):
    """(how many of ``count`` sample images to draw, one stage's pixel share): the shares
    split IMAGE_PIXELS among the stages with a volume output; the images then fill
    PAGE_PIXELS with the grids those shares give (at least one image)."""
    volumes, shape = [], tuple(input_shape)
    for _, layer in stages:
        shape = tuple(layer.output_shape(shape))
        if len(shape) == 3:
            volumes.append(shape)
    share = int(np.clip(IMAGE_PIXELS // max(len(volumes), 1), *STAGE_PIXELS))
    per_image = sum(math.prod(grid_shape(s[0], tile_size(s, share))) for s in volumes)
    fits = max(1, PAGE_PIXELS // max(per_image, 1))
    return min(count, MAX_SAMPLES, fits), share


def _softmax(scores):
    z = np.asarray(scores, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _activations(model, stages, share, x):
    """Each sample's grids, stage by stage: ([[(stage, label, shape, uri, geometry)]],
    the final outputs). A stage's maps are drawn as soon as it has run (the next stage
    may overwrite them in place, as RELU does)."""
    model.eval()
    grids = [[] for _ in range(len(x))]
    for name, layer in stages:
        x = layer.infer(x)
        if x.ndim == 4:
            for n in range(len(x)):
                uri, geometry = activation_grid(x[n], share)
                grids[n].append((name, _stage_label(layer), x.shape[1:], uri, geometry))
    return grids, x


def _grid_width(geometry, tile=40):
    """The CSS width of an activation grid: its maps about ``tile`` pixels a side (a whole
    multiple of their own size, pixelated), and at most MAX_SHOWN_WIDTH in all."""
    scale = int(np.clip(round(tile / max(geometry["th"], geometry["tw"])), 1, 8))
    return min(geometry["width"] * scale, MAX_SHOWN_WIDTH)


def _scaled(width, target=MAX_SHOWN_WIDTH, most=8, least=1):
    """The CSS width of a picture ``width`` pixels wide: a whole multiple up to ``target``
    (pixelated), or ``target`` itself for a wider one."""
    if width >= target:
        return target
    return width * int(np.clip(target // width, least, most))


# -- sections ---------------------------------------------------------------------------
def _status(name, model, result, info, notes):
    trained = False if info.get("trained") is False else getattr(model, "trained", None)
    if trained is True:
        css, badge = "trained", "Trained weights"
        detail = f"loaded from {name}"
    elif trained is False:
        css, badge = "untrained", "Untrained: random initial weights"
        detail = (f"{name} records fresh weights (convert wrote it from a zoo name or "
                  f"arrow notation): nothing in the filters, activations or accuracy below "
                  f"was learned" if info.get("trained") is False else
                  f"{name} is a zoo name or arrow notation, built fresh: nothing in the "
                  f"filters, activations or accuracy below was learned")
    else:
        css, badge = "unknown", "Weights of unknown origin"
        detail = "the model was handed over in Python; whether it was trained is not known"
    classes = info.get("classes")
    facts = [f"input {volume(result.input_shape)} (W x H x D)",
             f"{result.total_params:,} parameters",
             f"{result.total_macs:,} mult-adds per image"]
    if classes:
        shown = ", ".join(map(str, classes[:12])) + (", ..." if len(classes) > 12 else "")
        facts.append(f"{len(classes)} classes: {shown}")
    if info.get("data"):
        facts.append(f"trained on {info['data']}")
    links = " ".join(f'<a href="#{key}">{key}</a>' for key in SECTIONS[1:])
    return (f'<header id="status" class="{css}"><h1>convnet report: {esc(name)}</h1>'
            f'<div class="badge" id="trained" data-trained="{esc(json.dumps(trained))}">'
            f'{esc(badge)}</div><div>{esc(detail)}</div>'
            f'<div class="facts">{esc(" · ".join(facts))}</div>{notes_list(notes)}'
            f'<nav>{links}</nav></header>\n')


def _architecture(model, result):
    return section("architecture", "Architecture", (
        f'<p>{legend_html()}</p><p class="note">Data flows down. Each box is a layer\'s '
        f'output volume: its front face is D wide and H tall and it recedes W deep (log '
        f'scales). Layers that keep the volume (BN, RELU, dropout) are folded into the box '
        f'before them. Hover a box for its exact numbers and receptive field.</p>'
        f'<div class="scroll">{architecture_svg(model, result)}</div>'))


def _summary(result, from_run):
    head = ("layer", "type", "output (WxHxD)", "params", "mult-adds",
            "receptive field (HxW)", "jump (HxW)", "activations")
    numeric = {3, 4, 5, 6, 7}
    ths = "".join(f'<th class="{"num" if i in numeric else ""}">{h}</th>'
                  for i, h in enumerate(head))

    def cells(values):
        """<td>s from (key, value, text): key and value become data-key, data-value."""
        out = []
        for i, (key, value, text) in enumerate(values):
            css = "num" if i in numeric else ("type" if key == "type" else "")
            attrs = f' data-key="{key}"{data_value(value)}' if key else ""
            out.append(f'<td class="{css}"{attrs}>{esc(text)}</td>')
        return "".join(out)

    def rf(value):
        return "x".join(map(str, value)) if isinstance(value, list) else str(value)

    def blank(text=""):
        return (None, None, text)

    misc = result.memory["misc"]
    rows = ['<tr class="input">' + cells([
        blank("input"), blank(), blank(volume(result.input_shape)), blank(), blank(),
        blank("1"), blank("1"), ("misc", misc, format_bytes(misc))]) + "</tr>"]
    for row in result.layers:
        d = row.to_dict()
        star = " *" if row.frozen else ""
        rows.append(f'<tr data-name="{esc(row.name)}">' + cells([
            ("name", d["name"], d["name"]), ("type", d["type"], d["type"]),
            ("output_volume", d["output_volume"], d["output_volume"]),
            ("params", d["params"], f"{d['params']:,}{star}"),
            ("macs", d["macs"], f"{d['macs']:,}"),
            ("receptive_field", d["receptive_field"], rf(d["receptive_field"])),
            ("jump", d["jump"], rf(d["jump"])),
            ("activation_bytes", d["activation_bytes"], format_bytes(d["activation_bytes"])),
        ]) + "</tr>")
    total = result.to_dict()
    rows.append('<tr class="total">' + cells([
        blank("total"), blank(), blank(),
        ("total_params", total["total_params"], f"{total['total_params']:,}"),
        ("total_macs", total["total_macs"], f"{total['total_macs']:,}"),
        ("receptive_field", total["receptive_field"], rf(total["receptive_field"])),
        ("jump", total["jump"], rf(total["jump"])),
        ("activations", result.memory["activations"],
         format_bytes(result.memory["activations"]))]) + "</tr>")
    table = (f'<div class="scroll"><table id="summary-table"><thead><tr>{ths}</tr></thead>'
             f'<tbody>{"".join(rows)}</tbody></table></div>')
    m, b = result.memory, result.memory["bytes_per_value"]
    frozen_note = (f" + {result.frozen_params:,} frozen x 1" if result.frozen_params
                   else "")
    memory_rows = [
        ("activations", "activations", f"{m['activations'] // b:,} values x {b} B"),
        ("activation_gradients", "their gradients", "x2 for gradients"),
        ("parameters_total", "parameters", f"{result.trainable_params:,} trainable x "
         f"{m['parameter_multiplier']} ({result.optimizer}){frozen_note}"),
        ("misc", "miscellaneous", f"the input batch, {m['misc'] // b:,} values"),
        ("training_total", "training total", ""),
        ("inference_total", "inference", "current activations only, parameters once")]
    memory = "".join(f'<tr><td>{esc(label)}</td><td>{esc(how)}</td><td class="num" '
                     f'data-key="{key}"{data_value(m[key])}>{esc(format_bytes(m[key]))}</td>'
                     f'</tr>' for key, label, how in memory_rows)
    frozen = f", frozen {result.frozen_params:,}" if result.frozen_params else ""
    if result.frozen_params:     # what the table's stars mean
        table += ('<p class="note" id="frozen-key">* frozen: parameters held at their '
                  'values in training (--freeze), with no gradient or optimizer state.</p>')
    advice = notes_list(result.advice)
    command = "convnet summary"
    if from_run:
        command += f" --batch {result.batch_size} --optimizer {result.optimizer}"
    settings = "the run's batch size and optimizer: " if from_run else ""
    if result.frozen_params and from_run:   # the summary command has no --freeze
        settings = ("the run's batch size and optimizer, with the stages its --freeze "
                    "kept fixed counted as frozen: ")
    body = (f'<p>The numbers of <code>{esc(command)}</code> ({settings}batch '
            f'{result.batch_size}, {result.optimizer}, {result.dtype}): params '
            f'{result.total_params:,} (trainable '
            f'{result.trainable_params:,}{frozen}); mult-adds {result.total_macs:,} per '
            f'image; receptive field of the output {rf(total["receptive_field"])} pixels.'
            f'</p>{table}<h3>Memory</h3><table id="memory-table"><tbody>{memory}</tbody>'
            f'</table>' + (f"<h3>Advice</h3>{advice}" if advice else ""))
    return section("summary", "Summary", body)


def _smoothing_note(e, k):
    """Why a training loss with label smoothing e (k classes) stays above the
    validation loss."""
    targets = (f" ({1 - e + e / k:.3g} on the true class, {e / k:.3g} on each other)"
               if k > 1 else "")
    least = (f": the training loss cannot fall below the targets' entropy, "
             f"{smoothed_entropy(e, k):.4f} for {k} classes, even at 100% training accuracy"
             if k > 1 else "")
    return (f'<p class="note" id="smoothing">The run used label smoothing {e:g}: the '
            f'training loss is the cross-entropy against the smoothed targets{targets}, '
            f'the validation loss the plain cross-entropy against the true class. The two '
            f'differ by the smoothing term{least}.</p>')


def _training(run, info, name, num_classes):
    parts = []
    history, state = run["history"], run["state"]
    if history:
        from convnet.plot import plot_history

        e = _label_smoothing(state, info)
        with tempfile.TemporaryDirectory() as tmp:     # plot_history writes a file
            curve = file_uri(plot_history(history, Path(tmp) / "curve.png",
                                          label_smoothing=e or 0.0))
        best = max(history, key=lambda h: h["val_acc"])
        last = history[-1]
        kept = ""
        losses = [h for h in history if isinstance(h.get("val_loss"), (int, float))
                  and math.isfinite(h["val_loss"])]
        if losses:   # best.json: the epoch of the lowest validation loss, not accuracy
            lowest = min(losses, key=lambda h: h["val_loss"])
            kept = (f' best.json holds epoch {lowest["epoch"]}, the lowest validation '
                    f'loss ({lowest["val_loss"]:.4f}).')
        smoothed = f" (label smoothing {e:g})" if e else ""
        parts.append(
            f'<p>{counted(len(history), "epoch")}; last: training loss{smoothed} '
            f'{last["loss"]:.4f}, accuracy {last["acc"]:.4f}, validation loss '
            f'{last["val_loss"]:.4f}, validation accuracy {last["val_acc"]:.4f}; best '
            f'validation accuracy {best["val_acc"]:.4f} at epoch {best["epoch"]}.{kept}</p>'
            + (_smoothing_note(e, num_classes) if e else "")
            + f'<img id="curves" src="{curve}" alt="loss and accuracy per epoch" '
              f'style="max-width:100%">')
    config = (state or {}).get("config")
    if isinstance(config, dict):
        epoch = state.get("epoch")
        done = f" ({counted(epoch, 'epoch')} done)" if isinstance(epoch, int) else ""
        parts.append(f"<h3>Run settings{esc(done)}</h3>"
                     + key_value_list(sorted(config.items()), key="settings"))
    if info:
        shown = {k: v for k, v in info.items() if k != "classes"}
        parts.append("<h3>Preprocessing and training recorded in the model file</h3>"
                     + key_value_list(sorted(shown.items()), key="preprocessing"))
    if not parts:
        parts.append(f'<p class="note">No training record: {esc(name)} is not a model file '
                     f'in a run directory of <code>convnet train</code> (history.json, '
                     f'checkpoint.safetensors).</p>')
    elif run["dir"] is not None and not history:
        said = (": its training history could not be read (see the notes above)"
                if run.get("unreadable") else " holds no training history")
        parts.insert(0, f'<p class="note">{esc(run["dir"])}{esc(said)}.</p>')
    where = f" ({run['dir']})" if run["dir"] is not None else ""
    return section("training", f"Training{where}", "".join(parts))


def _filters(model, trained):
    from convnet.plot import filter_grid, first_filters, not_first_layer

    try:
        name, weight, before = first_filters(model)
    except ValueError as err:
        return section("filters", "First-layer filters", f'<p class="note">{esc(err)}</p>')
    k, c, fh, fw = weight.shape
    grid = (filter_grid(np.asarray(weight, dtype=np.float64)) * 255).round().astype(np.uint8)
    width = _scaled(grid.shape[1], target=480, most=16)
    colour = "in colour (their 3 input channels as RGB)" if c == 3 else \
        "their first input channel, in gray"
    caption = (f"{k} filters of {fw}x{fh}x{c} (F x F x D), {colour}, each scaled to its own "
               f"min..max.")
    not_finite = weight.size - int(np.isfinite(weight).sum())
    if not_finite:
        caption += (f" {not_finite:,} of the {weight.size:,} weights are not finite (NaN or "
                    f"infinity), drawn black.")
    if trained is False:
        caption += " Random initial weights: noise, nothing learned."
    title, shown = "First-layer filters", "first-layer filters"
    if before:
        title, shown = f"Filters of layer {name}", f"filters of layer {name}"
        caption = f"These are {not_first_layer(name, before)}. {caption}"
    return section("filters", title, (
        f'<p>{esc(caption)}</p><img class="px" id="filter-grid" src="{png_uri(grid)}" '
        f'width="{width}" alt="{esc(shown)}">'))


def _activations_section(samples, grids, outputs, classes, notes):
    if not samples:
        return section("activations", "Activations", (
            '<p class="note">No sample images: give --data (its test split) or --images '
            'to see every stage\'s activation maps.</p>'))
    probs = None
    if outputs is not None and outputs.ndim == 2 and outputs.shape[1] == len(classes):
        with np.errstate(invalid="ignore"):   # NaN or infinite scores: said per image
            probs = _softmax(outputs)
    if any(grids):
        intro = ("<p>For each sample image: the input, then every stage's output volume, "
                 "all of its maps (channels in order, row by row), each map scaled to its "
                 "own min..max (viridis: dark is low). Hover a map for its channel.</p>")
    else:   # FC layers from the start: nothing but vectors after the input
        intro = ("<p>For each sample image: the input and the prediction. No stage of "
                 "this model outputs a volume (maps of H x W): it works on vectors, so "
                 "there are no activation maps to show.</p>")
    parts = [f'{intro}{notes_list(notes)}']
    for n, ((label, pixels), stage_grids) in enumerate(zip(samples, grids)):
        c, h, w = pixels.shape
        guess = ""
        if probs is not None and not np.isfinite(probs[n]).all():
            guess = ("predicted: nothing, the model's outputs are not finite (NaN or "
                     "infinity)")
        elif probs is not None:
            top = np.argsort(-probs[n])[:3]
            guess = "predicted: " + ", ".join(f"{classes[i]} {probs[n, i]:.3f}" for i in top)
        figures = []
        for s, (stage, kind, shape, uri, g) in enumerate(stage_grids):
            cid = f"ch-{n}-{s}"
            shrunk = "" if (g["th"], g["tw"]) == tuple(shape[1:]) else \
                f", shrunk from {shape[2]}x{shape[1]}"
            if g["not_finite"]:
                shrunk += f"; {g['not_finite']:,} values not finite, drawn dark"
            figures.append(
                f'<figure class="stage" data-stage="{esc(stage)}"><figcaption><b>{esc(stage)}'
                f'</b> {esc(kind)} &rarr; {esc(volume(shape))}: all {shape[0]} maps '
                f'({g["tw"]}x{g["th"]} px each{shrunk})<span class="channel" id="{cid}">'
                f'</span></figcaption><img class="px grid" src="{uri}" '
                f'width="{_grid_width(g)}" alt="{esc(stage)} activation maps" '
                f'data-caption="{cid}" data-th="{g["th"]}" data-tw="{g["tw"]}" '
                f'data-cols="{g["cols"]}" data-count="{g["count"]}" data-pad="{g["pad"]}">'
                f'</figure>')
        opened = " open" if n == 0 else ""
        parts.append(
            f'<details class="sample"{opened}><summary>{esc(label)}</summary>'
            f'<div class="sample-head"><figure><figcaption>input {esc(volume((c, h, w)))}'
            f'</figcaption><img class="px sample-input" src="{image_uri(pixels)}" '
            f'width="{_scaled(w, target=160, most=16)}" alt="input image"></figure>'
            f'<p>{esc(guess)}</p></div><div class="stages">{"".join(figures)}</div>'
            f'</details>')
    return section("activations", "Activations", "".join(parts))


def _confusion_table(confusion, classes):
    """The confusion matrix as a table of counts, each cell shaded by its share of the
    row and titled with the two class names."""
    head = "".join(f'<th title="{esc(name)}">{i}</th>' for i, name in enumerate(classes))
    rows = []
    for i, row in enumerate(confusion):
        total = max(int(row.sum()), 1)
        cells = []
        for j, count in enumerate(row):
            share = count / total
            rgb = "89,161,79" if i == j else "225,87,89"
            alpha = 0 if count == 0 else max(0.08 if i == j else 0.3, share)
            ink = "#fff" if alpha > 0.6 else "#222"
            cells.append(f'<td style="background:rgba({rgb},{alpha:.2f});color:{ink}" '
                         f'title="true {esc(classes[i])}, predicted {esc(classes[j])}">'
                         f'{count}</td>')
        label = classes[i] if classes[i] == str(i) else f"{i} {classes[i]}"
        rows.append(f'<tr><th>{esc(label)}</th>{"".join(cells)}</tr>')
    return (f'<p class="note">Hover a cell for the names; shaded by the share of the '
            f'row.</p><div class="scroll"><table class="confusion" id="confusion"><thead>'
            f'<tr><th>true \\ predicted</th>{head}</tr></thead><tbody>{"".join(rows)}'
            f'</tbody></table></div>')


def _confusion_picture(confusion, classes):
    """A confusion matrix too large for a table: a picture of each row's shares (one
    pixel a cell, dark: none) and a table of the most confused pairs of classes."""
    k = len(confusion)
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    index = np.where(confusion > 0, np.round(shares * 254), BACKGROUND).astype(np.uint8)
    picture = (f'<div class="scroll"><img class="px" id="confusion" '     # a pixel a cell
               f'src="{png_uri(index, indexed=True)}" width="{_scaled(k, max(600, k), 4)}"'
               f' alt="confusion matrix of {k} classes" data-caption="confusion-cell" '
               f'data-classes="{esc(json.dumps([str(c) for c in classes]))}"></div>'
               f'<p class="note" id="confusion-cell" aria-live="polite"></p>')
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:MAX_PAIRS]
    pairs = [(int(i), int(j)) for i, j in zip(*np.unravel_index(flat, off.shape))
             if off[i, j] > 0]
    rows = "".join(f'<tr><td>{esc(classes[i])}</td><td>{esc(classes[j])}</td>'
                   f'<td class="num">{off[i, j]}</td><td class="num">'
                   f'{off[i, j] / max(int(confusion[i].sum()), 1):.1%}</td></tr>'
                   for i, j in pairs)
    listed = (f'<div class="scroll"><table id="confused-pairs"><thead><tr><th>true</th>'
              f'<th>predicted</th><th class="num">images</th><th class="num">of the true '
              f'class</th></tr></thead><tbody>{rows}</tbody></table></div>' if pairs else
              '<p class="note">No image is confused with another class.</p>')
    return (f'<p class="note">{k} classes, one pixel a cell (or more): white where no '
            f'image went, else the share of the row from dark (a few) to yellow (all); '
            f'the diagonal holds the correct ones; the pointer over a cell names its true '
            f'and predicted classes. The most confused pairs follow the picture.</p>'
            f'{picture}{listed}')


def _evaluation_section(found, data, trained, all_images=False):
    """The accuracy, confusion matrix and most confidently wrong images of ``found``
    (None: how to get them), on data's test images or, all_images, on all of them."""
    if found is None:
        return section("evaluation", "Evaluation", (
            '<p class="note">Give --data to see the accuracy on its test split, the '
            'confusion matrix and the most confidently wrong test images.</p>'))
    result, classes, wrong = found
    images = "images" if all_images else "test images"
    confusion = result["confusion"]
    k = len(classes)
    n = int(confusion.sum())
    if result.get("not_finite"):
        return section("evaluation", "Evaluation", (
            f'<p>Accuracy <b id="accuracy" data-value="null">not known</b>: the model\'s '
            f'outputs are not finite (NaN or infinity) for {result["not_finite"]:,} of the '
            f'{n:,} {images} of {esc(data)}, so they name no class. No accuracy, loss or '
            f'confusion matrix is given: an argmax of NaN would make one up.</p>'))
    table = (_confusion_table(confusion, classes) if k <= MAX_TABLE_CLASSES
             else _confusion_picture(confusion, classes))
    shown = []
    for pixels, true, guess, prob, index in wrong:
        w = pixels.shape[2]
        shown.append(f'<figure><img class="px" src="{image_uri(pixels)}" '
                     f'width="{_scaled(w, target=96, most=16)}" alt="{images[:-1]} {index}">'
                     f'<figcaption>#{index}: true {esc(classes[true])}<br>predicted '
                     f'{esc(classes[guess])} ({prob:.3f})</figcaption></figure>')
    wrong_html = (f'<div class="tiles" id="wrong">{"".join(shown)}</div>' if shown else
                  f'<p class="note" id="wrong">No {images[:-1]} is wrong.</p>')
    chance = "" if trained is not False else (    # None: weights of unknown origin
        f' <span class="note">(random weights: expect about 1/{k} = {1 / k:.3f})</span>')
    return section("evaluation", "Evaluation", (
        f'<p>Accuracy <b id="accuracy"{data_value(result["accuracy"])}>'
        f'{result["accuracy"]:.4f}</b>{chance} on the {n:,} {images} of {esc(data)}'
        f'{" with flip TTA, as the model was trained" if result.get("tta") else ""}; '
        f'mean loss <span id="loss"{data_value(result["loss"])}>{result["loss"]:.4f}</span>'
        f'.</p><h3>Confusion matrix</h3><p class="note">Rows: the true '
        f'class; columns: the predicted one.</p>{table}<h3>Most confidently wrong</h3>'
        f'{wrong_html}'))


# -- the report -------------------------------------------------------------------------
def _evaluate(model, x, y, classes, info):
    """(evaluate's result, most confidently wrong [(pixels, true, predicted,
    probability, index)]) on a data set's prepared test images; where some images'
    class scores are NaN or infinite (evaluate's "not_finite"), no wrong images are
    listed."""
    from convnet.train.inference import evaluate

    tta = bool(info.get("tta", False))            # as convnet eval does by default
    with np.errstate(all="ignore"):               # non-finite scores are counted below
        result = evaluate(model, x, y, num_classes=len(classes), tta=tta, predictions=True)
    result["tta"] = tta
    guess, prob = result.pop("predicted"), result.pop("probability")
    if result["not_finite"]:
        return result, []
    wrong = np.flatnonzero(guess != y)
    wrong = wrong[np.argsort(-prob[wrong], kind="stable")][:MAX_WRONG]
    pixels = display_images(x[wrong], info)
    return result, [(pixels[i], int(y[j]), int(guess[j]), float(prob[j]), int(j))
                    for i, j in enumerate(wrong)]


def build_report(model, source=None, data=None, data_root=None, images=None, run_dir=None,
                 log=None, all_images=False):
    """The report page for ``model`` as one HTML string (see ``write_report``)."""
    from convnet.train.inference import (
        class_names,
        evaluation_data,
        image_input,
        load_images,
        preprocess,
    )

    require()
    notes, sample_notes = [], []

    def note(text, shown=notes):
        """Say text on the page (at the top, or in the list ``shown``) and to log."""
        shown.append(text)
        if log is not None:
            log(text)

    name = str(source) if source else "model"
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError(f"{name}: the model has no input size (input_shape)")
    shape = tuple(shape)
    if (data or images) and len(shape) != 3:
        raise ValueError(f"{name}: --data and --images need a model that takes images "
                         f"(C x H x W); its input is {shape}")
    if data or images:
        image_input(model, f"{name}: {'--data' if data else '--images'}", scores=bool(data))
    info = getattr(model, "info", None) or {}
    trained = getattr(model, "trained", None)
    if run_dir is None:
        run_dir = run_directory(source)
    run = _read_run(run_dir, note)
    config = (run["state"] or {}).get("config")
    settings = _run_summary_settings(config)
    from_run = bool(settings)
    if "optimizer" in info:       # the model file's record, as convnet summary takes it
        settings.setdefault("optimizer", info["optimizer"])
    with _frozen_as_run(model, config):
        result = summary(model, shape, **settings)
    classes = class_names(model) if len(shape) == 3 else []

    found, samples, sample_x = None, [], None
    if data:
        x, y, data_classes, data_notes = evaluation_data(
            model, data, root=data_root, where=name, all_images=all_images,
            changed_hint="; to score every image of another folder: --all-images")
        for text in data_notes:
            note(text)
        classes = data_classes
        result_eval, wrong = _evaluate(model, x, y, classes, info)
        found = (result_eval, classes, wrong)
        if not images:                   # the first test image of each class, in order
            _, first = np.unique(y, return_index=True)
            picks = np.sort(first)[:MAX_SAMPLES]
            sample_x = x[picks]
            pixels = display_images(sample_x, info)
            which = "image" if all_images else "test image"
            samples = [(f"{which} #{i} of {data}: {classes[y[i]]}", pixels[k])
                       for k, i in enumerate(picks)]
    offered = len(samples)
    if images:                  # only the images drawn are read (a thousand files had been)
        offered = len(images)
        drawn = list(images)[:_plan(_stages(model), shape, offered)[0]]
        pixels, image_notes = load_images(drawn, shape)
        for text in image_notes:
            note(text)
        sample_x = preprocess(pixels, 255, info)
        samples = [(str(path), pixels[k]) for k, path in enumerate(drawn)]

    grids, outputs = [], None
    if samples:
        stages = _stages(model)
        count, share = _plan(stages, shape, len(samples))
        if count < offered:
            why = (f"the report draws at most {MAX_SAMPLES} (MAX_SAMPLES)"
                   if count == MAX_SAMPLES else
                   f"the maps of more would pass the page's cap of {PAGE_PIXELS:,} pixels")
            note(f"activations of the first {count} of {offered} images: {why}",
                 sample_notes)
            samples, sample_x = samples[:count], sample_x[:count]
        with np.errstate(all="ignore"):     # non-finite outputs are said in the section
            grids, outputs = _activations(model, stages, share, sample_x)
            if outputs is not None and outputs.ndim == 4 and outputs.shape[2:] == (1, 1):
                outputs = outputs.reshape(outputs.shape[:2])   # an FC net slid as CONV
            if info.get("tta") and outputs is not None and outputs.ndim == 2:
                from convnet.train.inference import class_scores  # as predict gives them
                outputs = class_scores(model, sample_x, tta=True)

    body = (_status(name, model, result, info, notes) + _architecture(model, result)
            + _summary(result, from_run)
            + _training(run, info, name, len(classes)) + _filters(model, trained)
            + _activations_section(samples, grids, outputs, classes, sample_notes)
            + _evaluation_section(found, data, trained, all_images)
            + f'<footer>Written by convnet {esc(convnet.__version__)}: <code>convnet '
              f'report</code>.</footer>')
    return document(f"convnet report: {name}", body)


def check_report_path(path):
    """path as a Path, if a report may be written there: an .html name in a directory
    that exists (said before the work, not after it); else a ValueError."""
    if isinstance(path, str) and not path:     # Path("") would be "."
        raise ValueError("an empty file name: give the report a name ending in .html")
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):   # never over a model or weights file
        raise ValueError(f"{path}: the report is an HTML page: give it a name ending in "
                         f".html")
    if not path.parent.is_dir():
        raise ValueError(f"{path}: the directory {path.parent} does not exist")
    return path


def write_report(model, path, source=None, data=None, data_root=None, images=None,
                 run_dir=None, log=None, all_images=False):
    """Write one self-contained HTML page about ``model`` to ``path``; returns the path.

    Args:
        model: a model as ``convnet.spec.resolve_model`` returns it (``input_shape``,
            ``trained``, and ``info`` for a saved model).
        source: how the model was named (a zoo name, notation or a file): the page's
            title; a model file in a run directory of ``convnet train`` brings that run's
            training curves and settings.
        data: a data set (as ``convnet eval --data`` takes it): accuracy, confusion
            matrix, the most confidently wrong test images, and sample images from its
            test split. data_root: where its files are.
        images: image files to draw the activations for (instead of the data's).
        all_images: every image of ``data`` instead of its test split (as ``convnet eval
            --all-images``): a folder the model never trained on.
        run_dir: the run directory, if not the model file's.
        log: called with each note (image conversions, what was left out).

    Needs matplotlib and Pillow (``pip install 'convnet[plot]'``): an ImportError says so.
    """
    path = check_report_path(path)
    page = build_report(model, source=source, data=data, data_root=data_root,
                        images=images, run_dir=run_dir, log=log, all_images=all_images)
    # a name that is not UTF-8 (a run directory named in Latin-1) shows with a "?"
    atomic_write(path, page.encode("utf-8", "replace"))
    return path
