"""Running one task, actor creation or actor call, and packing its results.

Split into ``prepare`` (find the callable, rebuild the arguments), the call
itself (sync or awaited) and ``finish`` (results or error to DONE), so that
serial, threaded and async execution share every step but the call.
"""
from __future__ import annotations

import inspect
import os
import pickle
import traceback

from ..exceptions import ActorDiedError, SerializationError, TaskCancelledError, TaskError
from ..core.base import CURRENT_TASK, TaskContext
from ..scheduler.task import ACTOR_CALL, ACTOR_CREATE, STREAMING, TaskSpec
from ..serialization import deserialize, loads_function
from ..transport import messages as m


class ActorExit(BaseException):
    """Raised by shoal.actor.exit_actor(): ends the actor after this call."""


class Prepared:
    __slots__ = ("spec", "fn", "args", "kwargs", "env_saved")

    def __init__(self, spec, fn, args, kwargs, env_saved=None):
        self.spec = spec
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.env_saved = env_saved     # what to put back after the task (runtime_env.py)


def prepare(core, functions: dict, blobs: dict, msg: tuple) -> Prepared:
    _, wire, _, dep_values, assigned = msg
    spec = TaskSpec.from_wire(wire)
    env_saved = None
    if spec.kind != ACTOR_CALL:
        wd = env = None
        if spec.options is not None:
            wd, env = spec.options.get("wd"), spec.options.get("env")
        if wd is not None:          # its driver's working directory (runtime_env.py)
            from ..runtime_env import activate
            activate(wd)
        if env is not None:         # its env_vars: for the task, or for the actor's life
            from ..runtime_env import set_env
            saved = set_env(env)
            env_saved = saved if spec.kind != ACTOR_CREATE else None
        core.wd, core.env = wd, env
    try:
        return _prepared(core, functions, blobs, spec, dep_values, assigned, env_saved)
    except BaseException:
        if env_saved is not None:
            from ..runtime_env import restore_env
            restore_env(env_saved)
        raise


def _prepared(core, functions, blobs, spec, dep_values, assigned, env_saved) -> Prepared:
    fid = spec.function_id
    if fid is not None and fid not in functions:
        functions[fid] = loads_function(blobs.pop(fid))
    placement = None
    if spec.options is not None:
        strategy = spec.options.get("strategy")
        if strategy is not None and strategy[0] == "PG":
            if spec.kind == ACTOR_CREATE:
                core.actor_placement = strategy
            else:
                placement = strategy
        elif spec.kind == ACTOR_CREATE:
            core.actor_placement = None
    CURRENT_TASK.set(TaskContext(spec.task_id, spec.name, spec.job_id, assigned, placement))
    args, kwargs = deserialize(spec.args, spec.args_layout)
    if dep_values:
        args = list(args)
        for (key, oid), (_, value) in zip(spec.deps, dep_values):
            v = core.decode_value(oid, value)
            if isinstance(key, int):
                args[key] = v
            else:
                kwargs[key] = v
    if spec.kind == ACTOR_CALL:
        fn = getattr(core.actor_instance, spec.method)
    else:
        fn = functions[fid]
    return Prepared(spec, fn, args, kwargs, env_saved)


def finish_ok(core, spec: TaskSpec, result) -> tuple:
    """The DONE message for a call that returned ``result``."""
    if spec.kind == ACTOR_CREATE:
        core.actor_instance = result
        result = None
    n = spec.num_returns
    rids = spec.return_ids()
    try:
        if n == 1 or spec.kind == ACTOR_CREATE:
            results = [(rids[0], core.encode_value(result))]
        elif n == 0:
            results = []
        else:
            if inspect.isgenerator(result):
                result = list(result)
            try:
                count = len(result)
            except TypeError:
                raise ValueError(f"{spec.name} has num_returns={n} but returned a "
                                 f"{type(result).__name__}, which has no length") from None
            if count != n:
                raise ValueError(f"{spec.name} has num_returns={n} but returned {count} values")
            results = [(rid, core.encode_value(v)) for rid, v in zip(rids, result)]
    except SerializationError as e:
        return finish_error(core, spec, SerializationError(
            f"the return value of {spec.name} cannot be serialized: {e}"))
    except ValueError as e:
        return finish_error(core, spec, e)
    return (m.DONE, spec.task_id, results, False, None)


