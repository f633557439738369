"""The trainer's controller actor: collects every worker's reports, writes
checkpoints into storage, decides which round is complete and which
checkpoints to keep. It lives on the driver's node (it asks for no CPU), so
storage_path is a directory of the driver's machine."""
from __future__ import annotations

import json
import os
import shutil

from .checkpoint import unpack


class Controller:
    def __init__(self, storage: str, num_to_keep, score_attribute, score_order: str):
        self.storage = storage
        self.num_to_keep, self.score_attribute, self.score_order = (
            num_to_keep, score_attribute, score_order)
        self.completed = 0              # complete rounds over all attempts
        self.attempt = -1
        self.world = 0
        self.base = 0
        self.rounds: dict[int, dict] = {}
        self.history: list[dict] = []
        self.checkpoints: list[tuple[int, str, dict]] = []    # (number, path, metrics)
        self.latest: str | None = None
        self.metrics: dict = {}

    def begin(self, attempt: int, world: int) -> int:
        """A new worker group starts; drop rounds the last one left half done."""
        self.attempt, self.world, self.base, self.rounds = attempt, world, self.completed, {}
        for name in os.listdir(self.storage):
            if name.startswith("checkpoint_"):
                number = int(name.split("_")[1])
                if number >= self.base:
                    shutil.rmtree(os.path.join(self.storage, name), ignore_errors=True)
        return self.completed

    def report(self, attempt: int, rank: int, index: int, metrics: dict, data) -> bool:
        if attempt != self.attempt:
            return False                 # a worker of a group already stopped
        number = self.base + index
        path = os.path.join(self.storage, f"checkpoint_{number:06d}")
        if data is not None:
            unpack(data, path)
        round_ = self.rounds.setdefault(index, {"ranks": set(), "metrics": {}, "ckpt": False})
        round_["ranks"].add(rank)
        round_["metrics"][rank] = metrics
        round_["ckpt"] |= data is not None
        if len(round_["ranks"]) == self.world:
            self._complete(number, self.rounds.pop(index), path)
        return True

    def _complete(self, number: int, round_: dict, path: str) -> None:
        self.completed = number + 1
        self.metrics = dict(round_["metrics"].get(0) or next(iter(round_["metrics"].values())))
        self.metrics["training_iteration"] = self.completed
        self.history.append(self.metrics)
        if round_["ckpt"]:
            with open(os.path.join(path, ".metrics.json"), "w") as f:
                json.dump(self.metrics, f, default=str)
            self.checkpoints.append((number, path, self.metrics))
            self.latest = path
            self._retain()

    def _retain(self) -> None:
        if self.num_to_keep is None or len(self.checkpoints) <= self.num_to_keep:
            return
        kept = set(p for _, p, _ in self._best()[:self.num_to_keep]) | {self.latest}
        for _, p, _ in self.checkpoints:
            if p not in kept:
                shutil.rmtree(p, ignore_errors=True)
        self.checkpoints = [c for c in self.checkpoints if c[1] in kept]

    def _best(self) -> list:
        attr = self.score_attribute
        if attr is None:
            return sorted(self.checkpoints, key=lambda c: -c[0])
        sign = -1 if self.score_order == "max" else 1

        def key(c):
            v = c[2].get(attr)
            return (v is None, sign * v if isinstance(v, (int, float)) else 0, -c[0])
        return sorted(self.checkpoints, key=key)

    def state(self) -> dict:
        return {"completed": self.completed, "metrics": self.metrics, "history": self.history,
                "latest": self.latest,
                "best": [(p, m) for _, p, m in self._best()]}
