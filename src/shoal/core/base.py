"""What drivers and workers share: specs, values, context.

Hot paths here: ``submit`` (every ``.remote()``), ``encode_value`` and
``decode_value`` (every result and ``get``). Keep them short.
"""
from __future__ import annotations

import contextvars
import os
from collections import deque

from .. import config
from ..exceptions import SerializationError
from ..object_ref import ObjectRef, set_ref_log
from ..scheduler.task import ACTOR_CALL, ACTOR_CREATE, STREAMING, TaskSpec, new_task_id
from ..serialization import deserialize, pack_inline, serialize, write_packed
from ..transport.messages import ERROR, INLINE, SHM

_EMPTY_ARGS = pack_inline(serialize(((), {})))


class TaskContext:
    """The task the code running here is part of. Each run of a task sets a
    fresh one (worker/execute.py ``prepare``) in a context variable, so a
    thread of a threaded actor and each asyncio task of an async actor (a
    copy of the context per task) see the call they run, even when calls
    overlap; outside any task, ``NO_TASK``."""
    __slots__ = ("task_id", "task_name", "job_id", "assigned", "placement")

    def __init__(self, task_id=None, task_name=None, job_id=None, assigned=None,
                 placement=None):
        self.task_id = task_id
        self.task_name = task_name
        self.job_id = job_id        # the job that submitted it: its own calls are of it
        self.assigned = assigned    # ({resource: amount}, gpu_ids)
        self.placement = placement  # the placement-group strategy (wire form) it runs in


NO_TASK = TaskContext()
CURRENT_TASK: contextvars.ContextVar = contextvars.ContextVar("shoal_task", default=NO_TASK)


