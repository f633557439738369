"""Settings: one typed registry with documented defaults.

Every tunable of the runtime is declared here once. A setting's environment
variable is derived from its name (``SHOAL_<NAME>``), so nothing else in the
package reads ``os.environ`` for configuration.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    type: type
    default: Any
    doc: str

    @property
    def env_var(self) -> str:
        return "SHOAL_" + self.name.upper()

    def read(self) -> Any:
        raw = os.environ.get(self.env_var)
        if raw is None:
            return self.default
        if self.type is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        try:
            return self.type(raw)
        except ValueError:
            raise ValueError(f"{self.env_var}={raw!r} is not a valid {self.type.__name__}") from None


SETTINGS = {s.name: s for s in [
    Setting("inline_threshold", int, 100 * 1024,
            "Objects whose serialized size is below this many bytes travel inline in "
            "messages; larger ones are written once into the shared-memory store."),
    Setting("object_store_fraction", float, 0.3,
            "Default object store size as a fraction of the machine's memory, when "
            "init() is not given object_store_memory."),
    Setting("pipeline_depth", int, 8,
            "How many tasks of the same resource shape may be queued on one busy "
            "worker when no resources are free (hides the round trip per task)."),
    Setting("max_task_retries_default", int, 3,
            "Default max_retries for tasks whose worker process dies."),
    Setting("worker_start_timeout_s", float, 30.0,
            "How long a worker process may take to connect before it counts as failed."),
    Setting("idle_worker_timeout_s", float, 10.0,
            "Idle task workers beyond one per CPU exit after this long unused (extra "
            "workers are started while tasks wait in get)."),
    Setting("kill_grace_s", float, 1.0,
            "At shutdown, how long workers get to exit before they are SIGKILLed."),
    Setting("fail_infeasible", bool, True,
            "On a single node, fail tasks that can never fit instead of leaving them "
            "pending (nothing can join to make them fit)."),
    Setting("memory_usage_threshold", float, 0.95,
            "The memory monitor kills a worker when the machine's (or the cgroup's) "
            "used memory exceeds this fraction of the total (see docs/memory.md)."),
    Setting("memory_monitor_interval_s", float, 0.25,
            "How often the memory monitor samples memory use; 0 turns it off."),
    Setting("object_spilling_directory", str, "",
            "Where objects go when the shared-memory store is full (a directory of "
            "its own is made inside and removed at shutdown). Empty: the system's "
            "temporary directory."),
    Setting("object_spilling", bool, True,
            "Spill least recently used objects to disk when the store is full, "
            "instead of failing the put with ObjectStoreFullError."),
    Setting("object_store_full_timeout_s", float, 10.0,
            "How long an allocation, or a task whose spilled argument must be read "
            "back, waits for room while the store is full of objects in use, before "
            "failing with ObjectStoreFullError."),
    Setting("state_dir", str, "~/.shoal",
            "Where a machine's shoal processes keep the head's address, the cluster "
            "token (mode 0600), logs and the pids `shoal stop` ends."),
    Setting("head_port", int, 6380,
            "The port `shoal start --head` listens on unless --port is given."),
    Setting("heartbeat_interval_s", float, 0.5,
            "How often a node agent tells the head it is alive."),
    Setting("node_timeout_s", float, 10.0,
            "A node the head has not heard from for this long is declared dead."),
    Setting("max_message_bytes", int, 64 * 1024 * 1024,
            "The largest control message a head or node accepts from a peer; a "
            "longer length prefix is refused and the connection closed."),
    Setting("handshake_timeout_s", float, 5.0,
            "How long a new connection has to prove it knows the cluster token."),
    Setting("task_history_size", int, 20_000,
            "How many ended tasks (and actor calls) each node remembers for the "
            "state API, the timeline and `shoal doctor`; the oldest are forgotten."),
    Setting("state_timeout_s", float, 5.0,
            "How long a state query (list_tasks, `shoal list`...) waits for the other "
            "nodes' answers; a node that has not answered by then is named as missing."),
    Setting("metrics_report_interval_s", float, 1.0,
            "A worker hands its user metrics (shoal.util.metrics) to its node when a "
            "task ends, or this long after an update while a task runs."),
    Setting("include_dashboard", bool, True,
            "shoal.init() of a local cluster starts the web dashboard (if the dashboard "
            "extra is installed) on loopback, and prints its address; "
            "init(include_dashboard=False) or 0 here turns it off."),
    Setting("local_driver_socket", bool, True,
            "A local cluster (shoal.init()) listens on a Unix socket in the state directory "
            "(0600, with a token of its own) so that `shoal list`, the dashboard and "
            "init(address=\"auto\") in other processes of this user reach it."),
    Setting("worker_skip_site", bool, True,
            "Start workers with `python -S` and the driver's sys.path, skipping the "
            "site module's .pth processing (saves ~100 ms per worker start)."),
]}


def get(name: str) -> Any:
    """The value of setting ``name``: its environment variable if set, else its default."""
    return SETTINGS[name].read()
