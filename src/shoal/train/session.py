"""What a training loop sees inside a worker: ``report``, ``get_context``,
``get_checkpoint``, ``get_dataset_shard`` (Ray Train's names)."""
from __future__ import annotations

import numbers

import shoal
from .checkpoint import Checkpoint, pack

_session = None


class TrainContext:
    def __init__(self, info: dict):
        self._info = info

    def get_world_rank(self) -> int:
        return self._info["rank"]

    def get_world_size(self) -> int:
        return self._info["world_size"]

    def get_local_rank(self) -> int:
        return self._info["local_rank"]

    def get_local_world_size(self) -> int:
        return self._info["local_world_size"]

    def get_node_rank(self) -> int:
        return self._info["node_rank"]

    def get_experiment_name(self) -> str:
        return self._info["name"]

    def get_storage_path(self) -> str:
        return self._info["storage"]

    def get_attempt(self) -> int:
        """How many times the run restarted its workers before this one (0 first)."""
        return self._info["attempt"]

    def __repr__(self):
        return (f"TrainContext(rank={self.get_world_rank()}, world_size={self.get_world_size()}, "
                f"local_rank={self.get_local_rank()})")


class _Session:
    def __init__(self, info: dict, controller, checkpoint: Checkpoint | None, shards: dict):
        self.info, self.controller, self.checkpoint, self.shards = info, controller, checkpoint, shards
        self.context = TrainContext(info)
        self.index = 0


def _current() -> _Session:
    if _session is None:
        raise RuntimeError("shoal.train.report/get_context/get_checkpoint/get_dataset_shard "
                           "only work inside train_loop_per_worker, run by a Trainer's fit()")
    return _session


def get_context() -> TrainContext:
    return _current().context


def get_checkpoint() -> Checkpoint | None:
    """The checkpoint this run resumes from (the latest one reported before a
    restart, or the trainer's ``resume_from_checkpoint``), else None."""
    return _current().checkpoint


def get_dataset_shard(name: str = "train"):
    """This worker's part of ``datasets[name]`` given to the trainer."""
    s = _current()
    if name not in s.shards:
        raise KeyError(f"no dataset {name!r} was given to the trainer "
                       f"(datasets: {sorted(s.shards) or 'none'})")
    return s.shards[name]


def report(metrics: dict, checkpoint: Checkpoint | None = None) -> None:
    """Report this round's metrics (and optionally a checkpoint directory).

    Every worker calls report the same number of times; a round is complete
    when all have, and its checkpoint (the files of every worker that passed
    one) becomes the one a restart resumes from. Returns once the trainer has
    stored this worker's part."""
    s = _current()
    if not isinstance(metrics, dict) or not all(isinstance(k, str) for k in metrics):
        raise TypeError(f"report(metrics) takes a dict with str keys, got {type(metrics).__name__}")
    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        raise TypeError(f"report(checkpoint=) takes a shoal.train.Checkpoint, got "
                        f"{type(checkpoint).__name__}")
    metrics = {k: (v.item() if hasattr(v, "item") and not isinstance(v, numbers.Number) else v)
               for k, v in metrics.items()}
    data = pack(checkpoint.path) if checkpoint is not None else None
    shoal.get(s.controller.report.remote(s.info["attempt"], s.info["rank"], s.index, metrics,
                                         data))
    s.index += 1
