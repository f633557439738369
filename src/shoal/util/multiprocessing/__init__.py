"""A drop-in for ``multiprocessing.Pool`` whose processes are shoal actors
(``ray.util.multiprocessing``)::

    from shoal.util.multiprocessing import Pool
    with Pool(2) as pool:
        print(pool.map(abs, [-1, -2]))

pool.py is the interface, dispatch.py the actors and the thread that feeds
them, results.py what the calls hand back.
"""
from .pool import Pool
from .results import AsyncResult, IMapIterator, MapResult, TimeoutError

__all__ = ["Pool", "AsyncResult", "MapResult", "IMapIterator", "TimeoutError"]
