"""errno values and ERR_PTR / IS_ERR / PTR_ERR / ERR_CAST (include/linux/err.h)."""

from __future__ import annotations

import pytest

from vfio_ref.kernel import errno
from vfio_ref.kernel.errno import (
    EBUSY,
    EEXIST,
    EINVAL,
    ENODEV,
    ENOMEM,
    ENOSPC,
    EPERM,
    ERR_CAST,
    ERR_PTR,
    IS_ERR,
    IS_ERR_OR_NULL,
    MAX_ERRNO,
    PTR_ERR,
    errno_name,
)


def test_errno_values_are_the_kernels() -> None:
    assert (EPERM, ENOMEM, EBUSY, EEXIST, ENODEV, EINVAL, ENOSPC) == (1, 12, 16, 17, 19, 22, 28)
    assert (errno.ENOENT, errno.EINTR, errno.ENXIO, errno.EBADF, errno.EAGAIN) == (2, 4, 6, 9, 11)
    assert (errno.E2BIG, errno.EFAULT, errno.ENFILE, errno.EMFILE, errno.ENOTTY) == (7, 14, 23, 24, 25)
    assert MAX_ERRNO == 4095


def test_round_trip_every_errno() -> None:
    for e in range(1, MAX_ERRNO + 1):
        p = ERR_PTR(-e)
        assert IS_ERR(p)
        assert PTR_ERR(p) == -e
        assert PTR_ERR(ERR_CAST(p)) == -e


def test_err_cast_passes_the_same_error_on() -> None:
    p = ERR_PTR(-ENODEV)
    assert ERR_CAST(p) is p


def test_valid_pointers_and_null_are_not_errors() -> None:
    obj = object()
    assert not IS_ERR(obj)
    assert not IS_ERR(None)
    assert not IS_ERR(0)
    assert not IS_ERR(-ENOMEM)  # an int errno is not an error *pointer*
    assert IS_ERR_OR_NULL(None)
    assert IS_ERR_OR_NULL(ERR_PTR(-EBUSY))
    assert not IS_ERR_OR_NULL(obj)


@pytest.mark.parametrize("bad", [0, 1, ENOMEM, -MAX_ERRNO - 1, -100000])
def test_err_ptr_range_check(bad: int) -> None:
    # Only -MAX_ERRNO..-1 encode an error.  (The kernel's ERR_PTR(0) is NULL; the model
    # refuses it so that a 0 never turns into an error pointer by accident.)
    with pytest.raises(ValueError, match="negative errno"):
        ERR_PTR(bad)


def test_range_ends_are_accepted() -> None:
    assert PTR_ERR(ERR_PTR(-1)) == -1
    assert PTR_ERR(ERR_PTR(-MAX_ERRNO)) == -MAX_ERRNO


def test_ptr_err_of_a_valid_pointer_is_a_caller_bug() -> None:
    with pytest.raises(TypeError):
        PTR_ERR(object())
    with pytest.raises(TypeError):
        PTR_ERR(None)


def test_err_ptr_values_are_non_null_immutable_and_interned() -> None:
    p = ERR_PTR(-ENOMEM)
    assert bool(p) is True  # "if (!ptr)" does not catch an error pointer, as in C
    assert ERR_PTR(-ENOMEM) is p
    assert ERR_PTR(-EBUSY) is not p
    with pytest.raises(AttributeError):
        p.err = -1
    with pytest.raises(AttributeError):
        p.minor  # noqa: B018  # dereferencing an ERR_PTR
    assert repr(p) == "ERR_PTR(-ENOMEM)"


def test_errno_name() -> None:
    assert errno_name(0) == "0"
    assert errno_name(-ENODEV) == "-ENODEV"
    assert errno_name(EBUSY) == "EBUSY"
    assert errno_name(-999) == "-999"
