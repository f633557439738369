"""``shoal.get_runtime_context()``: what the calling code is part of."""
from __future__ import annotations

from .core import get_core


class RuntimeContext:
    def __init__(self, core):
        self._core = core

    def get_job_id(self) -> str:
        """The job (driver program) this code runs for: in a task or actor
        call, the job that submitted it (workers serve every job)."""
        return (self._core.context.job_id or self._core.job_id).hex()

    def get_node_id(self) -> str:
        return self._core.node_id.hex()

    def get_task_id(self) -> str | None:
        tid = self._core.context.task_id
        return tid.hex() if tid is not None else None

    def get_actor_id(self) -> str | None:
        aid = self._core.actor_id
        return aid.hex() if aid is not None else None

    def get_worker_id(self) -> str:
        return getattr(self._core, "worker_id", b"driver").hex()

    def get_assigned_resources(self) -> dict:
        assigned = self._core.context.assigned
        return dict(assigned[0]) if assigned else {}

    def get_accelerator_ids(self) -> dict:
        assigned = self._core.context.assigned
        return {"GPU": [str(i) for i in assigned[1]] if assigned else []}

    @property
    def runtime_env(self) -> dict:
        """The runtime_env this code runs with (the job's in a driver, the
        task's or actor's in a worker): ``working_dir`` (the directory as
        given in the driver, its unpacked copy in a worker) and ``env_vars``
        (merged), where set."""
        from .runtime_env import describe
        return describe(self._core)

    def get_runtime_env_string(self) -> str:
        import json
        return json.dumps(self.runtime_env, sort_keys=True)

    @property
    def namespace(self) -> str:
        return self._core.namespace

    def get_namespace(self) -> str:
        return self._core.namespace

    @property
    def was_current_actor_reconstructed(self) -> bool:
        return self._core.was_restarted

    @property
    def current_actor(self):
        raise NotImplementedError("current_actor is not available yet; pass the handle in")

    job_id = property(get_job_id)
    node_id = property(get_node_id)
    task_id = property(get_task_id)
    actor_id = property(get_actor_id)


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(get_core())
