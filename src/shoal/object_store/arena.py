"""The shared-memory arena: one memfd mapped by every process of the node.

The node creates it with ``memfd_create`` and hands the descriptor to the
workers it starts (``pass_fds``). A memfd has no name in /dev/shm, so
nothing can leak: the memory goes back to the system when the last process
holding it exits, however it exits.

Reads are zero-copy: ``view`` returns a read-only memoryview whose exporter
keeps a ``keepalive`` object (an ObjectRef) alive, so the object cannot be
freed while any array built on the view is still in use.
"""
from __future__ import annotations

import ctypes
import mmap
import os


class Arena:
    def __init__(self, fd: int, size: int, owner: bool):
        self.fd = fd
        self.size = size
        self.owner = owner
        self.mmap = mmap.mmap(fd, size, flags=mmap.MAP_SHARED,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._mv = memoryview(self.mmap)

    @classmethod
    def create(cls, size: int) -> "Arena":
        fd = os.memfd_create("shoal-object-store", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        return cls(fd, size, owner=True)

    def writable(self, offset: int, size: int) -> memoryview:
        return self._mv[offset:offset + size]

    def view(self, offset: int, size: int, keepalive) -> memoryview:
        exporter = (ctypes.c_char * size).from_buffer(self.mmap, offset)
        exporter.keepalive = keepalive
        return memoryview(exporter).cast("B").toreadonly()

    def close(self) -> None:
        self._mv.release()
        try:
            self.mmap.close()
        except BufferError:
            pass  # user code still holds views; the mapping goes with the process
        try:
            os.close(self.fd)
        except OSError:
            pass
