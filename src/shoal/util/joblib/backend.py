"""``ShoalBackend``: joblib's process-pool backend, with the pool being
shoal.util.multiprocessing.Pool.

joblib hands the backend one batch of calls at a time (``submit``) and a
callback; the pool runs the batch in one of its worker actors and calls the
callback from its dispatcher thread. Batch sizing is joblib's own
(AutoBatchingMixin): it grows batches until each takes long enough to hide
the round trip. A new pool starts for each ``Parallel`` call (or each
``with Parallel(...)`` block) and is terminated at its end.
"""
from __future__ import annotations

from joblib._parallel_backends import (AutoBatchingMixin, FallbackToBackend,
                                       ParallelBackendBase, PoolManagerMixin,
                                       SequentialBackend)

import shoal
from shoal.util.multiprocessing import Pool


class ShoalBackend(PoolManagerMixin, AutoBatchingMixin, ParallelBackendBase):
    """``n_jobs=-1`` means every CPU of the cluster; more jobs than CPUs are
    capped at the CPU count (each pool worker holds a CPU).
    ``ray_remote_args`` are options for the worker actors."""

    supports_retrieve_callback = True     # the pool calls back; joblib needs no polling
    uses_threads = False
    supports_sharedmem = False

    def __init__(self, nesting_level=None, inner_max_num_threads=None,
                 ray_remote_args: dict | None = None, **kwargs):
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads, **kwargs)
        self.ray_remote_args = ray_remote_args

    def effective_n_jobs(self, n_jobs) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        cpus = max(1, int(shoal.cluster_resources().get("CPU", 1)))
        if n_jobs < 0:
            return max(cpus + 1 + n_jobs, 1)
        return min(n_jobs, cpus)

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None,
                  ray_remote_args: dict | None = None, **_memmapping_options) -> int:
        """Start the pool for one Parallel call; returns how many workers it has.
        joblib's memmapping options do not apply (large arrays already travel
        through shoal's shared-memory store) and are ignored."""
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        args = ray_remote_args if ray_remote_args is not None else self.ray_remote_args
        self._pool = Pool(processes=n_jobs, ray_remote_args=args)
        self.parallel = parallel
        return n_jobs

    def terminate(self) -> None:
        super().terminate()
        self.reset_batch_stats()
