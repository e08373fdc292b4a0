"""Run untrusted kernel source in a separate, contained process and get its traces back.

One process per candidate, forked from a fork server (started once per evaluating process
with an empty environment, it has everything recording needs imported and holds nothing
trusted): CPU-time, address-space and file-size rlimits, its own session (killed on
timeout), a fresh temporary directory; the child contains itself further before the kernel
runs (evaluator.containment). The reply
comes on a pipe of its own, size-capped and parsed strictly; the kernel's stdout and stderr
share another pipe, of which only the last few KiB are kept. Both are read with selectors
against the wall-clock deadline. All numbers and times are computed here, in the trusted
process, from the validated traces.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import resource
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from evaluator.errors import EvalError
from evaluator.sandbox_child import (CHILD_STATUSES, CONTAIN_FAILED_EXIT, MAX_HEADER_BYTES, MAX_MESSAGE_CHARS,
                                     REPLY_FIELDS, clean_text, quote_kernel_text)
from hwmodel.limits import MAX_OPS
from hwmodel.simulate import TensorArg
from hwmodel.spec import MachineSpec

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHILD_ENTRY = "evaluator.sandbox_child:main"
OUTPUT_TAIL_BYTES = 16 * 1024      # of the kernel's stdout + stderr, kept for error messages
KERNEL_TAIL_CHARS = 200            # of that tail, quoted in a message
REPLY_PIPE_BYTES = 2**20           # asked of the kernel for the reply pipe (Linux's default maximum)
KILL_WAIT_S = 10.0                 # after SIGKILL, how long to wait for the server to report the exit
# The largest library trace at a benchmark shape is about 50 MB (sgemm_termwise, 2.6 M ops,
# 4096^3 on ascend-910a); the cap is four times that.
MAX_TRACE_BYTES = 200 * 2**20
_RULE = re.compile(r"[a-z0-9_. -]{1,48}")
_ENTRY = re.compile(r"([A-Za-z_][\w.]*):([A-Za-z_]\w*)")


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 60.0
    cpu_s: int = 60
    memory_bytes: int = 4 * 2**30
    max_ops: int = MAX_OPS
    max_trace_bytes: int = MAX_TRACE_BYTES   # all traces of one reply together


@dataclass(frozen=True)
class SandboxOutcome:
    """status is 'ok' or one of the EvalResult failure statuses; traces by shape key.
    rule: the broken rule's short stable name (empty when ok). net_namespace: whether the
    child ran in a network namespace of its own (None when it did not reply)."""

    status: str
    message: str = ""
    line: int = 0
    traces: dict[str, bytes] = field(default_factory=dict)
    rule: str = ""
    net_namespace: bool | None = None


def _child_env(tmp: str) -> dict[str, str]:
    """Nothing from the parent's environment: no keys, tokens, proxies or config paths."""
    return {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1"}


class SandboxRun:
    """One sandboxed recording in flight: started at construction, collected by `result()`,
    so the trusted process can work (e.g. check small shapes) while the child records.
    `entry` ("module:function") is the child's entry point: only tests of the containment
    itself change it."""

    def __init__(self, source: str, machine: MachineSpec, arg_names: list[str],
                 shapes: dict[str, list[TensorArg]], limits: SandboxLimits = SandboxLimits(),
                 *, entry: str = CHILD_ENTRY):
        match = _ENTRY.fullmatch(entry)
        if not match:
            raise ValueError(f"entry must be 'module:function', got {entry!r}")
        self.limits = limits
        self._keys = list(shapes)
        request = json.dumps({
            "source": source, "machine": machine.model_dump(mode="json"), "arg_names": arg_names,
            "max_ops": limits.max_ops, "max_trace_bytes": limits.max_trace_bytes,
            "shapes": [{"key": key, "args": [[a.name, list(a.shape), a.dtype, a.role] for a in args]}
                       for key, args in shapes.items()],
        }).encode()
        self._tmp = tempfile.TemporaryDirectory(prefix="cubepilot-sandbox-")
        self._started = time.monotonic()
        self._reply_r, reply_w = os.pipe()
        self._out_r, out_w = os.pipe()
        request_r, request_w = os.pipe()
        for fd, size in ((reply_w, REPLY_PIPE_BYTES), (request_w, max(len(request), 1))):
            try:      # larger pipes: fewer round trips for a big trace, no wait on writing the request
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, min(size, REPLY_PIPE_BYTES))
            except OSError:
                pass
        job = {"cpu_s": limits.cpu_s, "memory_bytes": limits.memory_bytes, "entry": entry, "cwd": self._tmp.name}
        try:
            self._server, self._job = fork_server().start(job, (request_r, reply_w, out_w))
        except BaseException:
            for fd in (self._reply_r, self._out_r, request_w):
                os.close(fd)
            self._tmp.cleanup()
            raise
        finally:
            for fd in (request_r, reply_w, out_w):
                os.close(fd)
        try:
            _write_all(request_w, request)      # the child reads it all at once, before anything else
        except BrokenPipeError:
            pass
        finally:
            os.close(request_w)
        self._exit: int | None = None

    @property
    def pid(self) -> int:
        """The child's process id (its process group too)."""
        pid = self._server.wait(self._job, "pid", time.monotonic() + self.limits.wall_s)
        if pid is None:
            raise SandboxServerError("the sandbox server did not start the child in time")
        return pid

    def result(self) -> SandboxOutcome:
        try:
            outcome = self._collect()
        except BaseException:     # stopped (Ctrl-C, SIGTERM): the child runs in its own session, so stop it too
            self._kill()
            raise
        finally:
            self._close()
        return outcome

    def cancel(self) -> None:
        self._kill()
        self._close()

    def _collect(self) -> SandboxOutcome:
        limits = self.limits
        deadline = max(self._started + limits.wall_s, time.monotonic() + 0.1)
        cap = limits.max_trace_bytes + MAX_HEADER_BYTES + 8 * (len(self._keys) + 1)
        reply: list[bytes] = []
        reply_bytes = 0
        tail = bytearray()
        with selectors.DefaultSelector() as sel:
            sel.register(self._reply_r, selectors.EVENT_READ)
            sel.register(self._out_r, selectors.EVENT_READ)
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return self._timed_out()
                for key, _ in sel.select(remaining):
                    data = os.read(key.fd, 1 << 20)
                    if not data:
                        sel.unregister(key.fd)
                    elif key.fd == self._reply_r:
                        reply.append(data)
                        reply_bytes += len(data)
                        if reply_bytes > cap:
                            self._kill()
                            return SandboxOutcome("invalid_trace", f"the sandbox's reply exceeded {cap / 2**20:,.0f} "
                                                  "MiB and was cut off", rule="sandbox.reply")
                    else:
                        tail += data
                        if len(tail) > 2 * OUTPUT_TAIL_BYTES:
                            del tail[:-OUTPUT_TAIL_BYTES]
        returncode = self._server.wait(self._job, "exit", deadline)
        if returncode is None:
            return self._timed_out()
        self._exit = returncode
        return outcome_of(returncode, b"".join(reply), bytes(tail[-OUTPUT_TAIL_BYTES:]), self._keys, limits)

    def _timed_out(self) -> SandboxOutcome:
        self._kill()
        return SandboxOutcome("timeout", f"the kernel's Python did not finish within {self.limits.wall_s:.0f} s "
                              "(an endless loop, or far too many ops)", rule="sandbox.wall")

    def _kill(self) -> None:
        if self._exit is None:
            self._server.kill(self._job)
            try:
                self._exit = self._server.wait(self._job, "exit", time.monotonic() + KILL_WAIT_S)
            except SandboxServerError:    # the server is gone, and its children with it
                pass

    def _close(self) -> None:
        for fd in (self._reply_r, self._out_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._reply_r = self._out_r = -1
        self._server.forget(self._job)
        self._tmp.cleanup()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class SandboxServerError(EvalError):
    """The fork server died or could not start a child (not the kernel's doing)."""


class ForkServer:
    """The client side of the fork server (evaluator.sandbox_child.serve): one per evaluating
    process, started on first use, replaced when it has died. It is started like a recording
    child used to be (clean environment, its own session, no file writes, nothing of this
    process's state), so a child forked from it starts with everything imported and nothing
    trusted. It exits when this process does (its control socket closes)."""

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._dir = tempfile.mkdtemp(prefix="cubepilot-sandbox-server-")
        launch = ("import sys; sys.path.insert(0, sys.argv[1]); "
                  "from evaluator.sandbox_child import serve; serve()")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-E", "-s", "-B", "-c", launch, str(PROJECT_ROOT), str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), cwd=self._dir,
                env=_child_env(self._dir), start_new_session=True, preexec_fn=_no_files)
        except BaseException:
            ours.close()
            os.rmdir(self._dir)
            raise
        finally:
            theirs.close()
        self._sock = ours
        self._owner = os.getpid()
        self._lock = threading.Lock()
        self._events: dict[int, dict] = {}
        self._jobs = 0
        self._dead = False

    def alive(self) -> bool:
        return not self._dead and self._owner == os.getpid() and self._proc.poll() is None

    def start(self, job: dict, fds: tuple[int, int, int]) -> tuple[ForkServer, int]:
        with self._lock:
            self._jobs += 1
            job_id = self._jobs
            try:
                socket.send_fds(self._sock, [json.dumps({"job": job_id, **job}).encode()], list(fds))
            except OSError as exc:
                self._dead = True
                raise SandboxServerError(f"the sandbox server is gone ({exc})") from None
        return self, job_id

    def kill(self, job_id: int) -> None:
        with self._lock:
            try:
                self._sock.send(json.dumps({"kill": job_id}).encode())
            except OSError:
                self._dead = True

    def wait(self, job_id: int, field: str, deadline: float):
        """The job's `field` ("pid" or "exit") once the server sends it; None at the deadline."""
        while True:
            with self._lock:
                event = self._events.get(job_id, {})
                if field in event:
                    return event[field]
                if "failed" in event:
                    raise SandboxServerError(f"the sandbox server could not start the child: {event['failed']}")
                if self._dead:
                    raise SandboxServerError(f"the sandbox server exited ({self._proc.poll()}) during the evaluation")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if select.select([self._sock], [], [], min(remaining, 0.2))[0]:
                    try:
                        data = self._sock.recv(64 * 1024)
                    except OSError:
                        data = b""
                    if not data:
                        self._dead = True
                        continue
                    message = json.loads(data)
                    self._events.setdefault(message.pop("job"), {}).update(message)

    def forget(self, job_id: int) -> None:
        with self._lock:
            self._events.pop(job_id, None)

    def close(self) -> None:
        self._sock.close()
        self._dead = True


