"""eventfd: the kernel signals a counter, user space's read sleeps until it is not zero."""

from __future__ import annotations

import time

from vfio_ref.explorer import Execution, RawFinding, explore
from vfio_ref.kernel import Kernel, Task
from vfio_ref.kernel.eventfd import eventfd_ctx_create, eventfd_read, eventfd_signal


def test_a_read_takes_the_whole_count_and_resets_it(k: Kernel) -> None:
    ctx = eventfd_ctx_create(k, "req")
    assert eventfd_signal(ctx, 1) == 1
    assert eventfd_signal(ctx, 2) == 2
    assert eventfd_read(ctx) == 3
    assert ctx.count == 0


def test_a_read_sleeps_until_the_kernel_signals(k: Kernel) -> None:
    ctx = eventfd_ctx_create(k, "req")
    got: list[int] = []
    reader_task: list[Task] = []

    def reader() -> None:
        reader_task.append(k.current())
        got.append(eventfd_read(ctx))

    def signaller() -> None:
        deadline = time.monotonic() + 2
        while not reader_task or reader_task[0].waiting_for is not ctx.wqh:
            assert time.monotonic() < deadline, "the reader never slept"
            time.sleep(0.001)
        eventfd_signal(ctx, 1)

    assert k.run_threads(reader, signaller) == []
    assert got == [1]


def _signal_and_read(ctx: Execution) -> None:
    efd = eventfd_ctx_create(ctx.kernel, "req")

    def reader() -> None:
        ctx.data["read"] = eventfd_read(efd)

    t1 = ctx.spawn("user", reader)
    t2 = ctx.spawn("kernel", lambda: eventfd_signal(efd, 1))
    ctx.join(t1, t2)


def test_in_every_interleaving_the_reader_wakes_with_the_signal() -> None:
    reads: set[int] = set()

    def judge(ctx: Execution) -> list[RawFinding]:
        if ctx.deadlock is not None:
            return [RawFinding("deadlock", str(ctx.deadlock), "deadlock")]
        reads.add(ctx.data["read"])
        return []

    ex = explore(_signal_and_read, judge, bound=2, traces=False)
    assert ex.clean and ex.stats.exhausted
    assert reads == {1}
