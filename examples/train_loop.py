"""A training loop in Python, the notes' way: forward, loss, backward, update.

What ``convnet train`` does for you (and more: augmentation, schedules, checkpoints), as
a PyTorch user would write it. Two differences from PyTorch: an optimizer takes the
model's parameters as a dict, ``model.params()`` (names to arrays, updated in place), and
``step`` takes the gradients of the last ``backward`` as a dict, ``model.grads()``;
``backward`` writes the gradients anew each time (PyTorch's add up until
``zero_grad``), so there is nothing to zero.

    python examples/train_loop.py            # the embedded digits, a few seconds
"""

from __future__ import annotations

import numpy as np

from convnet.data import Normalize, load_dataset, to_float
from convnet.data.loader import batches
from convnet.functional.loss import softmax_cross_entropy
from convnet.models import from_notation
from convnet.train.optim import Adam


def main(epochs=5, seed=0):
    data = load_dataset("digits")                 # 8x8 grayscale, pixels 0..16
    x_train, x_test = (to_float(x, data.scale) for x in (data.train[0], data.test[0]))
    norm = Normalize()                    # the notes' mean subtraction and normalization,
    norm.fit(x_train)                     # per channel, from the training images alone
    x_train, x_test = norm(x_train), norm(x_test)
    y_train, y_test = data.train[1], data.test[1]

    model = from_notation("INPUT 8x8x1 -> [CONV 16 -> RELU]*2 -> POOL -> FC 64 -> RELU "
                          "-> FC 10", rng=np.random.default_rng(seed))
    optimizer = Adam(model.params(), lr=2e-3)
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        model.train()
        for xb, yb in batches(x_train, y_train, 32, rng=rng):
            scores = model.forward(xb)                           # (N, 10) class scores
            loss, dscores = softmax_cross_entropy(scores, yb)    # the loss and its gradient
            model.backward(dscores, input_grad=False)            # every layer's gradients
            optimizer.step(model.grads())                        # the update, in place
        model.eval()
        accuracy = float(np.mean(model.infer(x_test).argmax(axis=1) == y_test))
        print(f"epoch {epoch + 1}: last batch loss {loss:.4f}, test accuracy {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main()
