"""The simulated kernel substrate: one module per kernel concept.

``Kernel()`` is a fresh simulated kernel; the primitives below take it as their first
argument (or are built with it) and keep the kernel's names, contracts and error codes.
"""

from .atomic import Atomic
from .core import (
    ALL_CAPS,
    CAP_SYS_ADMIN,
    CAP_SYS_RAWIO,
    Deadlock,
    DoubleFree,
    Kernel,
    KernelBug,
    KernelFault,
    ModelUsageError,
    Task,
    UseAfterFree,
    WarnEvent,
)
from .ida import Ida
from .idr import Idr
from .kref import Kref
from .lockdep import LockdepReport, lockdep_assert_held
from .mutex import Mutex, SpinLock
from .refcount import REFCOUNT_MAX, REFCOUNT_SATURATED, Refcount
from .rwsem import RWSemaphore
from .slab import KStruct, Leak, kfree, kzalloc

__all__ = [
    "ALL_CAPS",
    "CAP_SYS_ADMIN",
    "CAP_SYS_RAWIO",
    "REFCOUNT_MAX",
    "REFCOUNT_SATURATED",
    "Atomic",
    "Deadlock",
    "DoubleFree",
    "Ida",
    "Idr",
    "KStruct",
    "Kernel",
    "KernelBug",
    "KernelFault",
    "Kref",
    "Leak",
    "LockdepReport",
    "ModelUsageError",
    "Mutex",
    "RWSemaphore",
    "Refcount",
    "SpinLock",
    "Task",
    "UseAfterFree",
    "WarnEvent",
    "kfree",
    "kzalloc",
    "lockdep_assert_held",
]
