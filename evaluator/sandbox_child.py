"""The sandboxed side: run a candidate's Python to record op traces, nothing else.

Started by evaluator.sandbox under rlimits with an empty environment. It reads one JSON
request on stdin, imports everything recording needs, contains itself for good
(evaluator.containment: seccomp, no new privileges, death with the parent, no network),
then compiles the kernel with restricted builtins, an import hook that hands out only the
DSL's public names, and an audit hook; it records one trace per shape and writes the reply
(header + encoded traces) to a pipe of its own. The kernel's prints go to stdout, which the
parent only skims. Every failure has a short stable rule name; kernel text is quoted.
"""
from __future__ import annotations

import builtins
import inspect
import json
import math
import os
import re
import struct
import sys
import types
import warnings
from typing import Callable

KERNEL_FILE = "kernel.py"
CONTAIN_FAILED_EXIT = 71      # exit status when containment could not be set up (nothing ran)
CHILD_STATUSES = frozenset({"ok", "compile_error", "runtime_error", "hw_violation", "timeout", "oom",
                            "policy_violation"})
REPLY_FIELDS = {"status": str, "rule": str, "message": str, "line": int, "keys": list, "net_namespace": bool}
MAX_HEADER_BYTES = 64 * 1024
MAX_MESSAGE_CHARS = 1000
KERNEL_TEXT_CHARS = 200
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]+")
_AUDITED = ("open", "os.", "subprocess.", "socket.", "ctypes.", "shutil.", "_posixsubprocess", "mmap.",
            "pty.", "signal.", "sys.setprofile", "sys.settrace", "sys.addaudithook", "code.", "import")
_FREQUENT = frozenset({"builtins.id", "sys._getframe", "object.__getattr__", "object.__setattr__"})


