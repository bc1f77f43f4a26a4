"""Shared data the kernel protects with locks: list_head lists and tracked struct fields.

Every operation here is a scheduling point and, under the explorer, a happens-before access,
so an unlocked access can interleave with a locked one and a pair that nothing orders is
reported as a data race (see :mod:`.hb`).

list_head (include/linux/list.h) is a circular doubly linked list, as in the kernel:
``list_add``, ``list_add_tail`` and ``list_del`` are O(1); a walk is O(length) and counts as one
read of the whole list; ``list_del`` leaves the entry's pointers poisoned (None here), so
walking on from a deleted entry fails loudly.  A node is embedded in its struct and knows it
(``container``), which is how ``list_for_each_entry`` yields the structs.

``SharedField`` declares a struct field that several threads read and write (the group's
``container`` pointer, say); reads and writes through it are tracked the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from .sched import note_created

if TYPE_CHECKING:
    from .core import Kernel
    from .hb import HappensBefore

T = TypeVar("T")


class ListHead:
    """struct list_head: a list head, or a node embedded in an entry (``container``)."""

    __slots__ = ("_poison", "container", "head", "kernel", "name", "next", "prev")

    def __init__(self, kernel: Kernel, container: Any = None, name: str = "list") -> None:
        self.kernel = kernel
        self.container = container
        self.name = name
        self.next: ListHead | None = self
        self.prev: ListHead | None = self
        self.head: ListHead | None = None  # model-only: the list this node is on
        note_created(kernel.sched, self)

    def __repr__(self) -> str:
        return f"<list_head {self.name}>"


def INIT_LIST_HEAD(k: Kernel, container: Any = None, name: str = "list") -> ListHead:
    return ListHead(k, container, name)


def _point(head: ListHead, op: str) -> HappensBefore | None:
    """The scheduling point before ``op``; returns the happens-before tracker (if any) for
    the list operation to record its access itself, so that a race report names the
    operation's caller (the kernel function), not the list helper."""
    k = head.kernel
    s = k.sched
    if s is None:
        return None
    s.point(op, head)
    return k.hb


def list_add(new: ListHead, head: ListHead) -> None:
    """Insert ``new`` right after ``head`` (at the front)."""
    hb = _point(head, "list_add")
    if hb is not None:
        hb.access(head.kernel.current(), head, head.name, True)
    nxt = head.next
    assert nxt is not None
    nxt.prev = new
    new.next = nxt
    new.prev = head
    head.next = new
    new.head = head


def list_add_tail(new: ListHead, head: ListHead) -> None:
    """Insert ``new`` right before ``head`` (at the back)."""
    hb = _point(head, "list_add_tail")
    if hb is not None:
        hb.access(head.kernel.current(), head, head.name, True)
    prev = head.prev
    assert prev is not None
    head.prev = new
    new.next = head
    new.prev = prev
    prev.next = new
    new.head = head


def list_del(entry: ListHead) -> None:
    """Unlink ``entry``; its pointers are poisoned afterwards."""
    head = entry.head
    if head is not None:
        hb = _point(head, "list_del")
        if hb is not None:
            hb.access(head.kernel.current(), head, head.name, True)
    prev, nxt = entry.prev, entry.next
    if prev is None or nxt is None:
        raise AttributeError(f"list_del() of {entry!r}, which is not on a list (LIST_POISON)")
    nxt.prev = prev
    prev.next = nxt
    entry.next = None
    entry.prev = None
    entry.head = None


def list_empty(head: ListHead) -> bool:
    """True when the list has no entries.  A scheduling point, but a marked read (the kernel
    reads ``head->next`` with READ_ONCE and list_add/list_del write it with WRITE_ONCE), so,
    as under KCSAN, an unlocked list_empty is never reported as a data race."""
    _point(head, "list_empty")
    return head.next is head


def list_for_each_entry(head: ListHead) -> Iterator[Any]:
    """Yield the struct containing each node, front to back (one read of the list).

    Safe against deletion of the current entry (as list_for_each_entry_safe): the next
    node is fetched before the entry is yielded.
    """
    # list_walk_begin's three lines, not a call to it: the race detector keeps the frame two
    # above its access() (here the walking function; through list_walk_begin, this generator,
    # whose caller is gone by the time a report names it).
    hb = _point(head, "list_for_each_entry")
    if hb is not None:
        hb.access(head.kernel.current(), head, head.name, False)
    # Typed Any: a node's next is never None on a list (a freed node faults on .next), and
    # an assert per entry was a tenth of the walk's cost.
    node: Any = head.next
    while node is not head:
        nxt = node.next
        yield node.container
        node = nxt


list_for_each_entry_safe = list_for_each_entry


def list_walk_begin(head: ListHead) -> Any:
    """Where a list_for_each_entry written out at its call site starts: the walk's
    scheduling point and its read of the list (as :func:`list_for_each_entry`); returns the
    first node, ``head`` itself for an empty list.

    The caller then goes ``node = node.next`` after each entry, as the C macro expands (the
    plain variant: the body must not delete the entry and walk on).  Only the group-list
    lookup is written out: a generator resume per entry was over half its cost (benchmarks,
    ``paired:walk``).  O(1).
    """
    hb = _point(head, "list_for_each_entry")
    if hb is not None:
        hb.access(head.kernel.current(), head, head.name, False)
    return head.next


def list_count(head: ListHead) -> int:
    """Model helper: the number of entries (no scheduling point)."""
    n = 0
    node = head.next
    while node is not head:
        assert node is not None
        n += 1
        node = node.next
    return n


class SharedField(Generic[T]):
    """A struct field several threads access: reads and writes are tracked.

    The owning class must have a ``kernel`` attribute.
    """

    def __init__(self, default: T) -> None:
        self.default = default
        self.name = "?"
        self.attr = "_?"

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.attr = "_shared_" + name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> SharedField[T]: ...
    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...

    def __get__(self, obj: object | None, objtype: type | None = None) -> T | SharedField[T]:
        if obj is None:
            return self
        k = obj.kernel  # type: ignore[attr-defined]
        s = k.sched
        if s is not None and not getattr(s, "evaluating", False):
            s.point("READ_ONCE", obj, None, self.name)
            hb = k.hb
            if hb is not None:
                hb.access(k.current(), obj, self.name, False)
        return obj.__dict__.get(self.attr, self.default)  # type: ignore[no-any-return]

    def __set__(self, obj: object, value: T) -> None:
        k = obj.kernel  # type: ignore[attr-defined]
        s = k.sched
        if s is not None:
            s.point("WRITE_ONCE", obj, None, self.name)
            hb = k.hb
            if hb is not None:
                hb.access(k.current(), obj, self.name, True)
        obj.__dict__[self.attr] = value
