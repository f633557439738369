"""A joblib backend that runs joblib's batches on shoal (``ray.util.joblib``)::

    import joblib
    from shoal.util.joblib import register_shoal

    register_shoal()
    with joblib.parallel_backend("shoal"):
        print(joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(4)))

scikit-learn's ``n_jobs`` then uses shoal workers. backend.py holds the
backend class.
"""
from __future__ import annotations

__all__ = ["register_shoal", "register_ray"]


def register_shoal() -> None:
    """Make ``joblib.parallel_backend("shoal")`` available."""
    from joblib import register_parallel_backend

    from .backend import ShoalBackend
    register_parallel_backend("shoal", ShoalBackend)


def register_ray() -> None:
    """Ray's name: make ``joblib.parallel_backend("ray")`` run on shoal, so
    Ray programs using ``ray.util.joblib`` work unchanged."""
    from joblib import register_parallel_backend

    from .backend import ShoalBackend
    register_parallel_backend("ray", ShoalBackend)
