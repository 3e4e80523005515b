"""Normalization layers: BatchNorm1d, BatchNorm2d and AlexNet's LocalResponseNorm."""

from __future__ import annotations

import numpy as np

from convnet import limits
from convnet.functional import norm as F
from convnet.functional.conv import check_input
from convnet.layers.base import (
    Layer,
    check_dout,
    check_dtype,
    check_param_count,
    check_volume,
    flag,
    positive_int,
    real,
)


class _BatchNorm(Layer):
    """Shared state and passes of BatchNorm1d and BatchNorm2d (they differ in input rank)."""

    optional_arrays = ("weight", "bias", "running_mean", "running_var",
                       "num_batches_tracked")

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32):
        super().__init__()
        where = type(self).__name__
        self.num_features = positive_int(num_features, "num_features", where)
        self.eps = real(eps, "eps", where, low=0)
        self.momentum = None if momentum is None else real(momentum, "momentum", where, 0, 1)
        self.affine = flag(affine, "affine", where)
        self.track_running_stats = flag(track_running_stats, "track_running_stats", where)
        self.dtype = check_dtype(dtype, where)
        d = self.num_features
        check_param_count(2 * d * (self.affine + self.track_running_stats),
                          f"{where} with {d} features")
        if self.affine:
            self._init_param("weight", np.ones(d, dtype=self.dtype))     # gamma
            self._init_param("bias", np.zeros(d, dtype=self.dtype))      # beta
        if self.track_running_stats:
            self.buffers["running_mean"] = np.zeros(d, dtype=self.dtype)
            self.buffers["running_var"] = np.ones(d, dtype=self.dtype)
            self.buffers["num_batches_tracked"] = np.array(0, dtype=np.int64)

    def _check_input(self, x):
        raise NotImplementedError

    # Synchronized batch norm: a communicator (convnet.train.distributed) whose ranks each
    # hold a share of the batch; training mode then normalizes with the whole batch's
    # statistics (F.sync_batch_norm_forward). None: this process's batch alone. The
    # training loop sets it on every batch norm layer of a run over several processes.
    comm = None

    def forward(self, x):
        self._check_input(x)
        count = x.size // x.shape[1]                       # M, values per channel
        if (self.training or not self.track_running_stats) and self.eps <= 0:
            raise ValueError(f"{self.where}: eps must be positive to normalize with the "
                             f"batch's statistics (a channel of one value divides by "
                             f"sqrt(0 + eps)), got {self.eps}")
        if self.training and self.comm is not None and self.comm.size > 1:
            out, self.cache = F.sync_batch_norm_forward(x, self.params.get("weight"),
                                                        self.params.get("bias"), self.eps,
                                                        self.comm.allreduce)
            if self.track_running_stats:
                self._update_running_stats(self.cache)
            self._out_shape = out.shape
            return out
        if (self.training or not self.track_running_stats) and count < 2:
            fix = ("use a batch of N >= 2 or call .eval() to use the running statistics"
                   if self.track_running_stats else "use a batch of N >= 2 (this layer "
                   "keeps no running statistics: it normalizes with the batch's, in eval "
                   "mode too)")
            raise ValueError(
                f"{self.where}: expected more than 1 value per channel "
                f"{'in training mode ' if self.training else ''}(batch statistics), got "
                f"input shape {x.shape}, {count} per channel; {fix}")
        weight, bias = self.params.get("weight"), self.params.get("bias")
        if self.training or not self.track_running_stats:
            if count == 0:
                raise ValueError(f"{self.where}: got an empty batch, shape {x.shape}")
            out, self.cache = F.batch_norm_forward(x, weight, bias, eps=self.eps)
            if self.training and self.track_running_stats:
                self._update_running_stats(self.cache)
        else:
            out, self.cache = F.batch_norm_forward(x, weight, bias, self.buffers["running_mean"],
                                                   self.buffers["running_var"], self.eps)
        self._out_shape = out.shape
        return out

    def inference_affine(self):
        """(scale, shift), each (C,), with this layer's output = x * scale + shift per
        channel: what eval mode computes from the running statistics. None when the layer
        normalizes with batch statistics (training mode, or no running statistics)."""
        if self.training or not self.track_running_stats:
            return None
        return F.batch_norm_affine(self.params.get("weight"), self.params.get("bias"),
                                   self.buffers["running_mean"], self.buffers["running_var"],
                                   self.eps)

    def infer(self, x):
        """Forward without a cache; in eval mode one scale and shift per channel."""
        affine = self.inference_affine()
        if affine is None:
            return super().infer(x)
        self._check_input(x)
        self.cache = None
        return F.affine_channels(x, *affine)

    def _update_running_stats(self, cache):
        """PyTorch's rule: count the batch, then average with momentum (or cumulatively)."""
        self.buffers["num_batches_tracked"] += 1
        if self.momentum is None:
            factor = 1.0 / float(self.buffers["num_batches_tracked"])
        else:
            factor = self.momentum
        mean, var = F.update_running_stats(self.buffers["running_mean"],
                                           self.buffers["running_var"], cache.mean, cache.var,
                                           cache.count, factor)
        self.buffers["running_mean"][...] = mean     # in place, kept in the layer's dtype
        self.buffers["running_var"][...] = var

    def backward(self, dout):
        cache = self._cached()
        check_dout(dout, self._out_shape, self.where)
        if isinstance(cache, F.SyncBatchNormCache):
            dx, dweight, dbias = F.sync_batch_norm_backward(dout, cache)
        else:
            dx, dweight, dbias = F.batch_norm_backward(dout, cache)
        if self.affine:
            self.grads["weight"] = dweight
            self.grads["bias"] = dbias
        return dx

    def macs(self, input_shape):
        return 2 * int(np.prod(self.output_shape(input_shape)))

    def get_config(self):
        return {"type": type(self).__name__, "num_features": self.num_features,
                "eps": self.eps, "momentum": self.momentum, "affine": self.affine,
                "track_running_stats": self.track_running_stats, "dtype": self.dtype.name}

    def __repr__(self):
        text = f"{type(self).__name__}(D={self.num_features}"
        if self.eps != 1e-5:
            text += f", eps={self.eps:g}"
        if self.momentum is None:
            text += ", momentum=None"
        elif self.momentum != 0.1:
            text += f", momentum={self.momentum:g}"
        if not self.affine:
            text += ", affine=False"
        if not self.track_running_stats:
            text += ", track_running_stats=False"
        return text + ")"


