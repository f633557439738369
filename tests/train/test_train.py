"""shoal.train end to end: the examples, worker failures and restarts,
elastic resizing, checkpoints kept, and bad input."""
from __future__ import annotations

import importlib.util
import os
import signal

import numpy as np
import pytest

import shoal
import shoal.collective as col
import shoal.train
from shoal.exceptions import ActorDiedError
from shoal.train import (Checkpoint, CheckpointConfig, DataParallelTrainer, FailureConfig,
                         RunConfig, ScalingConfig, TrainingFailedError)

from ..conftest import wait_for

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


def example(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trainer(loop, tmp_path, workers=2, max_failures=0, **kwargs):
    return DataParallelTrainer(
        loop, scaling_config=ScalingConfig(num_workers=workers),
        run_config=RunConfig(name="run", storage_path=str(tmp_path),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=kwargs.pop("checkpoint_config", None)),
        **kwargs)


def save_step(step: int, d: str) -> Checkpoint:
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "step"), "w") as f:
        f.write(str(step))
    return Checkpoint.from_directory(d)


def resume_step() -> int:
    ckpt = shoal.train.get_checkpoint()
    if ckpt is None:
        return 0
    with open(os.path.join(ckpt.path, "step")) as f:
        return int(f.read()) + 1


@shoal.remote(num_cpus=0)
class Box:
    """Where tests and workers meet: pids to kill, flags, and notes."""

    def __init__(self):
        self.pids, self.flags, self.noted = {}, set(), {}

    def put_pid(self, rank, attempt, pid):
        self.pids[(rank, attempt)] = pid

    def pid(self, rank, attempt):
        return self.pids.get((rank, attempt))

    def flag(self, name):
        self.flags.add(name)

    def has(self, name):
        return name in self.flags

    def note(self, key, value):
        self.noted[key] = value

    def notes(self):
        return self.noted


# ---------------------------------------------------------------- the examples
@pytest.mark.heavy
def test_ddp_on_two_workers_matches_one_worker(shoal_cluster, tmp_path):
    pytest.importorskip("torch")
    mlp = example("train_mlp")
    one = mlp.main(["--workers", "1", "--epochs", "5", "--samples", "2000",
                    "--storage", str(tmp_path / "one")])
    two = mlp.main(["--workers", "2", "--epochs", "5", "--samples", "2000",
                    "--storage", str(tmp_path / "two")])
    assert one > 0.9 and two > 0.9
    assert abs(one - two) < 0.05


