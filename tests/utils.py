"""Shared test tools: float64 central-difference gradients and a relative error."""

import tracemalloc

import numpy as np


def traced(func, *args):
    """(func(*args), the peak in bytes of Python's traced allocations, NumPy's included,
    while it ran)."""
    tracemalloc.start()
    try:
        result = func(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def peak_bytes(func, *args):
    """The peak of Python's traced allocations while func(*args) runs."""
    return traced(func, *args)[1]


def rel_error(a, b):
    """||a - b|| / (||a|| + ||b||): 0 for equal arrays, 1 for unrelated ones."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)


def numerical_grad(f, x, dout, eps=1e-6):
    """Central differences of sum(f(x) * dout) with respect to x (changed in place, restored)."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = np.sum(f() * dout)
        flat[i] = old - eps
        minus = np.sum(f() * dout)
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def check_layer_grads(layer, x, seed=0, eps=1e-6):
    """Analytic gradients of a float64 layer against central differences.

    Returns {name: relative error} for the input ("x") and every parameter.
    The layer must be deterministic between calls (reseed dropout before calling).
    """
    rng = np.random.default_rng(seed)
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    analytic = {"x": dx, **{k: v.copy() for k, v in layer.grads.items()}}
    errors = {"x": rel_error(dx, numerical_grad(lambda: layer.forward(x), x, dout, eps))}
    for key, p in layer.params.items():
        num = numerical_grad(lambda: layer.forward(x), p, dout, eps)
        errors[key] = rel_error(analytic[key], num)
    return errors
