"""Worker stdout/stderr: relayed to the driver's terminal and kept in a
log file per worker and stream.

Each relayed line gets Ray's prefix, ``(name pid=123)``, naming the task or
actor that printed it. A worker announces the name it runs under with a
marker line (``LABEL_MARKER`` + name) whenever the name changes, on both
streams, and the first output of each task with ``TASK_MARKER`` + task id
+ " " + job id + " " + name (worker/output.py); the relay swallows both and
remembers the name and job per stream, and hands each piece of output to
the node with its job, which shows it only to that job's driver. The log file (``worker-<pid>.out`` / ``.err`` in the
node's log directory) holds the lines as printed, with the task markers
kept, so that ``task_output`` can cut out what one task printed.
"""
from __future__ import annotations

import os
import sys

from .progress import PROGRESS_MARKER, driver_progress

LABEL_MARKER = b"\x1bshoal-label:"
TASK_MARKER = b"\x1bshoal-task:"
PROGRESS_BYTES = PROGRESS_MARKER.encode()
MAX_LOG_READ = 1 << 20          # bytes one logs request returns at most


class StreamRelay:
    __slots__ = ("fd", "pid", "to_stderr", "label", "job", "partial", "sink", "log",
                 "logged")

    def __init__(self, fd: int, pid: int, to_stderr: bool, sink, log=None):
        self.fd = fd
        self.pid = pid
        self.to_stderr = to_stderr
        self.label = "worker"
        self.job = None             # the job of the task now writing (None: not known)
        self.partial = b""
        # sink(to_stderr, text, job_id): the node shows it to that job's driver
        self.sink = sink
        self.log = log              # the worker's log file for this stream (binary), or None
        self.logged = 0             # bytes of ``partial`` already in the log

    def read(self):
        """Relay what is readable: True if something was, None if nothing is
        there now, False at end of stream."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            if self.partial:
                self._emit([self.partial])
                self.partial = b""
                self.logged = 0
            return False
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        if lines:
            self._emit(lines)
            self.logged = 0         # the line it had begun is complete now
        if self.partial and self.log is not None and not self.partial.startswith(b"\x1bshoal-"):
            # a line without its end yet (print(end="")): the terminal waits
            # for the rest, the log file takes it now (the next task's output
            # may come from another worker, and this one may print no more)
            self._log(self.partial[self.logged:])
            self.logged = len(self.partial)
        return True

    def _log(self, data: bytes) -> None:
        try:
            self.log.write(data)
            self.log.flush()
        except (OSError, ValueError):
            self.log = None     # the disk is full or the file went: keep relaying

    def close_log(self) -> None:
        if self.log is not None:
            try:
                self.log.close()
            except OSError:
                pass
            self.log = None

    def drain(self) -> None:
        """Relay everything the pipe holds now (never blocks: a grandchild
        process may still hold the pipe open)."""
        while self.read():
            pass

    def _emit(self, lines: list[bytes]) -> None:
        out = []
        kept = []
        for line in lines:
            if line.startswith(b"\x1bshoal-"):
                if line.startswith(LABEL_MARKER):
                    self.label = line[len(LABEL_MARKER):].decode("utf-8", "replace")
                    continue
                if line.startswith(TASK_MARKER):
                    _, job, label = parse_task_marker(line)
                    if job != self.job and out:         # what came before is the other job's
                        self.sink(self.to_stderr, "".join(out), self.job)
                        out = []
                    self.job, self.label = job, label
                    kept.append(line)
                    continue
                if line.startswith(PROGRESS_BYTES):    # a progress bar's report: for drivers
                    out.append(line.decode("utf-8", "replace") + "\n")
                    continue
            kept.append(line)
            out.append(f"({self.label} pid={self.pid}) {line.decode('utf-8', 'replace')}\n")
        if kept and self.log is not None:
            data = b"\n".join(kept) + b"\n"
            if self.logged and kept[0] is lines[0]:
                data = data[self.logged:]       # its start went to the log already
            self._log(data)
        if out:
            self.sink(self.to_stderr, "".join(out), self.job)


def parse_task_marker(line: bytes) -> tuple[bytes, bytes | None, str]:
    """(task id hex, job id or None, label) of a TASK_MARKER line."""
    task_hex, _, rest = line[len(TASK_MARKER):].partition(b" ")
    job_hex, _, label = rest.partition(b" ")
    try:
        job = bytes.fromhex(job_hex.decode()) if job_hex != b"-" else None
    except ValueError:
        job = None
    return task_hex, job, label.decode("utf-8", "replace")


def write_output(to_stderr: bool, text: str) -> None:
    """Workers' output that reached a driver's terminal (relayed here, or
    sent from the node it is connected to): progress reports go to the
    driver's bars, the rest is printed."""
    if PROGRESS_MARKER in text:
        progress = driver_progress()
        text = "".join(line for line in text.splitlines(keepends=True)
                       if not progress.marker(line.rstrip("\n")))
        if not text:
            return
    progress = driver_progress() if _bars_shown() else None
    if progress is not None:
        progress.before_output()
    stream = sys.stderr if to_stderr else sys.stdout
    try:
        stream.write(text)
        stream.flush()
    except (ValueError, OSError):
        pass  # the driver's stream is closed (interpreter exit)
    if progress is not None:
        progress.after_output()


def _bars_shown() -> bool:
    from . import progress
    return progress._progress is not None and bool(progress._progress.bars)


def open_log(directory: str, pid: int, to_stderr: bool):
    """The worker's log file for one stream, created 0600; None if it cannot be."""
    path = log_path(directory, pid, to_stderr)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError:
        return None
    return os.fdopen(fd, "ab")


def log_path(directory: str, pid: int, to_stderr: bool) -> str:
    return os.path.join(directory, f"worker-{pid}.{'err' if to_stderr else 'out'}")


def read_output(path: str, offset: int, task_hex: str | None = None) -> tuple[str, int]:
    """What the log at ``path`` holds from ``offset`` on (at most
    MAX_LOG_READ bytes), without markers, and the offset to read from next.
    With ``task_hex``: only the lines that task printed, and offsets count
    within those lines."""
    try:
        with open(path, "rb") as f:
            if task_hex is None:
                f.seek(offset)
                data = f.read(MAX_LOG_READ)
                end = data.rfind(b"\n") + 1 if len(data) == MAX_LOG_READ else len(data)
                data = data[:end]
                return _strip_markers(data), offset + end
            data = f.read()
    except FileNotFoundError:
        return "", offset
    mine = task_output(data, task_hex.encode())
    chunk = mine[offset:offset + MAX_LOG_READ]
    return chunk.decode("utf-8", "replace"), offset + len(chunk)


def task_output(data: bytes, task_hex: bytes) -> bytes:
    """The lines of a worker's log written while ``task_hex`` was its task."""
    out = []
    current = None
    for line in data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"):
        if line.startswith(TASK_MARKER):
            current = parse_task_marker(line)[0]
        elif current == task_hex:
            out.append(line + b"\n")
    return b"".join(out)


def _strip_markers(data: bytes) -> str:
    if TASK_MARKER in data:
        data = b"".join(line for line in data.splitlines(keepends=True)
                        if not line.startswith(TASK_MARKER))
    return data.decode("utf-8", "replace")
