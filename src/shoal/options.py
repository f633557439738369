"""Validating the options of ``@remote`` and ``.options()``, with errors that
say which option was wrong and what is allowed."""
from __future__ import annotations

import numbers

_COMMON = {"num_cpus", "num_gpus", "memory", "resources", "name", "scheduling_strategy",
           "runtime_env", "accelerator_type", "label_selector", "_metadata",
           "placement_group", "placement_group_bundle_index",
           "placement_group_capture_child_tasks"}
TASK_OPTIONS = _COMMON | {"num_returns", "max_retries", "retry_exceptions",
                          "max_calls", "enable_task_events"}
ACTOR_OPTIONS = _COMMON | {"max_restarts", "max_task_retries", "max_concurrency", "namespace",
                           "lifetime", "get_if_exists", "max_pending_calls",
                           "concurrency_groups", "enable_task_events"}
METHOD_OPTIONS = {"num_returns", "max_task_retries", "retry_exceptions", "name",
                  "concurrency_group", "enable_task_events"}


def validate(options: dict, allowed: set, what: str) -> dict:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"invalid option(s) for {what}: {', '.join(unknown)}. "
                         f"Valid options are: {', '.join(sorted(allowed))}")
    for key in ("num_cpus", "num_gpus", "memory"):
        v = options.get(key)
        if v is not None and (not isinstance(v, numbers.Real) or isinstance(v, bool) or v < 0):
            raise ValueError(f"{key} must be a non-negative number, got {v!r}")
    gpus = options.get("num_gpus")
    if gpus is not None and gpus > 1 and gpus != int(gpus):
        raise ValueError(f"num_gpus above 1 must be a whole number, got {gpus!r}")
    res = options.get("resources")
    if res is not None:
        if not isinstance(res, dict):
            raise ValueError(f"resources must be a dict of name to amount, got {res!r}")
        for k, v in res.items():
            if k in ("CPU", "GPU"):
                raise ValueError(f"use num_cpus/num_gpus instead of resources={{{k!r}: ...}}")
            if not isinstance(k, str) or not isinstance(v, numbers.Real) or v < 0:
                raise ValueError(f"resources must map names to non-negative numbers, got "
                                 f"{k!r}: {v!r}")
    n = options.get("num_returns")
    if n is not None and n not in ("streaming", "dynamic") and (
            not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise ValueError(f"num_returns must be a non-negative int or 'streaming', got {n!r}")
    for key in ("max_retries", "max_restarts", "max_task_retries"):
        v = options.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < -1):
            raise ValueError(f"{key} must be an int >= -1 (-1 means forever), got {v!r}")
    mc = options.get("max_concurrency")
    if mc is not None and (not isinstance(mc, int) or isinstance(mc, bool) or mc < 1):
        raise ValueError(f"max_concurrency must be an int >= 1, got {mc!r}")
    lifetime = options.get("lifetime")
    if lifetime not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime must be 'detached' or 'non_detached', got {lifetime!r}")
    rex = options.get("retry_exceptions")
    if rex is not None and not isinstance(rex, bool):
        if not isinstance(rex, (list, tuple)) or not all(
                isinstance(c, type) and issubclass(c, BaseException) for c in rex):
            raise ValueError("retry_exceptions must be a bool or a list of exception classes, "
                             f"got {rex!r}")
    name = options.get("name")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"name must be a string, got {name!r}")
    if options.get("scheduling_strategy") is not None or options.get("placement_group") is not None:
        strategy_wire(options)
    if options.get("runtime_env") is not None:
        from .runtime_env import check
        check(options["runtime_env"], what)
    return options


def strategy_wire(options: dict):
    """The scheduling strategy of ``options`` as it travels (None: DEFAULT)."""
    from .util.scheduling_strategies import strategy_wire as wire
    return wire(options)


def resource_request(options: dict, default_cpus: float) -> dict:
    """The resources a task or actor asks for, as {name: amount}."""
    req = {}
    cpus = options.get("num_cpus")
    req["CPU"] = default_cpus if cpus is None else float(cpus)
    if options.get("num_gpus"):
        req["GPU"] = float(options["num_gpus"])
    if options.get("memory"):
        req["memory"] = float(options["memory"])
    for k, v in (options.get("resources") or {}).items():
        req[k] = float(v)
    return {k: v for k, v in req.items() if v > 0}
