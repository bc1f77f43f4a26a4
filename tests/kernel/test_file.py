"""struct file references and descriptors: fd_install, close, fget/fdget/fdput, dup, ioctl
(fs/file.c, fs/ioctl.c) and anonymous-inode files (fs/anon_inodes.c)."""

from __future__ import annotations

from typing import Any

import pytest

from vfio_ref.explorer import Execution, RawFinding, explore
from vfio_ref.kernel import Kernel, KernelBug, ModelUsageError
from vfio_ref.kernel.cdev import File, FileOperations, Inode, fput, vfs_open_inode
from vfio_ref.kernel.errno import EBADF, EMFILE, ENOMEM, ENOTTY, IS_ERR, PTR_ERR
from vfio_ref.kernel.file import (
    RLIMIT_NOFILE,
    anon_inode_getfile,
    close_fd,
    current_files,
    exit_files,
    fd_install,
    fdget,
    fdput,
    fget,
    get_unused_fd_flags,
    ksys_dup,
    ksys_ioctl,
    put_unused_fd,
)


class Driver:
    """A char driver that records its ->open / ->release / ->unlocked_ioctl calls."""

    def __init__(self, k: Kernel) -> None:
        self.k = k
        self.events: list[str] = []
        self.during_ioctl: Any = None
        self.fops = FileOperations(
            open=self.open, release=self.release, unlocked_ioctl=self.ioctl, name="test_fops"
        )

    def open(self, inode: Inode, filp: File) -> int:
        filp.private_data = "state"
        self.events.append("open")
        return 0

    def release(self, inode: Inode, filp: File) -> int:
        self.events.append(f"release({filp.private_data})")
        return 0

    def ioctl(self, filp: File, cmd: Any, arg: Any) -> Any:
        self.events.append(f"ioctl {cmd} in")
        if self.during_ioctl is not None:
            self.during_ioctl()
        self.events.append(f"ioctl {cmd} out ({filp.private_data})")
        return 0


def open_fd(k: Kernel, drv: Driver) -> int:
    """open(2): reserve a descriptor, open the file, install it."""
    fd = get_unused_fd_flags(k)
    assert fd >= 0
    inode = Inode(k, 0, "/dev/test")
    inode.i_fop = drv.fops
    f = vfs_open_inode(k, inode)
    assert isinstance(f, File)
    fd_install(k, fd, f)
    return fd


def test_an_installed_file_is_released_by_its_close(k: Kernel) -> None:
    drv = Driver(k)
    fd = open_fd(k, drv)
    f = current_files(k).lookup_fd_raw(fd)
    assert f is not None and f.f_count.atomic_read() == 1  # the table's reference
    assert close_fd(k, fd) == 0
    assert drv.events == ["open", "release(state)"]
    assert f.closed and current_files(k).installed() == []


def test_descriptors_are_the_lowest_free_ones(k: Kernel) -> None:
    drv = Driver(k)
    assert [open_fd(k, drv) for _ in range(3)] == [0, 1, 2]
    assert close_fd(k, 1) == 0
    assert open_fd(k, drv) == 1
    reserved = get_unused_fd_flags(k)
    assert reserved == 3
    put_unused_fd(k, reserved)
    assert get_unused_fd_flags(k) == 3


def test_a_full_table_answers_emfile(k: Kernel) -> None:
    for _ in range(RLIMIT_NOFILE):
        assert get_unused_fd_flags(k) >= 0
    assert get_unused_fd_flags(k) == -EMFILE


@pytest.mark.parametrize("fd", [0, 7, -1, -19, RLIMIT_NOFILE, 1 << 40])
def test_closing_a_descriptor_that_names_nothing_is_ebadf(k: Kernel, fd: int) -> None:
    assert close_fd(k, fd) == -EBADF
    assert fget(k, fd) is None
    assert ksys_ioctl(k, fd, "CMD") == -EBADF
    assert ksys_dup(k, fd) == -EBADF


def test_a_second_close_of_a_descriptor_is_ebadf(k: Kernel) -> None:
    drv = Driver(k)
    fd = open_fd(k, drv)
    assert close_fd(k, fd) == 0
    assert close_fd(k, fd) == -EBADF
    assert drv.events == ["open", "release(state)"]


def test_dup_makes_two_descriptors_of_one_file_released_by_the_last_close(k: Kernel) -> None:
    drv = Driver(k)
    fd = open_fd(k, drv)
    fd2 = ksys_dup(k, fd)
    assert fd2 == fd + 1
    files = current_files(k)
    f = files.lookup_fd_raw(fd)
    assert f is not None and files.lookup_fd_raw(fd2) is f
    assert f.f_count.atomic_read() == 2
    assert close_fd(k, fd) == 0
    assert drv.events == ["open"]  # the other descriptor still holds the file
    assert ksys_ioctl(k, fd2, "CMD") == 0
    assert close_fd(k, fd2) == 0
    assert drv.events == ["open", "ioctl CMD in", "ioctl CMD out (state)", "release(state)"]


