"""Running units of work on a Dask cluster (the optional ``cluster`` extra).

The units are the same as on the cores of one machine: a report's cells, and the parts of a
depth-first search of a catalogue scenario (a subtree, named by its node and choice, with the
first execution's search state carried along).  Dask distributed schedules them, moves them
and their results, and reruns the unit of a worker lost mid-run; nothing here does any of
that itself.  ``--cluster ADDRESS`` (a scheduler's ``tcp://host:port``) sends the work there;
the workers must have vfio-ref installed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .kernel.core import ModelUsageError

T = TypeVar("T")
R = TypeVar("R")


def client(address: str) -> Any:
    """A Dask client connected to the scheduler at ``address``."""
    try:
        from distributed import Client as _Client
    except ModuleNotFoundError:
        raise ModelUsageError(
            "--cluster needs Dask distributed: pip install 'vfio-ref[cluster]'"
        ) from None
    make: Any = _Client
    try:
        return make(address, timeout="10s")
    except (OSError, TimeoutError) as e:
        raise ModelUsageError(f"cannot reach the Dask scheduler at {address!r}: {e}") from None


def map_in_order(address: str, fn: Callable[[T], R], items: Sequence[T], *, retries: int = 2) -> list[R]:
    """``[fn(x) for x in items]`` computed on the cluster at ``address`` (a unit whose
    worker is lost is run again by Dask, up to ``retries`` times)."""
    c = client(address)
    try:
        futures = c.map(fn, list(items), pure=False, retries=retries)
        return list(c.gather(futures))
    finally:
        c.close()
