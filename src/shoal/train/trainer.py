"""``DataParallelTrainer``: run ``train_loop_per_worker`` on N workers, keep
their reports and checkpoints, restart from the latest checkpoint when a
worker dies (up to ``max_failures``), and for elastic runs
(``num_workers=(min, max)``) shrink or grow the group between restarts.

The driver's fit() loop per attempt: choose how many workers fit, counted
node by node (waiting until at least min do), gang-place them (an elastic
group that is not placed in time gives way to a smaller one), set up their collective group (and
torch's process group), run the loop on all, and watch: a finished worker
set ends the run, a failed one (a dead actor, a CollectiveError in the
others, an exception in the loop) ends the attempt; while an elastic run has
fewer than max workers and resources for more appear, the attempt ends at the
next complete checkpoint so that the next one starts bigger.
"""
from __future__ import annotations

import datetime
import logging
import math
import os
import time
from dataclasses import dataclass, field

import shoal
from ..exceptions import ShoalError
from ..util.state import list_nodes
from .checkpoint import Checkpoint, pack
from .config import RunConfig, ScalingConfig
from .controller import Controller
from .worker_group import WorkerGroup

log = logging.getLogger("shoal.train")

WATCH_S = 0.5
WARN_S = 10.0          # how often a wait for resources says so
PLACE_S = 10.0         # how long an elastic group may take to be placed before a smaller try
GROUP_TIMEOUT_S = 1800.0


class TrainingFailedError(ShoalError):
    """The run failed more than ``max_failures`` times; ``.result`` holds
    what it reached (metrics, the latest checkpoint) and ``.result.error``."""

    def __init__(self, message: str, result: "Result | None" = None):
        super().__init__(message)
        self.result = result


@dataclass
class Result:
    metrics: dict
    checkpoint: Checkpoint | None
    error: BaseException | None
    path: str
    metrics_history: list = field(default_factory=list)
    best_checkpoints: list = field(default_factory=list)    # [(Checkpoint, metrics)], best first
    num_failures: int = 0
    world_sizes: list = field(default_factory=list)         # workers per attempt


