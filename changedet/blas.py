"""BLAS threads during a run. One responsibility: the threadpoolctl boundary (`one_blas_thread`).

numpy and scipy hand matrix products to OpenBLAS, which starts a thread per core for each and
lets them spin between calls. A run already spreads its work over the cores itself (the reader's
threads, the detector's row strips), so BLAS's own threads only compete with them. On one BLAS
thread, on 2 cores: the change stage (the k-means classes' distance products) 4.0 -> 2.9 s and
co-registration (the sub-pixel matrix DFT) 1.4 -> 0.8 s over a year of a 1000 x 1000 px AOI,
the whole run 19.4-20.6 -> 17.6-17.7 s (`bench/e2e.py`); a first monitoring run of four AOIs
48.7 -> 37.6 s (`bench/scale.py --monitor`). The same values to the bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["one_blas_thread"]


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread inside the block, as it was after. Process-wide while it lasts (BLAS
    has one pool per process): a run's own threads and any others."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
