"""File descriptors: the descriptor table, fget/fdget, close, dup and ioctl (fs/file.c,
the descriptor side of fs/open.c and fs/ioctl.c), and anonymous-inode files
(fs/anon_inodes.c).  ``struct file`` itself, with its ``f_count`` and ``fput``, lives in
:mod:`.cdev`.

What holds a struct file, as in 5.15/5.16
-----------------------------------------
* The opener gets one reference; ``fd_install`` hands it to the descriptor table (the
  table's reference).  ``close_fd`` takes the file out of the table under
  ``files->file_lock`` and drops that reference (``filp_close`` -> ``fput``).
* ``fget`` looks a descriptor up without the lock (the kernel uses RCU) and takes a
  reference with ``atomic_inc_not_zero``; if the count already reached zero it looks
  again, and once it holds a reference it checks the descriptor still names the same file.
  ``fdget`` / ``fdput`` bracket every ioctl (``ksys_ioctl``), so the driver's ->release,
  which only the last ``fput`` runs, can never run while an ioctl of that file is running:
  a ``close`` racing the ioctl drops the table's reference and the ioctl's ``fdput`` is
  then the last.
* ``dup`` installs a second descriptor for the same file, with a reference of its own.

The model has one user-space process: every task's ``current->files`` is its table
(:func:`current_files`); kernel threads never look a descriptor up.

Simplifications, each behaviour-neutral for the objects the model tracks:
``fdget`` always takes a reference (the kernel skips it when the table is not shared
between threads, which is safe there only because no other thread can close the
descriptor); the table never needs to grow (every descriptor below RLIMIT_NOFILE, 1024,
fits), so there is no resize and no -ENOMEM from it; close-on-exec, ``f_mode`` and
``->flush`` are not modelled; the anonymous inode is one shared inode that is never freed.

Scheduling points: reading or writing a table slot (marked accesses, as the kernel's RCU
ones: never reported as a data race), ``file_lock``, and every ``f_count`` operation.
Fault injection: ``"anon_inode_getfile@<caller>"`` (-ENOMEM, the pseudo file's
allocation); descriptor allocation fails only when the table is full (-EMFILE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from .atomic import atomic_inc, atomic_inc_not_zero, atomic_read
from .bug import BUG_ON
from .cdev import File, FileOperations, Inode, fops_get, fput, vfs_ioctl
from .core import Kernel, ModelUsageError, caller_outside
from .errno import EBADF, EMFILE, ENOMEM, ERR_PTR
from .mutex import SpinLock
from .sched import note_created

RLIMIT_NOFILE: Final = 1024  # the default soft limit: descriptors 0..1023
O_CLOEXEC: Final = 0o2000000
FDPUT_FPUT: Final = 1


class FilesStruct:
    """struct files_struct with its one fdtable: the installed files (``fd``; a missing
    slot is NULL), the descriptors allocated (``open_fds``), ``next_fd`` and ``file_lock``.
    """

    __slots__ = ("fd", "file_lock", "kernel", "max_fds", "name", "next_fd", "open_fds")

    def __init__(self, kernel: Kernel, name: str = "files") -> None:
        self.kernel = kernel
        self.name = name
        self.file_lock = SpinLock(kernel, "&newf->file_lock")
        self.fd: dict[int, File] = {}
        self.open_fds: set[int] = set()
        self.next_fd = 0
        self.max_fds = RLIMIT_NOFILE
        note_created(kernel.sched, self)

    def lookup_fd_raw(self, fd: int) -> File | None:
        """Model helper: the file descriptor ``fd`` names now (no lock, no scheduling
        point), for user space's own bookkeeping."""
        return self.fd.get(fd)

    def installed(self) -> list[int]:
        """Model helper: the descriptors that name a file, in order."""
        return sorted(self.fd)

    def __repr__(self) -> str:
        return f"<files_struct {self.name} fds={self.installed()}>"


def current_files(k: Kernel) -> FilesStruct:
    """``current->files``: the user-space process's descriptor table (one per kernel, made
    with it)."""
    return k.files


def _slot_read(files: FilesStruct) -> None:
    """rcu_dereference of a table slot: a scheduling point, not a tracked access."""
    s = files.kernel.sched
    if s is not None:
        s.point("READ_ONCE", files)