def test_fdget_holds_the_file_until_fdput(k: Kernel) -> None:
    drv = Driver(k)
    fd = open_fd(k, drv)
    ref = fdget(k, fd)
    assert ref.file is not None and ref.file.f_count.atomic_read() == 2
    assert close_fd(k, fd) == 0  # drops the table's reference only
    assert drv.events == ["open"]
    fdput(ref)  # the last reference
    assert drv.events == ["open", "release(state)"]


def test_a_close_during_an_ioctl_releases_the_file_when_the_ioctl_returns(k: Kernel) -> None:
    drv = Driver(k)
    fd = open_fd(k, drv)
    drv.during_ioctl = lambda: drv.events.append(f"close -> {close_fd(k, fd)}")
    assert ksys_ioctl(k, fd, "SET") == 0
    assert drv.events == ["open", "ioctl SET in", "close -> 0", "ioctl SET out (state)", "release(state)"]


def test_an_ioctl_of_a_file_without_one_is_enotty(k: Kernel) -> None:
    fd = get_unused_fd_flags(k)
    f = anon_inode_getfile(k, "[x]", FileOperations(name="bare"), None)
    fd_install(k, fd, f)
    assert ksys_ioctl(k, fd, "CMD") == -ENOTTY


def test_installing_over_a_file_is_a_bug(k: Kernel) -> None:
    drv = Driver(k)
    fd = open_fd(k, drv)
    other = anon_inode_getfile(k, "[x]", drv.fops, None)
    with pytest.raises(KernelBug, match=r"BUG_ON\(fdt->fd\[fd\] != NULL\)"):
        fd_install(k, fd, other)


def test_an_anon_inode_file_has_its_fops_and_private_data_and_one_reference(k: Kernel) -> None:
    drv = Driver(k)
    f = anon_inode_getfile(k, "[vfio-device]", drv.fops, "dev")
    assert isinstance(f, File)
    assert f.f_op is drv.fops and f.private_data == "dev" and f.f_count.atomic_read() == 1
    assert "anon_inode:[vfio-device]" in f.name
    fput(f)
    assert drv.events == ["release(dev)"]
    k.fault_inject.fail("anon_inode_getfile@test_an_anon_inode_file_has_its_fops_and_private_data_and_one_reference")
    bad = anon_inode_getfile(k, "[vfio-device]", drv.fops, "dev")
    assert IS_ERR(bad) and PTR_ERR(bad) == -ENOMEM


def test_exit_closes_every_descriptor(k: Kernel) -> None:
    drv = Driver(k)
    fd = open_fd(k, drv)
    ksys_dup(k, fd)
    open_fd(k, drv)
    exit_files(k)
    assert drv.events == ["open", "open", "release(state)", "release(state)"]
    assert current_files(k).installed() == []


def test_putting_the_tables_reference_behind_its_back_is_named(k: Kernel) -> None:
    drv = Driver(k)
    fd = open_fd(k, drv)
    f = current_files(k).lookup_fd_raw(fd)
    assert f is not None
    f.close()  # drops the table's reference without clearing the descriptor
    with pytest.raises(ModelUsageError, match=r"descriptor 0 still names .* which was released"):
        fget(k, fd)


# -- under the explorer: an ioctl racing a close of its descriptor -------------------------


def _ioctl_vs_close(ctx: Execution) -> None:
    k = ctx.kernel
    drv = Driver(k)
    fd = open_fd(k, drv)
    ctx.data["drv"] = drv
    results: dict[str, Any] = {}

    def ioctl() -> None:
        results["ioctl"] = ksys_ioctl(k, fd, "SET")

    def close() -> None:
        results["close"] = close_fd(k, fd)

    t1, t2 = ctx.spawn("T1", ioctl), ctx.spawn("T2", close)
    ctx.join(t1, t2)
    ctx.data["results"] = results


def test_in_every_interleaving_release_runs_once_and_never_inside_the_ioctl() -> None:
    outcomes: set[tuple[Any, ...]] = set()

    def judge(ctx: Execution) -> list[RawFinding]:
        drv: Driver = ctx.data["drv"]
        res = ctx.data["results"]
        outcomes.add((res["ioctl"], res["close"], tuple(drv.events)))
        return []

    ex = explore(_ioctl_vs_close, judge, bound=2, traces=False)
    assert ex.stats.exhausted
    assert outcomes == {
        # the close came first: the descriptor names nothing when the ioctl looks it up
        (-EBADF, 0, ("open", "release(state)")),
        # the ioctl holds the file: the close drops the table's reference, the ioctl's
        # fdput is the last one
        (0, 0, ("open", "ioctl SET in", "ioctl SET out (state)", "release(state)")),
    }


def test_an_ioctl_argument_the_model_refuses_gives_the_calls_reference_back(k: Kernel) -> None:
    drv = Driver(k)
    fd = open_fd(k, drv)

    def refuse() -> None:
        raise ModelUsageError("CMD takes an int")

    drv.during_ioctl = refuse
    with pytest.raises(ModelUsageError):
        ksys_ioctl(k, fd, "CMD", "x")
    f = current_files(k).lookup_fd_raw(fd)
    assert f is not None and f.f_count.atomic_read() == 1  # only the table's reference
    assert close_fd(k, fd) == 0 and f.closed
