"""The one Accelerate training loop every stage uses.

A stage supplies a `TrainTask` (model, data sets, `training_step`, `evaluate`), and the networks it
trains beside the model, if any (`Network`: Stage 1's discriminator); `fit` owns the rest: the
Accelerator, an AdamW per network with weight decay on matrices only, warmup and cosine decay, gradient
accumulation and clipping, an EMA of the model's weights, the progress bar, `metrics.jsonl` and the
experiment trackers, atomic checkpoints with exact resume, and the final `save_pretrained` of the model.

    task.py      what a stage hands to `fit`: TrainTask, TrainConfig (the `train:` settings), Network, StepInfo
    training.py  `fit` and the loop itself: steps, metrics, evaluations, stops, the final model
    batches.py   the global batch cut into micro-batches, epoch after epoch (EpochSampler), the val loader
    optim.py     which parameters decay, the learning-rate schedule, steps under a loss scaler, the EMA
    tracking.py  `train.log_with`: Accelerate's trackers (TensorBoard, W&B, MLflow...) beside metrics.jsonl
    core/checkpoint.py  the checkpoints: their format, saving, and resuming with a fallback
"""

from core.loop.batches import EpochSampler
from core.loop.optim import WeightEMA, param_groups, warmup_cosine
from core.loop.task import MultiNetworkTask, Network, OptimizerSettings, StepInfo, TrainConfig, TrainTask
from core.loop.training import TrainState, fit

__all__ = ["EpochSampler", "MultiNetworkTask", "Network", "OptimizerSettings", "StepInfo", "TrainConfig", "TrainState",
           "TrainTask", "WeightEMA", "fit", "param_groups", "warmup_cosine"]
