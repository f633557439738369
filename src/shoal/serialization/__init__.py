"""Turning values into bytes and back, with large buffers out of band.

``pickler`` does the work: cloudpickle at pickle protocol 5, so functions and
classes from ``__main__`` travel by value and numpy arrays, torch CPU tensors
and Arrow buffers hand their memory over as out-of-band buffers that are
written once into shared memory and read back as zero-copy views.
"""
from .pickler import (Serialized, serialize, deserialize, pack_inline, write_packed,
                      dumps_function, loads_function, capture_refs)

__all__ = ["Serialized", "serialize", "deserialize", "pack_inline", "write_packed",
           "dumps_function", "loads_function", "capture_refs"]