@pytest.mark.heavy
def test_a_worker_sigkilled_mid_run_ends_with_the_model_of_a_run_without_failure(
        shoal_cluster, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    mlp = example("train_mlp")
    args = ["--workers", "2", "--epochs", "4", "--samples", "1000"]
    clean = mlp.main(args + ["--storage", str(tmp_path / "clean")])
    killed = mlp.main(args + ["--die-at-epoch", "2", "--max-failures", "1",
                              "--storage", str(tmp_path / "killed")])
    out = capsys.readouterr().out
    assert "failures=0" in out and "failures=1" in out and out.count("epochs=4") == 2
    finals = []
    for run in ("clean", "killed"):
        last = sorted(os.listdir(tmp_path / run / "mlp"))[-1]
        assert last == "checkpoint_000003"
        finals.append(torch.load(tmp_path / run / "mlp" / last / "state.pt")["model"])
    # resumed at epoch 2 with the model, the optimiser and the loader's epoch of
    # the checkpoint, the killed run trains on the same batches from the same state
    for name, weights in finals[0].items():
        assert torch.equal(weights, finals[1][name]), name
    assert killed == clean


def test_framework_free_allreduce_matches_one_worker(shoal_cluster):
    numpy_example = example("train_numpy")
    two = numpy_example.main(["--workers", "2", "--steps", "20", "--samples", "1000"])
    one = numpy_example.main(["--workers", "1", "--steps", "20", "--samples", "1000"])
    np.testing.assert_allclose(two["weights"], one["weights"], rtol=1e-9, atol=1e-12)


def test_mixture_of_experts_with_alltoall(shoal_cluster):
    moe = example("moe_alltoall")
    assert moe.main(["--experts", "3", "--tokens", "96"]) < 1e-4


# ---------------------------------------------------------------- context, data, reports
def test_every_rank_has_its_context_and_its_dataset_shard(shoal_cluster, tmp_path):
    box = Box.remote()

    def loop(config):
        ctx = shoal.train.get_context()
        shard = shoal.train.get_dataset_shard("train")
        total = col.allreduce(np.array([float(len(shard))]))
        shoal.get(box.note.remote(ctx.get_world_rank(), {
            "world": ctx.get_world_size(), "local": ctx.get_local_rank(),
            "local_world": ctx.get_local_world_size(), "node_rank": ctx.get_node_rank(),
            "rows": [int(x) for x in shard], "total": float(total[0])}))
        shoal.train.report({"lr": config["lr"]})

    result = trainer(loop, tmp_path, train_loop_config={"lr": 0.5},
                     datasets={"train": np.arange(11)}).fit()
    ranks = shoal.get(box.notes.remote())
    assert sorted(ranks) == [0, 1]
    for rank, r in ranks.items():       # one node: local ranks are the world ranks
        assert (r["world"], r["local"], r["local_world"], r["node_rank"]) == (2, rank, 2, 0)
        assert r["total"] == 11.0
    rows = [ranks[0]["rows"], ranks[1]["rows"]]
    assert rows[0] + rows[1] == list(range(11))          # contiguous, disjoint, all
    assert len(rows[0]) in (5, 6) and len(rows[1]) in (5, 6)
    assert result.metrics["lr"] == 0.5 and result.metrics["training_iteration"] == 1
    assert result.checkpoint is None and result.error is None and result.world_sizes == [2]


def test_prepared_data_loaders_share_out_each_epoch_and_follow_set_epoch(shoal_cluster, tmp_path):
    pytest.importorskip("torch")
    box = Box.remote()

    def loop():
        import torch
        from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
        from shoal.train.torch import prepare_data_loader
        data = TensorDataset(torch.arange(10))
        loader = prepare_data_loader(DataLoader(data, batch_size=3, shuffle=True))
        passes = [[int(i) for (b,) in loader for i in b] for _ in range(2)]   # epochs 0, 1
        loader.sampler.set_epoch(5)                                           # Ray's idiom
        passes += [[int(i) for (b,) in loader for i in b] for _ in range(2)]  # epochs 5, 6
        loader.set_epoch(0)
        passes.append([int(i) for (b,) in loader for i in b])                 # epoch 0 again
        rank = shoal.train.get_context().get_world_rank()
        shoal.get(box.note.remote(rank, {
            "passes": passes, "distributed": isinstance(loader.sampler, DistributedSampler)}))
        shoal.train.report({})

    from shoal.train.torch import TorchTrainer
    TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=2),
                 run_config=RunConfig(name="loader", storage_path=str(tmp_path))).fit()
    ranks = shoal.get(box.notes.remote())
    assert ranks[0]["distributed"] and ranks[1]["distributed"]
    for epoch, i in zip((0, 1, 5, 6, 0), range(5)):
        mine, theirs = ranks[0]["passes"][i], ranks[1]["passes"][i]
        assert not set(mine) & set(theirs) and sorted(mine + theirs) == list(range(10))
        assert (mine, theirs) == (sampler_order(0, epoch), sampler_order(1, epoch))
    assert ranks[0]["passes"][0] != ranks[0]["passes"][1]       # reshuffled each epoch


def sampler_order(rank: int, epoch: int) -> list:
    """The indices rank ``rank`` of 2 draws from 10 in ``epoch``, shuffled."""
    from torch.utils.data import DistributedSampler
    sampler = DistributedSampler(range(10), num_replicas=2, rank=rank, shuffle=True)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_a_loaders_epoch_counts_on_from_the_one_the_loop_set():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    from shoal.train.torch import prepare_data_loader
    data = TensorDataset(torch.arange(10))
    loader = prepare_data_loader(DataLoader(data, batch_size=4, sampler=DistributedSampler(
        data, num_replicas=2, rank=1, shuffle=True)))

    def one_pass():
        return [int(i) for (b,) in loader for i in b]

    assert [one_pass(), one_pass()] == [sampler_order(1, 0), sampler_order(1, 1)]
    loader.sampler.set_epoch(7)            # a resumed loop: the next pass is epoch 7
    assert [one_pass(), one_pass()] == [sampler_order(1, 7), sampler_order(1, 8)]
    loader.set_epoch(3)
    assert one_pass() == sampler_order(1, 3) and loader.epoch == 4
    assert isinstance(loader.sampler, DistributedSampler) and len(loader) == 2


