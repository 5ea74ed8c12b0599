"""One BLAS thread for the agent's and the simulator's processes, unless the environment says otherwise.

The matrix products here are small (a 2 s audio window's 8 x 4097 spectrum by a 4097 x 20 band
matrix, a 136 x 136 covariance); a multi-threaded BLAS hands each of them between threads that then
spin waiting for the next: a leak window's features took 34-39 ms of CPU on two threads against
2.6-4.1 ms on one, on a two-core machine while other work ran (the products are not split along
their sums, so the results do not change). A gateway's CPU belongs to its polls and its uplink.
The variables are read once, when numpy's BLAS is loaded: `prefer_one_blas_thread` must run before
numpy is imported.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Final

# OpenBLAS (numpy's and scipy's wheels), an OpenMP build, and MKL where a distribution's numpy has it.
BLAS_THREAD_VARIABLES: Final = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def prefer_one_blas_thread(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set each BLAS thread count to 1 where the environment does not set it already."""
    for name in BLAS_THREAD_VARIABLES:
        environ.setdefault(name, "1")
