"""An exponential moving average of a model's weights, evaluated in their place.

Averaging the weights over the last few hundred steps smooths out the noise of the
last updates: the averaged model often tests better than the last one, at no cost in
training time (Polyak averaging; speed-run recipes evaluate on it).

    ema = WeightEMA(model, decay=0.999)
    for step in ...:
        optimizer.step(grads)
        ema.update()
    with ema.applied():            # the model holds the averages inside the block
        evaluate(model, x_val, y_val)

With warmup=False the update is torch.optim.swa_utils.AveragedModel's with
get_ema_multi_avg_fn(decay) and use_buffers=True: the first update copies the model,
every later one moves each floating parameter and buffer (batch norm's running
statistics) by (1 - decay) towards the model's; integer buffers (num_batches_tracked)
are mixed in float32 and truncated, as torch does.

With warmup=True (what training uses) update t (from 0) uses the decay
min(decay, (1 + t) / (10 + t)), as TensorFlow's ExponentialMovingAverage with
num_updates: early on the average follows the model closely, so a short run is not
averaged back towards its random start.
"""

from __future__ import annotations

import contextlib

import numpy as np


class WeightEMA:
    """Moving averages of a model's parameters and buffers (its state_dict's arrays).

    Args:
        model: a Layer or container; its state_dict() arrays are the ones averaged.
        decay: in [0, 1): the weight of the old average at each update.
        warmup: use min(decay, (1 + t) / (10 + t)) at update t.
    """

    def __init__(self, model, decay=0.999, warmup=False):
        if not (isinstance(decay, (int, float, np.integer, np.floating))
                and not isinstance(decay, bool) and 0 <= decay < 1):
            raise ValueError(f"WeightEMA: decay must be a number in [0, 1), got {decay!r}")
        self.model = model
        if not isinstance(warmup, (bool, np.bool_)):
            raise ValueError(f"WeightEMA: warmup must be True or False, got {warmup!r:.40}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.averages = None       # {key: array} once updated
        self.updates = 0

    def update(self):
        """Move every average towards the model's current arrays (copy them, the first
        time)."""
        state = self.model.state_dict()
        if self.averages is None:
            self.averages = {key: value.copy() for key, value in state.items()}
        else:
            decay = self.current_decay()
            weight = 1 - decay
            for key, value in state.items():
                average = self.averages[key]
                if np.issubdtype(average.dtype, np.floating):   # torch's lerp
                    # an average that overflows gives a validation loss that is not
                    # finite, which stops the run (the loop's TrainingDiverged)
                    with np.errstate(over="ignore", invalid="ignore"):
                        step = (value - average) * average.dtype.type(
                            weight if weight < 0.5 else decay)
                        if weight < 0.5:
                            average += step
                        else:   # torch lerp's form for a weight of 0.5 or more
                            np.subtract(value, step, out=average)
                else:      # as torch: the mix in float32, truncated back to the int
                    mixed = (average.astype(np.float32) * np.float32(decay)
                             + value.astype(np.float32) * np.float32(weight))
                    average[...] = mixed.astype(average.dtype)
        self.updates += 1

    def current_decay(self):
        """The decay the next update uses (the first update copies the model, whatever
        the decay)."""
        if self.warmup:
            return min(self.decay, (1 + self.updates) / (10 + self.updates))
        return self.decay

    @contextlib.contextmanager
    def applied(self):
        """The model holds the averages inside the block, its own weights again after."""
        if self.averages is None:
            yield
            return
        own = {key: value.copy() for key, value in self.model.state_dict().items()}
        self.model.load_state_dict(self.averages)
        try:
            yield
        finally:
            self.model.load_state_dict(own)

    def state_dict(self):
        """(arrays, meta) for a checkpoint: the averages (the live arrays, not copies:
        save them before the next update) and the decay and update count. The decay is
        a record: load_state_dict keeps this object's own."""
        return dict(self.averages or {}), {"decay": self.decay, "updates": self.updates}

    def load_state_dict(self, arrays, meta, where="WeightEMA"):
        """Restore a state_dict; the arrays must match the model's keys and shapes."""
        if not (isinstance(meta, dict) and type(meta.get("updates")) is int
                and meta["updates"] >= 0):
            raise ValueError(f"{where}: EMA state must hold 'updates' (an int >= 0), got "
                             f"{meta!r:.80}")
        own = self.model.state_dict()
        if meta["updates"] == 0:
            self.averages, self.updates = None, 0
            return
        if set(arrays) != set(own):
            raise ValueError(f"{where}: EMA arrays do not match the model's: keys "
                             f"{sorted(set(arrays) ^ set(own))[:5]} differ")
        for key in own:
            if np.shape(arrays[key]) != own[key].shape:
                raise ValueError(f"{where}: EMA array {key!r} has shape "
                                 f"{np.shape(arrays[key])}, the model's {own[key].shape}")
        self.averages = {key: np.array(arrays[key], dtype=own[key].dtype) for key in own}
        self.updates = meta["updates"]
