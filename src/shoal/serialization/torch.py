"""torch CPU tensors, out of band.

torch pickles a tensor's storage inside the pickle stream (a copy into the
message, another out of it). Here a contiguous CPU tensor travels as the
numpy array that shares its memory, so the data goes out of band like any
array and comes back as a tensor over the shared-memory view. Tensors that
need autograd, live on a GPU, are sparse or strided keep torch's own pickling.
torch is never imported here: the reducer is only installed when the user's
code has imported it.
"""
from __future__ import annotations

import sys
import warnings

_VIEW_AS = {"bfloat16": "int16", "float8_e4m3fn": "int8", "float8_e5m2": "int8"}


def reducers() -> dict:
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    return {torch.Tensor: _reduce_tensor}


def _reduce_tensor(t):
    if (t.device.type != "cpu" or t.requires_grad or t.is_sparse or t.is_quantized
            or not t.is_contiguous() or t.dtype.is_complex and False):
        return t.__reduce_ex__(5)
    dtype = str(t.dtype).replace("torch.", "")
    view_as = _VIEW_AS.get(dtype)
    import torch
    src = t.view(getattr(torch, view_as)) if view_as else t
    return (_rebuild_tensor, (src.numpy(), dtype))


def _rebuild_tensor(array, dtype: str):
    import torch
    with warnings.catch_warnings():
        # a read-only view of shared memory; torch warns that it is not writable
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(array)
    if dtype in _VIEW_AS:
        t = t.view(getattr(torch, dtype))
    return t
