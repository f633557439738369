"""``Checkpoint``: a directory of files a training loop reports and resumes from.

Checkpoints cross machines as an uncompressed tar in the object store (a
worker's directory is packed by ``report``, unpacked by the trainer into
storage; the latest is packed once per restart and unpacked by each worker),
so no shared file system is needed.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
import tempfile


class Checkpoint:
    def __init__(self, path: str):
        self.path = os.path.abspath(os.fspath(path))

    @classmethod
    def from_directory(cls, path) -> "Checkpoint":
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise ValueError(f"Checkpoint.from_directory: {path!r} is not a directory")
        return cls(path)

    def to_directory(self, path=None) -> str:
        """Copy the checkpoint's files into ``path`` (a new temporary
        directory when None); returns the directory."""
        path = tempfile.mkdtemp(prefix="shoal-checkpoint-") if path is None else os.fspath(path)
        if os.path.abspath(path) != self.path:
            shutil.copytree(self.path, path, dirs_exist_ok=True)
        return path

    @contextlib.contextmanager
    def as_directory(self):
        """The checkpoint's directory, read-only by convention."""
        yield self.path

    def __repr__(self):
        return f"Checkpoint(path={self.path!r})"

    def __eq__(self, other):
        return isinstance(other, Checkpoint) and other.path == self.path

    def __hash__(self):
        return hash(self.path)


def pack(path: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in sorted(os.listdir(path)):
            tar.add(os.path.join(path, name), arcname=name)
    return buf.getvalue()


def unpack(data: bytes, path: str) -> str:
    os.makedirs(path, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(path, filter="data")
    return path
