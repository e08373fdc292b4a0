"""The sandboxed side: run a candidate's Python to record op traces, nothing else.

Runs in its own process under resource limits (set by evaluator.sandbox) with a scrubbed
environment. It reads one JSON request on stdin, compiles the kernel with restricted
builtins, installs an audit hook that refuses files, sockets and processes, records one
trace per requested shape, and writes the encoded traces to stdout. It never sees data.
"""
from __future__ import annotations

import builtins
import inspect
import json
import struct
import sys
import traceback

KERNEL_FILE = "kernel.py"


def _allowed_import(name, globals=None, locals=None, fromlist=(), level=0):
    if name not in ("math", "hwmodel.dsl") or level:
        raise ImportError(f"import of {name!r} is not allowed in kernels")
    return _real_import(name, globals, locals, fromlist, level)


_real_import = builtins.__import__


def _kernel_line(exc: BaseException) -> int:
    line = 0
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == KERNEL_FILE:
            line = frame.lineno
    return line


def _reply(out, status: str, message: str = "", line: int = 0, blobs: dict | None = None) -> None:
    blobs = blobs or {}
    head = json.dumps({"status": status, "message": message, "line": line, "keys": list(blobs)}).encode()
    out.write(struct.pack("<Q", len(head)) + head)
    for blob in blobs.values():
        out.write(struct.pack("<Q", len(blob)) + blob)
    out.flush()


def main() -> None:
    out = sys.stdout.buffer
    request = json.loads(sys.stdin.buffer.read())
    import math  # noqa: F401  (pre-imported: the kernel may import it)

    import hwmodel.dsl  # noqa: F401
    from evaluator.codec import encode
    from evaluator.policy import ALLOWED_BUILTINS
    from hwmodel.dsl import record_trace
    from hwmodel.errors import HwError
    from hwmodel.simulate import TensorArg, declare
    from hwmodel.spec import MachineSpec

    machine = MachineSpec.model_validate(request["machine"])
    safe_builtins = {name: getattr(builtins, name) for name in ALLOWED_BUILTINS if hasattr(builtins, name)}
    safe_builtins["__import__"] = _allowed_import
    safe_builtins["__build_class__"] = builtins.__build_class__

    def audit(event: str, args) -> None:
        if event in ("open", "os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.fork",
                     "os.forkpty", "socket.connect", "socket.bind", "socket.__new__", "ctypes.dlopen",
                     "os.kill", "os.remove", "os.rename", "shutil.rmtree"):
            raise PermissionError(f"{event} is not allowed in the kernel sandbox")

    sys.addaudithook(audit)
    try:
        code = compile(request["source"], KERNEL_FILE, "exec")
    except SyntaxError as exc:
        _reply(out, "compile_error", f"syntax error: {exc.msg}", exc.lineno or 0)
        return
    namespace = {"__builtins__": safe_builtins, "__name__": "kernel"}
    try:
        exec(code, namespace)
    except MemoryError:
        _reply(out, "oom", "the kernel module ran out of memory while loading")
        return
    except BaseException as exc:  # the module's own top-level code failed
        _reply(out, "compile_error", f"loading the module raised {type(exc).__name__}: {exc}", _kernel_line(exc))
        return
    kernel = namespace.get("kernel")
    arg_names = request["arg_names"]
    if not callable(kernel):
        _reply(out, "compile_error", f"the module defines no function kernel(k, {', '.join(arg_names)})")
        return
    try:
        params = list(inspect.signature(kernel).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != 1 + len(arg_names) and not any(p.kind == p.VAR_POSITIONAL for p in params):
        got = ", ".join(p.name for p in params)
        _reply(out, "compile_error", f"kernel must take (k, {', '.join(arg_names)}) for this task; it takes ({got})",
               kernel.__code__.co_firstlineno)
        return
    blobs = {}
    for item in request["shapes"]:
        args = [TensorArg(name, tuple(shape), dtype, role) for name, shape, dtype, role in item["args"]]
        try:
            trace = record_trace(kernel, machine, declare(args),
                                 max_ops_per_core=max(1, request["max_ops"] // machine.num_cores))
            ops = trace.num_ops
            if ops > request["max_ops"]:
                _reply(out, "hw_violation", f"the kernel issued {ops:,} ops at shape {item['key']}; the limit is "
                       f"{request['max_ops']:,} (use larger tiles: every op also costs issue time)")
                return
            blobs[item["key"]] = encode(trace)
        except HwError as exc:
            _reply(out, "hw_violation", f"at shape {item['key']}: {type(exc).__name__} ({exc.rule}): {exc}",
                   _kernel_line(exc))
            return
        except MemoryError:
            _reply(out, "oom", f"the kernel ran out of memory at shape {item['key']} (memory limit of the sandbox)")
            return
        except RecursionError as exc:
            _reply(out, "runtime_error", f"at shape {item['key']}: RecursionError: {exc}", _kernel_line(exc))
            return
        except Exception as exc:
            _reply(out, "runtime_error", f"at shape {item['key']}: {type(exc).__name__}: {exc}", _kernel_line(exc))
            return
    _reply(out, "ok", blobs=blobs)


if __name__ == "__main__":
    main()