def test_checkpoints_of_all_workers_merge_and_the_best_are_kept(shoal_cluster, tmp_path):
    scores = [0.5, 0.9, 0.1, 0.7, 0.3]

    def loop():
        rank = shoal.train.get_context().get_world_rank()
        for i, score in enumerate(scores):
            d = os.path.join(str(tmp_path), f"w{rank}-{i}")
            os.makedirs(d)
            with open(os.path.join(d, f"rank{rank}"), "w") as f:
                f.write(str(i))
            shoal.train.report({"score": score, "i": i}, checkpoint=Checkpoint.from_directory(d))

    result = trainer(loop, tmp_path, checkpoint_config=CheckpointConfig(
        num_to_keep=2, checkpoint_score_attribute="score")).fit()
    kept = sorted(n for n in os.listdir(tmp_path / "run") if n.startswith("checkpoint_"))
    assert kept == ["checkpoint_000001", "checkpoint_000003", "checkpoint_000004"]  # best 2 + latest
    assert result.checkpoint.path.endswith("checkpoint_000004")
    assert sorted(os.listdir(result.checkpoint.path)) == [".metrics.json", "rank0", "rank1"]
    assert [m["score"] for _, m in result.best_checkpoints][:2] == [0.9, 0.7]
    out = result.checkpoint.to_directory(str(tmp_path / "copy"))
    assert open(os.path.join(out, "rank1")).read() == "4"


def test_resume_from_checkpoint(shoal_cluster, tmp_path):
    d = tmp_path / "start"
    d.mkdir()
    save_step(6, str(d))

    def loop():
        start = resume_step()
        for step in range(start, 9):
            shoal.train.report({"step": step})

    result = trainer(loop, tmp_path, workers=1,
                     resume_from_checkpoint=Checkpoint.from_directory(str(d))).fit()
    assert [m["step"] for m in result.metrics_history] == [7, 8]


# ---------------------------------------------------------------- failures
def test_a_killed_worker_restarts_the_group_from_the_latest_checkpoint(shoal_cluster, tmp_path):
    box = Box.remote()

    def loop():
        ctx = shoal.train.get_context()
        shoal.get(box.put_pid.remote(ctx.get_world_rank(), ctx.get_attempt(), os.getpid()))
        for step in range(resume_step(), 8):
            x = col.allreduce(np.ones(2))
            ckpt = None
            if ctx.get_world_rank() == 0:
                ckpt = save_step(step, os.path.join(str(tmp_path), f"a{ctx.get_attempt()}-{step}"))
            shoal.train.report({"step": step, "sum": float(x[0]),
                                "attempt": ctx.get_attempt()}, checkpoint=ckpt)
            if step == 3 and ctx.get_attempt() == 0 and ctx.get_world_rank() == 1:
                shoal.get(box.flag.remote("at3"))
                wait_for(lambda: False, timeout=60, what="being killed")

    t = trainer(loop, tmp_path, max_failures=2)
    import threading
    killer_done = threading.Event()

    def killer():
        wait_for(lambda: shoal.get(box.has.remote("at3")), timeout=60, what="step 3")
        os.kill(shoal.get(box.pid.remote(1, 0)), signal.SIGKILL)
        killer_done.set()

    threading.Thread(target=killer, daemon=True).start()
    result = t.fit()
    assert killer_done.is_set()
    assert result.num_failures == 1 and result.world_sizes == [2, 2]
    steps = [m["step"] for m in result.metrics_history]
    assert steps == list(range(8))            # nothing repeated, nothing lost
    assert result.metrics["attempt"] == 1 and result.metrics["sum"] == 2.0


def test_out_of_failures_raises_with_the_dead_worker_and_the_result(shoal_cluster, tmp_path):
    def loop():
        ctx = shoal.train.get_context()
        d = os.path.join(str(tmp_path), f"c{ctx.get_world_rank()}")
        os.makedirs(d, exist_ok=True)
        shoal.train.report({"step": 0}, checkpoint=save_step(0, d))
        col.barrier()
        if ctx.get_world_rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        col.allreduce(np.ones(4))

    with pytest.raises(TrainingFailedError) as info:
        trainer(loop, tmp_path).fit()
    result = info.value.result
    assert isinstance(result.error, ActorDiedError), result.error
    assert result.checkpoint is not None and result.checkpoint.path.endswith("checkpoint_000000")
    assert "max_failures=0" in str(info.value)


