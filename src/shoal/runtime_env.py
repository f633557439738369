"""``runtime_env``: a working directory and environment variables for the
work of a job, a task or an actor.

Supported fields: ``working_dir`` (a local directory) and ``env_vars``
(str -> str). Others (pip, conda, py_modules, container...) are ignored with
a warning; a malformed field is a ValueError. ``shoal.init(runtime_env=)``
sets the job's (so does ``shoal job submit --runtime-env-json``: its
env_vars reach the job's driver process and, through SHOAL_JOB_ENV_VARS,
its ``shoal.init()``); ``@remote(runtime_env=)`` / ``.options(runtime_env=)`` a
task's or an actor's. As in Ray, work inherits the runtime_env of whatever
submitted it (the job, or the task or actor it was submitted from); a field
given for a task or actor replaces the inherited one, except ``env_vars``,
which is merged into the inherited variables (the task's win).

Environment variables travel in the task's options (``"env"``). A worker
sets them before a task and puts the previous values back after it; an
actor's process keeps its own for its life.

The process that submits the work (a driver, or a worker for a task that
gives a working_dir of its own) packs the directory once (tar.gz,
``__pycache__`` left out, at most ``max_message_bytes``); the package's id
is a hash of its bytes. That process's node keeps the bytes and unpacks them into its packages directory;
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
import warnings

from .cluster.jobs import pack_working_dir, unpack_working_dir


SUPPORTED = ("working_dir", "env_vars")


def check(runtime_env, what: str) -> dict:
    """The supported fields of a ``runtime_env`` (a ValueError saying what
    is wrong with a malformed one; a warning naming the fields ignored)."""
    if runtime_env is None:
        return {}
    if not isinstance(runtime_env, dict):
        raise ValueError(f"{what}: runtime_env must be a dict, got {type(runtime_env).__name__}")
    ignored = sorted(set(runtime_env) - set(SUPPORTED))
    if ignored:
        warnings.warn(f"{what}: shoal's runtime_env supports {' and '.join(SUPPORTED)} only; "
                      f"ignored: {', '.join(ignored)}", stacklevel=4)
    env = runtime_env.get("env_vars")
    if env is not None and (not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise ValueError(f"{what}: runtime_env env_vars must map names (str) to values (str), "
                         f"got {env!r}")
    for k, v in (env or {}).items():
        if not k or "=" in k or "\0" in k or "\0" in v:
            raise ValueError(f"{what}: runtime_env env_vars has {k!r}: {v!r}, which cannot be "
                             f"an environment variable (names need at least one character, "
                             f"no '=' and no NUL; values no NUL)")
    wd = runtime_env.get("working_dir")
    if wd is not None and not (isinstance(wd, (str, os.PathLike)) and os.path.isdir(wd)):
        raise ValueError(f"{what}: runtime_env working_dir {wd!r} is not a directory (a local "
                         f"directory is needed)")
    return supported(runtime_env) or {}


def supported(runtime_env) -> dict | None:
    """The supported fields of an already checked ``runtime_env``, as a
    task's or actor's options carry them ("renv"); None if none."""
    fields = {k: runtime_env[k] for k in SUPPORTED if runtime_env.get(k) is not None} \
        if runtime_env else None
    return fields or None


def job_env_vars() -> dict:
    """A cluster job's env_vars, in its driver process (cluster/job_cli.py)."""
    import json
    raw = os.environ.get("SHOAL_JOB_ENV_VARS")
    return json.loads(raw) if raw else {}


def describe(core) -> dict:
    """The runtime_env ``core``'s current work runs with."""
    out = {}
    if core.wd is not None:
        given = [path for path, wd in core._packages.items() if wd == core.wd]
        out["working_dir"] = given[0] if given else \
            os.path.join(os.environ.get("SHOAL_PACKAGES_DIR", ""), core.wd.hex())
    if core.env:
        out["env_vars"] = dict(core.env)
    return out


def set_env(env: dict) -> dict:
    """In a worker: set ``env``; what ``restore_env`` needs to undo it."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return saved


def restore_env(saved: dict) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


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
