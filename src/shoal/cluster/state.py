"""Where a machine keeps what its shoal processes need to find each other:
the head's address, the cluster token (0600) and the pids of the processes
``shoal start`` launched (for ``shoal stop``). One directory,
``state_dir`` (default ~/.shoal; SHOAL_STATE_DIR overrides it).
"""
from __future__ import annotations

import json
import os

from .. import config


class StateDir:
    def __init__(self, path: str | None = None):
        self.path = os.path.expanduser(path or config.get("state_dir"))

    def ensure(self) -> "StateDir":
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        os.makedirs(self.procs_dir, mode=0o700, exist_ok=True)
        return self

    @property
    def token_path(self) -> str:
        return os.path.join(self.path, "token")

    @property
    def head_path(self) -> str:
        return os.path.join(self.path, "head.json")

    @property
    def procs_dir(self) -> str:
        return os.path.join(self.path, "procs")

    @property
    def sockets_dir(self) -> str:
        return os.path.join(self.path, "nodes")

    def node_socket(self, node_id: str) -> str:
        return os.path.join(self.sockets_dir, f"{node_id[:16]}.sock")

    def local_nodes(self) -> list[dict]:
        """The node agents of this machine that drivers can connect to,
        the head's own node first."""
        out = []
        try:
            names = os.listdir(self.sockets_dir)
        except FileNotFoundError:
            return out
        for name in names:
            if name.endswith(".json"):
                try:
                    with open(os.path.join(self.sockets_dir, name)) as f:
                        out.append(json.load(f))
                except (OSError, ValueError):
                    pass
        return sorted(out, key=lambda n: not n.get("is_head_node"))

    @property
    def db_path(self) -> str:
        return os.path.join(self.path, "head.sqlite3")

    def log_path(self, name: str) -> str:
        return os.path.join(self.path, f"{name}.log")

    def write_head(self, host: str, port: int, pid: int) -> None:
        tmp = self.head_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"host": host, "port": port, "pid": pid}, f)
        os.replace(tmp, self.head_path)

    def read_head(self) -> dict | None:
        try:
            with open(self.head_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def record_process(self, name: str, pid: int) -> None:
        with open(os.path.join(self.procs_dir, f"{name}.pid"), "w") as f:
            f.write(str(pid))

    def forget_process(self, name: str) -> None:
        try:
            os.unlink(os.path.join(self.procs_dir, f"{name}.pid"))
        except FileNotFoundError:
            pass

    def processes(self) -> dict[str, int]:
        out = {}
        try:
            names = os.listdir(self.procs_dir)
        except FileNotFoundError:
            return out
        for name in names:
            if name.endswith(".pid"):
                try:
                    with open(os.path.join(self.procs_dir, name)) as f:
                        out[name[:-4]] = int(f.read().strip())
                except (OSError, ValueError):
                    pass
        return out