def _slot_write(files: FilesStruct) -> None:
    """rcu_assign_pointer to a table slot: a scheduling point, not a tracked access."""
    s = files.kernel.sched
    if s is not None:
        s.point("WRITE_ONCE", files)


# --------------------------------------------------------------------------------------
# Allocating and installing descriptors


def __alloc_fd(files: FilesStruct, start: int, end: int, flags: int) -> int:
    """The lowest free descriptor at or above ``start`` (and ``next_fd``), marked busy;
    -EMFILE when it would be ``end`` or more."""
    files.file_lock.spin_lock()
    fd = max(start, files.next_fd)
    while fd in files.open_fds:  # find_next_fd
        fd += 1
    error = -EMFILE
    if fd < end:
        if start <= files.next_fd:
            files.next_fd = fd + 1
        files.open_fds.add(fd)
        error = fd
        # The kernel's sanity check: a free descriptor's slot must be NULL.
        if fd in files.fd:
            files.kernel.printk(f"alloc_fd: slot {fd} not NULL!")
            del files.fd[fd]
    files.file_lock.spin_unlock()
    return error


def get_unused_fd_flags(k: Kernel, flags: int = 0) -> int:
    """Reserve the lowest free descriptor of ``current->files``: the descriptor, or -EMFILE."""
    return __alloc_fd(current_files(k), 0, RLIMIT_NOFILE, flags)


def __put_unused_fd(files: FilesStruct, fd: int) -> None:
    """Free descriptor ``fd`` (file_lock held)."""
    files.open_fds.discard(fd)
    if fd < files.next_fd:
        files.next_fd = fd


def put_unused_fd(k: Kernel, fd: int) -> None:
    """Give back a descriptor reserved by get_unused_fd_flags and never installed."""
    files = current_files(k)
    files.file_lock.spin_lock()
    __put_unused_fd(files, fd)
    files.file_lock.spin_unlock()


def fd_install(k: Kernel, fd: int, file: File) -> None:
    """Make reserved descriptor ``fd`` name ``file``; the caller's reference becomes the
    table's.  The slot must be empty (BUG_ON otherwise)."""
    files = current_files(k)
    _slot_write(files)
    BUG_ON(k, files.fd.get(fd) is not None, "fdt->fd[fd] != NULL")
    files.fd[fd] = file


def get_file(f: File) -> File:
    """Take another reference on a file the caller already holds one on."""
    atomic_inc(f.f_count)
    return f


# --------------------------------------------------------------------------------------
# Closing


def pick_file(files: FilesStruct, fd: int) -> File | None:
    """Under file_lock, take the file out of slot ``fd`` and free the descriptor; the
    table's reference now belongs to the caller.  None when ``fd`` names nothing."""
    file: File | None = None
    files.file_lock.spin_lock()
    if 0 <= fd < files.max_fds:
        file = files.fd.get(fd)
        if file is not None:
            _slot_write(files)
            del files.fd[fd]
            __put_unused_fd(files, fd)
    files.file_lock.spin_unlock()
    return file


def filp_close(filp: File, files: FilesStruct) -> int:
    """Close one use of ``filp`` (->flush is not modelled) and drop that reference."""
    if not atomic_read(filp.f_count):
        files.kernel.printk("VFS: Close: file count is 0")
        return 0
    fput(filp)
    return 0


def close_fd(k: Kernel, fd: int) -> int:
    """close(2): 0, or -EBADF when ``fd`` names no file.  Another reference (an ioctl in
    flight, a dup) keeps the file open; the last one releases it."""
    files = current_files(k)
    file = pick_file(files, fd)
    if file is None:
        return -EBADF
    return filp_close(file, files)


def exit_files(k: Kernel) -> None:
    """The process exits: every descriptor still open is closed, lowest first."""
    files = current_files(k)
    for fd in files.installed():
        file = pick_file(files, fd)
        if file is not None:
            filp_close(file, files)


# --------------------------------------------------------------------------------------
# Looking descriptors up


