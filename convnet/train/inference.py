"""Test time: preprocessing as in training, accuracy, a confusion matrix, top-k predictions.

At test time only the current activations are kept (the notes' memory point): every
forward here goes through ``model.infer``, which drops each layer's cache as it goes.
"""

from __future__ import annotations

import numpy as np

from convnet.functional.loss import softmax, softmax_cross_entropy


def preprocess(x, scale, info, dtype=np.float32):
    """uint8 images (N, C, H, W) in [0, scale] -> the normalized floats the model trained on."""
    mean = np.asarray(info["mean"], dtype=dtype).reshape(1, -1, 1, 1)
    std = np.asarray(info["std"], dtype=dtype).reshape(1, -1, 1, 1)
    return (x.astype(dtype) / dtype(scale) - mean) / std


def evaluate(model, x, y, batch_size=256, num_classes=None):
    """Eval-mode accuracy, mean loss and confusion matrix (rows: true class, cols: predicted)."""
    model.eval()
    k = num_classes or int(y.max()) + 1
    confusion = np.zeros((k, k), dtype=np.int64)
    loss = 0.0
    for start in range(0, len(x), batch_size):
        scores = model.infer(x[start:start + batch_size])
        yb = y[start:start + batch_size]
        loss += softmax_cross_entropy(scores, yb)[0] * len(yb)
        np.add.at(confusion, (yb, np.argmax(scores, axis=1)), 1)
    n = max(len(x), 1)
    return {"accuracy": float(np.trace(confusion) / n), "loss": loss / n,
            "confusion": confusion}


def top_k(model, x, k=3):
    """(indices, probabilities) of the k most likely classes for each image in x."""
    model.eval()
    probs = softmax(model.infer(x).astype(np.float64))
    order = np.argsort(-probs, axis=1)[:, :k]
    return order, np.take_along_axis(probs, order, axis=1)


def load_images(paths, input_shape):
    """Image files -> uint8 (N, C, H, W) at the model's input size, through Pillow."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading images needs Pillow: pip install 'convnet[images]'") from None
    c, h, w = input_shape
    out = np.empty((len(paths), c, h, w), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except (OSError, Image.DecompressionBombError) as err:
            raise ValueError(f"{path}: not a readable image ({err})") from None
        out[i] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return out
