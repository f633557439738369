"""``runtime_env={"working_dir": ...}``: a driver's code directory on every
node that runs its work.

The driver packs the directory once (tar.gz, ``__pycache__`` left out, at
most ``max_message_bytes``); the package's id is a hash of its bytes. The
driver's node keeps the bytes and unpacks them into its packages directory;
every task and actor the driver (or a task of it) submits carries the id in
its options (``"wd"``); a node that forwards such a task sends the package
over the link first, once per link (node/packages.py). A worker that runs a
task with a working directory puts the unpacked directory first on
``sys.path`` and makes it the current directory, as Ray does. A cluster job
(``shoal job submit --working-dir``) uses its working directory this way.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile

from .cluster.jobs import pack_working_dir, unpack_working_dir


def package(path: str, limit: int) -> tuple[bytes, bytes]:
    """(package id, bytes) for directory ``path``."""
    data = pack_working_dir(path, limit)
    return hashlib.sha1(data).digest()[:12], data


def unpack(packages_dir: str, wd: bytes, data: bytes) -> str:
    """Unpack package ``wd`` under ``packages_dir`` once (atomically: into a
    temporary directory renamed into place); its path."""
    path = os.path.join(packages_dir, wd.hex())
    if os.path.isdir(path):
        return path
    os.makedirs(packages_dir, mode=0o700, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".unpacking-", dir=packages_dir)
    try:
        unpack_working_dir(data, tmp)
        os.rename(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(path):       # not a lost race with another unpacker
            raise
    return path


def activate(wd: bytes) -> None:
    """In a worker, before a task of a driver with a working directory."""
    path = os.path.join(os.environ["SHOAL_PACKAGES_DIR"], wd.hex())
    if not sys.path or sys.path[0] != path:
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    if os.getcwd() != path:
        os.chdir(path)
