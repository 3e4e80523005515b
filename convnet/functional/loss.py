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
"""

from __future__ import annotations

import numpy as np


def check_scores_targets(scores, y, where):
    """Check scores (N, C) float and y (N,) integer class indices in [0, C); return y."""
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
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= c:
        raise ValueError(f"{where}: target values must be class indices in [0, C) = "
                         f"[0, {c}), got values from {low} to {high}")
    return y


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

    >>> loss, dscores = softmax_cross_entropy(np.zeros((2, 10)), np.array([3, 7]))
    >>> round(loss, 4)                                   # log(10)
    2.3026
    """
    y = check_scores_targets(scores, y, "softmax_cross_entropy")
    if not (isinstance(label_smoothing, (int, float, np.integer, np.floating))
            and not isinstance(label_smoothing, bool) and 0 <= label_smoothing <= 1):
        raise ValueError(f"softmax_cross_entropy: label_smoothing must be in [0, 1], got "
                         f"{label_smoothing!r}")
    label_smoothing = float(label_smoothing)     # a NumPy float32 would round the targets
    n, c = scores.shape
    rows = np.arange(n)
    logp = log_softmax(scores)                          # (N, C)
    loss = -logp[rows, y].sum() / n
    dscores = np.exp(logp)                              # softmax probabilities p
    if label_smoothing:
        e = label_smoothing
        loss = (1 - e) * loss - e * logp.sum() / (n * c)
        dscores -= e / c
        dscores[rows, y] -= 1 - e
    else:
        dscores[rows, y] -= 1
    dscores /= n
    return float(loss), dscores


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
    rows = np.arange(n)
    correct = scores[rows, y][:, None]                  # (N, 1) the s_{y_i}
    margins = np.maximum(0, (margin - correct) + scores)  # (N, C)
    margins[rows, y] = 0
    loss = margins.sum() / n
    dscores = (margins > 0).astype(scores.dtype)        # (N, C) +1 per positive margin
    dscores[rows, y] = -dscores.sum(axis=1)
    dscores /= n
    return float(loss), dscores
