"""Utilities Ray programs use beside the core API (``ray.util``).

Submodules load on first use so that ``import shoal`` stays fast:
``shoal.util.ActorPool``, ``shoal.util.queue``, ``shoal.util.multiprocessing``,
``shoal.util.joblib``, placement groups and scheduling strategies.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "ActorPool": ("actor_pool", "ActorPool"),
}

_SUBMODULES = {"queue", "multiprocessing", "joblib", "state", "metrics", "doctor", "timeline",
               "tqdm"}

# imported eagerly: the function ``placement_group`` must win over the
# submodule of the same name (importing a submodule sets the parent's attribute)
from . import scheduling_strategies  # noqa: E402
from .placement_group import (PlacementGroup, get_current_placement_group,  # noqa: E402
                              get_placement_group, placement_group, placement_group_table,
                              remove_placement_group)

__all__ = sorted(_LAZY) + ["PlacementGroup", "get_current_placement_group",
                           "get_placement_group", "placement_group", "placement_group_table",
                           "remove_placement_group", "scheduling_strategies"]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'shoal.util' has no attribute {name!r}")
