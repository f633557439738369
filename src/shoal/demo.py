"""``shoal demo``: a short tour on the embedded cluster.

1. A parallel Monte Carlo estimate of pi (tasks, numpy, one progress bar
   that all the tasks advance: shoal.util.tqdm).
2. A parameter sweep on actors (stateful workers, calls in flight at once,
   their progress in one bar).
3. Zero-copy objects: one large array read by several tasks.
"""
from __future__ import annotations

import time

import numpy as np

import shoal
from shoal.util.tqdm import tqdm


STEPS = 10      # each task advances the shared bar this many times


@shoal.remote
def sample_pi(n: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in tqdm(range(STEPS), desc="sampling"):      # one bar for all 40 tasks
        xy = rng.random((n // STEPS, 2))
        hits += int(((xy ** 2).sum(axis=1) <= 1.0).sum())
    return hits


@shoal.remote
class Trainer:
    """A toy model: fits y = 3x + 2 by gradient descent at a given learning rate."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.x = rng.random(2000)
        self.y = 3 * self.x + 2 + rng.normal(0, 0.05, 2000)

    def fit(self, lr: float, steps: int = 3000) -> tuple[float, float]:
        w = b = 0.0
        for _ in tqdm(range(steps // 100), desc="training"):
            for _ in range(100):
                err = w * self.x + b - self.y
                w -= lr * float((err * self.x).mean())
                b -= lr * float(err.mean())
        loss = float(((w * self.x + b - self.y) ** 2).mean())
        return lr, loss


@shoal.remote
def column_mean(data: np.ndarray, col: int) -> float:
    return float(data[:, col].mean())


def run_demo(num_cpus: int | None = None, samples: int = 20_000_000) -> int:
    t0 = time.perf_counter()
    shoal.init(num_cpus=num_cpus)
    cpus = int(shoal.cluster_resources()["CPU"])
    print(f"shoal {shoal.__version__}: local cluster with {cpus} CPUs "
          f"started in {time.perf_counter() - t0:.2f} s\n")

    print("1. Monte Carlo estimate of pi")
    chunks = 40
    per = samples // chunks
    t = time.perf_counter()
    per -= per % STEPS
    hits = shoal.get([sample_pi.remote(per, seed) for seed in range(chunks)])
    pi = 4 * sum(hits) / (per * chunks)
    print(f"  pi ~ {pi:.5f} from {per * chunks:,} samples in {time.perf_counter() - t:.2f} s\n")

    print("2. Learning-rate sweep on actors")
    trainers = [Trainer.remote(seed) for seed in range(cpus)]
    rates = [0.003, 0.01, 0.03, 0.1, 0.3, 0.6, 1.0, 1.5]
    t = time.perf_counter()
    refs = [trainers[i % cpus].fit.remote(lr) for i, lr in enumerate(rates)]
    results = shoal.get(refs)
    best_lr, best_loss = min(results, key=lambda r: r[1])
    for lr, loss in results:
        mark = "  <- best" if lr == best_lr else ""
        print(f"  lr={lr:<6} loss={loss:.3g}{mark}")
    print(f"  {len(rates)} fits on {cpus} actors in {time.perf_counter() - t:.2f} s\n")

    print("3. One large array, read by many tasks without copies")
    data = np.random.default_rng(0).random((2_000_000, 8))
    t = time.perf_counter()
    ref = shoal.put(data)
    means = shoal.get([column_mean.remote(ref, c) for c in range(8)])
    print(f"  {data.nbytes / 1e6:.0f} MB stored once; 8 tasks read it in "
          f"{time.perf_counter() - t:.2f} s; column means ~ {np.mean(means):.4f}\n")

    shoal.shutdown()
    print(f"Done in {time.perf_counter() - t0:.2f} s. Next: README.md for the API, "
          "docs/design.md for how it works.")
    return 0
