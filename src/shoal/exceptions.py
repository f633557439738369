"""Errors raised by shoal, drawn as a tree:

    ShoalError
    ├── TaskError                 a task raised; also an instance of the user's class
    ├── WorkerCrashedError        the worker process died mid-task, retries spent
    ├── ActorError
    │   ├── ActorDiedError        the actor is dead (killed, crashed, __init__ failed)
    │   └── ActorUnavailableError the actor is restarting
    ├── GetTimeoutError           get()/wait() timed out (also a TimeoutError)
    ├── TaskCancelledError        shoal.cancel() stopped the task
    ├── ObjectLostError           an object's value is gone and cannot be rebuilt
    │   └── ObjectStoreFullError  the shared-memory store has no room
    ├── SerializationError        a value could not be pickled or unpickled
    ├── InfeasibleTaskError       no node can ever satisfy the task's resources
    ├── TaskUnschedulableError    a hard scheduling strategy cannot be met (node affinity)
    ├── ActorUnschedulableError   the same, for an actor
    ├── TaskPlacementGroupRemoved the task's placement group was removed
    └── OutOfMemoryError          the memory monitor killed the task's worker, retries spent

Names follow Ray's (``RayTaskError`` is ``TaskError`` here, with an alias;
``OutOfMemoryError`` is Ray's own name).
"""
from __future__ import annotations


class ShoalError(Exception):
    """Base class of every error shoal raises."""


class TaskError(ShoalError):
    """A task or actor method raised. ``get`` raises an object that is an
    instance both of this class and of the user's exception class, so
    ``except ValueError`` still works. ``.cause`` is the original exception and
    ``.traceback_str`` the remote traceback."""

    def __init__(self, function_name: str, traceback_str: str, cause: BaseException | None,
                 pid: int | None = None):
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        super().__init__(self._message())

    def _message(self) -> str:
        where = f" (pid={self.pid})" if self.pid else ""
        return f"{self.function_name}{where} raised:\n\n{self.traceback_str.rstrip()}"

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self):
        return (_rebuild_task_error, (self.function_name, self.traceback_str, self.cause, self.pid))

    def as_instanceof_cause(self) -> "TaskError":
        """This error as an instance of a class deriving from both TaskError and
        the cause's class, so both ``except`` clauses match."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or isinstance(self.cause, TaskError) or not _subclassable(cause_cls):
            return self
        cls = _dual_classes.get(cause_cls)
        if cls is None:
            cls = type(f"TaskError({cause_cls.__name__})", (TaskError, cause_cls), {
                "__init__": TaskError.__init__, "__str__": TaskError.__str__,
                "__reduce__": TaskError.__reduce__, "__module__": __name__,
            })
            _dual_classes[cause_cls] = cls
        err = cls.__new__(cls)
        err.function_name, err.traceback_str, err.cause, err.pid = (
            self.function_name, self.traceback_str, self.cause, self.pid)
        err.args = (self._message(),)
        return err


_dual_classes: dict[type, type] = {}


def _subclassable(cls: type) -> bool:
    try:
        type("_probe", (TaskError, cls), {})
        return True
    except TypeError:
        return False


def _rebuild_task_error(function_name, traceback_str, cause, pid):
    return TaskError(function_name, traceback_str, cause, pid).as_instanceof_cause()


class WorkerCrashedError(ShoalError):
    """The worker process running the task died (crash, SIGKILL, OOM kill) and
    the task's retries are spent."""


class NodeDiedError(ShoalError):
    """The node running the task died (its agent was killed or cut off from
    the cluster) and the task's retries are spent."""


class ActorError(ShoalError):
    """Base of actor failures."""


class ActorDiedError(ActorError):
    """The actor is dead: killed, crashed past max_restarts, exited, or its
    constructor raised."""

    def __init__(self, message: str = "The actor died.", actor_id: str | None = None):
        self.actor_id = actor_id
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self), self.actor_id))


class ActorUnavailableError(ActorError):
    """The actor is temporarily unreachable (restarting)."""


class CollectiveError(ShoalError):
    """A collective operation or group could not complete: a member died or
    left, the members called different operations or sizes, the group did not
    form, or an operation ran past the group's timeout."""


class GetTimeoutError(ShoalError, TimeoutError):
    """``get`` or ``wait`` ran past its timeout."""


class TaskCancelledError(ShoalError):
    """The task was cancelled with ``shoal.cancel``."""


class ObjectLostError(ShoalError):
    """The object's value is gone and cannot be recovered."""


class ObjectStoreFullError(ObjectLostError):
    """The shared-memory object store has no room for the object."""


class SerializationError(ShoalError, TypeError):
    """A value could not be serialized (or deserialized); the message says
    which argument or value and why."""


class InfeasibleTaskError(ShoalError):
    """No node in the cluster can ever provide the resources the task asks for."""


class TaskUnschedulableError(ShoalError):
    """The task's scheduling strategy names a node that cannot run it."""


class ActorUnschedulableError(ShoalError):
    """The actor's scheduling strategy names a node that cannot host it."""


class TaskPlacementGroupRemoved(ShoalError):
    """The placement group the task was scheduled into was removed."""


class OutOfMemoryError(ShoalError):
    """The memory monitor killed the task's worker because the machine's memory
    use passed ``memory_usage_threshold``, and the task's retries are spent.
    The message names the task, the memory used and the threshold."""


# Ray's names, so `except ray.exceptions.RayTaskError` keeps working.
RayError = ShoalError
RayTaskError = TaskError
RayActorError = ActorError

__all__ = [
    "NodeDiedError", "CollectiveError",
    "ShoalError", "TaskError", "WorkerCrashedError", "ActorError", "ActorDiedError",
    "ActorUnavailableError", "GetTimeoutError", "TaskCancelledError", "ObjectLostError",
    "ObjectStoreFullError", "SerializationError", "InfeasibleTaskError", "OutOfMemoryError",
    "TaskUnschedulableError", "ActorUnschedulableError", "TaskPlacementGroupRemoved",
    "RayError", "RayTaskError", "RayActorError",
]
