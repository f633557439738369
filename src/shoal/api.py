"""The public functions: init, shutdown, get, put, wait, cancel, kill, ...

Thin: each checks its arguments, says clearly what was wrong, and hands the
work to this process's core (core/).
"""
from __future__ import annotations

import atexit
import os
import sys
import warnings

from . import config


from . import core as _core_mod
from .actor import ActorClass, ActorHandle
from .core import current_core, get_core
from .object_ref import ObjectRef, ObjectRefGenerator
from .remote_function import RemoteFunction
from .scheduler.task import object_id_for

_IGNORED_INIT_OPTIONS = {"include_dashboard", "dashboard_host", "dashboard_port",
                         "logging_level", "logging_format", "configure_logging",
                         "_system_config", "_temp_dir", "runtime_env", "job_config",
                         "log_to_driver", "_metrics_export_port", "local_mode"}


class InitInfo(dict):
    """What ``init`` returns (Ray returns a context with these fields)."""

    @property
    def address_info(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutdown()


def init(address: str | None = None, *, num_cpus: int | None = None,
         num_gpus: int | None = None, resources: dict | None = None,
         object_store_memory: int | None = None, namespace: str | None = None,
         ignore_reinit_error: bool = False, log_to_driver: bool = True,
         _as_tool: bool = False, **kwargs) -> InitInfo:
    """Start shoal on this machine (no address), as Ray's ``init`` does.
    ``_as_tool`` (internal: the dashboard, the CLI, the state API used
    without ``init``) connects to a running cluster as an observer that
    the state API does not list as a job or a worker."""
    unknown = set(kwargs) - _IGNORED_INIT_OPTIONS
    if unknown:
        raise TypeError(f"init() got unexpected option(s): {', '.join(sorted(unknown))}")
    from .runtime_env import check, job_env_vars
    runtime_env = check(kwargs.get("runtime_env"), "shoal.init()")
    # a cluster job's env_vars (shoal job submit --runtime-env-json), under init's own
    env_vars = {**job_env_vars(), **(runtime_env.get("env_vars") or {})}
    # a cluster job ships its working directory like runtime_env's working_dir
    working_dir = runtime_env.get("working_dir") or os.environ.get("SHOAL_JOB_WORKING_DIR")
    if address is None:
        address = os.environ.get("SHOAL_ADDRESS") or None    # set for cluster jobs
    with _core_mod._init_lock:
        existing = current_core()
        if existing is not None:
            if not existing.is_driver or ignore_reinit_error:
                return _info(existing)
            raise RuntimeError("shoal.init() was already called in this process. Call "
                               "shoal.shutdown() first, or pass ignore_reinit_error=True.")
        if address not in (None, "local"):
            if any(v is not None for v in (num_cpus, num_gpus, resources, object_store_memory)):
                raise ValueError("num_cpus, num_gpus, resources and object_store_memory "
                                 "describe a new local cluster; a driver connecting to a "
                                 "running one (address=...) cannot set them")
            from .core.client import connect
            core = connect(address, namespace, "tool" if _as_tool else "driver")
            _core_mod.set_core(core)
            atexit.register(shutdown)
            _use_runtime_env(core, working_dir, env_vars)
            return _info(core, address)
        for key, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus),
                       ("object_store_memory", object_store_memory)):
            if v is not None and (not isinstance(v, (int, float)) or v < 0):
                raise ValueError(f"{key} must be a non-negative number, got {v!r}")
        if resources is not None:
            if not isinstance(resources, dict) or any(k in ("CPU", "GPU") for k in resources):
                raise ValueError("resources must be a dict of custom resource names to amounts "
                                 "(use num_cpus/num_gpus for CPU and GPU)")
        from .core.driver import DriverCore
        from .node.machine import machine_resources
        from .node.node import Node
        res, store = machine_resources(num_cpus, num_gpus, resources, object_store_memory)
        ns = namespace or "anonymous-" + os.urandom(4).hex()
        node = Node(res, store, log_to_driver, ns, os.urandom(4), os.urandom(16))
        core = DriverCore(node, ns)
        _core_mod.set_core(core)
        atexit.register(shutdown)
        _open_doors(core, kwargs)
        _use_runtime_env(core, working_dir, env_vars)
        return _info(core)


def _open_doors(core, kwargs: dict) -> None:
    """The local cluster's driver socket and dashboard (cluster/local.py)."""
    if not config.get("local_driver_socket"):
        return
    dashboard = kwargs.get("include_dashboard")
    if dashboard is None:
        dashboard = config.get("include_dashboard")
    from .cluster.local import LocalDoors
    try:
        core.doors = LocalDoors(core.node, bool(dashboard),
                                kwargs.get("dashboard_host") or "127.0.0.1",
                                int(kwargs.get("dashboard_port") or 8265))
    except OSError as e:              # a read-only state directory: the cluster still works
        warnings.warn(f"shoal: other processes cannot reach this local cluster ({e})",
                      stacklevel=3)
        return
    if core.doors.url:
        print(f"shoal: dashboard at {core.doors.login_url} (the link logs you in once)",
              file=sys.stderr, flush=True)


def _use_runtime_env(core, working_dir: str | None, env_vars: dict | None) -> None:
    """The job's runtime_env, which its tasks and actors inherit (runtime_env.py)."""
    core.env = dict(env_vars) if env_vars else None
    if working_dir:
        try:
            core.use_working_dir(working_dir)
        except BaseException:
            shutdown()
            raise


def _info(core, address: str = "local") -> InitInfo:
    doors = getattr(core, "doors", None)
    return InitInfo(node_id=core.node_id.hex(), job_id=core.job_id.hex(),
                    namespace=core.namespace, address=address,
                    dashboard_url=doors.url if doors is not None else None)


