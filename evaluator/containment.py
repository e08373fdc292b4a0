"""OS-level containment of the recording child, so an escape into native code gets nothing.

`contain()` runs in the sandboxed child after everything recording needs is imported and
before the kernel's code is compiled: no new privileges, death with its parent, its own
network namespace where the machine allows it, and a seccomp allow-list (pyseccomp) whose
default action kills the process. Exec, fork, sockets, opening files, ptrace, other
processes' memory and signals to them all end in SIGSYS, which the parent reports as a
policy violation (rule `sandbox.syscall`). Anything that cannot be set up raises
ContainmentError: the kernel never runs uncontained.
"""
from __future__ import annotations

import ctypes
import errno
import os
import signal
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000

# What recording needs once everything is imported: memory, I/O on the file descriptors
# already open (the request, the output pipe, the reply pipe), signals to itself, clocks,
# entropy and exit. Nothing here names a path, a process or a socket.
ALLOWED_SYSCALLS = (
    "read", "write", "readv", "writev", "lseek", "fstat", "close",
    "brk", "mmap", "munmap", "mremap", "madvise", "mprotect",
    "rt_sigreturn", "rt_sigaction", "rt_sigprocmask", "sigaltstack",
    "futex", "sched_yield", "clock_gettime", "clock_getres", "gettimeofday", "time", "getrandom",
    "getpid", "gettid",
    "exit", "exit_group",
)


class ContainmentError(RuntimeError):
    """The child could not be contained; the kernel must not run."""


@dataclass(frozen=True)
class Containment:
    """What was set up. net_namespace is False only where the machine refused unshare (EPERM)."""

    net_namespace: bool


def contain(parent_pid: int) -> Containment:
    """Contain this process for good. `parent_pid` is the evaluating process that started it:
    if it is already gone when death-with-parent is set, this process exits at once."""
    try:
        import pyseccomp
    except (ImportError, OSError) as exc:      # OSError: libseccomp missing or unloadable
        raise ContainmentError(f"pyseccomp (libseccomp) cannot be loaded: {type(exc).__name__}: {exc}") from exc
    libc = ctypes.CDLL(None, use_errno=True)   # the already-loaded libc: opens no file
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1, "no new privileges")
    _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL, "death with the parent")
    if os.getppid() != parent_pid:             # the parent died before PDEATHSIG was armed
        os._exit(1)
    net = _unshare_net(libc)
    _load_seccomp(pyseccomp)
    return Containment(net_namespace=net)


def no_new_privs() -> bool:
    """Whether this process runs with no_new_privs set (for tests and diagnostics)."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1


def _prctl(libc, option: int, value: int, what: str) -> None:
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise ContainmentError(f"prctl ({what}) failed: {os.strerror(ctypes.get_errno())}")


def _unshare_net(libc) -> bool:
    """A network namespace of its own (only a loopback interface, down). Needs CAP_SYS_ADMIN,
    or unprivileged user namespaces; where both are refused the seccomp filter still kills
    any socket call, so this layer is reported missing rather than fatal."""
    for flags in (CLONE_NEWNET, CLONE_NEWUSER | CLONE_NEWNET):
        if libc.unshare(flags) == 0:
            return True
        err = ctypes.get_errno()
        if err not in (errno.EPERM, errno.EINVAL, errno.ENOSPC, errno.EUSERS):
            raise ContainmentError(f"unshare (network namespace) failed: {os.strerror(err)}")
    return False


def _load_seccomp(pyseccomp) -> None:
    try:
        flt = pyseccomp.SyscallFilter(pyseccomp.KILL_PROCESS)
        flt.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)   # 32-bit / x32 entry points
        for name in ALLOWED_SYSCALLS:
            flt.add_rule(pyseccomp.ALLOW, name)
        # signals only to itself (raise(), abort()): tgkill with this process as the target
        flt.add_rule(pyseccomp.ALLOW, "tgkill", pyseccomp.Arg(0, pyseccomp.EQ, os.getpid()))
        flt.load()
    except OSError as exc:
        raise ContainmentError(f"the seccomp filter could not be installed: {exc}") from exc