def test_an_exception_in_the_loop_is_retried_then_raised(shoal_cluster, tmp_path):
    def loop():
        if shoal.train.get_context().get_world_rank() == 0:
            raise ValueError("bad batch 17")
        col.barrier()

    with pytest.raises(TrainingFailedError, match="bad batch 17") as info:
        trainer(loop, tmp_path, max_failures=1).fit()
    assert info.value.result.num_failures == 2
    assert isinstance(info.value.result.error, ValueError)


# ---------------------------------------------------------------- elastic
@shoal.remote(num_cpus=1)
class Hog:
    def ready(self):
        return True


def elastic_loop(box, tmp):
    """30 steps; with one worker it stops at step 5 until the trainer
    replaces it with a bigger group (or the test times out)."""
    def loop():
        ctx = shoal.train.get_context()
        for step in range(resume_step(), 30):
            x = col.allreduce(np.ones(1))
            d = os.path.join(tmp, f"{ctx.get_attempt()}-{step}")
            shoal.train.report({"step": step, "world": ctx.get_world_size(), "sum": float(x[0])},
                               checkpoint=save_step(step, d) if ctx.get_world_rank() == 0 else None)
            if step == 5 and ctx.get_world_size() == 1:
                shoal.get(box.flag.remote("step5-world1"))
                wait_for(lambda: False, timeout=60, what="a bigger group to replace this one")
    return loop


@pytest.mark.heavy
def test_elastic_starts_small_and_grows_when_resources_return(shoal_cluster, tmp_path):
    hog = Hog.remote()
    shoal.get(hog.ready.remote())            # 1 of the 2 CPUs is taken
    box = Box.remote()
    import threading

    def release():
        wait_for(lambda: shoal.get(box.has.remote("step5-world1")), timeout=60, what="step 5")
        shoal.kill(hog)

    threading.Thread(target=release, daemon=True).start()
    result = DataParallelTrainer(
        elastic_loop(box, str(tmp_path)), scaling_config=ScalingConfig(num_workers=(1, 2)),
        run_config=RunConfig(name="el", storage_path=str(tmp_path))).fit()
    assert result.world_sizes == [1, 2] and result.num_failures == 0
    worlds = [m["world"] for m in result.metrics_history]
    assert worlds[0] == 1 and worlds[-1] == 2
    assert [m["step"] for m in result.metrics_history] == list(range(30))
    assert result.metrics["sum"] == 2.0


def test_an_elastic_group_that_cannot_be_placed_gives_way_to_a_smaller_one(
        shoal_cluster, tmp_path, monkeypatch):
    from shoal.train import trainer as trainer_module
    hog = Hog.remote()
    shoal.get(hog.ready.remote())            # 1 of the 2 CPUs is taken
    monkeypatch.setattr(trainer_module, "PLACE_S", 1.0)
    t = DataParallelTrainer(lambda: shoal.train.report(
                                {"world": shoal.train.get_context().get_world_size()}),
                            scaling_config=ScalingConfig(num_workers=(1, 2)),
                            run_config=RunConfig(name="stale", storage_path=str(tmp_path)))
    counted = []
    real_fits = t._fits

    def stale_view(held=None):                # the first count sees both CPUs free
        counted.append(held)
        return 2 if len(counted) == 1 else real_fits(held)

    t._fits = stale_view
    result = t.fit()
    assert result.world_sizes == [1] and result.metrics["world"] == 1
    assert len(counted) >= 2                  # counted again after the 2 were not placed


@pytest.mark.heavy
def test_elastic_goes_on_with_fewer_workers_when_one_is_lost(shoal_cluster, tmp_path):
    box = Box.remote()
    tmp = str(tmp_path)

    def loop():
        ctx = shoal.train.get_context()
        for step in range(resume_step(), 12):
            x = col.allreduce(np.ones(1))
            d = os.path.join(tmp, f"{ctx.get_attempt()}-{step}")
            shoal.train.report({"step": step, "world": ctx.get_world_size(), "sum": float(x[0])},
                               checkpoint=save_step(step, d) if ctx.get_world_rank() == 0 else None)
            if step == 4 and ctx.get_attempt() == 0 and ctx.get_world_rank() == 1:
                shoal.get(box.put_pid.remote(1, 0, os.getpid()))
                wait_for(lambda: False, timeout=60, what="being killed")

    import threading

    def lose_a_worker():
        pid = wait_for(lambda: shoal.get(box.pid.remote(1, 0)), timeout=60, what="step 4")
        hog = Hog.remote()                 # waits for a CPU, and takes the first one freed
        os.kill(pid, signal.SIGKILL)
        box.flag.remote(hog)

    threading.Thread(target=lose_a_worker, daemon=True).start()
    result = DataParallelTrainer(
        loop, scaling_config=ScalingConfig(num_workers=(1, 2)),
        run_config=RunConfig(name="shrink", storage_path=tmp,
                             failure_config=FailureConfig(max_failures=1))).fit()
    assert result.world_sizes == [2, 1] and result.num_failures == 1
    assert [m["step"] for m in result.metrics_history] == list(range(12))
    assert [m["world"] for m in result.metrics_history][-1] == 1
    assert result.metrics["sum"] == 1.0


