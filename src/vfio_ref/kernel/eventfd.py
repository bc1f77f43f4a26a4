"""eventfd (fs/eventfd.c): a counter the kernel signals and user space reads.

A driver that wants user space's attention (vfio-pci's device request, say) signals the
context: ``eventfd_signal`` adds to the count under the context's wait-queue lock and wakes
the readers.  User space's blocking read sleeps until the count is not zero, then takes it
all and resets it to zero (the default, non-semaphore mode).

Simplifications: the context is created and held directly (the eventfd file, its
descriptor and the context's kref are not modelled: nothing here ever frees one), and
``eventfd_signal`` never sees the count overflow.  Costs: O(1) per operation.
"""

from __future__ import annotations

from .core import Kernel
from .mutex import SpinLock
from .wait import WaitQueueHead, wait_event, wake_up


class EventfdCtx:
    """struct eventfd_ctx: ``count`` (under ``wqh_lock``, the wait queue's lock) and the
    wait queue readers sleep on."""

    __slots__ = ("count", "kernel", "name", "wqh", "wqh_lock")

    def __init__(self, kernel: Kernel, name: str = "eventfd") -> None:
        self.kernel = kernel
        self.name = name
        self.count = 0
        self.wqh_lock = SpinLock(kernel, "&ctx->wqh.lock")
        self.wqh = WaitQueueHead(kernel, "&ctx->wqh")

    def __repr__(self) -> str:
        return f"<eventfd_ctx {self.name} count={self.count}>"


def eventfd_ctx_create(k: Kernel, name: str = "eventfd") -> EventfdCtx:
    """eventfd(2), as far as the model needs it: a fresh context with a count of 0."""
    return EventfdCtx(k, name)


def eventfd_signal(ctx: EventfdCtx, n: int) -> int:
    """Add ``n`` to the count and wake the readers; returns ``n``."""
    ctx.wqh_lock.spin_lock()
    ctx.count += n
    ctx.wqh_lock.spin_unlock()
    wake_up(ctx.wqh)
    return n


def eventfd_read(ctx: EventfdCtx) -> int:
    """A blocking read(2) of the eventfd: sleep until the count is not zero, then return
    it and reset it to zero."""
    ctx.wqh_lock.spin_lock()
    while ctx.count == 0:
        ctx.wqh_lock.spin_unlock()
        wait_event(ctx.wqh, lambda: ctx.count > 0)
        ctx.wqh_lock.spin_lock()
    ucnt = ctx.count
    ctx.count = 0
    ctx.wqh_lock.spin_unlock()
    return ucnt


__all__ = ["EventfdCtx", "eventfd_ctx_create", "eventfd_read", "eventfd_signal"]
