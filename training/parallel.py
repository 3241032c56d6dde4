"""Parallel cross-validation (joblib's loky worker processes) without its one expected warning."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def expected_worker_restarts() -> Iterator[None]:
    """Silence joblib's "A worker stopped while some jobs were given to the executor ... memory leak".

    loky stops a worker that stayed idle past its timeout between two parallel calls, and warns if
    jobs were queued meanwhile; it starts a new worker and resubmits them, so every result arrives
    and nothing leaks. The warning is raised in loky's management thread, so the filter is the
    process-wide one, for the duration of the block.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given to the executor",
                                category=UserWarning)
        yield
