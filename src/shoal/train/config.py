"""Ray Train's configuration objects, same names and meanings."""
from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class ScalingConfig:
    """How many workers and what each gets.

    ``num_workers``: an int, or ``(min, max)`` for elastic training (start
    with as many as fit, at least min; shrink when workers are lost; grow
    back when resources return). ``use_gpu`` gives each worker one GPU
    unless ``resources_per_worker`` says otherwise. Workers are gang-placed
    in one placement group with ``placement_strategy``."""
    num_workers: int | tuple = 1
    use_gpu: bool = False
    resources_per_worker: dict | None = None
    placement_strategy: str = "PACK"

    def __post_init__(self):
        n = self.num_workers
        if isinstance(n, (tuple, list)):
            if len(n) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in n) \
                    or not 1 <= n[0] <= n[1]:
                raise ValueError(f"ScalingConfig.num_workers as a range must be (min, max) with "
                                 f"1 <= min <= max, got {n!r}")
            self.num_workers = tuple(n)
        elif not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"ScalingConfig.num_workers must be a positive int or (min, max), "
                             f"got {n!r}")
        if self.resources_per_worker is not None:
            if not isinstance(self.resources_per_worker, dict) or any(
                    not isinstance(v, (int, float)) or v < 0
                    for v in self.resources_per_worker.values()):
                raise ValueError(f"ScalingConfig.resources_per_worker must map resource names to "
                                 f"non-negative numbers, got {self.resources_per_worker!r}")
        if self.placement_strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
            raise ValueError(f"unknown placement_strategy {self.placement_strategy!r}")

    @property
    def min_workers(self) -> int:
        n = self.num_workers
        return n[0] if isinstance(n, tuple) else n

    @property
    def max_workers(self) -> int:
        n = self.num_workers
        return n[1] if isinstance(n, tuple) else n

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, tuple) and self.min_workers < self.max_workers

    def worker_resources(self) -> dict:
        if self.resources_per_worker is not None:
            res = {k: float(v) for k, v in self.resources_per_worker.items()}
            res.setdefault("CPU", 1.0)
            if self.use_gpu:
                res.setdefault("GPU", 1.0)
            return {k: v for k, v in res.items() if v > 0} or {"CPU": 0.0}
        return {"CPU": 1.0, "GPU": 1.0} if self.use_gpu else {"CPU": 1.0}


@dataclass
class CheckpointConfig:
    """Which reported checkpoints to keep: the best ``num_to_keep`` by
    ``checkpoint_score_attribute`` (a reported metric; ``order`` "max" or
    "min"), or the latest ``num_to_keep`` without one; all when None. The
    latest checkpoint is always kept, since a restart resumes from it."""
    num_to_keep: int | None = None
    checkpoint_score_attribute: str | None = None
    checkpoint_score_order: str = "max"

    def __post_init__(self):
        if self.num_to_keep is not None and (not isinstance(self.num_to_keep, int)
                                             or self.num_to_keep < 1):
            raise ValueError(f"CheckpointConfig.num_to_keep must be a positive int or None, "
                             f"got {self.num_to_keep!r}")
        if self.checkpoint_score_order not in ("max", "min"):
            raise ValueError(f"checkpoint_score_order must be 'max' or 'min', got "
                             f"{self.checkpoint_score_order!r}")


@dataclass
class FailureConfig:
    """``max_failures``: how many times a run restarts its workers from the
    latest checkpoint after a worker dies or the loop raises (-1: always)."""
    max_failures: int = 0

    def __post_init__(self):
        if not isinstance(self.max_failures, int) or self.max_failures < -1:
            raise ValueError(f"FailureConfig.max_failures must be an int >= -1, got "
                             f"{self.max_failures!r}")


@dataclass
class RunConfig:
    """``name`` and ``storage_path`` (default ``~/shoal_results``) say where
    checkpoints are written: ``storage_path/name/checkpoint_000003``."""
    name: str | None = None
    storage_path: str | None = None
    checkpoint_config: CheckpointConfig = field(default_factory=CheckpointConfig)
    failure_config: FailureConfig = field(default_factory=FailureConfig)
    verbose: int = 1

    def __post_init__(self):
        if self.checkpoint_config is None:
            self.checkpoint_config = CheckpointConfig()
        if self.failure_config is None:
            self.failure_config = FailureConfig()

    def resolved_storage(self) -> str:
        return os.path.abspath(os.path.expanduser(self.storage_path or "~/shoal_results"))
