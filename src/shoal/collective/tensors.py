"""Reduction operators, and numpy arrays / torch tensors seen as flat bytes.

The shared-memory and ring backends work on flat, C-contiguous numpy arrays.
``Flat`` gives one for any tensor the user passes: a view when the tensor's
own memory can be used (so an operation is in place), else a copy that
``commit()`` writes back (a non-contiguous tensor, a dtype numpy lacks such
as bfloat16, a CUDA tensor on a host backend). A read-only array (e.g. one
``shoal.get`` returned from the object store) cannot be changed: the result
is a new array, which the operation returns.
"""
from __future__ import annotations

import enum

import numpy as np


class ReduceOp(enum.Enum):
    SUM = "sum"
    PRODUCT = "product"
    MIN = "min"
    MAX = "max"
    MEAN = "mean"


ReduceOp.AVG = ReduceOp.MEAN          # torch.distributed's name for it

UFUNCS = {ReduceOp.SUM: np.add, ReduceOp.MEAN: np.add, ReduceOp.PRODUCT: np.multiply,
          ReduceOp.MIN: np.minimum, ReduceOp.MAX: np.maximum}
OP_CODES = {op: i for i, op in enumerate(ReduceOp)}


def reduce_op(op) -> ReduceOp:
    """``op`` as a ReduceOp: the enum, its name or value ("sum", "MEAN", "avg"),
    or torch.distributed's ReduceOp."""
    if isinstance(op, ReduceOp):
        return op
    name = str(getattr(op, "name", op)).split(".")[-1].upper()
    if name in ("AVG", "AVERAGE"):
        return ReduceOp.MEAN
    if name in ("PROD",):
        return ReduceOp.PRODUCT
    try:
        return ReduceOp[name]
    except KeyError:
        raise ValueError(f"unknown reduce op {op!r}: use one of "
                         f"{', '.join(o.name for o in ReduceOp)}") from None


def is_torch(t) -> bool:
    return type(t).__module__.startswith("torch")


def check_tensor(t, what: str = "tensor") -> None:
    if isinstance(t, np.ndarray) or is_torch(t):
        return
    raise TypeError(f"{what} must be a numpy array or a torch tensor, not {type(t).__name__}")


class Flat:
    """``tensor`` as a flat C-contiguous numpy array (``.array``)."""

    __slots__ = ("tensor", "array", "_copy_back")

    def __init__(self, tensor, what: str = "tensor"):
        check_tensor(tensor, what)
        self.tensor = tensor
        self._copy_back = False
        if isinstance(tensor, np.ndarray):
            if tensor.dtype.hasobject:
                raise TypeError(f"{what} has dtype object; collectives move numbers only")
            a = tensor if tensor.flags.c_contiguous else np.ascontiguousarray(tensor)
            self._copy_back = a is not tensor and tensor.flags.writeable
            if not a.flags.writeable:
                a = a.copy()          # the result becomes a new array
            self.array = a.reshape(-1)
            return
        import torch
        t = tensor.detach()
        if t.device.type != "cpu" or not t.is_contiguous() or t.dtype == torch.bfloat16:
            self._copy_back = True     # numpy has no bfloat16: reduce it as float32
            t = t.to("cpu")
            if t.dtype == torch.bfloat16:
                t = t.float()
            t = t.contiguous()
        self.array = t.numpy().reshape(-1)

    @property
    def nbytes(self) -> int:
        return self.array.nbytes

    def commit(self):
        """The tensor holding the result (the caller's own when it could be)."""
        t = self.tensor
        if isinstance(t, np.ndarray):
            if self._copy_back:
                t[...] = self.array.reshape(t.shape)
                return t
            if self.array.base is not None and np.shares_memory(self.array, t):
                return t
            return self.array.reshape(t.shape)
        if self._copy_back:
            import torch
            t.copy_(torch.from_numpy(self.array).reshape(t.shape))
        return t


def dtype_code(a: np.ndarray) -> int:
    return a.dtype.num


def split_bounds(n: int, parts: int, align: int = 1) -> list[tuple[int, int]]:
    """``parts`` contiguous (lo, hi) ranges covering range(n), as even as
    possible, each start a multiple of ``align`` (elements) where it can be."""
    step = -(-n // parts)
    if align > 1:
        step = -(-step // align) * align
    return [(min(n, i * step), min(n, (i + 1) * step)) for i in range(parts)]


def reduce_into(out: np.ndarray, others, op: ReduceOp) -> None:
    """``out = op(out, *others)``, in the order given (so every rank that
    reduces the same inputs in the same order gets the same bits)."""
    fn = UFUNCS[op]
    for o in others:
        fn(out, o, out=out)


def finish_mean(out: np.ndarray, world: int) -> None:
    np.divide(out, world, out=out)


def check_mean(a: np.ndarray, op: ReduceOp) -> None:
    if op is ReduceOp.MEAN and not np.issubdtype(a.dtype, np.inexact):
        raise TypeError(f"ReduceOp.MEAN needs a floating-point tensor, got {a.dtype}")
