"""Loss layers: CrossEntropyLoss (softmax) and MultiMarginLoss (SVM), PyTorch's semantics.

A loss sits on top of the last FC layer. ``forward(scores, target)`` takes the class
scores (N, C) and integer class targets (N,) and returns the mean loss as a Python float
(the sum, or the losses (N,), with PyTorch's ``reduction``); ``backward()`` returns
dscores (N, C), the gradient that starts the network's backward pass. They have no
parameters and count no multiply-adds.

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

    reduction = "mean"

    def _loss(self, scores, target):
        """(loss, dscores) from the functional op."""
        raise NotImplementedError

    def forward(self, scores, target):
        loss, dscores = self._loss(scores, target)
        self.cache = dscores
        return loss

    def __call__(self, scores, target):
        return self.forward(scores, target)

    def backward(self, dout=1.0):
        """dscores (N, C) of the last forward, times dout: the reduced loss's own gradient
        (1), or with reduction='none' a number or one per sample (N,)."""
        dscores = self._cached()
        if np.ndim(dout) == 0:
            return dscores * dout
        n = dscores.shape[0]
        if self.reduction != "none" or np.shape(dout) != (n,):
            expected = "a number" if self.reduction != "none" else f"a number or shape ({n},)"
            raise ValueError(f"{self.where}: expected dout as {expected}, got shape "
                             f"{np.shape(dout)}")
        return dscores * np.asarray(dout)[:, None]

    def output_shape(self, input_shape):
        """A per-sample score vector (C,) gives one number: shape ()."""
        shape = tuple(input_shape)
        if len(shape) != 1:
            raise ValueError(f"{self.where}: expected per-sample scores (C,), got {shape}")
        return ()

    def _options(self, weight, reduction):
        """Check and keep the class weight and the reduction PyTorch's losses share."""
        self.weight = F.check_weight(weight, None, type(self).__name__)
        if reduction not in F.REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: reduction must be one of "
                             f"{', '.join(F.REDUCTIONS)}, got {reduction!r:.80}")
        self.reduction = reduction

    def _options_config(self):
        """The shared options that differ from the defaults, JSON-ready."""
        config = {} if self.weight is None else {"weight": self.weight.tolist()}
        return config if self.reduction == "mean" else {**config, "reduction": self.reduction}

    def __repr__(self):
        args = [f"{k}={v!r}" if k != "weight" else f"weight=<{len(v)} values>"
                for k, v in self.get_config().items() if k != "type"]
        return f"{type(self).__name__}({', '.join(args)})"


class CrossEntropyLoss(Loss):
    """Softmax classifier loss: mean over N of -log softmax(scores)[y], as in PyTorch.

    Computed with the log-sum-exp shift, so it stays finite for scores like 1e4.
    forward(scores (N, C) float, target (N,) int in [0, C)) -> float;
    backward() -> dscores = (softmax(scores) - q) / N, shape (N, C), q the target.

    Args (PyTorch's, in its order; see ``functional.loss.cross_entropy``):
        weight: None, or one number per class (C,) that scales that class's samples'
            loss; the mean is then over the targets' total weight.
        ignore_index: samples with this target add nothing and are not counted.
        reduction: 'mean' (default), 'sum', or 'none' (forward gives the losses (N,)).
        label_smoothing: e in [0, 1]: the target is (1 - e) one_hot(y) + e / C, as
            PyTorch's CrossEntropyLoss(label_smoothing=e); 0 (default) is one_hot(y).

    >>> round(CrossEntropyLoss()(np.zeros((2, 10)), np.array([3, 7])), 4)
    2.3026
    """

    def __init__(self, weight=None, *, ignore_index=-100, reduction="mean",
                 label_smoothing=0.0):
        super().__init__()
        if isinstance(weight, (float, np.floating)) and 0 <= weight <= 1:
            raise ValueError(f"CrossEntropyLoss: weight (the first argument, as in PyTorch) "
                             f"must be one number per class, got {weight!r}; for label "
                             f"smoothing, write label_smoothing={weight!r}")
        self._options(weight, reduction)
        if not isinstance(ignore_index, (int, np.integer)) or isinstance(ignore_index, bool):
            raise ValueError(f"CrossEntropyLoss: ignore_index must be an int, got "
                             f"{ignore_index!r:.80}")
        self.ignore_index = int(ignore_index)
        self.label_smoothing = real(label_smoothing, "label_smoothing", "CrossEntropyLoss",
                                    low=0, high=1, expected="a number in [0, 1]")

    def _loss(self, scores, target):
        return F.cross_entropy(scores, target, self.weight, self.ignore_index, self.reduction,
                               self.label_smoothing, where=self.where)

    def get_config(self):
        config = {"type": "CrossEntropyLoss", **self._options_config()}
        if self.ignore_index != -100:
            config["ignore_index"] = self.ignore_index
        if self.label_smoothing:
            config["label_smoothing"] = self.label_smoothing
        return config


class MultiMarginLoss(Loss):
    """Multiclass SVM (hinge) loss with PyTorch's MultiMarginLoss semantics.

    Per sample: sum_{j != y} max(0, margin - s_y + s_j)^p / C; then the mean over N. With
    p = 1 this is the notes' SVM loss divided by the class count C (see ``svm_loss`` for
    the undivided one); p = 2 is the squared hinge loss (the notes' L2-SVM).

    Args (PyTorch's, in its order; see ``functional.loss.multi_margin_loss``):
        p: 1 (default) or 2, an int.
        margin: the margin Delta each wrong class must stay below the correct one.
        weight: None, or one number per class (C,): the target class's weight scales its
            sample's loss.
        reduction: 'mean' (default), 'sum', or 'none' (forward gives the losses (N,)).

    >>> MultiMarginLoss()(np.array([[3.2, 5.1, -1.7]]), np.array([0]))   # 2.9 / 3
    0.9666666666666665
    """

    def __init__(self, p=1, margin=1.0, weight=None, *, reduction="mean"):
        super().__init__()
        if not isinstance(p, (int, np.integer)) or isinstance(p, bool) or p not in (1, 2):
            hint = (f"; for a margin of {p!r}, write margin={p!r}"
                    if isinstance(p, (float, np.floating)) else "")
            raise ValueError(f"MultiMarginLoss: p must be 1 or 2 (an int), got {p!r:.80}"
                             f"{hint}")
        self.p = int(p)
        self.margin = real(margin, "margin", "MultiMarginLoss", expected="a finite number")
        self._options(weight, reduction)

    def _loss(self, scores, target):
        return F.multi_margin_loss(scores, target, self.p, self.margin, self.weight,
                                   self.reduction, where=self.where)

    def get_config(self):
        config = {"type": "MultiMarginLoss"}
        if self.p != 1:
            config["p"] = self.p
        return {**config, "margin": self.margin, **self._options_config()}
