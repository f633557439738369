"""What this machine offers a node: CPUs, GPUs, memory, object store size."""
from __future__ import annotations

import glob
import os

import psutil

from .. import config


def detect_gpus() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len(glob.glob("/proc/driver/nvidia/gpus/*"))


def machine_resources(num_cpus=None, num_gpus=None, resources=None,
                      object_store_memory=None) -> tuple[dict, int]:
    """({resource: amount}, object store bytes), defaults from the machine."""
    vm = psutil.virtual_memory()
    cpus = os.cpu_count() if num_cpus is None else num_cpus
    gpus = detect_gpus() if num_gpus is None else num_gpus
    store = object_store_memory or int(vm.total * config.get("object_store_fraction"))
    res = {"CPU": float(cpus), "GPU": float(gpus),
           "memory": float(max(0, vm.available - store) * 0.7)}
    res.update({k: float(v) for k, v in (resources or {}).items()})
    return res, store