class BatchNorm2d(_BatchNorm):
    """Batch normalization of each depth slice of an NCHW volume, PyTorch's semantics.

    Every channel c is normalized with the mean and variance of its N*H*W values, then
    scaled and shifted: out = gamma_c * (x - mean_c) / sqrt(var_c + eps) + beta_c.

    Args:
        num_features: depth D of the input (channels C).
        eps: added to the variance for stability.
        momentum: weight of the new batch in the running averages,
            running = (1 - momentum) * running + momentum * batch; None averages all
            batches seen so far equally (a cumulative average).
        affine: learn gamma (``weight``, ones) and beta (``bias``, zeros), each (D,).
        track_running_stats: keep buffers ``running_mean`` (zeros), ``running_var`` (ones)
            and ``num_batches_tracked`` (int64 0-d). Without them eval mode also uses
            batch statistics.
        dtype: float32 (default) or float64, for parameters and buffers.

    Training mode normalizes with the batch's statistics (biased variance, differentiated
    through in backward) and updates the running averages with the UNBIASED variance, as
    PyTorch does; eval mode normalizes with the running averages (backward is then the
    affine map's). Shapes: (N, D, H, W) -> (N, D, H, W). With ``comm`` set (training over
    several processes, each with a share of the batch) training mode uses the whole
    batch's statistics: synchronized batch norm, as if one process held the batch.
    macs counts 2 per element, the scale and the shift of the inference form
    out = x * s + t (s, t folded from gamma, beta and the running statistics): 2*D*H*W.

    >>> bn = BatchNorm2d(64)
    >>> bn.output_shape((64, 56, 56)), bn.num_params(), bn.macs((64, 1, 1))
    ((64, 56, 56), 128, 128)
    """

    def _check_input(self, x):
        check_input(x, self.num_features, self.where)

    def output_shape(self, input_shape):
        return check_volume(input_shape, self.num_features, self.where)


class BatchNorm1d(_BatchNorm):
    """Batch normalization of features (N, C) or of sequences (N, C, L), PyTorch's semantics.

    Same arguments, parameters, buffers and rules as BatchNorm2d; each channel c is
    normalized over its N values (input (N, C)) or its N*L values (input (N, C, L)).
    macs counts 2 per element (scale and shift): 2*C or 2*C*L per sample.

    >>> bn = BatchNorm1d(4096)
    >>> bn.output_shape((4096,)), bn.num_params()
    ((4096,), 8192)
    """

    def _check_input(self, x):
        if isinstance(x, np.ndarray) and x.ndim not in (2, 3):
            raise ValueError(f"{self.where}: expected a 2-D input (N, C) or a 3-D input "
                             f"(N, C, L), got shape {x.shape}")
        d = self.num_features
        if isinstance(x, np.ndarray) and x.ndim == 3 and x.shape[1] != d and x.shape[2] == d:
            raise ValueError(f"{self.where}: expected {d} channels in axis 1 (N, C, L), got "
                             f"shape {x.shape}; this looks like (N, L, C): use "
                             f"x.transpose(0, 2, 1)")
        check_input(x, d, self.where, rank=getattr(x, "ndim", 2))

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) not in (1, 2) or shape[0] != self.num_features:
            raise ValueError(f"{self.where}: expected a per-sample shape ({self.num_features},) "
                             f"or ({self.num_features}, L), got {shape}")
        return shape


class LocalResponseNorm(Layer):
    """AlexNet's local response normalization across channels (the notes' LRN layer).

    Each activation is divided by the energy of n = size neighbouring channels at the
    same pixel, PyTorch's exact formula (channels past the edges count as zero):

        b_c = a_c * (k + alpha / n * sum_{c'=c-n//2}^{c+(n-1)//2} a_{c'}^2) ^ (-beta)

    Args:
        size: n, the number of channels in the window (an even n reaches one more
            channel back than forward).
        alpha: scale of the sum of squares (divided by n, as in PyTorch and Caffe).
        beta: exponent. k: additive constant (AlexNet: n=5, alpha=1e-4, beta=0.75, k=2).

    No parameters. Shapes: (N, C, H, W) -> (N, C, H, W).
    macs counts (n + 1) per element: n multiply-adds for the windowed sum of squares and
    one multiply for the scale (the power is not counted).

    >>> lrn = LocalResponseNorm(5, k=2.0)          # AlexNet, after CONV1 and CONV2
    >>> lrn, lrn.output_shape((96, 55, 55))
    (LocalResponseNorm(n=5, alpha=0.0001, beta=0.75, k=2), (96, 55, 55))
    """

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        where = type(self).__name__
        self.size = positive_int(size, "size", where)
        if self.size > limits.MAX_IMAGE_SIDE:    # a window no wider than an image
            raise ValueError(f"{where}: size must be at most {limits.MAX_IMAGE_SIDE:,} "
                             f"(convnet.limits.MAX_IMAGE_SIDE, the widest window), got {size}")
        # k >= 0 and alpha >= 0 keep the base k + alpha/n * sum(a^2) of the power from
        # being negative (NaN for every output of its window)
        self.alpha = real(alpha, "alpha", where, low=0)
        self.beta = real(beta, "beta", where)
        self.k = real(k, "k", where, low=0)

    def forward(self, x):
        check_input(x, None, self.where)
        out, self.cache = F.local_response_norm_forward(x, self.size, self.alpha, self.beta,
                                                        self.k)
        self._out_shape = out.shape
        return out

    def infer(self, x):
        """forward's output without a cache, with fewer temporaries."""
        check_input(x, None, self.where)
        self.cache = None
        return F.local_response_norm_infer(x, self.size, self.alpha, self.beta, self.k)

    def backward(self, dout):
        cache = self._cached()
        check_dout(dout, self._out_shape, self.where)
        return F.local_response_norm_backward(dout, cache)

    def output_shape(self, input_shape):
        return check_volume(input_shape, None, self.where)

    def macs(self, input_shape):
        return (self.size + 1) * int(np.prod(self.output_shape(input_shape)))

    def get_config(self):
        return {"type": "LocalResponseNorm", "size": self.size, "alpha": self.alpha,
                "beta": self.beta, "k": self.k}

    def __repr__(self):
        return (f"LocalResponseNorm(n={self.size}, alpha={self.alpha:g}, beta={self.beta:g}, "
                f"k={self.k:g})")
