"""Worker process entry point: ``python -m shoal.worker.main SOCK_FD ARENA_FD
ARENA_SIZE WORKER_ID PARENT_PID`` (started by node/workers.py, never by hand)."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL us when the node's thread that started us
    exits, so a crashed driver leaves no worker behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:   # the parent died before prctl took effect
        os._exit(1)


def main(argv: list[str]) -> None:
    sock_fd, arena_fd, arena_size, worker_id, parent_pid = argv
    _die_with_parent(int(parent_pid))
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C belongs to the driver

    from ..core import set_core
    from ..core.worker import WorkerCore
    from ..object_store.arena import Arena
    from ..scheduler.task import reset_id_prefix
    from ..transport import messages as m
    from ..transport.framing import Connection
    from .loop import WorkerLoop
    from .output import install as tag_output

    reset_id_prefix()
    conn = Connection(socket.socket(fileno=int(sock_fd)))
    arena = Arena(int(arena_fd), int(arena_size), owner=False)
    env = os.environ
    core = WorkerCore(conn, arena, bytes.fromhex(env.get("SHOAL_JOB_ID", "")),
                      bytes.fromhex(env.get("SHOAL_NODE_ID", "")),
                      env.get("SHOAL_NAMESPACE", "default"), bytes.fromhex(worker_id))
    set_core(core)
    loop = WorkerLoop(core, tag_output())
    core.send((m.HELLO, m.PROTOCOL_VERSION, core.worker_id, os.getpid()))
    loop.run()
    # leave without running atexit handlers or joining user threads
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
