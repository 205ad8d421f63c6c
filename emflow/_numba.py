"""Central numba settings for all emflow kernels.

``EMFLOW_NUMBA_CACHE`` (default ``1``) turns numba's on-disk cache on or off. Concurrent
Snakemake jobs must not compile into one cache directory at the same time (numba#4807):
the workflow gives each job its own ``NUMBA_CACHE_DIR`` (see ``rules/common.smk``).
``fastmath`` stays off: kernels must match the numpy references to float32 precision.
"""

from __future__ import annotations

import os

import numba

CACHE = os.environ.get("EMFLOW_NUMBA_CACHE", "1") not in ("0", "false", "False", "")


def jit(*args, **kwargs):
    """``numba.njit`` with emflow's defaults (``cache`` from the environment, no fastmath)."""
    kwargs.setdefault("cache", CACHE)
    kwargs.setdefault("fastmath", False)
    kwargs.setdefault("nogil", True)
    return numba.njit(*args, **kwargs)


def pjit(*args, **kwargs):
    """Like :func:`jit` with ``parallel=True`` (use ``numba.prange`` in the outer loop)."""
    kwargs.setdefault("parallel", True)
    return jit(*args, **kwargs)


def set_threads(n: int | None) -> None:
    """Limit numba's thread pool to ``n`` threads (``None`` or < 1 leaves the default)."""
    if n is not None and n >= 1:
        numba.set_num_threads(min(int(n), numba.config.NUMBA_NUM_THREADS))
