"""What a run has recorded, as the loop needs it: steps by seq, elites, kernels seen, the
predictions strategies made against what was measured. Loaded from the archive (so a
resumed run sees exactly what was recorded) and kept in step with every record."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from agents.roles import Context, Draft, Miss, ast_hash, source_hash
from evaluator.result import EvalResult
from evaluator.tasks import get_task
from hwmodel.spec import load_machine
from strategies.archive import Archive, KernelOrigin, Prediction, RunConfig
from strategies.evolution import Elites
from strategies.strategy import Strategy

MISS_FACTOR = 1.5        # a prediction off by more than this factor (either way), or a failure, is a miss
MISSES_SHOWN = 6


@dataclass(frozen=True)
class Step:
    seq: int
    attempt: int
    strategy: Strategy
    draft: Draft


@dataclass
class _Row:
    seq: int
    attempt: int
    strategy: Strategy
    result: EvalResult
    kernel_hash: str
    origin: KernelOrigin | None


@dataclass
class RunState:
    archive: Archive
    run_id: str
    config: RunConfig
    make_context: Callable[..., Context]
    rows: list[_Row] = field(default_factory=list)
    predictions: list[Prediction] = field(default_factory=list)
    elites: Elites = field(default_factory=Elites)
    seen_ast: set[str] = field(default_factory=set)
    archived: dict[str, str] = field(default_factory=dict)     # source hash -> the archive's kernel hash
    next_batch: int = 0

    @classmethod
    def load(cls, archive: Archive, run_id: str, config: RunConfig,
             make_context: Callable[..., Context] | None = None) -> "RunState":
        self = cls(archive, run_id, config, make_context or default_context(config))
        origins = archive.origins(run_id)
        for row in archive.evaluations(run_id):
            origin = origins.get((row.seq, row.attempt))
            self._add(_Row(row.seq, row.attempt, row.strategy, row.result, row.kernel_hash, origin))
            source = archive.source(row.kernel_hash)
            self.seen_ast.add(origin.ast_hash if origin and origin.ast_hash else ast_hash(source))
            self.archived[source_hash(source)] = row.kernel_hash
        self.predictions = archive.predictions(run_id)
        if self.rows:
            last = max(r.seq for r in self.rows)
            self.next_batch = last - last % config.workers      # the batch the last recorded step belongs to
        return self

    @property
    def evaluations(self) -> int:
        return len(self.rows)

    @property
    def failures(self) -> int:
        return sum(not r.result.ok for r in self.rows)

    def started(self, seq: int) -> bool:
        return any(r.seq == seq for r in self.rows)

    def last(self, seq: int) -> tuple[Step, EvalResult]:
        """The latest recorded attempt of a step (to fix it further on resume)."""
        row = max((r for r in self.rows if r.seq == seq), key=lambda r: r.attempt)
        origin = row.origin or KernelOrigin("coder", "builtin", "template")
        source = self.archive.source(row.kernel_hash)
        parent = next((h for h, key in self.archived.items() if key == origin.parent_kernel), "")
        return Step(seq, row.attempt, row.strategy, Draft(source, origin.role, origin.author, origin.mode,
                                                          parent, origin.note)), row.result

    def record(self, step: Step, result: EvalResult) -> None:
        """Records an evaluation; the kernel's parent is named by the archive's kernel hash
        (empty when the parent was never evaluated, e.g. a library reference rendered anew)."""
        d = step.draft
        origin = KernelOrigin(d.role, d.author, d.mode, self.archived.get(d.parent_kernel, ""), d.ast_hash, d.note)
        prediction = self._prediction(step, result)
        self.archive.record(self.run_id, step.seq, step.attempt, step.strategy, d.source, result, origin, prediction)
        self._add(_Row(step.seq, step.attempt, step.strategy, result, result.source_hash, origin))
        self.seen_ast.add(d.ast_hash)
        self.archived[d.hash] = result.source_hash
        if prediction:
            self.predictions.append(prediction)

    def _add(self, row: _Row) -> None:
        self.rows.append(row)
        self.elites.add(row.strategy, row.result)

    def _prediction(self, step: Step, result: EvalResult) -> Prediction | None:
        s = step.strategy
        if s.expected is None or not s.parents:
            return None
        parent = self.result_of(s.parents[0])
        measured = parent.time_ns / result.time_ns if parent and parent.ok and result.ok else None
        return Prediction(step.seq, step.attempt, s.id, s.parents[0], s.expected.bottleneck, s.expected.speedup,
                          measured)

    # ---------------------------------------------------------------- what the roles see
    def result_of(self, strategy_id: str) -> EvalResult | None:
        """A strategy's best ok result, else its latest."""
        rows = [r for r in self.rows if r.strategy.id == strategy_id]
        ok = [r for r in rows if r.result.ok]
        return min(ok, key=lambda r: r.result.time_ns).result if ok else (rows[-1].result if rows else None)

    def kernel_of(self, strategy_id: str) -> str | None:
        rows = [r for r in self.rows if r.strategy.id == strategy_id]
        ok = [r for r in rows if r.result.ok]
        row = min(ok, key=lambda r: r.result.time_ns) if ok else (rows[-1] if rows else None)
        return self.archive.source(row.kernel_hash) if row else None

    def misses(self) -> tuple[Miss, ...]:
        strategies = {r.strategy.id: r.strategy for r in self.rows}
        out = [Miss(strategies[p.strategy_id], p.predicted, p.measured) for p in self.predictions
               if p.strategy_id in strategies and
               (p.measured is None or abs(math.log(p.measured / p.predicted)) > math.log(MISS_FACTOR))]
        return tuple(out[-MISSES_SHOWN:])

    def context(self, first: int) -> Context:
        """What the roles see when drafting the batch that starts at `first`: the steps before it."""
        before = [r for r in self.rows if r.seq < first]
        elites = Elites()
        for r in before:
            elites.add(r.strategy, r.result)
        return self.make_context(elites=elites, history=tuple((r.strategy, r.result) for r in before),
                                 misses=self.misses(), tried=frozenset(r.strategy.signature for r in self.rows),
                                 kernel_of=self.kernel_of, result_of=self.result_of, seen_ast=frozenset(self.seen_ast))


def default_context(config: RunConfig, machine=None, roofline: bool = True) -> Callable[..., Context]:
    task, spec = get_task(config.task), machine or load_machine(config.machine)

    def make(**fields) -> Context:
        return Context(task=task, machine=spec, shape=config.shape, roofline=roofline, **fields)
    return make
