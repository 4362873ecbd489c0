"""BLAS threads during a run. One responsibility: the threadpoolctl boundary (`one_blas_thread`).

numpy and scipy hand matrix products to OpenBLAS, which starts a thread per core for each and
lets them spin between calls. A run already spreads its work over the cores itself (the reader's
threads, the detector's row strips), so BLAS's own threads only compete with them: the k-means
classes' distance products and the sub-pixel registration's matrix DFT went 1.4 x and 1.7 x
faster on one BLAS thread, a year of a 1000 x 1000 px AOI 10 % faster end to end, and four AOIs
on two worker processes 25 % (`bench/e2e.py`, `bench/scale.py`; README, Performance).
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
