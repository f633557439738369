"""A node's resources: totals, what is free, and which GPU serves whom.

Quantities are kept in units of 1/10000 (as Ray does) so that fractional
requests add and subtract exactly. GPUs are also tracked per device: a
request for 0.5 GPU is packed onto the fullest device that still has room;
a request for 2 GPUs takes two whole free devices. The devices' ids go to the
worker, which sets CUDA_VISIBLE_DEVICES from them.
"""
from __future__ import annotations

_UNIT = 10000


def _q(x: float) -> int:
    return int(round(x * _UNIT))


class Assignment:
    __slots__ = ("request", "gpu_ids", "gpu_share", "pool", "_described")

    def __init__(self, request: dict[str, int], gpu_ids: list[int], gpu_share: int,
                 pool: "NodeResources"):
        self.request = request
        self.gpu_ids = gpu_ids
        self.gpu_share = gpu_share   # per device, in units
        self.pool = pool             # where it came from, and goes back to
        self._described = None

    def describe(self) -> dict:
        """The assigned amounts as the user wrote them ({"CPU": 1.0, ...})."""
        if self._described is None:
            self._described = {k: v / _UNIT for k, v in self.request.items()}
        return self._described


class NodeResources:
    """A pool of resources: the node's, or a placement-group bundle's (whose
    GPUs are the node's devices it reserved: ``gpus`` maps device id to the
    units of it the pool holds)."""

    def __init__(self, total: dict[str, float], gpus: dict[int, int] | None = None):
        self.total = {k: _q(v) for k, v in total.items() if v > 0}
        self.available = dict(self.total)
        if gpus is None:
            n = total.get("GPU", 0)
            gpus = {i: _UNIT for i in range(int(n))}
            if n % 1:
                gpus[int(n)] = _q(n % 1)
        self.gpu_free = dict(gpus)
        self.gpu_size = dict(gpus)

    @staticmethod
    def quantize(request: dict[str, float]) -> dict[str, int]:
        return {k: _q(v) for k, v in request.items() if v > 0}

    def infeasible_reason(self, request: dict[str, int]) -> str | None:
        """Why no amount of waiting lets ``request`` run here, or None."""
        for k, v in request.items():
            have = self.total.get(k, 0)
            if v > have:
                return (f"it requires {k}={v / _UNIT:g} but this cluster has only "
                        f"{k}={have / _UNIT:g} in total")
        g = request.get("GPU", 0)
        if g > _UNIT and g % _UNIT:
            return f"GPU requests above 1 must be whole numbers (got {g / _UNIT:g})"
        return None

    def try_acquire(self, request: dict[str, int]) -> Assignment | None:
        avail = self.available
        for k, v in request.items():
            if avail.get(k, 0) < v:
                return None
        g = request.get("GPU", 0)
        gpu_ids: list[int] = []
        if g:
            gpu_ids = self._pick_gpus(g)
            if gpu_ids is None:
                return None
            share = g if g < _UNIT else _UNIT
            for i in gpu_ids:
                self.gpu_free[i] -= share
        for k, v in request.items():
            avail[k] -= v
        return Assignment(request, gpu_ids, g if g < _UNIT else _UNIT, self)

    def force_acquire(self, a: Assignment) -> None:
        """Take ``a``'s resources back even past zero (a worker resuming after
        a blocking get: it must continue, and the deficit clears as it ends)."""
        for k, v in a.request.items():
            self.available[k] = self.available.get(k, 0) - v
        for i in a.gpu_ids:
            self.gpu_free[i] -= a.gpu_share

    def release(self, a: Assignment) -> None:
        for k, v in a.request.items():
            self.available[k] = self.available.get(k, 0) + v
        for i in a.gpu_ids:
            self.gpu_free[i] += a.gpu_share

    def _pick_gpus(self, g: int) -> list[int] | None:
        if g < _UNIT:
            fits = [(free, i) for i, free in self.gpu_free.items() if free >= g]
            return [min(fits)[1]] if fits else None
        whole = [i for i, free in self.gpu_free.items() if free == _UNIT]
        n = g // _UNIT
        return whole[:n] if len(whole) >= n else None

    def fits_now(self, request: dict[str, int]) -> bool:
        avail = self.available
        return all(avail.get(k, 0) >= v for k, v in request.items())

    def fits_total(self, request: dict[str, int]) -> bool:
        """Could ``request`` ever be acquired from this pool (were it empty)?"""
        for k, v in request.items():
            if v > self.total.get(k, 0):
                return False
        g = request.get("GPU", 0)
        if g >= _UNIT:
            return sum(1 for size in self.gpu_size.values() if size == _UNIT) >= g // _UNIT
        return not g or any(size >= g for size in self.gpu_size.values())

    def is_idle(self) -> bool:
        return self.available == self.total

    def as_floats(self, which: dict[str, int]) -> dict[str, float]:
        return {k: v / _UNIT for k, v in which.items()}