def __fget_files(files: FilesStruct, fd: int) -> File | None:
    """The file ``fd`` names, with a reference taken; None when it names nothing.  A file
    whose count already reached zero is being closed: look again.  Once the reference is
    held, check the slot still names the same file (else put it and look again)."""
    while True:
        if not 0 <= fd < files.max_fds:
            return None
        _slot_read(files)
        file = files.fd.get(fd)
        if file is None:
            return None
        if not atomic_inc_not_zero(file.f_count):  # get_file_rcu
            if files.fd.get(fd) is file:
                # Only a reference dropped behind the table's back leaves the slot naming
                # a released file (the kernel would be reading freed memory here).
                raise ModelUsageError(
                    f"descriptor {fd} still names {file.name}, which was released: close descriptors "
                    "with close_fd (Platform.close), never by putting the table's reference"
                )
            continue
        _slot_read(files)
        if files.fd.get(fd) is not file:
            fput(file)
            continue
        return file


def fget(k: Kernel, fd: int) -> File | None:
    """The file descriptor ``fd`` of ``current->files`` names, referenced (fput it), or None."""
    return __fget_files(current_files(k), fd)


@dataclass(frozen=True, slots=True)
class Fd:
    """struct fd: the file (None when the descriptor named nothing) and whether fdput
    must drop a reference."""

    file: File | None
    flags: int


def fdget(k: Kernel, fd: int) -> Fd:
    """Look ``fd`` up for the length of a system call.  Always takes a reference (see the
    module docstring)."""
    file = fget(k, fd)
    if file is None:
        return Fd(None, 0)
    return Fd(file, FDPUT_FPUT)


def fdput(fd: Fd) -> None:
    """End an fdget: drop its reference, if it took one.  May be the last fput."""
    if fd.flags & FDPUT_FPUT and fd.file is not None:
        fput(fd.file)


# --------------------------------------------------------------------------------------
# System calls on descriptors


def ksys_dup(k: Kernel, fildes: int) -> int:
    """dup(2): a new descriptor (the lowest free) for the same file, or -EBADF / -EMFILE."""
    ret = -EBADF
    file = fget(k, fildes)
    if file is not None:
        ret = get_unused_fd_flags(k, 0)
        if ret >= 0:
            fd_install(k, ret, file)
        else:
            fput(file)
    return ret


def ksys_ioctl(k: Kernel, fd: int, cmd: Any, arg: Any = 0) -> Any:
    """ioctl(2): the driver's answer, run with the file held by fdget; -EBADF when ``fd``
    names no file.  (The VFS's own commands, FIOCLEX and the like, are not modelled.)"""
    f = fdget(k, fd)
    if f.file is None:
        return -EBADF
    try:
        error = vfs_ioctl(f.file, cmd, arg)
    except ModelUsageError:
        # An argument the model cannot take (of the wrong type), refused before the driver
        # changed anything: give the call's reference back, so the misuse changes nothing.
        fdput(f)
        raise
    fdput(f)
    return error


# --------------------------------------------------------------------------------------
# fs/anon_inodes.c


def _anon_inode(k: Kernel) -> Inode:
    inode: Inode | None = k.state.get("anon_inode_inode")
    if inode is None:
        inode = k.state.setdefault("anon_inode_inode", Inode(k, 0, "anon_inode"))
    return inode


def anon_inode_getfile(k: Kernel, name: str, fops: FileOperations, priv: Any, flags: int = 0) -> Any:
    """A new file on the shared anonymous inode, with ``fops`` and ``private_data`` =
    ``priv``, holding one reference (no descriptor yet): the File, or ERR_PTR(-ENOMEM)
    (injected at ``anon_inode_getfile@<caller>``).  It has no ->open; its ->release runs
    at its last fput."""
    if k.fault_inject.should_fail("anon_inode_getfile", caller_outside(__file__), name):
        return ERR_PTR(-ENOMEM)
    file = File(k, _anon_inode(k), f"anon_inode:{name}")
    file.f_op = fops_get(fops)
    file.private_data = priv
    return file


__all__ = [
    "FDPUT_FPUT",
    "O_CLOEXEC",
    "RLIMIT_NOFILE",
    "Fd",
    "FilesStruct",
    "anon_inode_getfile",
    "close_fd",
    "current_files",
    "exit_files",
    "fd_install",
    "fdget",
    "fdput",
    "fget",
    "filp_close",
    "get_file",
    "get_unused_fd_flags",
    "ksys_dup",
    "ksys_ioctl",
    "pick_file",
    "put_unused_fd",
]
