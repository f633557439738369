"""Actors: ``@shoal.remote`` on a class, handles, method calls, exit_actor."""
from __future__ import annotations

import hashlib
import inspect
import pickle

from .core import get_core
from .core.base import return_refs_for
from .object_ref import ObjectRef
from .options import ACTOR_OPTIONS, METHOD_OPTIONS, resource_request, strategy_wire, validate
from .runtime_env import supported
from .scheduler.task import ACTOR_CALL, ACTOR_CREATE, STREAMING, object_id_for
from .serialization import dumps_function


def method(**options):
    """Per-method options, e.g. ``@shoal.method(num_returns=2)``."""
    validate(options, METHOD_OPTIONS, "actor method")

    def wrap(fn):
        fn.__shoal_method_options__ = options
        return fn
    return wrap


def _method_table(cls) -> dict:
    """name -> (num_returns, max_task_retries or None) for each public method."""
    table = {}
    for name, fn in inspect.getmembers(cls, predicate=callable):
        if name.startswith("__") and name != "__call__":
            continue
        opts = getattr(fn, "__shoal_method_options__", {})
        n = opts.get("num_returns")
        if n is None:
            n = STREAMING if (inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)) else 1
        elif n in ("streaming", "dynamic"):
            n = STREAMING
        table[name] = (n, opts.get("max_task_retries"))
    return table


class ActorClass:
    def __init__(self, cls, options: dict):
        if not inspect.isclass(cls):
            raise TypeError(f"expected a class for an actor, got {cls!r}")
        self._cls = cls
        self._options = validate(dict(options), ACTOR_OPTIONS, f"actor {cls.__qualname__}")
        self._blob = None
        self._class_id = None
        self._methods = _method_table(cls)
        self._is_async = any(inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f)
                             for _, f in inspect.getmembers(cls, predicate=callable))
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        self.__module__ = cls.__module__

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Actors cannot be instantiated directly. Instead of "
                        f"'{self.__name__}()', use '{self.__name__}.remote()'.")

    def options(self, **options) -> "_BoundActorClass":
        merged = dict(self._options)
        merged.update(options)
        validate(merged, ACTOR_OPTIONS, f"actor {self.__qualname__}")
        return _BoundActorClass(self, merged)

    def remote(self, *args, **kwargs) -> "ActorHandle":
        return self._create(self._options, args, kwargs)

    def _create(self, opts: dict, args, kwargs) -> "ActorHandle":
        core = get_core()
        if self._class_id is None:
            self._blob = dumps_function(self._cls)
            self._class_id = hashlib.sha1(self._blob).digest()[:16]
        core.export(self._class_id, self._blob)
        max_task_retries = opts.get("max_task_retries") or 0
        meta = {"class_name": self.__name__, "methods": self._methods,
                "max_task_retries": max_task_retries}
        namespace = opts.get("namespace") or core.namespace
        name = opts.get("name")
        actor_opts = {
            "max_restarts": opts.get("max_restarts") or 0,
            "max_concurrency": opts.get("max_concurrency"),
            "is_async": self._is_async,
            "name": name, "namespace": namespace, "lifetime": opts.get("lifetime"),
            "handle_meta": meta, "strategy": strategy_wire(opts),
        }
        renv = supported(opts.get("runtime_env"))
        if renv is not None:
            actor_opts["renv"] = renv
        # an actor holds no CPU while it lives unless it asks for some (Ray's rule)
        resources = resource_request(opts, 0.0)
        spec, holders = core.build_spec(ACTOR_CREATE, self._class_id, self.__name__, args,
                                        kwargs, 1, resources, 0, False, options=actor_opts)
        if name:
            existing = core.request("register_name", name, namespace, spec.task_id,
                                    bool(opts.get("get_if_exists")), meta)
            if existing is not None:
                actor_id, meta, lease = existing
                return ActorHandle(actor_id, meta,
                                   lease or ObjectRef(object_id_for(actor_id, 1)))
        refs = core.submit(spec)
        return ActorHandle(spec.task_id, meta, refs[0])

    def __repr__(self):
        return f"<shoal actor class {self.__qualname__}>"


class _BoundActorClass:
    def __init__(self, ac: ActorClass, options: dict):
        self._ac = ac
        self._opts = options

    def remote(self, *args, **kwargs) -> "ActorHandle":
        return self._ac._create(self._opts, args, kwargs)


class ActorHandle:
    """A reference to a live actor; pass it to tasks and other actors freely.
    While any handle exists (in any process) a non-detached actor lives."""

    def __init__(self, actor_id: bytes, meta: dict, handle_ref: ObjectRef):
        self._actor_id = actor_id
        self._meta = meta
        self._handle_ref = handle_ref

    def __getattr__(self, name: str) -> "ActorMethod":
        if name.startswith("_"):
            raise AttributeError(name)
        spec = self._meta["methods"].get(name)
        if spec is None:
            raise AttributeError(f"actor {self._meta['class_name']} has no method {name!r}")
        return ActorMethod(self, name, spec[0], spec[1])

    def __reduce__(self):
        return (ActorHandle, (self._actor_id, self._meta, self._handle_ref))

    def __repr__(self):
        return f"Actor({self._meta['class_name']}, {self._actor_id.hex()})"

    def __eq__(self, other):
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self):
        return hash(self._actor_id)


class ActorMethod:
    __slots__ = ("_handle", "_name", "_num_returns", "_retries", "_retry_exceptions")

    def __init__(self, handle: ActorHandle, name: str, num_returns, retries,
                 retry_exceptions=False):
        self._handle = handle
        self._name = name
        self._num_returns = num_returns
        self._retries = retries
        self._retry_exceptions = retry_exceptions

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Actor methods cannot be called directly. Instead of running "
                        f"'actor.{self._name}()', try 'actor.{self._name}.remote()'.")

    def options(self, **options) -> "ActorMethod":
        validate(options, METHOD_OPTIONS, "actor method")
        n = options.get("num_returns", self._num_returns)
        if n in ("streaming", "dynamic"):
            n = STREAMING
        rex = options.get("retry_exceptions", self._retry_exceptions)
        if isinstance(rex, (list, tuple)):
            rex = pickle.dumps(tuple(rex))
        return ActorMethod(self._handle, self._name, n,
                           options.get("max_task_retries", self._retries), rex)

    def remote(self, *args, **kwargs):   # hot path
        h = self._handle
        core = get_core()
        retries = self._retries
        if retries is None:
            retries = h._meta["max_task_retries"]
        spec, holders = core.build_spec(
            ACTOR_CALL, None, f"{h._meta['class_name']}.{self._name}", args, kwargs,
            self._num_returns, None, retries, self._retry_exceptions,
            actor_id=h._actor_id, method=self._name)
        return return_refs_for(spec, core.submit(spec))


def exit_actor():
    """End the current actor after this call; it is not restarted."""
    from .core import current_core
    from .worker.execute import ActorExit
    core = current_core()
    if core is None or core.actor_id is None:
        raise TypeError("exit_actor() can only be called inside an actor method")
    raise ActorExit()
