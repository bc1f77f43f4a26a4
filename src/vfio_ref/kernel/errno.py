"""errno values and the ERR_PTR family (include/uapi/asm-generic/errno-base.h, linux/err.h).

Inside the model, errors travel the way the kernel's do: functions returning an int return
``0`` or a negative errno, and functions returning a pointer return either the object,
``None`` (NULL) or an :class:`ErrPtr` made by :func:`ERR_PTR`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, TypeGuard

EPERM: Final = 1
ENOENT: Final = 2
EINTR: Final = 4
ENXIO: Final = 6
E2BIG: Final = 7
EBADF: Final = 9
EAGAIN: Final = 11
ENOMEM: Final = 12
EFAULT: Final = 14
EBUSY: Final = 16
EEXIST: Final = 17
ENODEV: Final = 19
EINVAL: Final = 22
ENFILE: Final = 23
EMFILE: Final = 24
ENOTTY: Final = 25
ENOSPC: Final = 28

MAX_ERRNO: Final = 4095

ERRNO_NAMES: Final[dict[int, str]] = {
    EPERM: "EPERM",
    ENOENT: "ENOENT",
    EINTR: "EINTR",
    ENXIO: "ENXIO",
    E2BIG: "E2BIG",
    EBADF: "EBADF",
    EAGAIN: "EAGAIN",
    ENOMEM: "ENOMEM",
    EFAULT: "EFAULT",
    EBUSY: "EBUSY",
    EEXIST: "EEXIST",
    ENODEV: "ENODEV",
    EINVAL: "EINVAL",
    ENFILE: "ENFILE",
    EMFILE: "EMFILE",
    ENOTTY: "ENOTTY",
    ENOSPC: "ENOSPC",
}


def errno_name(err: int) -> str:
    """'-ENODEV' for -19, '0' for 0: the spelling a kernel developer reads."""
    if err == 0:
        return "0"
    name = ERRNO_NAMES.get(abs(err), str(abs(err)))
    return ("-" if err < 0 else "") + name


class ErrPtr:
    """A pointer-sized error value: what ERR_PTR(-E...) returns.

    It is never a valid object: touching a field of it is a bug in the caller, exactly as
    dereferencing an ERR_PTR is in C.  Instances are interned per errno.
    """

    __slots__ = ("err",)
    err: int
    _cache: ClassVar[dict[int, ErrPtr]] = {}

    def __new__(cls, err: int) -> ErrPtr:
        cached = cls._cache.get(err)
        if cached is not None:
            return cached
        if not -MAX_ERRNO <= err < 0:
            raise ValueError(f"ERR_PTR({err}): the value must be a negative errno in [-{MAX_ERRNO}, -1]")
        self = object.__new__(cls)
        object.__setattr__(self, "err", err)
        cls._cache[err] = self
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ERR_PTR values are immutable")

    def __repr__(self) -> str:
        return f"ERR_PTR({errno_name(self.err)})"

    def __bool__(self) -> bool:  # a non-NULL pointer, as in C
        return True


def ERR_PTR(err: int) -> Any:
    """Encode negative errno ``err`` as a pointer value (typed Any: it stands in for any pointer)."""
    return ErrPtr(err)


def IS_ERR(ptr: object) -> TypeGuard[ErrPtr]:
    """True when ``ptr`` is an ERR_PTR value (NULL is not an error pointer)."""
    return type(ptr) is ErrPtr


def IS_ERR_OR_NULL(ptr: object) -> bool:
    return ptr is None or type(ptr) is ErrPtr


def PTR_ERR(ptr: object) -> int:
    """The negative errno carried by an ERR_PTR value."""
    if type(ptr) is not ErrPtr:
        raise TypeError(f"PTR_ERR() of {ptr!r}, which is not an ERR_PTR value")
    err: int = object.__getattribute__(ptr, "err")
    return err


def ERR_CAST(ptr: object) -> Any:
    """Pass an ERR_PTR on as a pointer of another type."""
    return ptr
