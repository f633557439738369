"""Data-parallel training without a framework: numpy gradients averaged with
``shoal.collective.allreduce``.

    python examples/train_numpy.py --workers 2

Logistic regression by full-batch gradient descent. Each worker gets its
shard of the data set (``get_dataset_shard``), computes the gradient on it,
and the workers average their gradients with one allreduce per step (the
trainer set up the collective group "default"). Since every worker applies
the same averaged gradient, all end with the same weights, equal to what one
worker on all the data computes.
"""
from __future__ import annotations

import argparse

import numpy as np

import shoal
import shoal.collective as col
import shoal.train
from shoal.train import DataParallelTrainer, ScalingConfig

FEATURES = 16


def make_data(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (n, FEATURES))
    true_w = rng.normal(0, 1, FEATURES)
    y = (x @ true_w + rng.normal(0, 0.5, n) > 0).astype(np.float64)
    return np.hstack([x, y[:, None]])


def train_loop(config: dict) -> None:
    data = shoal.train.get_dataset_shard("train")
    x, y = data[:, :FEATURES], data[:, FEATURES]
    ctx = shoal.train.get_context()
    total = config["samples"]
    w = np.zeros(FEATURES)
    for step in range(config["steps"]):
        p = 1 / (1 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) / total          # this shard's share of the full gradient
        col.allreduce(grad)                   # sum of the shares: the full gradient
        w -= config["lr"] * grad
        if step % 10 == 9 or step == config["steps"] - 1:
            loss = -np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))
            acc = float(np.mean((p > 0.5) == y))
            shoal.train.report({"step": step, "shard_loss": float(loss), "shard_accuracy": acc,
                                "weights": w.tolist(), "rank": ctx.get_world_rank()})


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args(argv)
    trainer = DataParallelTrainer(
        train_loop, train_loop_config={"samples": args.samples, "steps": args.steps, "lr": 2.0},
        scaling_config=ScalingConfig(num_workers=args.workers),
        datasets={"train": make_data(args.samples)})
    result = trainer.fit()
    m = result.metrics
    print(f"workers={args.workers} step={m['step']} rank0 shard accuracy="
          f"{m['shard_accuracy']:.3f}")
    return m


if __name__ == "__main__":
    shoal.init(num_cpus=2)
    try:
        main()
    finally:
        shoal.shutdown()