def clean_text(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """One line of at most `limit` characters: control and layout characters become spaces."""
    text = _UNPRINTABLE.sub(" ", text).strip()
    return text if len(text) <= limit else text[:limit - 1] + "…"


def quote_kernel_text(text: str, limit: int = KERNEL_TEXT_CHARS) -> str:
    """Text the kernel controls (exception messages, prints), shown quoted and short, so it
    reads as data and cannot pass for the evaluator's own words."""
    return '"' + clean_text(text, limit).replace('"', "'") + '"'


def _exception_text(exc: BaseException) -> str:
    try:
        detail = str(exc)
    except Exception:             # an argument whose str() fails
        detail = "(unprintable)"
    name = clean_text(type(exc).__name__, 40)
    return f"{name}: {quote_kernel_text(detail)}" if detail else name


def _kernel_line(exc: BaseException) -> int:
    """The innermost kernel line of the traceback (no source lookup: no file is opened)."""
    line, tb = 0, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == KERNEL_FILE:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _print_exception(kind: type, exc: BaseException, tb) -> None:
    """A one-line report on stderr that looks up no source line (that would open a file)."""
    os.write(2, f"\n{clean_text(kind.__name__, 40)}: {clean_text(str(exc), 300)}\n".encode(errors="replace"))


class _Failure(Exception):
    def __init__(self, status: str, rule: str, message: str, line: int = 0):
        super().__init__(message)
        self.status, self.rule, self.message, self.line = status, rule, message, line


class _Guard:
    """The kernel's imports and the audit hook; the first violation is kept even if the
    kernel catches the exception raised at it."""

    def __init__(self, dsl_facade: types.SimpleNamespace, public_names: frozenset[str]):
        self.violation: _Failure | None = None
        self.modules = {"math": math, "hwmodel.dsl": dsl_facade}
        self.public = public_names

    def refuse(self, rule: str, message: str) -> None:
        if self.violation is None:
            self.violation = _Failure("policy_violation", rule, message)

    def import_(self, name, globals=None, locals=None, fromlist=(), level=0):
        fromlist = tuple(fromlist or ())
        if not level and name == "math":   # a copy per import: no state passes between the cores' instances
            fresh = types.ModuleType("math")
            fresh.__dict__.update(math.__dict__)
            return fresh
        if not level and name == "hwmodel.dsl" and fromlist and set(fromlist) <= self.public:
            return self.modules[name]
        shown = clean_text(str(name), 60)
        self.refuse("policy.import", f"the kernel tried to import {shown!r}" +
                    (f" (names {clean_text(', '.join(map(str, fromlist)), 80)})" if fromlist else "") +
                    f"; kernels import only math and, from hwmodel.dsl, {', '.join(sorted(self.public))}")
        raise ImportError(f"import of {shown!r} is not allowed in kernels")

    def audit_hook(self) -> Callable[[str, tuple], None]:
        """The audit hook: it runs for every op and every id(), so it is a closure with a
        fast path (a bound method costs three times as much per event)."""
        frequent, audited, refuse = _FREQUENT, _AUDITED, self.refuse

        def audit(event: str, args) -> None:
            if event in frequent:
                return
            if event.startswith(audited):
                refuse("sandbox.audit", f"the kernel attempted {clean_text(event, 40)!r}, which the sandbox "
                       "forbids (no files, processes, sockets, native code or interpreter hooks)")
                raise PermissionError(f"{event} is not allowed in the kernel sandbox")
        return audit


def _reply(fd: int, status: str, rule: str = "", message: str = "", line: int = 0,
           blobs: dict[str, bytes] | None = None, net_namespace: bool = False) -> None:
    blobs = blobs or {}
    head = json.dumps({"status": status, "rule": rule, "message": clean_text(message), "line": line,
                       "keys": list(blobs), "net_namespace": net_namespace}).encode()
    _write_all(fd, struct.pack("<Q", len(head)) + head)
    for blob in blobs.values():
        _write_all(fd, struct.pack("<Q", len(blob)))
        _write_all(fd, blob)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main(after_contain: Callable[[dict], None] | None = None) -> None:
    """argv: project root, reply fd, parent pid. `after_contain` is for tests of the
    containment itself: trusted code run right after contain(), before the kernel is compiled."""
    reply_fd, parent_pid = int(sys.argv[2]), int(sys.argv[3])
    request = json.loads(sys.stdin.buffer.read())
    prepared = _prepare(request)
    from evaluator.containment import ContainmentError, contain
    try:
        containment = contain(parent_pid)
    except ContainmentError as exc:
        os.write(2, f"\ncubepilot sandbox: {exc}\n".encode(errors="replace"))
        os._exit(CONTAIN_FAILED_EXIT)
    if after_contain is not None:
        after_contain(request)
    try:
        status, rule, message, line, blobs = "ok", "", "", 0, _record(request, *prepared)
    except _Failure as failure:
        status, rule, message, line, blobs = failure.status, failure.rule, failure.message, failure.line, {}
    _reply(reply_fd, status, rule, message, line, blobs, containment.net_namespace)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)                   # no interpreter teardown: nothing after the reply


def _prepare(request: dict) -> tuple:
    """Everything recording needs, imported and built before containment (no file opens after)."""
    from evaluator.codec import encode
    from evaluator.policy import ALLOWED_BUILTINS, DSL_PUBLIC_NAMES
    import numpy.ma  # noqa: F401  (numpy imports it lazily, e.g. in np.unique: never after containment)
    from hwmodel import dsl, spmd  # noqa: F401  (spmd: record_trace's all-cores run, imported before containment)
    from hwmodel.errors import HwError
    from hwmodel.simulate import TensorArg, declare
    from hwmodel.spec import MachineSpec

    machine = MachineSpec.model_validate(request["machine"])
    shapes = [(item["key"], declare([TensorArg(name, tuple(shape), dtype, role)
                                     for name, shape, dtype, role in item["args"]]))
              for item in request["shapes"]]
    guard = _Guard(types.SimpleNamespace(**{n: getattr(dsl, n) for n in sorted(DSL_PUBLIC_NAMES)}), DSL_PUBLIC_NAMES)
    safe_builtins = {name: getattr(builtins, name) for name in ALLOWED_BUILTINS if hasattr(builtins, name)}
    safe_builtins["__import__"] = guard.import_
    safe_builtins["__build_class__"] = builtins.__build_class__
    inspect.signature(_prepare)   # warm inspect's caches
    import unicodedata  # noqa: F401  (compile() imports it for non-ASCII identifiers)
    warnings.simplefilter("ignore")   # showing a warning looks up source lines: a file access
    sys.excepthook = _print_exception                               # so do the default hooks' tracebacks
    sys.unraisablehook = lambda unraisable: _print_exception(type(unraisable.exc_value), unraisable.exc_value, None)
    return machine, shapes, guard, safe_builtins, dsl, encode, HwError, _compile(request["source"])


