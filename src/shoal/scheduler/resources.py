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
    __slots__ = ("request", "gpu_ids", "gpu_share", "_described")

    def __init__(self, request: dict[str, int], gpu_ids: list[int], gpu_share: int):
        self.request = request
        self.gpu_ids = gpu_ids
        self.gpu_share = gpu_share   # per device, in units
        self._described = None

    def describe(self) -> dict:
        """The assigned amounts as the user wrote them ({"CPU": 1.0, ...})."""
        if self._described is None:
            self._described = {k: v / _UNIT for k, v in self.request.items()}
        return self._described


class NodeResources:
    def __init__(self, total: dict[str, float]):
        self.total = {k: _q(v) for k, v in total.items() if v > 0}
        self.available = dict(self.total)
        self.gpu_free = [_UNIT] * int(total.get("GPU", 0))

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
        return Assignment(request, gpu_ids, g if g < _UNIT else _UNIT)

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
            fits = [(free, i) for i, free in enumerate(self.gpu_free) if free >= g]
            return [min(fits)[1]] if fits else None
        whole = [i for i, free in enumerate(self.gpu_free) if free == _UNIT]
        n = g // _UNIT
        return whole[:n] if len(whole) >= n else None

    def as_floats(self, which: dict[str, int]) -> dict[str, float]:
        return {k: v / _UNIT for k, v in which.items()}
