"""The evolution loop: propose, implement, evaluate, repair, record — one screen.

Every decision at step `seq` draws from a Generator seeded by (run seed, seq), and the
elites are rebuilt from the archive, so a resumed run makes the same choices it would
have made without the interruption, and never re-evaluates a recorded step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from agents.backend import Backend
from evaluator.result import EvalResult
from strategies.archive import Archive, RunConfig
from strategies.evolution import Elites
from strategies.strategy import Strategy

INITIAL_POPULATION = 8
MAX_DUPLICATE_TRIES = 30

Evaluate = Callable[[str, int], EvalResult]          # (source, seq) -> result
Progress = Callable[[int, Strategy, EvalResult, Elites, int], None]


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    evaluations: int
    failures: int
    best: tuple[Strategy, EvalResult] | None
    baseline: tuple[Strategy, EvalResult] | None     # best library strategy of this run
    completed: bool


def evolve(archive: Archive, run_id: str, config: RunConfig, backend: Backend, evaluate: Evaluate,
           progress: Progress | None = None) -> RunSummary:
    elites, seen, failures, pending = Elites(), set(), 0, None
    rows = archive.evaluations(run_id)
    for row in rows:                                   # resume: rebuild state from the archive
        seen.add(row.strategy.id)
        failures += not row.result.ok
        elites.add(row.strategy, row.result)
    seq = len(rows)
    initial = backend.initial(config.task, INITIAL_POPULATION, np.random.default_rng([config.seed, 2**31]))
    if rows and not rows[-1].result.ok:                # the last step failed: its repair is next
        pending = backend.repair(rows[-1].strategy, rows[-1].result, np.random.default_rng([config.seed, seq]))
    while seq < config.budget:
        rng = np.random.default_rng([config.seed, seq])
        strategy = pending or (initial[seq] if seq < len(initial) else backend.propose(elites, rng))
        for _ in range(MAX_DUPLICATE_TRIES):           # never spend an evaluation twice
            if strategy.id not in seen:
                break
            strategy = backend.propose(elites, rng)
        source = backend.implement(strategy)
        result = evaluate(source, seq)
        archive.record(run_id, seq, 0, strategy, source, result)
        seen.add(strategy.id)
        failures += not result.ok
        elites.add(strategy, result)
        pending = None if result.ok else backend.repair(strategy, result, rng)
        if progress:
            progress(seq, strategy, result, elites, failures)
        seq += 1
    return summarize(archive, run_id, elites, failures, completed=True)


def summarize(archive: Archive, run_id: str, elites: Elites | None = None, failures: int | None = None,
              completed: bool = False) -> RunSummary:
    rows = archive.evaluations(run_id)
    if elites is None:
        elites = Elites()
        for row in rows:
            elites.add(row.strategy, row.result)
    library = [(r.strategy, r.result) for r in rows if r.strategy.origin == "library" and r.result.ok]
    baseline = min(library, key=lambda sr: sr[1].time_ns, default=None)
    return RunSummary(run_id, len(rows), sum(not r.result.ok for r in rows) if failures is None else failures,
                      elites.best(), baseline, completed)
