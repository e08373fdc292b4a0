"""Per-pipe timeline (Gantt) of one core of an archived kernel, computed on demand.

Archived source never runs in the viewer's process: the kernel's trace at the run's shape
is re-recorded by the evaluator's sandbox, decoded and validated, and only then timed here
with `simulate_timing(..., timeline_core=c)`. Results are cached as JSON files on disk.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from evaluator.codec import CodecError, decode
from evaluator.errors import EvalError
from evaluator.sandbox import SandboxLimits, record_in_sandbox
from evaluator.tasks import get_task
from hwmodel.errors import HwError
from hwmodel.spec import load_machine
from hwmodel.timing import simulate_timing
from hwmodel.validate import validate_trace

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cubepilot" / "timelines"
_compute_lock = threading.Lock()      # one sandbox at a time: the viewer must not swamp the machine


class TimelineError(Exception):
    """The timeline cannot be computed (unknown task or machine, or the kernel fails to record)."""


@dataclass(frozen=True)
class Timeline:
    core: int
    active_cores: tuple[int, ...]
    clock_ghz: float
    pipes: tuple[str, ...]
    ops: tuple[tuple[int, str, float, float], ...]     # (op index, pipe, start, end) in cycles
    time_ns: float                                     # the whole kernel, all cores
    core_time_ns: float
    busy: dict[str, float]                             # this core's busy fraction per pipe

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Timeline":
        d = json.loads(text)
        return cls(d["core"], tuple(d["active_cores"]), d["clock_ghz"], tuple(d["pipes"]),
                   tuple(tuple(o) for o in d["ops"]), d["time_ns"], d["core_time_ns"], d["busy"])


def _key(source: str, task: str, machine_json: str, shape: str, core: int) -> str:
    h = hashlib.sha256()
    for part in ("timeline-1", source, task, machine_json, shape, str(core)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


class TimelineStore:
    """Timelines by (kernel source, task, machine, shape, core): computed once, then read from disk."""

    def __init__(self, directory: Path = DEFAULT_CACHE, limits: SandboxLimits = SandboxLimits()):
        self.directory = Path(directory)
        self.limits = limits

    def _path(self, source: str, task: str, machine: str, shape: str, core: int) -> Path:
        try:
            spec = load_machine(machine)
        except HwError as exc:
            raise TimelineError(str(exc)) from None
        return self.directory / f"{_key(source, task, spec.model_dump_json(), shape, core)}.json"

    def cached(self, source: str, task: str, machine: str, shape: str, core: int) -> Timeline | None:
        try:
            path = self._path(source, task, machine, shape, core)
            return Timeline.from_json(path.read_text()) if path.is_file() else None
        except (TimelineError, OSError, ValueError, KeyError, TypeError):
            return None

    def get(self, source: str, task: str, machine: str, shape: str, core: int) -> Timeline:
        hit = self.cached(source, task, machine, shape, core)
        if hit is not None:
            return hit
        with _compute_lock:
            hit = self.cached(source, task, machine, shape, core)     # computed while this request waited
            if hit is not None:
                return hit
            timeline = compute(source, task, machine, shape, core, self.limits)
            path = self._path(source, task, machine, shape, core)
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
                tmp.write_text(timeline.to_json())
                tmp.replace(path)
            except OSError:
                pass            # an unwritable cache only costs a recomputation next time
        return timeline


def compute(source: str, task_name: str, machine_name: str, shape_text: str, core: int,
            limits: SandboxLimits = SandboxLimits()) -> Timeline:
    """Record the kernel's trace in the sandbox, validate it, and time it keeping core `core`'s intervals."""
    try:
        task = get_task(task_name)
        shape = task.parse_shape(shape_text)
        machine = load_machine(machine_name)
    except (EvalError, HwError) as exc:
        raise TimelineError(str(exc)) from None
    if not 0 <= core < machine.num_cores:
        raise TimelineError(f"core {core} does not exist: {machine.name} has cores 0 to {machine.num_cores - 1}")
    outcome = record_in_sandbox(source, machine, list(task.arg_names), {shape_text: task.args(shape)}, limits)
    if outcome.status != "ok" or shape_text not in outcome.traces:
        raise TimelineError(f"the kernel did not record at {shape_text}: {outcome.status}: {outcome.message}")
    try:
        trace = decode(outcome.traces[shape_text])
        validate_trace(trace, machine)
    except (CodecError, HwError) as exc:
        raise TimelineError(f"the recorded trace is invalid: {exc}") from None
    active = tuple(c for c, ops in enumerate(trace.ops) if ops)
    if core not in active:
        raise TimelineError(f"core {core} runs no op in this kernel; active cores: "
                            f"{', '.join(map(str, active[:16]))}{' ...' if len(active) > 16 else ''}")
    timing = simulate_timing(trace, machine, timeline_core=core)
    core_ns = timing.core_time_ns[core] if core < len(timing.core_time_ns) else timing.time_ns
    span = max((end for _, _, _, end in timing.timeline), default=0.0) or 1.0
    busy: dict[str, float] = {}
    for _, pipe, start, end in timing.timeline:
        busy[pipe] = busy.get(pipe, 0.0) + (end - start) / span
    return Timeline(core, active, machine.clock_ghz, tuple(machine.pipes),
                    tuple((int(i), p, float(s), float(e)) for i, p, s, e in timing.timeline),
                    timing.time_ns, core_ns, {p: round(b, 4) for p, b in busy.items()})
