"""Loss layers: CrossEntropyLoss (softmax) and MultiMarginLoss (SVM), PyTorch's semantics.

A loss sits on top of the last FC layer. ``forward(scores, target)`` takes the class
scores (N, C) and integer class targets (N,) and returns the mean loss as a Python float;
``backward()`` returns dscores (N, C), the gradient that starts the network's backward
pass. They have no parameters and count no multiply-adds.

>>> loss_fn = CrossEntropyLoss()
>>> loss = loss_fn(np.zeros((4, 10)), np.array([0, 1, 2, 3]))   # log(10) = 2.3026
>>> dscores = loss_fn.backward()                                # (4, 10)
"""

from __future__ import annotations

import numpy as np  # noqa: F401  (the doctests)

from convnet.functional import loss as F
from convnet.layers.base import Layer, real


class Loss(Layer):
    """Base of the losses: forward(scores, target) -> float, backward() -> dscores."""

    def _loss(self, scores, target):
        """(loss, dscores) from the functional op, inputs already checked."""
        raise NotImplementedError

    def forward(self, scores, target):
        target = F.check_scores_targets(scores, target, self.where)
        loss, dscores = self._loss(scores, target)
        self.cache = dscores
        return loss

    def __call__(self, scores, target):
        return self.forward(scores, target)

    def backward(self, dout=1.0):
        """dscores (N, C) of the last forward, times dout (the loss's own gradient, 1)."""
        return self._cached() * dout

    def output_shape(self, input_shape):
        """A per-sample score vector (C,) gives one number: shape ()."""
        shape = tuple(input_shape)
        if len(shape) != 1:
            raise ValueError(f"{self.where}: expected per-sample scores (C,), got {shape}")
        return ()


class CrossEntropyLoss(Loss):
    """Softmax classifier loss: mean over N of -log softmax(scores)[y], as in PyTorch.

    Computed with the log-sum-exp shift, so it stays finite for scores like 1e4.
    forward(scores (N, C) float, target (N,) int in [0, C)) -> float;
    backward() -> dscores = (softmax(scores) - q) / N, shape (N, C), q the target.

    Args:
        label_smoothing: e in [0, 1]: the target is (1 - e) one_hot(y) + e / C, as
            PyTorch's CrossEntropyLoss(label_smoothing=e); 0 (default) is one_hot(y).

    >>> round(CrossEntropyLoss()(np.zeros((2, 10)), np.array([3, 7])), 4)
    2.3026
    """

    def __init__(self, label_smoothing=0.0):
        super().__init__()
        self.label_smoothing = real(label_smoothing, "label_smoothing", "CrossEntropyLoss",
                                    low=0, high=1, expected="a number in [0, 1]")

    def _loss(self, scores, target):
        return F.softmax_cross_entropy(scores, target, self.label_smoothing)

    def get_config(self):
        config = {"type": "CrossEntropyLoss"}
        if self.label_smoothing:
            config["label_smoothing"] = self.label_smoothing
        return config


class MultiMarginLoss(Loss):
    """Multiclass SVM (hinge) loss with PyTorch's MultiMarginLoss semantics (p=1).

    Per sample: sum_{j != y} max(0, margin - s_y + s_j) / C; then the mean over N. This is
    the notes' SVM loss divided by the class count C (see ``svm_loss`` for the undivided one).

    Args:
        margin: the margin Delta each wrong class must stay below the correct one.

    >>> MultiMarginLoss()(np.array([[3.2, 5.1, -1.7]]), np.array([0]))   # 2.9 / 3
    0.9666666666666665
    """

    def __init__(self, margin=1.0):
        super().__init__()
        self.margin = real(margin, "margin", "MultiMarginLoss", expected="a finite number")

    def _loss(self, scores, target):
        loss, dscores = F.svm_loss(scores, target, self.margin)
        c = scores.shape[1]
        dscores /= c
        return loss / c, dscores

    def get_config(self):
        return {"type": "MultiMarginLoss", "margin": self.margin}

    def __repr__(self):
        return f"MultiMarginLoss(margin={self.margin!r})"
