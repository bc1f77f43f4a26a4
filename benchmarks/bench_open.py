"""Open path: open(2) + close(2) of a group's character device, at every level.

Up to patch 4 an open finds its group with vfio_group_get_from_minor: vfio.group_lock and
an IDR lookup.  Patch 5 goes through the cdev (container_of the inode's i_cdev) and
refcount_inc_not_zero, with no global lock.  The path measured is the VFS one:
chrdev_open (cdev lookup and reference), vfio_group_fops_open, and on close
vfio_group_fops_release and the final fput.

* one thread: one open + close of one group;
* two threads: two real threads, each opening and closing its own group ``LOOP`` times
  (the global lock is shared up to patch 4; the kernel is then SMP, so atomics lock too).
  The figure is per open + close, thread start-up included.

Floor: a bare ``threading.Lock`` round trip.  Patches 3 and 4 run with the review fix.

Run: ``pytest benchmarks/bench_open.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from _bench import boot_level, level_label, pci_name, tag
from vfio_ref import LEVELS
from vfio_ref.kernel.cdev import File, vfs_open_chrdev

LOOP = 200
TABLE = "Open path: group file open + close"


def _bound_groups(level: str, n: int) -> tuple[Any, list[int]]:
    """A kernel at ``level`` with ``n`` groups of one bound device each; their dev_ts."""
    from vfio_ref.vfio.platform import Platform

    v = boot_level(level)
    p = Platform(v)
    devts = []
    for i in range(n):
        p.add_group(f"g{i}")
        p.add_device(pci_name(i), f"g{i}")
        assert p.bind(pci_name(i)) == 0
        devts.append(p.group_devt(pci_name(i)))
    return v, devts


def _open_close(k: Any, devt: int) -> None:
    f = vfs_open_chrdev(k, devt)
    assert isinstance(f, File), f
    f.close()


@pytest.mark.parametrize("level", LEVELS)
def test_open_close_one_thread(benchmark: Any, level: str) -> None:
    v, (devt,) = _bound_groups(level, 1)
    k = v.k

    def body() -> None:
        _open_close(k, devt)

    tag(benchmark, table=TABLE, row="one thread", col=level_label(level), key=f"open1@{level}")
    benchmark(body)
    assert k.warnings == [] and k.faults == []


@pytest.mark.parametrize("level", LEVELS)
def test_open_close_two_threads(benchmark: Any, level: str) -> None:
    v, devts = _bound_groups(level, 2)
    k = v.k
    rng = range(LOOP)

    def opener(devt: int) -> Any:
        def run() -> None:
            for _ in rng:
                _open_close(k, devt)

        return run

    a, b = opener(devts[0]), opener(devts[1])

    def body() -> None:
        faults = k.run_threads(a, b, names=("T1", "T2"))
        assert not faults, faults

    tag(
        benchmark,
        table=TABLE,
        row="two threads, own group each",
        col=level_label(level),
        key=f"open2@{level}",
        per=2 * LOOP,
    )
    benchmark(body)
    assert k.warnings == [] and k.faults == []