# ---------------------------------------------------------------- bad input
def test_bad_configs_are_refused_with_the_reason():
    for bad, match in [(0, "positive"), ((3, 1), "min <= max"), ((0, 2), "min <= max"),
                       ("2", "positive")]:
        with pytest.raises(ValueError, match=match):
            ScalingConfig(num_workers=bad)
    with pytest.raises(ValueError, match="non-negative"):
        ScalingConfig(resources_per_worker={"CPU": -1})
    with pytest.raises(ValueError, match="max_failures"):
        FailureConfig(max_failures=-2)
    with pytest.raises(ValueError, match="num_to_keep"):
        CheckpointConfig(num_to_keep=0)
    with pytest.raises(TypeError, match="callable"):
        DataParallelTrainer("not a function")
    with pytest.raises(ValueError, match="not a directory"):
        Checkpoint.from_directory("/nonexistent/dir")
    with pytest.raises(RuntimeError, match="only work inside"):
        shoal.train.report({"x": 1})
    with pytest.raises(RuntimeError, match="only work inside"):
        shoal.train.get_context()


def test_bad_calls_inside_the_loop_fail_the_run_clearly(shoal_cluster, tmp_path):
    def loop():
        shoal.train.report("accuracy 0.9")

    with pytest.raises(TrainingFailedError, match="takes a dict"):
        trainer(loop, tmp_path, workers=1).fit()

    def loop2():
        shoal.train.get_dataset_shard("valid")

    with pytest.raises(TrainingFailedError, match="no dataset 'valid'"):
        trainer(loop2, tmp_path, workers=1, datasets={"train": [1, 2]}).fit()


def test_nothing_is_left_after_fit(shoal_cluster, tmp_path):
    def loop():
        col.barrier()
        shoal.train.report({"ok": 1})

    trainer(loop, tmp_path).fit()
    wait_for(lambda: not _named_actors_left(), timeout=20, what="rendezvous actors to exit")
    wait_for(lambda: shoal.available_resources().get("CPU") == 2.0, timeout=20,
             what="the workers' CPUs to come back")


def _named_actors_left() -> bool:
    try:
        shoal.get_actor("shoal.collective:default")
        return True
    except ValueError:
        return False


def test_one_workers_shuffle_depends_on_the_epoch_not_on_torchs_random_state():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler
    from torch.utils.data import TensorDataset
    from shoal.train.torch import prepare_data_loader
    data = TensorDataset(torch.arange(10))
    loader = prepare_data_loader(DataLoader(data, batch_size=4, shuffle=True))

    def one_pass(seed):
        torch.manual_seed(seed)            # what a resumed process's global state may be
        return [int(i) for (b,) in loader for i in b]

    def order(epoch):
        sampler = DistributedSampler(range(10), num_replicas=1, rank=0, shuffle=True)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert isinstance(loader.sampler, DistributedSampler) and len(loader) == 3
    first = [one_pass(1), one_pass(2)]
    assert first == [order(0), order(1)] and first[0] != first[1]
    assert sorted(first[0]) == list(range(10))
    loader.set_epoch(1)                    # a loop resumed at epoch 1, another seed
    assert one_pass(99) == first[1]

    # a loader that does not shuffle, or shuffles with its own generator, is left alone
    plain = prepare_data_loader(DataLoader(data, batch_size=4))
    assert isinstance(plain.sampler, SequentialSampler)
    own = prepare_data_loader(DataLoader(data, batch_size=4, shuffle=True,
                                         generator=torch.Generator().manual_seed(3)))
    assert isinstance(own.sampler, RandomSampler)
    kept = prepare_data_loader(DataLoader(data, batch_size=4, shuffle=True),
                               add_dist_sampler=False)
    assert isinstance(kept.sampler, RandomSampler)
