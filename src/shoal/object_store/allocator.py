"""First-fit allocator over the arena's byte range, with coalescing.

Owned by the node; only the node's lock holder may call it. Freed blocks are
reused lowest-address first, so a workload that puts and frees objects of
similar size keeps writing into pages that are already faulted in (fresh
pages cost ~8x more per byte than touched ones).
"""
from __future__ import annotations

import bisect

ALIGN = 64


class Allocator:
    def __init__(self, capacity: int, reserved: int = 0):
        self.capacity = capacity
        self._free_starts: list[int] = [reserved]       # sorted offsets of free blocks
        self._free_size: dict[int, int] = {reserved: capacity - reserved}
        self._used: dict[int, int] = {}
        self.used_bytes = 0

    def alloc(self, size: int) -> int | None:
        """Offset of a block of ``size`` bytes, or None when nothing fits."""
        size = max(ALIGN, (size + ALIGN - 1) & ~(ALIGN - 1))
        for i, start in enumerate(self._free_starts):
            avail = self._free_size[start]
            if avail >= size:
                del self._free_size[start]
                if avail == size:
                    del self._free_starts[i]
                else:
                    self._free_starts[i] = start + size
                    self._free_size[start + size] = avail - size
                self._used[start] = size
                self.used_bytes += size
                return start
        return None

    def free(self, offset: int) -> None:
        size = self._used.pop(offset)
        self.used_bytes -= size
        starts = self._free_starts
        i = bisect.bisect_left(starts, offset)
        # merge with the following free block
        if i < len(starts) and starts[i] == offset + size:
            size += self._free_size.pop(starts[i])
            del starts[i]
        # merge with the preceding free block
        if i > 0 and starts[i - 1] + self._free_size[starts[i - 1]] == offset:
            self._free_size[starts[i - 1]] += size
        else:
            starts.insert(i, offset)
            self._free_size[offset] = size

    def largest_free(self) -> int:
        return max(self._free_size.values(), default=0)