def finish_error(core, spec: TaskSpec, exc: BaseException, tb: str | None = None) -> tuple:
    """The DONE message (without its times) for a call that raised ``exc``."""
    if tb is None:
        tb = format_user_traceback(exc)
    value = error_value(core, spec.name, exc, tb)
    retryable = _retryable(spec, exc)
    return (m.DONE, spec.task_id, [(rid, value) for rid in spec.return_ids()], retryable,
            failure_summary(exc, tb))


def failure_summary(exc: BaseException, tb: str) -> tuple:
    """(type name, message, traceback) of the user's error, for the state
    API: the original exception's, not the TaskError wrapping one from a
    nested task (whose traceback text comes first)."""
    if isinstance(exc, TaskError) and exc.cause is not None:
        exc = exc.cause
    try:
        message = str(exc)
    except Exception:
        message = f"<{type(exc).__name__} whose str() failed>"
    return type(exc).__name__, message[:2000], tb[-8000:]


def format_user_traceback(exc: BaseException) -> str:
    """The traceback from the user's code down, without shoal's own frames."""
    tb = exc.__traceback__
    while tb is not None and "/shoal/worker/" in tb.tb_frame.f_code.co_filename:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def error_value(core, name: str, exc: BaseException, tb: str) -> tuple:
    if isinstance(exc, (TaskCancelledError, ActorDiedError)):
        err = exc
    else:
        # an error from a nested task keeps the user's original exception as its cause
        cause = exc.cause if isinstance(exc, TaskError) else exc
        err = TaskError(name, tb, cause, os.getpid())
    try:
        return core.encode_error(err)
    except SerializationError:
        # the user's exception cannot be pickled: keep its type name and message
        stand_in = TaskError(name, tb + f"\n(the original {type(exc).__name__} could not be "
                             "pickled, so it is not attached as the cause)", None, os.getpid())
        return core.encode_error(stand_in)


def _retryable(spec: TaskSpec, exc: BaseException) -> bool:
    rule = spec.retry_exceptions
    if not rule or isinstance(exc, (TaskCancelledError, ActorExit)):
        return False
    if rule is True:
        return isinstance(exc, Exception)
    classes = pickle.loads(rule)
    return isinstance(exc, classes)


class _Stream:
    """Sends a generator's items as GEN_ITEM messages; an exception becomes
    one last item that raises when read, as in Ray."""

    def __init__(self, core, spec: TaskSpec):
        self.core = core
        self.spec = spec
        self.count = 0
        self.failure = None

    def item(self, value) -> None:
        self.core.send((m.GEN_ITEM, self.spec.task_id, self.count, self.core.encode_value(value)))
        self.count += 1

    def fail(self, e: Exception) -> None:
        value = error_value(self.core, self.spec.name, e, format_user_traceback(e))
        self.core.send((m.GEN_ITEM, self.spec.task_id, self.count, value))
        self.count += 1
        self.failure = failure_summary(e, format_user_traceback(e))

    def done(self) -> tuple:
        rid = self.spec.return_ids()[0]
        return (m.DONE, self.spec.task_id, [(rid, self.core.encode_value(self.count))], False,
                self.failure)


def run_streaming(core, spec: TaskSpec, result) -> tuple:
    """Send each item of a generator as it is produced; DONE carries the count."""
    stream = _Stream(core, spec)
    try:
        for item in result:
            stream.item(item)
    except Exception as e:
        stream.fail(e)
    return stream.done()


async def run_streaming_async(core, spec: TaskSpec, result) -> tuple:
    stream = _Stream(core, spec)
    try:
        async for item in result:
            stream.item(item)
    except Exception as e:
        stream.fail(e)
    return stream.done()


def is_streaming(spec: TaskSpec) -> bool:
    return spec.num_returns == STREAMING
