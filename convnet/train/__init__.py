"""Training: optimizers and learning-rate schedules."""

from convnet.train.optim import (
    OPTIMIZERS,
    SGD,
    Adagrad,
    Adam,
    AdamW,
    Momentum,
    Nesterov,
    Optimizer,
    RMSprop,
    make_optimizer,
)
from convnet.train.schedules import (
    SCHEDULES,
    CosineAnnealingLR,
    LinearWarmup,
    LRSchedule,
    StepLR,
    make_schedule,
)

__all__ = ["Optimizer", "SGD", "Momentum", "Nesterov", "Adagrad", "RMSprop", "Adam", "AdamW",
           "OPTIMIZERS", "make_optimizer", "LRSchedule", "StepLR", "CosineAnnealingLR",
           "LinearWarmup", "SCHEDULES", "make_schedule"]
