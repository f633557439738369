"""Data-parallel training of a small MLP with shoal.train's TorchTrainer.

    python examples/train_mlp.py --workers 2 --epochs 8

A synthetic classification set (two interleaved spirals, fixed seed); each
worker trains on its half through DistributedDataParallel, reports the
validation accuracy every epoch with a checkpoint, and resumes from the
latest checkpoint after a failure (``--max-failures``): the model, the
optimiser and the data loader's epoch (its shuffle), so that the run ends
with the same model as one without failure. Prints the final accuracy; the
same number of epochs on 1 worker reaches the same accuracy.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import shoal
import shoal.train
from shoal.train import Checkpoint, FailureConfig, RunConfig, ScalingConfig
from shoal.train.torch import TorchTrainer, prepare_data_loader, prepare_model


def spirals(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0.05, 1, n)) * 3 * np.pi
    label = rng.integers(0, 2, n)
    sign = np.where(label == 1, -1.0, 1.0)
    x = np.stack([sign * t * np.cos(t), sign * t * np.sin(t)], 1) / 10
    x += rng.normal(0, 0.02, x.shape)
    return x.astype(np.float32), label.astype(np.int64)


def train_loop(config: dict) -> None:
    torch.manual_seed(0)
    x, y = spirals(config["samples"], seed=1)
    vx, vy = spirals(1000, seed=2)
    data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    loader = prepare_data_loader(DataLoader(data, batch_size=config["batch_size"], shuffle=True))
    model = prepare_model(nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64),
                                        nn.ReLU(), nn.Linear(64, 2)))
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    start = 0
    checkpoint = shoal.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"))
        _unwrap(model).load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["epoch"] + 1
        loader.set_epoch(start)     # shuffled as epoch `start` of a run without failure
    ctx = shoal.train.get_context()
    for epoch in range(start, config["epochs"]):
        if config.get("die_at_epoch") == epoch and ctx.get_attempt() == 0 \
                and ctx.get_world_rank() == ctx.get_world_size() - 1:
            os.kill(os.getpid(), 9)               # a worker lost mid-run
        model.train()
        for bx, by in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(bx), by).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(torch.from_numpy(vx)).argmax(1).numpy() == vy).mean()
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if ctx.get_world_rank() == 0:
                torch.save({"model": _unwrap(model).state_dict(), "opt": opt.state_dict(),
                            "epoch": epoch}, os.path.join(d, "state.pt"))
                ckpt = Checkpoint.from_directory(d)
            shoal.train.report({"epoch": epoch, "accuracy": float(acc)}, checkpoint=ckpt)


def _unwrap(model):
    return getattr(model, "module", model)


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--max-failures", type=int, default=0)
    p.add_argument("--die-at-epoch", type=int, default=None)
    p.add_argument("--storage", default=None)
    args = p.parse_args(argv)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"samples": args.samples, "epochs": args.epochs, "lr": 0.01,
                           "batch_size": 64 // args.workers, "die_at_epoch": args.die_at_epoch},
        scaling_config=ScalingConfig(num_workers=args.workers),
        run_config=RunConfig(name="mlp", storage_path=args.storage or tempfile.mkdtemp(),
                             failure_config=FailureConfig(max_failures=args.max_failures)))
    result = trainer.fit()
    print(f"workers={args.workers} epochs={result.metrics['epoch'] + 1} "
          f"accuracy={result.metrics['accuracy']:.3f} failures={result.num_failures} "
          f"checkpoint={result.checkpoint.path}")
    return result.metrics["accuracy"]


if __name__ == "__main__":
    shoal.init(num_cpus=2)
    try:
        main()
    finally:
        shoal.shutdown()
