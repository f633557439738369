"""Jobs: a driver program run on the cluster (``shoal job submit``).

The head keeps the job table (SQLite, next to the node table) and runs each
job's entrypoint as a process of its own session on the head's machine,
in a copy of the submitted working directory, with ``SHOAL_ADDRESS=auto``
so that its ``shoal.init()`` connects to the cluster. Its stdout and stderr
go to a log file the CLI streams. Modules of the working directory are
pickled by value when the job sends functions to workers
(``SHOAL_JOB_WORKING_DIR``; serialization/pickler.py), since the workers
do not run in that directory.

    PENDING -> RUNNING -> SUCCEEDED | FAILED | STOPPED
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import tarfile
import time

RUNNING, SUCCEEDED, FAILED, STOPPED = "RUNNING", "SUCCEEDED", "FAILED", "STOPPED"
LOG_CHUNK = 1 << 20
STOP_GRACE_S = 3.0


class Job:
    def __init__(self, job_id: str, entrypoint: str, root: str):
        self.job_id = job_id
        self.entrypoint = entrypoint
        self.root = root                      # state_dir/jobs/<id>
        self.log_path = os.path.join(root, "output.log")
        self.state = RUNNING
        self.exit_code = None
        self.message = ""
        self.submitted = time.time()
        self.ended = None
        self.proc = None
        self.stop_requested_at = None

    def row(self) -> dict:
        return {"job_id": self.job_id, "entrypoint": self.entrypoint, "state": self.state,
                "exit_code": self.exit_code, "message": self.message,
                "submitted": self.submitted, "ended": self.ended}


def unpack_working_dir(archive: bytes, into: str) -> None:
    """Extract a gzip'd tar of the working directory, refusing paths that
    would land outside ``into`` (tarfile's 'data' filter)."""
    os.makedirs(into, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(into, filter="data")


def pack_working_dir(path: str, limit: int) -> bytes:
    """A gzip'd tar of ``path`` (the CLI side); ValueError past ``limit`` bytes."""
    if not os.path.isdir(path):
        raise ValueError(f"--working-dir {path!r} is not a directory")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(path, arcname=".", filter=lambda t: None if "__pycache__" in t.name else t)
    data = buf.getvalue()
    if len(data) > limit:
        raise ValueError(f"the working directory packs to {len(data) / 1e6:.1f} MB, over the "
                         f"{limit / 1e6:.0f} MB limit (max_message_bytes): leave data files out "
                         f"and read them from shared storage")
    return data


def start(job: Job, workdir: str, env: dict, state_dir: str) -> None:
    full_env = dict(os.environ)
    full_env.update(env)
    full_env.update({"SHOAL_ADDRESS": "auto", "SHOAL_STATE_DIR": state_dir,
                     "SHOAL_JOB_WORKING_DIR": workdir, "PYTHONUNBUFFERED": "1"})
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (workdir, full_env.get("PYTHONPATH")) if p)
    log = open(job.log_path, "ab")
    try:
        job.proc = subprocess.Popen(job.entrypoint, shell=True, cwd=workdir, env=full_env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
    finally:
        log.close()


def poll(job: Job) -> bool:
    """Update ``job`` from its process; True when it just ended."""
    if job.state != RUNNING or job.proc is None:
        return False
    code = job.proc.poll()
    if code is None:
        if job.stop_requested_at and time.monotonic() - job.stop_requested_at > STOP_GRACE_S:
            _signal_group(job.proc.pid, signal.SIGKILL)
        return False
    job.exit_code = code
    job.ended = time.time()
    if job.stop_requested_at:
        job.state, job.message = STOPPED, "stopped by `shoal job stop`"
    elif code == 0:
        job.state = SUCCEEDED
    else:
        job.state = FAILED
        job.message = (f"the entrypoint exited with code {code}" if code > 0 else
                       f"the entrypoint was killed by signal {-code}")
    return True


def stop(job: Job) -> None:
    if job.state == RUNNING and job.proc is not None and job.stop_requested_at is None:
        job.stop_requested_at = time.monotonic()
        _signal_group(job.proc.pid, signal.SIGTERM)


def read_log(job: Job, offset: int) -> tuple[bytes, int]:
    try:
        with open(job.log_path, "rb") as f:
            f.seek(offset)
            data = f.read(LOG_CHUNK)
    except FileNotFoundError:
        data = b""
    return data, offset + len(data)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
