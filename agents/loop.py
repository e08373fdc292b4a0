"""The evolution loop: propose, implement, evaluate, repair, record — one screen.

Every decision at step `seq` draws from a Generator seeded by (run seed, seq). Steps run in
batches of `config.workers` (evaluated side by side); a batch is proposed from the archive
as it stood when the batch began and batch boundaries are fixed, so a resumed run makes the
same choices it would have made without the interruption, and never re-evaluates a step.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from agents.backend import Backend
from evaluator.result import EvalResult, EvalStatus
from strategies.archive import Archive, RunConfig
from strategies.evolution import Elites
from strategies.strategy import Strategy

INITIAL_POPULATION = 8
MAX_CUT_SHORT = 2       # evaluations of one step that may end with the evaluating process dead
MAX_DUPLICATE_TRIES = 30

Evaluate = Callable[[list[tuple[str, int]]], Iterable[EvalResult]]   # [(source, seq)] -> results, in order
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
    done = [(row.strategy, row.result) for row in archive.evaluations(run_id)]     # by seq
    initial = backend.initial(config.task, INITIAL_POPULATION, np.random.default_rng([config.seed, 2**31]))
    width, seq = config.workers, len(done)
    first = seq - seq % width                         # resume: the batch the last recorded step belongs to
    elites, seen = Elites(), set()
    for strategy, result in done[:first]:
        elites.add(strategy, result)
        seen.add(strategy.id)
    while seq < config.budget:
        previous = done[max(0, first - width):first]
        batch = propose_batch(backend, config.seed, initial, elites, seen, previous, first,
                              min(first + width, config.budget))
        seen.update(strategy.id for strategy in batch)
        for strategy, result in done[first:seq]:      # resumed mid-batch: these steps are recorded
            elites.add(strategy, result)
            seen.add(strategy.id)
        todo = batch[seq - first:]
        sources = [backend.implement(strategy) for strategy in todo]
        jobs = [(src, seq + i) for i, src in enumerate(sources)]
        results = evaluate_unless_fatal(archive, run_id, config, evaluate, jobs)
        for strategy, source, result in zip(todo, sources, results):
            archive.record(run_id, seq, 0, strategy, source, result)
            done.append((strategy, result))
            elites.add(strategy, result)
            if progress:
                progress(seq, strategy, result, elites, sum(not r.ok for _, r in done))
            seq += 1
        first = seq
    return summarize(archive, run_id, elites, sum(not r.ok for _, r in done), completed=True)


def evaluate_unless_fatal(archive: Archive, run_id: str, config: RunConfig, evaluate: Evaluate,
                          jobs: list[tuple[str, int]]) -> Iterable[EvalResult]:
    """Results of `jobs` in order. Each is marked in flight first; a step that was already in
    flight MAX_CUT_SHORT times when the evaluating process died (killed, out of memory, crashed)
    is not evaluated again but recorded as an evaluator error, so a resumed run cannot be stopped
    by the same candidate forever."""
    tries = archive.begin(run_id, [(seq, source) for source, seq in jobs])
    results = iter(evaluate([job for job in jobs if tries[job[1]] <= MAX_CUT_SHORT]))
    for source, seq in jobs:
        if tries[seq] <= MAX_CUT_SHORT:
            yield next(results)
        else:
            yield EvalResult(status=EvalStatus.evaluator_error, stage="trusted", rule="evaluator.died",
                             message=f"this kernel's evaluation was cut short {tries[seq] - 1} times (the evaluating "
                             "process died: killed, out of memory or crashed); it is not evaluated again",
                             task=config.task, machine=config.machine, shape=config.shape,
                             source_hash=hashlib.sha256(source.encode()).hexdigest()[:32])


def propose_batch(backend: Backend, seed: int, initial: list[Strategy], elites: Elites, seen: set[str],
                  previous: list[tuple[Strategy, EvalResult]], start: int, end: int) -> list[Strategy]:
    """Strategies for steps start..end-1: repairs of the previous batch's failures first, then
    the initial population, then proposals from the elites; never one already evaluated."""
    repairs = [backend.repair(strategy, result, np.random.default_rng([seed, start - len(previous) + i, 1]))
               for i, (strategy, result) in enumerate(previous) if not result.ok]
    repairs = [r for r in repairs if r is not None]
    batch: list[Strategy] = []
    taken = set(seen)
    for seq in range(start, end):
        rng = np.random.default_rng([seed, seq])
        strategy = repairs.pop(0) if repairs else \
            (initial[seq] if seq < len(initial) else backend.propose(elites, rng, frozenset(taken)))
        for _ in range(MAX_DUPLICATE_TRIES):
            if strategy.id not in taken:
                break
            strategy = backend.propose(elites, rng, frozenset(taken))
        taken.add(strategy.id)
        batch.append(strategy)
    return batch


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
