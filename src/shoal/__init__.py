"""shoal: distributed computing for AI in Python, behind Ray's core API.

    import shoal as ray      # a Ray program runs unchanged

The public surface is ``__all__`` below; every other module is internal.
"""
from . import exceptions
from .actor import ActorClass, ActorHandle, exit_actor, method
from .api import (available_resources, cancel, cluster_resources, get, get_actor, get_gpu_ids,
                  init, internal_memory_summary, is_initialized, kill, nodes, put, remote,
                  shutdown, timeline, wait)
from .object_ref import ObjectRef, ObjectRefGenerator
from .remote_function import RemoteFunction
from .runtime_context import get_runtime_context
from . import actor   # ``shoal.actor.exit_actor()``, as in Ray
from . import util    # ``shoal.util.ActorPool``..., loaded lazily

__version__ = "0.1.0"

__all__ = [
    "init", "shutdown", "is_initialized", "remote", "method", "get", "put", "wait", "cancel",
    "kill", "get_actor", "internal_memory_summary", "cluster_resources", "available_resources", "nodes", "get_gpu_ids",
    "get_runtime_context", "timeline", "exit_actor", "ObjectRef", "ObjectRefGenerator", "ActorHandle",
    "ActorClass", "RemoteFunction", "exceptions", "actor", "util", "__version__",
]
