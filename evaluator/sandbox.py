"""Run untrusted kernel source in a separate, contained process and get its traces back.

One process per candidate: CPU-time, address-space and file-size rlimits, its own process
group (killed whole on timeout), an empty environment and a fresh temporary directory; the
child contains itself further before the kernel runs (evaluator.containment). The reply
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
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

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


def _limit(limits: SandboxLimits):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


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
        launch = (f"import sys; sys.path.insert(0, sys.argv[1]); "
                  f"from {match[1]} import {match[2]}; {match[2]}()")
        self._tmp = tempfile.TemporaryDirectory(prefix="cubepilot-sandbox-")
        self._started = time.monotonic()
        self._reply_r, reply_w = os.pipe()
        self._out_r, out_w = os.pipe()
        try:      # a larger pipe: fewer round trips between child and parent for a big trace
            fcntl.fcntl(reply_w, fcntl.F_SETPIPE_SZ, REPLY_PIPE_BYTES)
        except OSError:
            pass
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-E", "-s", "-B", "-c", launch, str(PROJECT_ROOT), str(reply_w), str(os.getpid())],
                stdin=subprocess.PIPE, stdout=out_w, stderr=out_w, pass_fds=(reply_w,), cwd=self._tmp.name,
                env=_child_env(self._tmp.name), start_new_session=True, preexec_fn=_limit(limits))
        except BaseException:
            for fd in (self._reply_r, self._out_r):
                os.close(fd)
            self._tmp.cleanup()
            raise
        finally:
            os.close(reply_w)
            os.close(out_w)
        try:
            self._proc.stdin.write(request)   # the child reads it all at once, before anything else
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        self._proc.stdin = None

    @property
    def pid(self) -> int:
        """The child's process id (its process group too)."""
        return self._proc.pid

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
        try:
            returncode = self._proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return self._timed_out()
        return outcome_of(returncode, b"".join(reply), bytes(tail[-OUTPUT_TAIL_BYTES:]), self._keys, limits)

    def _timed_out(self) -> SandboxOutcome:
        self._kill()
        return SandboxOutcome("timeout", f"the kernel's Python did not finish within {self.limits.wall_s:.0f} s "
                              "(an endless loop, or far too many ops)", rule="sandbox.wall")

    def _kill(self) -> None:
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._proc.wait()

    def _close(self) -> None:
        for fd in (self._reply_r, self._out_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._reply_r = self._out_r = -1
        self._tmp.cleanup()


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