_server: ForkServer | None = None
_server_lock = threading.Lock()


def fork_server() -> ForkServer:
    """This process's fork server, started (again) if there is none alive."""
    global _server
    with _server_lock:
        if _server is None or not _server.alive():
            if _server is not None and _server._owner == os.getpid():
                _server.close()
            _server = ForkServer()
        return _server


def _forget_inherited_server() -> None:
    """In a child forked from this process: its copy of the server's socket is closed, so the
    server still sees its process go away."""
    global _server
    if _server is not None:
        try:
            _server._sock.close()
        except OSError:
            pass
        _server = None


os.register_at_fork(after_in_child=_forget_inherited_server)


def _no_files() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def record_in_sandbox(source: str, machine: MachineSpec, arg_names: list[str],
                      shapes: dict[str, list[TensorArg]], limits: SandboxLimits = SandboxLimits()) -> SandboxOutcome:
    """Record the kernel's trace for every shape (key -> arguments) in a sandboxed process."""
    return SandboxRun(source, machine, arg_names, shapes, limits).result()


def outcome_of(returncode: int, reply: bytes, output_tail: bytes, keys: Sequence[str],
               limits: SandboxLimits) -> SandboxOutcome:
    """What the child's exit and reply mean. Signals first (they are the kernel's, not a claim)."""
    if returncode == -signal.SIGSYS:
        return SandboxOutcome("policy_violation", "the kernel made a forbidden system call (files, processes, "
                              "sockets or other processes' memory) and was killed by the sandbox",
                              rule="sandbox.syscall")
    if returncode == -signal.SIGXCPU:
        return SandboxOutcome("timeout", f"the kernel's Python used more than {limits.cpu_s} s of CPU time",
                              rule="sandbox.cpu")
    if returncode == CONTAIN_FAILED_EXIT and not reply:
        lines = output_tail.decode(errors="replace").strip().splitlines()
        why = clean_text(lines[-1], 300) if lines else "no reason given"
        return SandboxOutcome("evaluator_error", f"the sandbox could not contain the kernel, so it was not run: {why}",
                              rule="sandbox.containment")
    if returncode != 0:
        text = output_tail.decode(errors="replace")
        if returncode == -signal.SIGKILL or "MemoryError" in text[-2000:]:
            return SandboxOutcome("oom", "the sandbox was killed (out of memory)", rule="sandbox.memory")
        how = f"signal {signal.Signals(-returncode).name}" if returncode < 0 and -returncode in signal.valid_signals() \
            else f"exit status {returncode}"
        last = f"; its last output: {quote_kernel_text(text[-KERNEL_TAIL_CHARS:])}" if text.strip() else ""
        return SandboxOutcome("runtime_error", f"the sandbox process died ({how}) without a reply{last}",
                              rule="sandbox.crash")
    return parse_reply(reply, keys)



