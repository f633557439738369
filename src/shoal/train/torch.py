"""``shoal.train.torch``: TorchTrainer and the helpers a torch loop calls
(Ray Train's ``ray.train.torch`` names).

Each worker gets torch.distributed's default process group ("gloo" on CPU,
"nccl" with ``use_gpu``): rank 0 opens a TCPStore on its node's address and
tells the others where through the workers' shoal collective group, so no
MASTER_ADDR/MASTER_PORT is needed. With a GPU each worker sees only the GPU
shoal assigned it (CUDA_VISIBLE_DEVICES), as device cuda:0.
"""
from __future__ import annotations

import datetime

import numpy as np

from .trainer import DataParallelTrainer

__all__ = ["TorchTrainer", "prepare_model", "prepare_data_loader", "get_device"]


class TorchTrainer(DataParallelTrainer):
    """DataParallelTrainer whose workers also share torch.distributed's
    default process group (DistributedDataParallel works as is)."""

    @property
    def _torch_backend(self) -> str:
        return "nccl" if self.scaling.use_gpu else "gloo"


def init_torch_process_group(info: dict, backend: str) -> None:
    import torch
    import torch.distributed as dist
    import shoal.collective as col
    from ..collective.api import _node_host
    import shoal
    from ..collective.torch_group import connect_store, open_store
    rank, world = info["rank"], info["world_size"]
    timeout = info["timeout_s"]
    address = np.zeros(64, np.uint8)
    store = None
    if rank == 0:
        host = _node_host(shoal.get_runtime_context().get_node_id())
        store = open_store(host, world, timeout)
        text = f"{host}|{store.port}".encode()
        address[:len(text)] = np.frombuffer(text, np.uint8)
    col.broadcast(address, 0, "default")
    if store is None:
        host, port = bytes(address).rstrip(b"\x00").decode().split("|")
        store = connect_store([{"store_address": (host, int(port))}], rank, world, timeout)
    if backend == "nccl":
        torch.cuda.set_device(0)
    dist.init_process_group(backend, store=dist.PrefixStore(f"shoal-train/{info['attempt']}",
                                                            store),
                            rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout))


def get_device():
    """The torch device this worker trains on (cuda:0 with a GPU, else cpu)."""
    import torch
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def prepare_model(model, move_to_device: bool = True, parallel_strategy: str | None = "ddp",
                  parallel_strategy_kwargs: dict | None = None):
    """Move ``model`` to this worker's device and wrap it in
    DistributedDataParallel when there is more than one worker."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    device = get_device()
    if move_to_device:
        model = model.to(device)
    if parallel_strategy not in (None, "ddp"):
        raise ValueError(f"parallel_strategy {parallel_strategy!r} is not supported "
                         f"(use 'ddp' or None)")
    if parallel_strategy == "ddp" and dist.is_initialized() and dist.get_world_size() > 1:
        kwargs = dict(parallel_strategy_kwargs or {})
        if device.type == "cuda":
            kwargs.setdefault("device_ids", [device.index])
        model = DistributedDataParallel(model, **kwargs)
    return model


def prepare_data_loader(data_loader, add_dist_sampler: bool = True,
                        move_to_device: bool = True):
    """Give each worker its own part of ``data_loader``'s data set (a
    DistributedSampler, reshuffled every epoch when the loader shuffled) and
    move its batches to this worker's device.

    With one worker a shuffling loader gets a one-replica DistributedSampler
    too (Ray leaves it alone): its order then depends on the epoch only, not
    on torch's global random state, so a run resumed from a checkpoint, or
    one that shrank to a single worker, shuffles as a run without failure."""
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
    loader = data_loader
    world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
    shuffle = isinstance(loader.sampler, RandomSampler)
    if add_dist_sampler and not isinstance(loader.sampler, DistributedSampler) \
            and (world > 1 or (shuffle and _plain_shuffle(loader.sampler))):
        sampler = DistributedSampler(loader.dataset, num_replicas=world, rank=rank,
                                     shuffle=shuffle)
        loader = DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                            num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                            pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                            timeout=loader.timeout, worker_init_fn=loader.worker_init_fn)
    device = get_device() if move_to_device else None
    return _Loader(loader, device)


def _plain_shuffle(sampler) -> bool:
    """A RandomSampler as ``shuffle=True`` makes it: without replacement, a
    sample count or a generator of the user's (those are left as they are)."""
    return (not sampler.replacement and getattr(sampler, "_num_samples", None) is None
            and getattr(sampler, "generator", None) is None)


class _Loader:
    """Iterates the wrapped loader, moving batches to the device and giving
    a sampler with ``set_epoch`` (a DistributedSampler) the epoch of each
    pass: 0, 1, 2... from the first, or from the epoch the loop set with
    ``loader.set_epoch(e)`` or ``loader.sampler.set_epoch(e)`` (Ray Train's
    idiom) for the next pass. A loop resumed from a checkpoint sets it so
    that each epoch is shuffled as in a run without failure."""

    def __init__(self, loader, device):
        self.loader, self.device, self.epoch = loader, device, 0
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            # the loop's own sampler.set_epoch(e) must also set the next
            # pass's epoch, else __iter__ would overwrite it with its count
            sampler_set_epoch = sampler.set_epoch

            def set_epoch(epoch: int) -> None:
                self.epoch = epoch
                sampler_set_epoch(epoch)
            sampler.set_epoch = set_epoch
            self._sampler_set_epoch = sampler_set_epoch
        else:
            self._sampler_set_epoch = None

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next pass (the ones after it count up from it)."""
        self.epoch = epoch

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        if name == "loader":           # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self):
        if self._sampler_set_epoch is not None:
            self._sampler_set_epoch(self.epoch)
        self.epoch += 1
        for batch in self.loader:
            yield _to(batch, self.device) if self.device is not None and \
                self.device.type != "cpu" else batch


def _to(batch, device):
    if hasattr(batch, "to"):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch
