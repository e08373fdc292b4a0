"""Run untrusted kernel source in a separate, limited process and get its traces back.

One process per candidate: CPU-time, address-space and file-size limits, its own process
group (killed whole on timeout), a scrubbed environment (no API keys, no proxies) and a
fresh temporary directory. The child only records traces (evaluator.sandbox_child); all
numbers and times are computed here, in the trusted process, from the validated traces.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hwmodel.limits import MAX_OPS
from hwmodel.simulate import TensorArg
from hwmodel.spec import MachineSpec

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_LAUNCH = ("import sys; sys.path.insert(0, sys.argv[1]); "
           "from evaluator.sandbox_child import main; main()")


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 60.0
    cpu_s: int = 60
    memory_bytes: int = 4 * 2**30
    max_ops: int = MAX_OPS


@dataclass(frozen=True)
class SandboxOutcome:
    """status is 'ok' or one of the EvalResult failure statuses; traces by shape key."""

    status: str
    message: str = ""
    line: int = 0
    traces: dict[str, bytes] = field(default_factory=dict)


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
    so the trusted process can work (e.g. check small shapes) while the child records."""

    def __init__(self, source: str, machine: MachineSpec, arg_names: list[str],
                 shapes: dict[str, list[TensorArg]], limits: SandboxLimits = SandboxLimits()):
        self.limits = limits
        request = json.dumps({
            "source": source, "machine": machine.model_dump(mode="json"), "arg_names": arg_names,
            "max_ops": limits.max_ops,
            "shapes": [{"key": key, "args": [[a.name, list(a.shape), a.dtype, a.role] for a in args]}
                       for key, args in shapes.items()],
        }).encode()
        self._tmp = tempfile.TemporaryDirectory(prefix="cubepilot-sandbox-")
        self._started = time.monotonic()
        self._proc = subprocess.Popen(
            [sys.executable, "-E", "-s", "-B", "-c", _LAUNCH, str(PROJECT_ROOT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self._tmp.name,
            env=_child_env(self._tmp.name), start_new_session=True, preexec_fn=_limit(limits))
        try:
            self._proc.stdin.write(request)   # the child reads it all at once, before anything else
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        self._proc.stdin = None               # so communicate() only reads

    def result(self) -> SandboxOutcome:
        remaining = max(0.1, self.limits.wall_s - (time.monotonic() - self._started))
        try:
            out, err = self._proc.communicate(timeout=remaining)
        except subprocess.TimeoutExpired:
            _kill_group(self._proc)
            return SandboxOutcome("timeout", f"the kernel's Python did not finish within {self.limits.wall_s:.0f} s "
                                  "(an endless loop, or far too many ops)")
        except BaseException:     # stopped (Ctrl-C, SIGTERM): the child runs in its own session, so stop it too
            _kill_group(self._proc)
            raise
        finally:
            self._tmp.cleanup()
        return _parse(self._proc.returncode, out, err, self.limits)

    def cancel(self) -> None:
        if self._proc.poll() is None:
            _kill_group(self._proc)
        self._tmp.cleanup()


def record_in_sandbox(source: str, machine: MachineSpec, arg_names: list[str],
                      shapes: dict[str, list[TensorArg]], limits: SandboxLimits = SandboxLimits()) -> SandboxOutcome:
    """Record the kernel's trace for every shape (key -> arguments) in a sandboxed process."""
    return SandboxRun(source, machine, arg_names, shapes, limits).result()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def _parse(returncode: int, out: bytes, err: bytes, limits: SandboxLimits) -> SandboxOutcome:
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL) and not out:
        if returncode == -signal.SIGXCPU:
            return SandboxOutcome("timeout", f"the kernel's Python used more than {limits.cpu_s} s of CPU time")
        return SandboxOutcome("oom", "the sandbox was killed (out of memory)")
    try:
        (n,) = struct.unpack_from("<Q", out, 0)
        head = json.loads(out[8:8 + n])
        pos = 8 + n
        traces = {}
        for key in head["keys"]:
            (size,) = struct.unpack_from("<Q", out, pos)
            traces[key] = out[pos + 8:pos + 8 + size]
            pos += 8 + size
    except (struct.error, ValueError, KeyError, TypeError):
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        if "MemoryError" in " ".join(tail):
            return SandboxOutcome("oom", "the kernel ran out of memory in the sandbox")
        return SandboxOutcome("runtime_error", f"the sandbox process failed (exit {returncode}): {' | '.join(tail)}")
    return SandboxOutcome(head["status"], head["message"], head["line"], traces)
