"""Remote functions: ``@shoal.remote`` on a function, ``f.remote(...)``."""
from __future__ import annotations

import hashlib
import inspect
import pickle

from . import config
from .core import get_core
from .core.base import return_refs_for
from .options import TASK_OPTIONS, resource_request, strategy_wire, validate
from .runtime_env import supported
from .scheduler.task import STREAMING, TASK
from .serialization import dumps_function


class RemoteFunction:
    def __init__(self, function, options: dict):
        if not callable(function):
            raise TypeError(f"@remote expects a function or a class, got {function!r}")
        self._function = function
        self._options = validate(dict(options), TASK_OPTIONS, f"remote function "
                                 f"{getattr(function, '__qualname__', function)}")
        self._blob = None
        self._function_id = None
        self.__name__ = getattr(function, "__name__", "remote_function")
        self.__qualname__ = getattr(function, "__qualname__", self.__name__)
        self.__doc__ = getattr(function, "__doc__", None)
        self.__module__ = getattr(function, "__module__", None)
        self._call = self._plan(self._options)

    def _plan(self, options: dict) -> tuple:
        """Everything ``.remote()`` needs from the options, worked out once."""
        n = options.get("num_returns")
        if n is None:
            is_gen = inspect.isgeneratorfunction(self._function)
            n = STREAMING if is_gen else 1
        elif n in ("streaming", "dynamic"):
            n = STREAMING
        rex = options.get("retry_exceptions") or False
        if isinstance(rex, (list, tuple)):
            rex = pickle.dumps(tuple(rex))
        retries = options.get("max_retries")
        if retries is None:
            retries = config.get("max_task_retries_default")
        name = options.get("name") or self.__name__
        strategy = strategy_wire(options)
        extra = {"strategy": strategy} if strategy is not None else {}
        renv = supported(options.get("runtime_env"))
        if renv is not None:
            extra["renv"] = renv
        extra = extra or None
        return (name, n, resource_request(options, 1.0), retries, rex, extra)

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Remote functions cannot be called directly. Instead of running "
                        f"'{self.__name__}()', try '{self.__name__}.remote()'.")

    def options(self, **options) -> "_BoundFunction":
        merged = dict(self._options)
        merged.update(options)
        validate(merged, TASK_OPTIONS, f"remote function {self.__qualname__}")
        return _BoundFunction(self, self._plan(merged))

    def remote(self, *args, **kwargs):
        return self._remote(self._call, args, kwargs)

    def _remote(self, call: tuple, args, kwargs):   # hot path
        core = get_core()
        fid = self._function_id
        if fid is None:
            self._blob = dumps_function(self._function)
            fid = self._function_id = hashlib.sha1(self._blob).digest()[:16]
        if fid not in core.exported:
            core.export(fid, self._blob)
        name, n, resources, retries, rex, extra = call
        spec, holders = core.build_spec(TASK, fid, name, args, kwargs, n, resources, retries, rex,
                                        options=extra)
        return return_refs_for(spec, core.submit(spec))

    def __reduce__(self):
        return (RemoteFunction, (self._function, self._options))

    def __repr__(self):
        return f"<shoal remote function {self.__qualname__}>"


class _BoundFunction:
    """``f.options(...)``: the same function with other options."""

    def __init__(self, rf: RemoteFunction, call: tuple):
        self._rf = rf
        self._callplan = call

    def remote(self, *args, **kwargs):
        return self._rf._remote(self._callplan, args, kwargs)

    def __call__(self, *args, **kwargs):
        self._rf(*args, **kwargs)
