"""Losses on class scores: softmax cross-entropy and the multiclass SVM (hinge) loss.

Both take scores (N, C), the last FC layer's output, and integer class targets y (N,),
and return ``(loss, dscores)``: the loss averaged over the N samples as a Python float,
and its gradient with respect to the scores, shape (N, C), ready for the backward pass.

Softmax cross-entropy (PyTorch's ``cross_entropy``):

    L_i = -log(e^{s_{y_i}} / sum_j e^{s_j}) = -s_{y_i} + log sum_j e^{s_j}

computed with the log-sum-exp shift (subtract max_j s_j first), so scores like 1e4 give
finite results instead of overflowing exp().

Multiclass SVM (hinge) loss, the CS231n formulation:

    L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + margin)

PyTorch's ``multi_margin_loss`` is the same sum divided by C.

``softmax_cross_entropy`` and ``svm_loss`` are the notes' losses; ``cross_entropy`` and
``multi_margin_loss`` add PyTorch's options (class weights, an ignored target, the
squared hinge, sum or per-sample reductions).
"""

from __future__ import annotations

import contextlib

import numpy as np


def check_scores_targets(scores, y, where, ignore_index=None):
    """Check scores (N, C) float and y (N,) integer class indices in [0, C), or equal to
    ignore_index where one is given; return y."""
    if not isinstance(scores, np.ndarray):
        raise ValueError(f"{where}: expected scores as a NumPy array, "
                         f"got {type(scores).__name__}")
    if not np.issubdtype(scores.dtype, np.floating):
        raise ValueError(f"{where}: expected floating-point scores (float32 or float64), "
                         f"got dtype {scores.dtype}; convert with scores.astype(np.float32)")
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"{where}: expected scores of shape (N, C) with N, C >= 1, "
                         f"got shape {scores.shape}")
    n, c = scores.shape
    y = np.asarray(y)
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: expected integer class indices as target, got dtype "
                         f"{y.dtype}; convert with target.astype(np.int64)")
    if y.shape != (n,):
        hint = "; use target.argmax(1) for one-hot targets" if y.shape == (n, c) else ""
        raise ValueError(f"{where}: expected target of shape (N,) = ({n},) to match scores "
                         f"{scores.shape}, got shape {y.shape}{hint}")
    classes = y if ignore_index is None else y[y != ignore_index]
    if classes.size and (classes.min() < 0 or classes.max() >= c):
        also = "" if ignore_index in (None, -100) else f" (or ignore_index {ignore_index})"
        raise ValueError(f"{where}: target values must be class indices in [0, C) = "
                         f"[0, {c}){also}, got values from {int(classes.min())} to "
                         f"{int(classes.max())}")
    return y


def check_margin(margin, where):
    """The hinge's margin: a finite real number (not a bool, a string or an array); as a
    float."""
    ok = isinstance(margin, (int, float, np.integer, np.floating)) and \
        not isinstance(margin, (bool, np.bool_))
    try:
        ok = ok and np.isfinite(float(margin))
    except OverflowError:                  # an int beyond the largest float
        ok = False
    if not ok:
        raise ValueError(f"{where}: margin must be a finite number, got {margin!r:.80}")
    return float(margin)


