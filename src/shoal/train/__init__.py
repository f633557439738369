"""Distributed training with Ray Train's API (``ray.train``): trainers,
configs, checkpoints, and the calls a training loop makes. See docs/train.md.

    from shoal.train import ScalingConfig, RunConfig, report
    from shoal.train.torch import TorchTrainer, prepare_model
"""
from .checkpoint import Checkpoint
from .config import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from .session import TrainContext, get_checkpoint, get_context, get_dataset_shard, report
from .trainer import DataParallelTrainer, Result, TrainingFailedError

__all__ = [
    "ScalingConfig", "RunConfig", "CheckpointConfig", "FailureConfig", "Checkpoint",
    "DataParallelTrainer", "Result", "TrainingFailedError", "TrainContext", "report",
    "get_context", "get_checkpoint", "get_dataset_shard",
]