def parse_reply(data: bytes, keys: Sequence[str]) -> SandboxOutcome:
    """The child's reply, parsed strictly: anything malformed, unexpected or trailing is an
    invalid_trace (rule sandbox.reply). Never raises."""
    try:
        return _parse_reply(data, keys)
    except _BadReply as exc:
        return SandboxOutcome("invalid_trace", f"the sandbox's reply is malformed ({exc}); nothing of it was used",
                              rule="sandbox.reply")


class _BadReply(Exception):
    pass


def _no_duplicates(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _BadReply("duplicate field")
    return dict(pairs)


def _bad_constant(name: str):
    raise _BadReply(f"constant {name}")


def _parse_reply(data: bytes, keys: Sequence[str]) -> SandboxOutcome:
    if not data:
        raise _BadReply("the sandbox exited without a reply")
    if len(data) < 8:
        raise _BadReply("truncated header")
    (n,) = struct.unpack_from("<Q", data, 0)
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise _BadReply(f"header of {n} bytes")
    try:
        head = json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates,
                          parse_constant=_bad_constant)
    except (ValueError, RecursionError) as exc:      # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _BadReply(f"header is not JSON: {type(exc).__name__}") from None
    if not isinstance(head, dict) or set(head) != set(REPLY_FIELDS):
        raise _BadReply("header fields")
    for name, kind in REPLY_FIELDS.items():
        if type(head[name]) is not kind:                # exact: a bool is not a line number
            raise _BadReply(f"field {name!r} has the wrong type")
    status, rule, message, line, got_keys = (head[f] for f in ("status", "rule", "message", "line", "keys"))
    if status not in CHILD_STATUSES:
        raise _BadReply("unknown status")
    if (status == "ok") != (rule == "") or (rule and not _RULE.fullmatch(rule)):
        raise _BadReply("rule")
    if len(message) > MAX_MESSAGE_CHARS or (status == "ok" and message) or (status != "ok" and not message):
        raise _BadReply("message")
    if not 0 <= line <= 10**7:
        raise _BadReply("line")
    expected = list(keys) if status == "ok" else []
    if not all(type(k) is str for k in got_keys) or sorted(got_keys) != sorted(expected):
        raise _BadReply("trace keys do not match the shapes asked for")
    pos = 8 + n
    traces = {}
    for key in got_keys:
        if pos + 8 > len(data):
            raise _BadReply("truncated trace")
        (size,) = struct.unpack_from("<Q", data, pos)
        if pos + 8 + size > len(data):
            raise _BadReply("truncated trace")
        traces[key] = data[pos + 8:pos + 8 + size]
        pos += 8 + size
    if pos != len(data):
        raise _BadReply(f"{len(data) - pos} trailing bytes")
    return SandboxOutcome(status, clean_text(message), line, traces, rule, head["net_namespace"])