def _compile(source: str):
    """The kernel's code object, or the compile failure to report. Parsing runs no kernel code,
    and it happens before containment because a SyntaxError makes CPython open the source file
    by name to quote the line (a file access the filter would kill)."""
    try:
        return compile(source, KERNEL_FILE, "exec")
    except SyntaxError as exc:
        return _Failure("compile_error", "compile.syntax", f"syntax error: {clean_text(str(exc.msg), 200)}",
                        exc.lineno or 0)
    except Exception as exc:      # null bytes, absurd nesting, too large
        return _Failure("compile_error", "compile.syntax", f"the source cannot be compiled: {_exception_text(exc)}")


def _record(request: dict, machine, shapes, guard: _Guard, safe_builtins: dict, dsl, encode,
            hw_error: type, code) -> dict[str, bytes]:
    if isinstance(code, _Failure):
        raise code
    sys.addaudithook(guard.audit_hook())   # from here on the kernel's code runs
    namespace = {"__builtins__": safe_builtins, "__name__": "kernel"}
    try:
        exec(code, namespace)
    except MemoryError:
        raise _Failure("oom", "sandbox.memory", "the kernel module ran out of memory while loading") from None
    except BaseException as exc:  # the module's own top-level code failed
        _check(guard)
        raise _Failure("compile_error", "compile.load", f"loading the module raised {_exception_text(exc)}",
                       _kernel_line(exc)) from None
    _check(guard)
    kernel = namespace.get("kernel")
    arg_names = request["arg_names"]
    if not isinstance(kernel, types.FunctionType):
        raise _Failure("compile_error", "compile.signature",
                       f"the module defines no function kernel(k, {', '.join(arg_names)})")
    try:
        params = list(inspect.signature(kernel).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != 1 + len(arg_names) and not any(p.kind == p.VAR_POSITIONAL for p in params):
        got = clean_text(", ".join(p.name for p in params), 200)
        raise _Failure("compile_error", "compile.signature",
                       f"kernel must take (k, {', '.join(arg_names)}) for this task; it takes ({got})",
                       kernel.__code__.co_firstlineno)
    # every core records on a fresh instance of the module (all cores in one run where they agree)
    module = dsl.KernelModule(code, safe_builtins, name="kernel")
    max_ops, max_bytes = request["max_ops"], request["max_trace_bytes"]
    blobs, total_bytes = {}, 0
    for key, decls in shapes:
        try:
            trace = dsl.record_trace(module, machine, decls, max_ops_per_core=max(1, max_ops // machine.num_cores))
            _check(guard)
            if trace.num_ops > max_ops:
                raise _Failure("hw_violation", "sandbox.ops_limit",
                               f"the kernel issued {trace.num_ops:,} ops at shape {key}; the limit is {max_ops:,} "
                               "(use larger tiles: every op also costs issue time)")
            blobs[key] = encode(trace)
            del trace
        except _Failure:
            raise
        except hw_error as exc:
            _check(guard)
            raise _Failure("hw_violation", clean_text(str(exc.rule), 40),
                           f"at shape {key}: {type(exc).__name__} ({exc.rule}): {clean_text(str(exc), 600)}",
                           _kernel_line(exc)) from None
        except MemoryError:
            raise _Failure("oom", "sandbox.memory", f"the kernel ran out of memory at shape {key} "
                           "(memory limit of the sandbox)") from None
        except RecursionError as exc:
            raise _Failure("runtime_error", "runtime.recursion", f"at shape {key}: the kernel recursed too deeply",
                           _kernel_line(exc)) from None
        except BaseException as exc:
            _check(guard)
            raise _Failure("runtime_error", "runtime.exception", f"at shape {key}: the kernel raised "
                           f"{_exception_text(exc)}", _kernel_line(exc)) from None
        total_bytes += len(blobs[key])
        if total_bytes > max_bytes:
            raise _Failure("hw_violation", "sandbox.trace_size",
                           f"the traces take {total_bytes / 2**20:,.0f} MiB up to shape {key}; the limit is "
                           f"{max_bytes / 2**20:,.0f} MiB (issue fewer, larger ops; identical ops on all cores "
                           "are stored once)")
    return blobs


def _check(guard: _Guard) -> None:
    if guard.violation is not None:
        raise guard.violation


# ------------------------------------------------------------------ the fork server
def serve() -> None:
    """The fork server: started once per evaluating process exactly as a recording child was
    (empty environment, own session, no file writes; argv: project root, control socket fd),
    it imports what recording needs, then forks one child per request on its control socket.
    A request is JSON (job id, limits, entry point, working directory) plus three file
    descriptors: the request pipe, the reply pipe and the output pipe. It holds no request data
    (the child reads its request after the fork), and it answers `{"job", "pid"}` after each
    fork, `{"job", "exit"}` (a Popen-style returncode) when it reaps one, and kills a job's
    child on `{"kill": job}`. When the control socket closes (the evaluating process is gone)
    it kills its children and exits."""
    import ctypes
    import gc
    import importlib
    import resource
    import select
    import signal
    import socket

    control = socket.socket(fileno=int(sys.argv[2]))
    for module in _WARM_MODULES:
        importlib.import_module(module)
    inspect.signature(serve)              # warm inspect's caches, as _prepare does
    import unicodedata  # noqa: F401
    libc = ctypes.CDLL(None, use_errno=True)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    gc.collect()
    gc.freeze()                           # the imported state stays shared (copy-on-write) by every fork
    me = os.getpid()
    pid_of: dict[int, int] = {}           # job -> pid of its live child
    job_of: dict[int, int] = {}           # pid -> job

    def send(message: dict) -> None:
        try:
            control.send(json.dumps(message).encode())
        except OSError:                   # the evaluating process is gone
            shutdown()

    def shutdown() -> None:
        for pid in job_of:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.rmdir(os.getcwd())         # the (empty) directory the server was started in
        except OSError:
            pass
        os._exit(0)

    while True:
        ready, _, _ = select.select([control, wake_r], [], [])
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        while job_of:                     # reap every child that ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            job = job_of.pop(pid, None)
            if job is not None:
                del pid_of[job]
                send({"job": job, "exit": os.waitstatus_to_exitcode(status)})
        if control not in ready:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(control, 64 * 1024, 3)
        except OSError:
            data, fds = b"", []
        if not data:
            shutdown()
        request = json.loads(data)
        if "kill" in request:
            pid = pid_of.get(request["kill"])
            if pid is not None:           # not reaped yet, so the pid is still this child's
                os.kill(pid, signal.SIGKILL)
            continue
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            send({"job": request["job"], "failed": f"fork: {exc}"})
            continue
        if pid == 0:
            _forked(request, fds, control, libc, me, resource, signal)   # never returns
        for fd in fds:
            os.close(fd)
        pid_of[request["job"]], job_of[pid] = pid, request["job"]
        send({"job": request["job"], "pid": pid})


_WARM_MODULES = ("evaluator.codec", "evaluator.policy", "evaluator.containment", "hwmodel.dsl", "hwmodel.spmd",
                 "numpy.ma", "hwmodel.errors", "hwmodel.simulate", "hwmodel.spec", "pyseccomp")
_PR_SET_PDEATHSIG = 1


def _forked(request: dict, fds: list[int], control, libc, server_pid: int, resource, signal) -> None:
    """In the forked child: shed the server's state (control socket, signal setup, every other
    file descriptor), take the job's pipes as stdin, stdout + stderr and fd 3, its own session,
    death with the server, rlimits and working directory; then run the entry point as a
    freshly started child would. Exits, never returns into the server's loop."""
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        control.close()
        os.setsid()
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != server_pid:
            os._exit(1)
        request_r, reply_w, out_w = fds
        os.dup2(request_r, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        os.dup2(reply_w, 3)
        os.closerange(4, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        cpu_s, memory_bytes = request["cpu_s"], request["memory_bytes"]
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.chdir(request["cwd"])
        os.environ["HOME"] = os.environ["TMPDIR"] = request["cwd"]
        sys.argv = [sys.argv[0], sys.argv[1], "3", str(server_pid)]
        module, function = request["entry"].split(":")
        import importlib
        getattr(importlib.import_module(module), function)()
    except BaseException as exc:
        try:
            _print_exception(type(exc), exc, None)
        finally:
            os._exit(1)
    os._exit(1)                           # an entry point that returns (the real one exits itself)


if __name__ == "__main__":
    main()