class DataParallelTrainer:
    """Framework-free data parallelism: each worker runs the loop; the loop
    synchronises with ``shoal.collective`` (group "default" is set up)."""

    _torch_backend: str | None = None

    def __init__(self, train_loop_per_worker, *, train_loop_config: dict | None = None,
                 scaling_config: ScalingConfig | None = None, run_config: RunConfig | None = None,
                 datasets: dict | None = None, resume_from_checkpoint: Checkpoint | None = None):
        if not callable(train_loop_per_worker):
            raise TypeError(f"train_loop_per_worker must be callable, got "
                            f"{type(train_loop_per_worker).__name__}")
        if train_loop_config is not None and not isinstance(train_loop_config, dict):
            raise TypeError("train_loop_config must be a dict")
        if datasets is not None and not isinstance(datasets, dict):
            raise TypeError("datasets must be a dict of name -> dataset")
        if resume_from_checkpoint is not None and not isinstance(resume_from_checkpoint,
                                                                 Checkpoint):
            raise TypeError("resume_from_checkpoint must be a shoal.train.Checkpoint")
        self.loop = train_loop_per_worker
        self.config = train_loop_config
        self.scaling = scaling_config or ScalingConfig()
        self.run_config = run_config or RunConfig()
        self.datasets = datasets or {}
        self.resume_from = resume_from_checkpoint

    # ---------------------------------------------------------------- fit
    def fit(self) -> Result:
        if not shoal.is_initialized():
            shoal.init()
        name = self.run_config.name or (
            f"{type(self).__name__}_{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}")
        storage = os.path.join(self.run_config.resolved_storage(), name)
        os.makedirs(storage, exist_ok=True)
        cc = self.run_config.checkpoint_config
        controller = shoal.remote(num_cpus=0, max_restarts=0)(Controller).remote(
            storage, cc.num_to_keep, cc.checkpoint_score_attribute, cc.checkpoint_score_order)
        max_failures = self.run_config.failure_config.max_failures
        failures, attempt, error = 0, 0, None
        world_sizes: list[int] = []
        try:
            while True:
                outcome, error = self._attempt(attempt, name, storage, controller, world_sizes)
                attempt += 1
                if outcome == "finished":
                    break
                if outcome == "grow":
                    log.info("shoal.train: resources for more workers: restarting with more "
                             "from the latest checkpoint")
                    continue
                failures += 1
                if max_failures != -1 and failures > max_failures:
                    break
                log.warning("shoal.train: attempt %d failed (%s); restarting from the latest "
                            "checkpoint (%d of %s failures)", attempt, _one_line(error),
                            failures, "unlimited" if max_failures == -1 else max_failures)
            state = shoal.get(controller.state.remote())
        finally:
            shoal.kill(controller)
        result = Result(
            metrics=state["metrics"],
            checkpoint=Checkpoint(state["latest"]) if state["latest"] else None,
            error=None if outcome == "finished" else error, path=storage,
            metrics_history=state["history"],
            best_checkpoints=[(Checkpoint(p), m) for p, m in state["best"]],
            num_failures=failures, world_sizes=world_sizes)
        if result.error is not None:
            raise TrainingFailedError(
                f"training failed {failures} time(s) (max_failures={max_failures}); last "
                f"error: {_one_line(error)}", result) from error
        return result

    def _attempt(self, attempt: int, name: str, storage: str, controller, world_sizes: list):
        """Run one worker group to its end: ("finished"|"failed"|"grow", error)."""
        group = None
        try:
            group = self._placed_group(attempt, name, storage)
            world_sizes.append(group.n)
            started_at = shoal.get(controller.begin.remote(attempt, group.n))
            latest = shoal.get(controller.state.remote())["latest"]
            restore = latest or (self.resume_from.path if self.resume_from else None)
            data_ref = shoal.put(pack(restore)) if restore else None
            group.start(self._torch_backend)
            refs = group.run(self.loop, self.config, data_ref, controller, self.datasets)
            pending = refs
            while pending:
                ready, pending = shoal.wait(pending, num_returns=len(pending), timeout=WATCH_S)
                for ref in ready:
                    try:
                        shoal.get(ref)
                    except Exception as e:     # a worker died or the loop raised
                        return "failed", _root_cause(e, refs)
                if pending and self._should_grow(group, controller, started_at):
                    return "grow", None
            return "finished", None
        except Exception as e:        # placing or setting the group up failed
            return "failed", e
        finally:
            if group is not None:
                group.shutdown()

    # ---------------------------------------------------------------- sizing
    def _per_worker(self) -> dict:
        return self.scaling.worker_resources()

    def _placed_group(self, attempt: int, name: str, storage: str) -> WorkerGroup:
        """A worker group whose placement group is placed. Fixed size: waits
        for it as long as it takes. Elastic: as many workers as fit now
        (``_workers_that_fit``); if that group is not placed within PLACE_S
        (the nodes' free resources changed, or the view of them was stale)
        it gives way to a smaller one, down to min, which waits as long as
        it takes."""
        strategy = self.scaling.placement_strategy
        n = self._workers_that_fit()
        while True:
            group = WorkerGroup(n, self._per_worker(), strategy, attempt, name, storage,
                                GROUP_TIMEOUT_S)
            shrinkable = self.scaling.elastic and n > self.scaling.min_workers
            try:
                placed = group.wait_placed(PLACE_S if shrinkable else WARN_S)
                while not placed and not shrinkable:
                    log.warning("shoal.train: waiting for %d workers of %s (%s) to be placed",
                                n, self._per_worker(), strategy)
                    placed = group.wait_placed(WARN_S)
            except BaseException:
                group.shutdown()
                raise
            if placed:
                return group
            group.shutdown()
            smaller = max(self.scaling.min_workers, min(n - 1, self._fits()))
            log.warning("shoal.train: %d workers of %s (%s) could not be placed within %.0f s; "
                        "trying %d", n, self._per_worker(), strategy, PLACE_S, smaller)
            n = smaller

    def _fits(self, held: dict | None = None) -> int:
        """How many workers the alive nodes have room for now, counted node
        by node (a worker's bundle cannot straddle nodes) and combined as
        the placement strategy places bundles: PACK and SPREAD use every
        node, STRICT_PACK one node, STRICT_SPREAD one worker per node.
        ``held``: resources per node id to count as free too (what the
        running group holds, when asking whether a bigger one fits)."""
        need = {k: v for k, v in self._per_worker().items() if v > 0}
        if not need:
            return self.scaling.max_workers
        per_node = []
        for node in list_nodes(filters=[("state", "=", "ALIVE")], limit=None):
            if node["is_driver_node"]:
                continue
            free = dict(node["resources_available"])
            for k, v in (held or {}).get(node["node_id"], {}).items():
                free[k] = free.get(k, 0.0) + v
            per_node.append(min(math.floor(free.get(k, 0.0) / v + 1e-9)
                                for k, v in need.items()))
        strategy = self.scaling.placement_strategy
        if strategy == "STRICT_PACK":
            return max(per_node, default=0)
        if strategy == "STRICT_SPREAD":
            return sum(1 for fit in per_node if fit > 0)
        return sum(per_node)

    def _workers_that_fit(self) -> int:
        """Fixed size: that size (its placement group waits for resources).
        Elastic: as many as fit now, at least min (waiting until min do)."""
        if not self.scaling.elastic:
            return self.scaling.max_workers
        warned_at = time.monotonic()
        while True:
            n = min(self.scaling.max_workers, self._fits())
            if n >= self.scaling.min_workers:
                return n
            if time.monotonic() - warned_at > WARN_S:
                log.warning("shoal.train: waiting for resources for %d workers of %s (%s) "
                            "(%d fit now)", self.scaling.min_workers, self._per_worker(),
                            self.scaling.placement_strategy, n)
                warned_at = time.monotonic()
            time.sleep(WATCH_S)

    def _should_grow(self, group: WorkerGroup, controller, started_at: int) -> bool:
        """An elastic group below max restarts bigger (at the next complete
        checkpoint) once a bigger group would fit where it stands."""
        if not self.scaling.elastic or group.n >= self.scaling.max_workers:
            return False
        if self._fits(held=group.held()) <= group.n:
            return False
        state = shoal.get(controller.state.remote())
        return state["completed"] > started_at and state["latest"] is not None \
            and _checkpoint_number(state["latest"]) >= started_at


def _checkpoint_number(path: str) -> int:
    return int(os.path.basename(path).split("_")[1])


def _root_cause(first: BaseException, refs: list) -> BaseException:
    """When one worker dies the others fail soon after in their collective
    calls ("rank 1 died", gloo's "connection closed"): report the dead
    worker if it shows up within a moment, else the first error."""
    from ..exceptions import ActorDiedError
    if isinstance(first, ActorDiedError):
        return first
    ready, _ = shoal.wait(refs, num_returns=len(refs), timeout=2.0)
    for ref in ready:
        try:
            shoal.get(ref)
        except ActorDiedError as e:
            return e
        except Exception:
            continue
    return first


def _one_line(e) -> str:
    if e is None:
        return "none"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"