def check_weight(weight, c, where):
    """A class weight: None, or one finite number per class (C of them, where c is given);
    as a float64 array."""
    if weight is None:
        return None
    size = "C" if c is None else f"C = {c}"
    expected = f"{where}: weight must be a 1-D array of {size} finite numbers, one per class"
    try:
        w = np.array(weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{expected}, got {type(weight).__name__}") from None
    if w.ndim != 1 or w.size == 0 or (c is not None and w.size != c):
        got = f"{w.size} values" if w.ndim == 1 else f"shape {w.shape}"
        raise ValueError(f"{expected}, got {got}")
    if not np.isfinite(w).all():
        raise ValueError(f"{expected}, got {w[~np.isfinite(w)][0]}")
    return w


REDUCTIONS = ("mean", "sum", "none")


def _reduce(losses, dscores, reduction, denominator, keep=None):
    """The per-sample losses (N,) and their gradients (N, C), reduced as PyTorch does:
    'mean' divides both by the denominator (the count, or the total weight, of the samples
    that count: NaN when it is 0, as in PyTorch), 'sum' adds the losses, 'none' keeps them.
    Rows outside keep (ignored samples) keep their 0 gradient. Returns (loss, dscores)."""
    if reduction == "none":
        return losses, dscores
    if reduction == "sum":
        return float(losses.sum()), dscores
    if denominator == 0:     # (label smoothing's part of a loss of zero weight is not 0)
        denominator = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        if keep is None or keep.all():
            dscores /= denominator
        else:
            dscores[keep] /= denominator
        return float(losses.sum() / denominator), dscores


def log_softmax(scores, axis=1):
    """log(softmax(scores)) along ``axis`` (the class axis), via the log-sum-exp shift.

    >>> log_softmax(np.array([[0.0, 1e4]]))
    array([[-10000.,      0.]])
    """
    shifted = scores - scores.max(axis=axis, keepdims=True)     # max 0 per row: no overflow
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(scores, axis=1):
    """Probabilities e^{s_j} / sum_k e^{s_k} along ``axis``; rows sum to 1.

    >>> softmax(np.array([[0.0, 0.0]]))
    array([[0.5, 0.5]])
    """
    e = np.exp(scores - scores.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_cross_entropy(scores, y, label_smoothing=0.0):
    """Mean softmax cross-entropy loss and its gradient: returns (loss, dscores).

    scores: (N, C) float; y: (N,) integer class indices in [0, C).
    loss = mean_i(-sum_j q_ij log p_ij) with p = softmax(scores) and the target q = one_hot
    (y), or with label smoothing e the mix (1 - e) one_hot(y) + e / C (PyTorch's
    cross_entropy(label_smoothing=e)); dscores = (p - q) / N, shape (N, C).
    ``cross_entropy`` adds PyTorch's class weights, ignore_index and reductions.

    >>> loss, dscores = softmax_cross_entropy(np.zeros((2, 10)), np.array([3, 7]))
    >>> round(loss, 4)                                   # log(10)
    2.3026
    """
    return cross_entropy(scores, y, ignore_index=None, label_smoothing=label_smoothing,
                         where="softmax_cross_entropy")


def cross_entropy(scores, y, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, where="cross_entropy"):
    """Softmax cross-entropy with PyTorch's options: returns (loss, dscores).

    Sample i's loss is -sum_j w_j q_ij log p_ij: p = softmax(scores), the target q = (1 - e)
    one_hot(y) + e / C (e: label_smoothing), and w the class weights, where the one-hot
    part takes the target class's weight w_{y_i} (PyTorch's formula).
    weight: None or (C,): scales each class's loss (for classes of unequal size).
    ignore_index: a target equal to it adds no loss and no gradient, and is not counted
    (None: every target must be a class).
    reduction: 'mean' divides the sum by the samples counted (by their targets' total
    weight, with weights), 'sum' adds, both giving a float; 'none' gives the losses (N,).
    dscores (N, C) is the gradient of the reduced loss ('none': of the losses' sum).
    """
    if ignore_index is not None and (not isinstance(ignore_index, (int, np.integer))
                                     or isinstance(ignore_index, bool)):
        raise ValueError(f"{where}: ignore_index must be an int or None, got "
                         f"{ignore_index!r:.80}")
    y = check_scores_targets(scores, y, where, ignore_index)
    e = label_smoothing
    if not (isinstance(e, (int, float, np.integer, np.floating))
            and not isinstance(e, bool) and 0 <= e <= 1):
        raise ValueError(f"{where}: label_smoothing must be in [0, 1], got {e!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{where}: reduction must be one of {', '.join(REDUCTIONS)}, "
                         f"got {reduction!r}")
    e = float(e)                          # a NumPy float32 would round the targets
    n, c = scores.shape
    w = check_weight(weight, c, where)
    rows = np.arange(n)
    keep = (np.ones(n, bool) if ignore_index is None else
            y != ignore_index)                          # (N,) the samples that count
    target = np.where(keep, y, 0)                       # a class for each; masked below
    with np.errstate(invalid="ignore") if not keep.all() else contextlib.nullcontext():
        logp = log_softmax(scores)      # (N, C); an ignored row of -inf alone: NaN, unsaid
    if not keep.all():    # an ignored sample counts nothing: 0, not 0 * its -inf scores
        logp[~keep] = 0
    p = np.exp(logp)                                    # softmax probabilities
    if w is None:
        wy = keep.astype(scores.dtype)                  # each sample's weight: 1 or 0
    else:
        w = w.astype(scores.dtype)
        wy = w[target] * keep
    # The one-hot part: -w_y log p_y, gradient w_y (p - one_hot(y)).
    losses = -(1 - e) * wy * logp[rows, target]
    dscores = p * ((1 - e) * wy)[:, None]
    dscores[rows, target] -= (1 - e) * wy
    if e:                                 # the uniform part: -(e / C) sum_j w_j log p_j
        # (e / C) * keep is float64, so that float32 scores get this part's gradient
        # computed in float64 and rounded once, as before ignored samples were set to 0
        # (computed in float32, the default digits run's test accuracy moved 0.5 points)
        if w is None:
            losses -= (e / c) * logp.sum(axis=1) * keep
            dscores += (e / c) * keep[:, None] * (c * p - 1)
        else:
            losses -= (e / c) * (logp * w).sum(axis=1) * keep
            dscores += (e / c) * keep[:, None] * (w.sum() * p - w)
    if not keep.all():
        losses[~keep] = 0
        dscores[~keep] = 0
    return _reduce(losses, dscores, reduction, wy.sum(), keep)


def svm_loss(scores, y, margin=1.0):
    """Mean multiclass SVM (hinge) loss and its gradient: returns (loss, dscores).

    scores: (N, C) float; y: (N,) integer class indices in [0, C).
    L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + margin), loss = mean_i L_i.
    Each positive margin adds +1/N to dscores[i, j] and -1/N to dscores[i, y_i]; a margin
    of exactly 0 passes no gradient (as in PyTorch, whose order of operations, margin -
    s_{y_i} + s_j, it follows: it decides on which side of 0 a margin rounds). A NaN
    score makes the loss NaN, where PyTorch's kernel skips its term, so that divergence
    shows; it passes no gradient, as there.

    >>> loss, dscores = svm_loss(np.array([[3.2, 5.1, -1.7]]), np.array([0]))
    >>> round(loss, 4), dscores                     # 2.9 + 0, the classic cat example
    (2.9, array([[-1.,  1.,  0.]]))
    """
    y = check_scores_targets(scores, y, "svm_loss")
    n = scores.shape[0]
    margins = _margins(scores, y, check_margin(margin, "svm_loss"))
    loss = margins.sum() / n
    dscores = _hinge_gradient((margins > 0).astype(scores.dtype), y)  # +1 a positive margin
    dscores /= n
    return float(loss), dscores


def _margins(scores, y, margin):
    """max(0, margin - s_{y_i} + s_j) (N, C), in PyTorch's order; 0 at j = y_i."""
    rows = np.arange(len(y))
    correct = scores[rows, y][:, None]                  # (N, 1) the s_{y_i}
    margins = np.maximum(0, (margin - correct) + scores)
    margins[rows, y] = 0
    return margins


def _hinge_gradient(dh, y):
    """The gradient (N, C) of sum_{j != y_i} h(margin_ij), made in dh = h'(margin) (N, C),
    0 at the targets: dh at each wrong class j, minus their sum at the target class
    (whose s_{y_i} enters every margin with a minus)."""
    dh[np.arange(len(y)), y] = -dh.sum(axis=1)
    return dh


def multi_margin_loss(scores, y, p=1, margin=1.0, weight=None, reduction="mean",
                      where="multi_margin_loss"):
    """PyTorch's multi_margin_loss: returns (loss, dscores).

    Sample i's loss is sum_{j != y_i} w_{y_i} max(0, margin - s_{y_i} + s_j)^p / C: the
    notes' SVM loss (p = 1) or its square, the L2-SVM (p = 2), divided by C. weight: None
    or (C,), the target class's weight scales its sample's loss. reduction: 'mean' over N,
    'sum' or 'none' (the losses (N,)), as ``cross_entropy``. A NaN score makes the loss
    NaN and passes no gradient (see ``svm_loss``).
    """
    y = check_scores_targets(scores, y, where)
    if reduction not in REDUCTIONS:
        raise ValueError(f"{where}: reduction must be one of {', '.join(REDUCTIONS)}, "
                         f"got {reduction!r}")
    if isinstance(p, bool) or p not in (1, 2):
        raise ValueError(f"{where}: p must be 1 or 2, got {p!r}")
    n, c = scores.shape
    w = check_weight(weight, c, where)
    z = _margins(scores, y, check_margin(margin, where))
    if p == 1:
        h, dh = z, (z > 0).astype(scores.dtype)
    else:
        h, dh = z * z, np.where(z > 0, 2 * z, 0).astype(scores.dtype)
    if w is not None:
        wy = w.astype(scores.dtype)[y][:, None]         # (N, 1) the target's weight
        h, dh = h * wy, dh * wy
    losses = h.sum(axis=1) / c
    dscores = _hinge_gradient(dh, y) / c
    return _reduce(losses, dscores, reduction, n)
