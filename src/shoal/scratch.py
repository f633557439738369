"""Scratch directories a node process owns under a root (by default the
system's temporary directory): ``shoal-<kind>-<pid>-<random>``, made on
first use and removed by their owner when it stops. One whose owner died
without removing it is removed by the next process that makes one of the
same kind there (spilled objects, embedded nodes' worker logs)."""
from __future__ import annotations

import os
import shutil
import tempfile

import psutil


def make(kind: str, root: str | None = None) -> str:
    """A new directory of ``kind`` for this process (mode 0700)."""
    root = root or tempfile.gettempdir()
    os.makedirs(root, exist_ok=True)
    remove_orphans(kind, root)
    return tempfile.mkdtemp(prefix=f"shoal-{kind}-{os.getpid()}-", dir=root)


def remove_orphans(kind: str, root: str) -> None:
    """Remove ``kind`` directories under ``root`` whose process is gone."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if len(parts) < 4 or parts[:2] != ["shoal", kind] or not parts[2].isdigit():
            continue
        if psutil.pid_exists(int(parts[2])):
            continue                  # its process still runs
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