def shutdown() -> None:
    """Stop the local cluster: every worker exits and the object store is freed."""
    with _core_mod._init_lock:
        core = current_core()
        if core is None or not core.is_driver:
            return
        _core_mod.set_core(None)
        core.shutdown()
        from .node import progress
        if progress._progress is not None:     # progress bars say their last
            progress._progress.finish()


def is_initialized() -> bool:
    core = current_core()
    return core is not None


def put(value, **_ignored) -> ObjectRef:
    """Store ``value`` once; returns its ref. Large arrays go to shared memory."""
    if isinstance(value, ObjectRef):
        raise TypeError("shoal.put() of an ObjectRef is not allowed; pass the ref itself")
    return get_core().put(value)


def get(refs, *, timeout: float | None = None):
    """The value(s) of ``refs`` (one ref or a list), waiting up to ``timeout`` s."""
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"timeout must be a non-negative number or None, got {timeout!r}")
    core = get_core()
    if isinstance(refs, ObjectRef):
        return core.get([refs], timeout)[0]
    if isinstance(refs, (list, tuple)):
        for r in refs:
            if not isinstance(r, ObjectRef):
                raise TypeError(f"shoal.get() takes ObjectRefs; the list holds a "
                                f"{type(r).__name__}: {r!r}")
        if not refs:
            return []
        return core.get(list(refs), timeout)
    if isinstance(refs, ObjectRefGenerator):
        raise TypeError("shoal.get() cannot take a generator; iterate it to get ObjectRefs")
    raise TypeError(f"shoal.get() takes an ObjectRef or a list of ObjectRefs, got "
                    f"{type(refs).__name__}: {refs!r}")


def wait(refs: list, *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True):
    """Split ``refs`` into (ready, not ready) once ``num_returns`` are ready or
    ``timeout`` passes. Order within each list follows ``refs``."""
    if isinstance(refs, ObjectRef) or not isinstance(refs, (list, tuple)):
        raise TypeError(f"shoal.wait() takes a list of ObjectRefs, got {type(refs).__name__}")
    for r in refs:
        if not isinstance(r, ObjectRef):
            raise TypeError(f"shoal.wait() takes ObjectRefs; the list holds a "
                            f"{type(r).__name__}: {r!r}")
    if len(set(r.id for r in refs)) != len(refs):
        raise ValueError("shoal.wait() got the same ObjectRef twice in its list")
    if not isinstance(num_returns, int) or num_returns < 0 or num_returns > len(refs):
        raise ValueError(f"num_returns must be between 0 and len(refs)={len(refs)}, "
                         f"got {num_returns!r}")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be non-negative or None, got {timeout!r}")
    if not refs:
        return [], []
    ready_ids = get_core().wait([r.id for r in refs], num_returns, timeout)
    ready_set = set(ready_ids)
    ready, rest = [], []
    for r in refs:
        (ready if r.id in ready_set and len(ready) < max(num_returns, 1) else rest).append(r)
    return ready, rest


def cancel(ref, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that makes ``ref``: dropped if queued, interrupted
    (TaskCancelledError) if running, its process killed with ``force=True``."""
    if isinstance(ref, ObjectRefGenerator):
        ref = ref.completed()
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"shoal.cancel() takes an ObjectRef, got {type(ref).__name__}")
    get_core().request("cancel", ref.id[:12], force, recursive)


def kill(actor, *, no_restart: bool = True) -> None:
    """Kill an actor's process now. With ``no_restart=False`` it restarts if
    its max_restarts allows."""
    if not isinstance(actor, ActorHandle):
        raise ValueError(f"shoal.kill() takes an actor handle, got {type(actor).__name__}")
    get_core().request("kill_actor", actor._actor_id, no_restart)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the live actor called ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError("get_actor() needs the actor's name")
    core = get_core()
    actor_id, meta, lease = core.request("get_actor", name, namespace or core.namespace)
    # an actor on another node comes with a ref the node counted for us (a lease)
    return ActorHandle(actor_id, meta, lease or ObjectRef(object_id_for(actor_id, 1)))


def cluster_resources() -> dict:
    return get_core().request("resources", "total")


def available_resources() -> dict:
    return get_core().request("resources", "available")


def nodes() -> list:
    return get_core().request("nodes")


def internal_memory_summary(stats_only: bool = False) -> str:
    """A table of every object: size, where it lives (shared memory, spilled,
    inline), refs held by the driver and by each worker, the node's pins,
    live zero-copy views; with the store's totals. For finding leaks."""
    from .util.state import memory_summary
    return memory_summary(stats_only)


def timeline(filename: str | None = None):
    """Every task's run as Chrome trace events (one track per worker, one
    process per node); with ``filename``, written there as JSON for
    Perfetto or chrome://tracing."""
    from .util.timeline import timeline as _timeline
    return _timeline(filename)


def get_gpu_ids() -> list:
    """The GPU ids assigned to the current task or actor (what
    CUDA_VISIBLE_DEVICES was set from)."""
    core = get_core()
    assigned = core.context.assigned
    return list(assigned[1]) if assigned else []


def remote(*args, **options):
    """``@remote`` or ``@remote(num_cpus=..., ...)`` on a function or class."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("@remote takes either a function/class or keyword options only, "
                        f"got positional arguments {args!r}")

    def decorate(target):
        return _make_remote(target, options)
    return decorate


def _make_remote(target, options: dict):
    import inspect
    if inspect.isclass(target):
        return ActorClass(target, options)
    if inspect.isfunction(target) or inspect.isbuiltin(target) or callable(target):
        return RemoteFunction(target, options)
    raise TypeError(f"@remote expects a function or a class, got {target!r}")
