"""Measured figures of the seed library: each family's reference kernel evaluated through the
cascade, kept in a small JSON file that `cubepilot strategies --measure` writes and the listing
reads. A figure is keyed by family, machine and shape and carries the hash of the kernel it
measured, so the figure of a kernel (or machine) that has changed since is stale, never current.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from evaluator.cascade import EvalConfig, evaluate, evaluation_key
from evaluator.result import EvalResult
from evaluator.tasks.base import Shape, Task
from hwmodel.spec import MachineSpec
from strategies.families import Family

DEFAULT_FIGURES = Path(".cubepilot") / "library-figures.json"
QUICK_SIDE = 512          # --measure's default shape: the task's benchmark shape, every side capped at this


class FiguresError(Exception):
    """The figures file cannot be read: what is wrong with it and what to do."""


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def quick_shape(task: Task) -> Shape:
    """512x512x512 for the GEMM tasks, 1x8x512x128 for attention: quick, yet every core has work."""
    return tuple(min(side, QUICK_SIDE) for side in task.bench_shape)


class LibraryFigure(BaseModel):
    """One family's reference kernel measured on one machine at one shape."""
    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str
    task: str
    machine: str                  # the machine's name, as its spec gives it
    shape: str
    source_hash: str              # of the reference kernel that was measured
    measured_at: float            # Unix time
    result: EvalResult

    @property
    def key(self) -> tuple[str, str, str]:
        return self.family, self.machine, self.shape

    def worst_error(self) -> tuple[str, float, float] | None:
        """(distribution, error, budget) of the distribution closest to (or furthest over) its budget."""
        rows = [(d, e, self.result.budgets.get(d, 0.0)) for d, e in self.result.errors.items()]
        return max(rows, key=lambda r: r[1] / r[2] if r[2] else float("inf"), default=None)

    def stale_reason(self, source: str, task: Task, machine: MachineSpec | None) -> str:
        """Why this figure no longer describes the family ('' when it is current).

        `machine` is the spec of the machine it was measured on, or None when that cannot be
        loaded any more (then only the kernel is checked)."""
        if source_hash(source) != self.source_hash:
            return "the reference kernel has changed since"
        shape = task.parse_shape(self.shape)
        if machine is not None and evaluation_key(source, task, machine, shape) != self.result.source_hash:
            return "the machine spec or the evaluator has changed since"
        return ""


class FigureFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = 1
    figures: tuple[LibraryFigure, ...] = ()


def measure(family: Family, task: Task, machine: MachineSpec, shape: Shape, seed: int | None = None) -> LibraryFigure:
    """Evaluate the family's reference kernel through the full cascade (no cache)."""
    source = family.source
    result = evaluate(source, task, machine, shape, EvalConfig(seed=seed))
    return LibraryFigure(family=family.name, task=task.name, machine=machine.name, shape=task.format_shape(shape),
                         source_hash=source_hash(source), measured_at=time.time(), result=result)


class FigureStore:
    """The figures file: read whole, replaced atomically on every record."""

    def __init__(self, path: str | Path = DEFAULT_FIGURES):
        self.path = Path(path)

    def load(self) -> tuple[LibraryFigure, ...]:
        if not self.path.exists():
            return ()
        try:
            return FigureFile.model_validate_json(self.path.read_bytes()).figures
        except (OSError, ValidationError) as exc:
            first = str(exc).splitlines()[0]
            raise FiguresError(f"cannot read the figures file {str(self.path)!r} ({first}); delete it and "
                               "re-measure with `cubepilot strategies --measure`, or point --figures elsewhere") from None

    def record(self, figure: LibraryFigure) -> None:
        """Add the figure, replacing the one of the same family, machine and shape."""
        kept = [f for f in self.load() if f.key != figure.key]
        text = FigureFile(figures=(*kept, figure)).model_dump_json(indent=1)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        except OSError as exc:
            raise FiguresError(f"cannot write the figures file {str(self.path)!r} ({exc}); "
                               "point --figures at a writable path") from None
        try:
            with os.fdopen(fd, "w") as out:
                out.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
