"""Relaying worker stdout/stderr to the driver's terminal.

Each line gets Ray's prefix, ``(name pid=123)``, naming the task or actor
that printed it. A worker announces the name it runs under with a marker
line (``LABEL_MARKER`` + name) whenever the name changes, on both streams;
the relay swallows the marker and remembers the name per stream.
"""
from __future__ import annotations

import os
import sys

LABEL_MARKER = b"\x1bshoal-label:"


class StreamRelay:
    __slots__ = ("fd", "pid", "to_stderr", "label", "partial", "enabled", "sink")

    def __init__(self, fd: int, pid: int, to_stderr: bool, enabled: bool, sink=None):
        self.fd = fd
        self.pid = pid
        self.to_stderr = to_stderr
        self.label = "worker"
        self.partial = b""
        self.enabled = enabled      # write to this process's terminal
        self.sink = sink            # and/or hand to sink(to_stderr, text): connected drivers

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
            return False
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        self._emit(lines)
        return True

    def drain(self) -> None:
        """Relay everything the pipe holds now (never blocks: a grandchild
        process may still hold the pipe open)."""
        while self.read():
            pass

    def _emit(self, lines: list[bytes]) -> None:
        out = []
        for line in lines:
            if line.startswith(LABEL_MARKER):
                self.label = line[len(LABEL_MARKER):].decode("utf-8", "replace")
                continue
            out.append(f"({self.label} pid={self.pid}) {line.decode('utf-8', 'replace')}\n")
        if out and self.sink is not None:
            self.sink(self.to_stderr, "".join(out))
        if out and self.enabled:
            stream = sys.stderr if self.to_stderr else sys.stdout
            try:
                stream.write("".join(out))
                stream.flush()
            except (ValueError, OSError):
                pass  # the driver's stream is closed (interpreter exit)


def write_output(to_stderr: bool, text: str) -> None:
    """Workers' output that reached a driver process: show it there."""
    stream = sys.stderr if to_stderr else sys.stdout
    try:
        stream.write(text)
        stream.flush()
    except (ValueError, OSError):
        pass
