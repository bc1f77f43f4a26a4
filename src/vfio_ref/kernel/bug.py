"""WARN_ON, WARN_ON_ONCE, WARN, WARN_ONCE, dev_WARN and BUG_ON (include/asm-generic/bug.h).

A WARN is *recorded* on the kernel (which function, the condition text or message, the
thread, the model call site and the kernel backtrace) and execution goes on, as in the
kernel.  A BUG raises :class:`KernelBug`, which ends the calling model thread like an oops.

Python cannot print a condition's source, so each macro takes the kernel's condition text
as a string: ``WARN_ON(k, not list_empty(group.device_list), "!list_empty(&group->device_list)")``.
Every macro returns the condition, so ``if WARN_ON(...):`` reads as in C.
"""

from __future__ import annotations

from typing import Any, TypeVar

from .core import Kernel, KernelBug, backtrace, model_site

T = TypeVar("T")


def WARN_ON(k: Kernel, condition: object, text: str) -> bool:
    """Record a WARN naming ``text`` when ``condition`` holds; return the condition."""
    if condition:
        fn, site = model_site(2)
        k.record_warn(fn, text, "WARN_ON", site)
        return True
    return False


def WARN_ON_ONCE(k: Kernel, condition: object, text: str) -> bool:
    """As WARN_ON, but the kernel prints it once per site; every occurrence is still recorded."""
    if condition:
        fn, site = model_site(2)
        k.record_warn(fn, text, "WARN_ON_ONCE", site, once=True, once_key=site)
        return True
    return False


def WARN(k: Kernel, condition: object, message: str) -> bool:
    """Record a WARN with a formatted ``message`` when ``condition`` holds."""
    if condition:
        fn, site = model_site(2)
        k.record_warn(fn, message, "WARN", site)
        return True
    return False


def WARN_ONCE(k: Kernel, condition: object, message: str) -> bool:
    if condition:
        fn, site = model_site(2)
        k.record_warn(fn, message, "WARN_ONCE", site, once=True, once_key=site)
        return True
    return False


def dev_WARN(k: Kernel, dev: Any, message: str) -> None:
    """An unconditional WARN prefixed, as the kernel prints it, by the device's name."""
    fn, site = model_site(2)
    name = getattr(dev, "init_name", None) or "?"
    k.record_warn(fn, message, "dev_WARN", site)
    k.printk(f"{name}: {message}")


def BUG_ON(k: Kernel, condition: object, text: str) -> None:
    """Raise KernelBug('kernel BUG at <function>: <text>') when ``condition`` holds."""
    if condition:
        fn, site = model_site(2)
        exc = KernelBug(f"kernel BUG in {fn}: BUG_ON({text}) [{site}]", function=fn, what=f"BUG_ON({text})")
        exc.backtrace = backtrace(2)
        k.printk(exc.message)
        raise exc


def BUG(k: Kernel, message: str) -> None:
    fn, site = model_site(2)
    exc = KernelBug(f"kernel BUG in {fn}: {message} [{site}]", function=fn, what=message)
    exc.backtrace = backtrace(2)
    k.printk(exc.message)
    raise exc


def deref(k: Kernel, ptr: T | None, what: str) -> T:
    """``ptr`` itself, or, when it is NULL, the oops the kernel takes dereferencing it: a
    KernelBug "BUG: kernel NULL pointer dereference" naming ``what`` (the C expression)."""
    if ptr is None:
        fn, site = model_site(2)
        exc = KernelBug(f"BUG: kernel NULL pointer dereference in {fn}: {what} [{site}]")
        exc.backtrace = backtrace(2)
        k.printk(exc.message)
        raise exc
    return ptr
