"""The one Accelerate training loop every stage uses (moved from vqgen/loop.py; split next)."""

from vqgen.loop.training import (
    EpochSampler,
    TrainConfig,
    TrainState,
    TrainTask,
    WeightEMA,
    fit,
    param_groups,
    warmup_cosine,
)

__all__ = ["EpochSampler", "TrainConfig", "TrainState", "TrainTask", "WeightEMA", "fit", "param_groups", "warmup_cosine"]
