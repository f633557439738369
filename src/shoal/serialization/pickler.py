"""Serialization of values, functions and errors.

A value becomes a ``Serialized``: the pickle stream (``header``) plus the raw
buffers that pickle protocol 5 handed out of band (numpy, torch and Arrow all
do this for their data). The *packed* form lays the header and buffers end to
end, each buffer 64-byte aligned, and a small ``layout`` says where each
buffer starts; that packed form is what travels inline in a message or sits
in the shared-memory arena, and ``deserialize`` rebuilds the value from it
without copying the buffers.

Refs nested inside a value (ObjectRef, actor handles) report their ids to the
active ``capture_refs`` context while pickling, so the node can keep those
objects alive as long as the value that contains them.
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import sys
import threading

import cloudpickle

from ..exceptions import SerializationError
from .torch import reducers as torch_reducers

_ALIGN = 64
_INBAND_LIMIT = 4096   # buffers smaller than this stay inside the pickle stream
_capture = threading.local()


@contextlib.contextmanager
def capture_refs():
    """Collect the ids of refs pickled inside this block into the yielded list."""
    outer = getattr(_capture, "ids", None)
    ids: list = []
    _capture.ids = ids
    try:
        yield ids
    finally:
        _capture.ids = outer


def note_ref(object_id: bytes) -> None:
    """Called by a ref's ``__reduce__``: record it in the active capture."""
    ids = getattr(_capture, "ids", None)
    if ids is not None:
        ids.append(object_id)


class Serialized:
    __slots__ = ("header", "buffers", "contained", "size")

    def __init__(self, header: bytes, buffers: list, contained: list):
        self.header = header
        self.buffers = buffers
        self.contained = contained
        size = len(header)
        for b in buffers:
            size = _aligned(size) + b.nbytes
        self.size = size


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) & ~(_ALIGN - 1)


_SCALARS = frozenset([type(None), bool, int, float, str, bytes])


def serialize(value) -> Serialized:
    """Pickle ``value``; raises SerializationError saying why it cannot be."""
    if type(value) in _SCALARS:   # hot: no class to ship by value, no buffers
        return Serialized(pickle.dumps(value, 5), [], [])
    buffers: list = []

    def keep_out_of_band(buf: pickle.PickleBuffer):
        raw = buf.raw()
        if raw.nbytes < _INBAND_LIMIT:
            return True
        buffers.append(raw)
        return False

    with capture_refs() as contained:
        try:
            header = _dumps(value, keep_out_of_band)
        except Exception as e:  # pickling raises many types; name the value and the cause
            raise SerializationError(
                f"could not serialize {_describe(value)}: {type(e).__name__}: {e}") from e
    return Serialized(header, buffers, contained)


class _LibraryPickler(cloudpickle.CloudPickler):
    """CloudPickler plus shoal's reducers for library types (torch tensors),
    used only once such a library has been imported."""
    reducers: dict = {}

    def reducer_override(self, obj):
        reduce = self.reducers.get(type(obj))
        if reduce is not None:
            return reduce(obj)
        return super().reducer_override(obj)


def _dumps(value, buffer_callback) -> bytes:
    f = io.BytesIO()
    extra = torch_reducers()
    if extra:
        _LibraryPickler.reducers = extra
        _LibraryPickler(f, protocol=5, buffer_callback=buffer_callback).dump(value)
    else:
        cloudpickle.CloudPickler(f, protocol=5, buffer_callback=buffer_callback).dump(value)
    return f.getvalue()


def _describe(value) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"a value of type {type(value).__name__} ({text})"


def pack_inline(s: Serialized) -> tuple[bytes, tuple | None]:
    """The packed form as bytes, and its layout (None when there are no buffers)."""
    if not s.buffers:
        return s.header, None
    out = bytearray(s.size)
    layout = write_packed(s, memoryview(out))
    return bytes(out), layout


def write_packed(s: Serialized, dest: memoryview) -> tuple:
    """Write the packed form into ``dest`` (at least ``s.size`` bytes) and
    return its layout: (header length, ((offset, length), ...))."""
    n = len(s.header)
    dest[:n] = s.header
    spans = []
    pos = n
    for b in s.buffers:
        pos = _aligned(pos)
        end = pos + b.nbytes
        dest[pos:end] = b   # PickleBuffer.raw() is a flat byte view
        spans.append((pos, b.nbytes))
        pos = end
    return (n, tuple(spans))


def deserialize(data, layout):
    """Rebuild a value from its packed form (bytes or a memoryview)."""
    if layout is None:
        return pickle.loads(data)
    mv = data if isinstance(data, memoryview) else memoryview(data)
    header_len, spans = layout
    return pickle.loads(mv[:header_len], buffers=[mv[o:o + n] for o, n in spans])


_modules_checked: set = set()


def _job_modules_by_value(fn) -> None:
    """In a cluster job, modules of the job's working directory cannot be
    imported by workers (they run elsewhere): pickle those by value."""
    workdir = os.environ.get("SHOAL_JOB_WORKING_DIR")
    name = getattr(fn, "__module__", None)
    if not workdir or name in (None, "__main__") or name in _modules_checked:
        return
    _modules_checked.add(name)
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if path and os.path.abspath(path).startswith(os.path.abspath(workdir) + os.sep):
        cloudpickle.register_pickle_by_value(module)


def dumps_function(fn) -> bytes:
    """Pickle a function or class by value where it must be (``__main__``,
    notebooks, closures, a cluster job's own modules) and by reference where
    it can be imported."""
    _job_modules_by_value(fn)
    try:
        return cloudpickle.dumps(fn, protocol=5)
    except Exception as e:
        raise SerializationError(
            f"could not serialize {getattr(fn, '__qualname__', fn)!r}: {type(e).__name__}: {e}. "
            "Remote functions and classes must not capture unpicklable objects "
            "(locks, open files, sockets) in their closure or globals.") from e


def loads_function(blob: bytes):
    return pickle.loads(blob)
