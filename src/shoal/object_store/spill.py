"""Spilled objects: the node's overflow from shared memory to local disk.

One file per object, in a directory of its own under the configured
``object_spilling_directory`` (``shoal-spill-<pid>-<random>``), removed when
the node stops. Files are written and read with plain ``os.write``/
``os.readv`` into the arena's memory: one copy each way, no Python buffers.
"""
from __future__ import annotations

import os
import shutil
import tempfile

from .. import scratch


class SpillLost(OSError):
    """A spilled object's file is missing or unreadable."""


class SpillDirectory:
    """Made on the first spill (most runs never spill), removed by ``close``.
    A node that died without closing leaves its directory behind; the next
    one to spill into the same root removes those of dead processes."""

    def __init__(self, root: str | None):
        self.root = root or tempfile.gettempdir()
        self._path = None
        self.bytes = 0           # on disk now
        self.spilled_total = 0   # bytes ever written
        self.restored_total = 0  # bytes ever read back

    @property
    def path(self) -> str:
        if self._path is None:
            self._path = scratch.make("spill", self.root)
        return self._path

    @property
    def created_path(self) -> str | None:
        """The directory, if a spill made it yet."""
        return self._path

    def write(self, object_id: bytes, data: memoryview) -> str:
        path = os.path.join(self.path, object_id.hex())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            done = 0
            while done < len(data):
                done += os.write(fd, data[done:])
        except BaseException:
            os.close(fd)
            try:
                os.unlink(path)     # half a file helps nobody
            except OSError:
                pass
            raise
        os.close(fd)
        self.bytes += len(data)
        self.spilled_total += len(data)
        return path

    def read(self, path: str, into: memoryview) -> None:
        """Fill ``into`` from the file; SpillLost if it is missing or short."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise SpillLost(f"its spill file {path} cannot be opened ({e.strerror})") from None
        try:
            done = 0
            while done < len(into):
                n = os.readv(fd, [into[done:]])
                if n == 0:
                    raise SpillLost(f"its spill file {path} is shorter than the object "
                                    f"({done} of {len(into)} bytes)")
                done += n
        except SpillLost:
            raise
        except OSError as e:
            raise SpillLost(f"its spill file {path} cannot be read ({e.strerror})") from None
        finally:
            os.close(fd)
        self.restored_total += len(into)

    def delete(self, path: str, size: int) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.bytes -= size

    def close(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