class Core:
    is_driver = False

    @property
    def context(self) -> TaskContext:
        return CURRENT_TASK.get()

    def __init__(self, arena, job_id: bytes, node_id: bytes, namespace: str):
        self.arena = arena
        self.job_id = job_id
        self.node_id = node_id
        self.namespace = namespace
        self.inline_threshold = config.get("inline_threshold")
        self.actor_id = None
        self.actor_instance = None
        self.actor_placement = None
        self.was_restarted = False
        self.exported: set = set()
        self.ref_log: deque = deque()
        self.wd = None       # the working-dir package this process's tasks carry
        self.env = None      # the env_vars they carry (runtime_env.py)
        self._packages: dict = {}    # directory -> package id, shipped already
        set_ref_log(self.ref_log)

    def use_working_dir(self, path: str) -> None:
        """Ship directory ``path`` to the nodes that run this driver's work
        (runtime_env={"working_dir": path}; see runtime_env.py)."""
        self.wd = self.package_dir(path)

    def package_dir(self, path: str) -> bytes:
        """The id of directory ``path`` packed and handed to this node (once
        per directory for this process's life)."""
        key = os.path.abspath(path)
        wd = self._packages.get(key)
        if wd is None:
            from ..runtime_env import package
            wd, data = package(key, config.get("max_message_bytes"))
            self.request("package_put", wd, data)
            self._packages[key] = wd
        return wd

    # ---------------------------------------------------------- values
    def encode_value(self, value) -> tuple:
        s = serialize(value)
        if s.size < self.inline_threshold:
            data, layout = pack_inline(s)
            return (INLINE, (data, layout), tuple(s.contained))
        offset = self.alloc(s.size)
        try:
            layout = write_packed(s, self.arena.writable(offset, s.size))
        except BaseException:
            self.free_alloc(offset)
            raise
        return (SHM, (offset, s.size, layout), tuple(s.contained))

    def encode_error(self, err: BaseException) -> tuple:
        data, layout = pack_inline(serialize(err))
        return (ERROR, (data, layout), ())

    def decode_value(self, object_id: bytes, value: tuple):
        kind, payload = value[0], value[1]
        if kind == INLINE:
            return deserialize(*payload)
        if kind == SHM:
            # the views keep the object alive (the ref) and marked as mapped
            # (the lease the node shipped with it, value[3]: node/memory.py)
            offset, size, layout = payload
            view = self.arena.view(offset, size, (ObjectRef(object_id), value[3]))
            return deserialize(view, layout)
        raise deserialize(*payload)

    def put(self, value) -> ObjectRef:
        from ..scheduler.task import new_put_id
        oid = new_put_id()
        encoded = self.encode_value(value)     # first: a put that fails leaves no ref
        ref = ObjectRef(oid)
        self.store(oid, encoded)
        return ref

    def get(self, refs: list, timeout):
        values = self.fetch([r.id for r in refs], timeout)
        if len(values) < len(refs):     # one failed before the rest were ready: its error alone
            self.decode_value(None, values[0])
        return [self.decode_value(r.id, v) for r, v in zip(refs, values)]

    # ---------------------------------------------------------- submit
    def export(self, function_id: bytes, blob: bytes) -> None:
        if function_id not in self.exported:
            self.exported.add(function_id)
            self.send_export(function_id, blob)

    def build_spec(self, kind, function_id, name, args, kwargs, num_returns, resources,
                   max_retries, retry_exceptions, actor_id=None, method=None, options=None):
        """The spec for a call, and the refs of arguments it put in the store
        (the caller keeps them alive until the spec is submitted)."""
        if not args and not kwargs:
            (packed, layout), deps, contained, holders = _EMPTY_ARGS, (), (), ()
        else:
            packed, layout, deps, contained, holders = self._pack_args(name, args, kwargs)
        if kind != ACTOR_CALL and (self.wd is not None or self.env is not None or (
                options is not None and "renv" in options)):
            options = self._with_runtime_env(options)
        spec = TaskSpec(new_task_id(), kind, function_id, name, packed, layout, deps,
                        num_returns, resources, max_retries, retry_exceptions, contained,
                        self.context.task_id, actor_id, method, options,
                        self.context.job_id or self.job_id)
        return spec, holders

    def _with_runtime_env(self, options: dict | None) -> dict:
        """``options`` with the working dir and env_vars the call carries:
        this process's, with the call's own runtime_env over them (its
        env_vars merged in). See runtime_env.py."""
        options = dict(options) if options else {}
        renv = options.pop("renv", None) or {}
        wd, env = self.wd, self.env
        if "working_dir" in renv:
            wd = self.package_dir(renv["working_dir"])
        if "env_vars" in renv:
            env = {**(env or {}), **renv["env_vars"]}
        if wd is not None:
            options["wd"] = wd
        if env:
            options["env"] = env
        return options or None

    def _pack_args(self, name, args, kwargs):
        deps = []
        holders = []
        if args and any(type(a) is ObjectRef for a in args):
            args = list(args)
            for i, a in enumerate(args):
                if type(a) is ObjectRef:
                    deps.append((i, a.id))
                    args[i] = None
        if kwargs and any(type(a) is ObjectRef for a in kwargs.values()):
            kwargs = dict(kwargs)
            for k, a in kwargs.items():
                if type(a) is ObjectRef:
                    deps.append((k, a.id))
                    kwargs[k] = None
        try:
            s = serialize((args, kwargs))
        except SerializationError:
            raise self._explain_args(name, args, kwargs) from None
        if s.size >= self.inline_threshold:
            # large arguments go to the store once, and travel as refs
            args = list(args)
            for i, a in enumerate(args):
                if a is not None and type(a) is not ObjectRef:
                    if serialize(a).size >= self.inline_threshold // 4:
                        ref = self.put(a)
                        holders.append(ref)
                        deps.append((i, ref.id))
                        args[i] = None
            s = serialize((args, kwargs))
        packed, layout = pack_inline(s)
        return packed, layout, tuple(deps), tuple(s.contained), holders

    def _explain_args(self, name, args, kwargs) -> SerializationError:
        for i, a in enumerate(args or ()):
            try:
                serialize(a)
            except SerializationError as e:
                return SerializationError(f"argument {i} of {name} cannot be serialized: {e}")
        for k, a in (kwargs or {}).items():
            try:
                serialize(a)
            except SerializationError as e:
                return SerializationError(f"keyword argument {k!r} of {name} cannot be "
                                          f"serialized: {e}")
        return SerializationError(f"the arguments of {name} cannot be serialized")

    def submit(self, spec: TaskSpec):
        """Send the spec; returns the refs to its results."""
        refs = [ObjectRef(oid) for oid in spec.return_ids()]
        self.send_spec(spec)
        return refs


def return_refs_for(spec: TaskSpec, refs: list):
    """What ``.remote()`` hands back for ``spec``: one ref, a list, or a generator."""
    from ..object_ref import ObjectRefGenerator
    n = spec.num_returns
    if n == STREAMING:
        return ObjectRefGenerator(refs[0])
    if n == 1 or spec.kind == ACTOR_CREATE:
        return refs[0]
    if n == 0:
        return None
    return refs
