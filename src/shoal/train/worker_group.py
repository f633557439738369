"""The training workers of one attempt: a placement group, one actor per
bundle, their ranks, and the collective groups set up among them."""
from __future__ import annotations

import inspect
import os
import shutil
import tempfile

import numpy as np

import shoal
from ..util.placement_group import placement_group, remove_placement_group
from ..util.scheduling_strategies import PlacementGroupSchedulingStrategy
from . import session
from .checkpoint import Checkpoint, unpack


class TrainWorker:
    """One training worker (an actor). ``setup`` joins the collective group
    "default" (so the loop can call ``shoal.collective.allreduce``) and, for
    torch, the default torch.distributed process group."""

    def where(self) -> tuple:
        ctx = shoal.get_runtime_context()
        return ctx.get_node_id(), os.getpid()

    def setup(self, info: dict, torch_backend: str | None) -> None:
        import shoal.collective as col
        col.init_collective_group(info["world_size"], info["rank"], "auto", "default",
                                  timeout_s=info["timeout_s"])
        if torch_backend is not None:
            from .torch import init_torch_process_group
            init_torch_process_group(info, torch_backend)
        self.info = info

    def run(self, loop, config, checkpoint_data, controller, shards: dict) -> None:
        workdir = None
        checkpoint = None
        if checkpoint_data is not None:
            workdir = tempfile.mkdtemp(prefix="shoal-train-restore-")
            checkpoint = Checkpoint(unpack(checkpoint_data, workdir))
        session._session = session._Session(self.info, controller, checkpoint, shards)
        try:
            takes_config = bool(inspect.signature(loop).parameters)
            loop(config if config is not None else {}) if takes_config else loop()
        finally:
            session._session = None
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)


class WorkerGroup:
    """The workers of one attempt. Created with its placement group pending:
    ``wait_placed`` until the group is placed, then ``start``, ``run``, and
    always ``shutdown``, which kills the workers (SIGKILL: their collective
    group's memory and sockets and torch's process group go with the
    processes, so nothing is closed first) and removes the placement group."""

    def __init__(self, n: int, resources: dict, strategy: str, attempt: int, name: str,
                 storage: str, timeout_s: float):
        self.n = n
        bundles = [dict(resources) for _ in range(n)]
        self.pg = placement_group(bundles, strategy=strategy)
        self.actors: list = []
        self.attempt, self.name, self.storage, self.timeout_s = attempt, name, storage, timeout_s
        self.resources = resources
        self.nodes: list = []          # the node id of each rank, once started

    def wait_placed(self, timeout_s: float) -> bool:
        """True once every bundle is reserved; False if not within ``timeout_s``."""
        return self.pg.wait(timeout_s)

    def held(self) -> dict:
        """The resources the started workers hold, by node id."""
        out: dict = {}
        for node in self.nodes:
            mine = out.setdefault(node, {})
            for k, v in self.resources.items():
                mine[k] = mine.get(k, 0.0) + v
        return out

    def start(self, torch_backend: str | None) -> None:
        cls = shoal.remote(max_restarts=0)(TrainWorker)
        res = dict(self.resources)
        num_cpus, num_gpus = res.pop("CPU", 0), res.pop("GPU", 0)
        self.actors = [cls.options(
            num_cpus=num_cpus, num_gpus=num_gpus, resources=res or None,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, i)).remote()
            for i in range(self.n)]
        where = shoal.get([a.where.remote() for a in self.actors])
        nodes = list(dict.fromkeys(node for node, _ in where))
        self.pids = [pid for _, pid in where]
        self.nodes = [node for node, _ in where]
        infos = []
        for rank, (node, _) in enumerate(where):
            same = [r for r, (nd, _) in enumerate(where) if nd == node]
            infos.append({"rank": rank, "world_size": self.n, "local_rank": same.index(rank),
                          "local_world_size": len(same), "node_rank": nodes.index(node),
                          "attempt": self.attempt, "name": self.name, "storage": self.storage,
                          "timeout_s": self.timeout_s})
        shoal.get([a.setup.remote(info, torch_backend) for a, info in zip(self.actors, infos)])

    def run(self, loop, config, checkpoint_ref, controller, datasets: dict) -> list:
        shards = {name: shard(ds, self.n) for name, ds in (datasets or {}).items()}
        return [a.run.remote(loop, config, checkpoint_ref, controller,
                             {name: parts[rank] for name, parts in shards.items()})
                for rank, a in enumerate(self.actors)]

    def shutdown(self) -> None:
        for a in self.actors:
            shoal.kill(a)
        self.actors = []
        remove_placement_group(self.pg)


def shard(ds, n: int) -> list:
    """``ds`` in ``n`` parts: its own ``split(n)`` if it has one, else
    contiguous slices of a sequence/array (a torch Dataset: Subsets)."""
    if hasattr(ds, "split") and callable(ds.split) and not isinstance(ds, (str, bytes)) \
            and not isinstance(ds, np.ndarray):
        parts = ds.split(n)
        if len(parts) == n:
            return list(parts)
    try:
        length = len(ds)
    except TypeError:
        raise TypeError(f"a dataset given to the trainer must have a length and support "
                        f"slicing, or have .split(n); got {type(ds).__name__}") from None
    bounds = np.linspace(0, length, n + 1).astype(int)
    if type(ds).__module__.startswith("torch.utils.data") or (
            hasattr(ds, "__getitem__") and not hasattr(ds, "__array__")
            and not isinstance(ds, (list, tuple)) and _is_torch_dataset(ds)):
        from torch.utils.data import Subset
        return [Subset(ds, range(bounds[i], bounds[i + 1])) for i in range(n)]
    return [ds[bounds[i]:bounds[i + 1]] for i in range(n)]


def _is_torch_dataset(ds) -> bool:
    try:
        from torch.utils.data import Dataset
    except ImportError:
        return False
    return isinstance(ds, Dataset)
