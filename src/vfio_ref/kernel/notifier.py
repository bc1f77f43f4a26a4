"""Blocking notifier chains (kernel/notifier.c, include/linux/notifier.h), 5.15/5.16 behaviour.

A chain is a singly linked list of :class:`NotifierBlock` sorted by descending ``priority``,
hanging off a :class:`BlockingNotifierHead` that owns an rwsem:

* ``blocking_notifier_chain_register`` takes the rwsem for writing and links the block after
  every block of greater or equal priority.  Linking a block that is already on the chain
  records ``WARN(1, "double register detected")`` and still returns 0 (the -EEXIST return
  only arrived in 5.17).
* ``blocking_notifier_chain_unregister`` takes the rwsem for writing and unlinks the block,
  or returns -ENOENT.  Because callbacks run with the read side held, returning from
  unregister means no callback of that chain is still running: the caller may free the
  block's memory afterwards.  This is the guarantee VFIO patch 1 relies on.
* ``blocking_notifier_call_chain`` returns NOTIFY_DONE at once when the chain is empty (the
  head is looked at without the lock, as the kernel does); otherwise it holds the read side
  while it calls each block in turn, stops early when a return value carries
  NOTIFY_STOP_MASK, and returns the last value it got.

A callback that unregisters from its own chain, directly or through a final put whose
release unregisters, asks for the write side while its task holds the read side.  The
kernel task would sleep forever; here lockdep records a 'read-then-write' report and the
rwsem raises :class:`~vfio_ref.kernel.core.Deadlock`, ending that model thread with the
read side still held (as the stuck kernel task would keep it).

Fault injection: 5.15 cannot fail a registration, but the model offers the point
``"notifier_register@<caller>"`` (-ENOMEM) so that the callers' error paths can be run.
``<caller>`` is the first function outside this module: a group notifier registered
through the IOMMU API shows up as ``notifier_register@iommu_group_register_notifier``.

Costs: register and unregister O(chain length) plus the rwsem; a call O(chain length) plus
the callbacks.  The chain's links are protected by the rwsem, so they are not tracked as
shared data (the kernel's accesses are RCU-marked, which KCSAN does not report); the one
unlocked look at ``head`` and every change of the chain are scheduling points on the head.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, Final

from .bug import WARN
from .core import Kernel, ModelUsageError, caller_outside
from .errno import ENOENT, ENOMEM
from .rwsem import RWSemaphore
from .sched import note_created

NOTIFY_DONE: Final = 0x0000
NOTIFY_OK: Final = 0x0001
NOTIFY_STOP_MASK: Final = 0x8000
NOTIFY_BAD: Final = NOTIFY_STOP_MASK | 0x0002
NOTIFY_STOP: Final = NOTIFY_OK | NOTIFY_STOP_MASK

NotifierFn = Callable[["NotifierBlock", int, Any], int]


class NotifierBlock:
    """struct notifier_block: a callback, its priority and the link to the next block.

    ``NotifierBlock(container, notifier_call, priority)``, all optional: like the other
    embedded substrate objects it is built with the struct that embeds it (``container``,
    for container_of), and the callback is usually set afterwards, as C code assigns
    ``nb.notifier_call``.  Embedded, it is freed, and poisoned, with its container: a chain
    that still links a freed block faults on the next walk.
    """

    __slots__ = ("_poison", "container", "next", "notifier_call", "priority")

    def __init__(
        self, container: Any = None, notifier_call: NotifierFn | None = None, priority: int = 0
    ) -> None:
        if inspect.isroutine(container):
            # A function in the container's place is the callback passed positionally.
            raise ModelUsageError(
                f"NotifierBlock(container, notifier_call, priority): {container!r} looks like a "
                "callback; pass it as notifier_call="
            )
        self.container: Any = container
        self.notifier_call: NotifierFn | None = notifier_call
        self.priority = priority
        self.next: NotifierBlock | None = None

    def __repr__(self) -> str:
        fn = self.notifier_call
        name = getattr(fn, "__name__", repr(fn))
        return f"<notifier_block {name} prio={self.priority}>"


class BlockingNotifierHead:
    """struct blocking_notifier_head: an rwsem and the first block of the chain.

    ``name`` is the rwsem's lockdep class, e.g. ``"&group->notifier.rwsem"``.  Two heads
    that must not be confused by lockdep need two names.
    """

    __slots__ = ("_poison", "container", "head", "kernel", "rwsem")
    _embedded: ClassVar[tuple[str, ...]] = ("rwsem",)

    def __init__(self, kernel: Kernel, name: str) -> None:
        self.kernel = kernel
        self.rwsem = RWSemaphore(kernel, name)
        self.rwsem.container = self
        self.head: NotifierBlock | None = None
        self.container: Any = None
        note_created(kernel.sched, self)

    def blocks(self) -> list[NotifierBlock]:
        """Model helper: the chain in call order (no lock, no scheduling point)."""
        out = []
        nb = self.head
        while nb is not None:
            out.append(nb)
            nb = nb.next
        return out

    def __repr__(self) -> str:
        return f"<blocking_notifier_head {self.rwsem.lock_class} len={len(self.blocks())}>"


def BLOCKING_INIT_NOTIFIER_HEAD(k: Kernel, name: str) -> BlockingNotifierHead:
    """A new, empty chain whose rwsem has lockdep class ``name``."""
    return BlockingNotifierHead(k, name)


# --------------------------------------------------------------------------------------
# The list operations, done with the caller holding whatever protects the chain.


def _head_write(nh: BlockingNotifierHead) -> None:
    """Scheduling point for a change of the chain: it conflicts with the unlocked look at
    ``head`` in blocking_notifier_call_chain (same object), so the explorer orders them both
    ways instead of treating them as independent."""
    s = nh.kernel.sched
    if s is not None:
        s.point("WRITE_ONCE", nh)


def notifier_chain_register(nh: BlockingNotifierHead, n: NotifierBlock) -> int:
    """Link ``n`` by descending priority, after the blocks of equal priority.  A block that
    is already linked is left where it is, with a WARN; the result is 0 either way."""
    _head_write(nh)
    prev: NotifierBlock | None = None
    cur = nh.head
    while cur is not None:
        if cur is n:
            WARN(nh.kernel, True, "double register detected")
            return 0
        if n.priority > cur.priority:
            break
        prev = cur
        cur = cur.next
    n.next = cur
    if prev is None:
        nh.head = n
    else:
        prev.next = n
    return 0


def notifier_chain_unregister(nh: BlockingNotifierHead, n: NotifierBlock) -> int:
    """Unlink ``n``: 0, or -ENOENT when it is not on the chain.  The block keeps its own
    ``next`` pointer, as in the kernel (a walker already on it can still step past it)."""
    _head_write(nh)
    prev: NotifierBlock | None = None
    cur = nh.head
    while cur is not None:
        if cur is n:
            if prev is None:
                nh.head = n.next
            else:
                prev.next = n.next
            return 0
        prev = cur
        cur = cur.next
    return -ENOENT


def notifier_call_chain(nh: BlockingNotifierHead, val: int, v: Any) -> int:
    """Call every block in order until one answers with NOTIFY_STOP_MASK set; return the
    last answer (NOTIFY_DONE when nothing was called).  The next block is read before
    the current one is called.  A block without a callback is skipped with a WARN, as
    with CONFIG_DEBUG_NOTIFIERS (without it the kernel would jump to NULL)."""
    ret = NOTIFY_DONE
    nb = nh.head
    while nb is not None:
        next_nb = nb.next
        fn = nb.notifier_call
        if fn is None:
            # What CONFIG_DEBUG_NOTIFIERS does for a block with no valid callback.
            WARN(nh.kernel, True, "Invalid notifier called!")
            nb = next_nb
            continue
        ret = fn(nb, val, v)
        if ret & NOTIFY_STOP_MASK:
            break
        nb = next_nb
    return ret


# --------------------------------------------------------------------------------------
# The blocking chain API.


def blocking_notifier_chain_register(nh: BlockingNotifierHead, nb: NotifierBlock) -> int:
    """Add ``nb`` under the write side of the chain's rwsem; returns 0.

    A double registration WARNs "double register detected" and returns 0 (5.15/5.16).
    The injectable point ``notifier_register@<caller>`` returns -ENOMEM without touching
    the chain; the real 5.15 function cannot fail.
    """
    k = nh.kernel
    fn = nb.notifier_call
    detail = getattr(fn, "__name__", "") if fn is not None else ""
    if k.fault_inject.should_fail("notifier_register", caller_outside(__file__), detail):
        return -ENOMEM
    nh.rwsem.down_write()
    ret = notifier_chain_register(nh, nb)
    nh.rwsem.up_write()
    return ret


def blocking_notifier_chain_unregister(nh: BlockingNotifierHead, nb: NotifierBlock) -> int:
    """Remove ``nb`` under the write side: 0, or -ENOENT if it was not registered.

    Taking the write side waits for every running callback of this chain, so once this
    returns none of them can still be using ``nb`` (or what embeds it).  Called from one of
    this chain's own callbacks it is a self-deadlock: lockdep reports it and the calling
    thread ends with Deadlock.
    """
    nh.rwsem.down_write()
    ret = notifier_chain_unregister(nh, nb)
    nh.rwsem.up_write()
    return ret


def blocking_notifier_call_chain(nh: BlockingNotifierHead, val: int, v: Any) -> int:
    """Send event ``val`` with argument ``v`` to every block, under the read side.

    An empty chain (checked without the lock; the walk rechecks under it) returns
    NOTIFY_DONE without touching the rwsem.  Otherwise returns the last callback's value,
    stopping early on NOTIFY_STOP_MASK.
    """
    k = nh.kernel
    s = k.sched
    if s is not None:
        s.point("READ_ONCE", nh)
    if nh.head is None:
        return NOTIFY_DONE
    nh.rwsem.down_read()
    ret = notifier_call_chain(nh, val, v)
    nh.rwsem.up_read()
    return ret
