"""The evolution loop: propose, implement, evaluate, fix, record — one screen.

Every decision at step `seq` draws from a Generator seeded by (run seed, seq[, attempt]).
Steps run in batches of `config.workers` (evaluated side by side); a batch is drafted from
the archive as it stood when the batch began and batch boundaries are fixed, so a resumed
run makes the same choices it would have made without the interruption, and never
re-evaluates a step. A failed step gets up to `team.fix_attempts` fixes, each recorded as
an attempt of the same step and counted against the budget.
"""
from __future__ import annotations

import contextvars
import hashlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import numpy as np

from agents.roles import STEP, Context, Draft, RoleError, Team
from agents.runstate import RunState, Step
from evaluator.result import EvalResult, EvalStatus
from strategies.archive import Archive, RunConfig
from strategies.evolution import Elites
from strategies.strategy import Strategy

MAX_CUT_SHORT = 2       # evaluations of one step that may end with the evaluating process dead
MAX_EMPTY_STEPS = 5     # steps in a row that yielded no kernel to evaluate before the run gives up

Evaluate = Callable[[list[tuple[str, int]]], Iterable[EvalResult]]   # [(source, seq)] -> results, in order
Progress = Callable[[int, Strategy, EvalResult, Elites, int], None]


class NoProgress(RuntimeError):
    """The roles produced no kernel to evaluate for MAX_EMPTY_STEPS steps in a row."""


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    evaluations: int
    failures: int
    best: tuple[Strategy, EvalResult] | None
    baseline: tuple[Strategy, EvalResult] | None     # best library strategy of this run
    completed: bool


def evolve(archive: Archive, run_id: str, config: RunConfig, team: Team, evaluate: Evaluate,
           progress: Progress | None = None, make_context: Callable[..., Context] | None = None) -> RunSummary:
    run = RunState.load(archive, run_id, config, make_context)
    initial = team.strategist.initial(run.context(0), team.population, np.random.default_rng([config.seed, 2**31]))
    empty = 0
    while run.evaluations < config.budget:
        first, ctx = run.next_batch, run.context(run.next_batch)   # the archive as it stood when the batch began
        seqs = range(first, first + config.workers)
        fresh = sum(not run.started(seq) for seq in seqs)          # a resumed batch may be finished already
        steps = draft_batch(team, ctx, run, initial, seqs, config.seed)
        empty = 0 if steps else empty + fresh
        if empty >= MAX_EMPTY_STEPS:
            raise NoProgress(f"the roles produced no new kernel to evaluate in {empty} steps in a row")
        while steps and run.evaluations < config.budget:
            steps = steps[:config.budget - run.evaluations]
            results = evaluate_unless_fatal(archive, run_id, config, evaluate, [(s.draft.source, s.seq) for s in steps])
            fixes = []
            for step, result in zip(steps, results):
                best_before = run.elites.best()
                run.record(step, result)
                if team.learn:
                    team.learn(step.seq, step.attempt, step.strategy, step.draft, result,
                               best_before[1].time_ns if best_before else None)
                if progress:
                    progress(run.evaluations - 1, step.strategy, result, run.elites, run.failures)
                fixes.append(fix(team, ctx, run, step, result, config.seed))
            steps = [s for s in fixes if s is not None]
        run.next_batch = first + config.workers
    return summarize(archive, run_id, run.elites, run.failures, completed=True)


def draft_batch(team: Team, ctx: Context, run: RunState, initial: list[Strategy], seqs: range,
                seed: int) -> list[Step]:
    """The steps of a batch: the next fix of a step recorded before an interruption, else a
    new draft. A team of models drafts its steps side by side (the client bounds requests in
    flight); a kernel drafted twice in one batch is evaluated once."""
    taken = set(ctx.tried)

    def one(seq: int, taken: set[str]) -> Step | None:
        return fix(team, ctx, run, *run.last(seq), seed) if run.started(seq) else \
            draft(team, ctx, initial, seq, seed, taken)
    if team.parallel and len(seqs) > 1:
        with ThreadPoolExecutor(len(seqs), thread_name_prefix="draft") as pool:
            steps = list(pool.map(lambda seq: contextvars.copy_context().run(one, seq, set(taken)), seqs))
    else:
        steps = []
        for seq in seqs:
            steps.append(one(seq, taken))
            if steps[-1] is not None:
                taken.add(steps[-1].strategy.signature)
    unique, kernels = [], set()
    for step in steps:
        if step is not None and step.draft.ast_hash not in kernels:
            unique.append(step)
            kernels.add(step.draft.ast_hash)
    return unique


def draft(team: Team, ctx: Context, initial: list[Strategy], seq: int, seed: int, taken: set[str]) -> Step | None:
    """A new strategy and its kernel for step seq: the initial population first, then the
    strategist's proposals; a strategy or kernel seen before is drawn again, never evaluated."""
    rng = np.random.default_rng([seed, seq])
    token = STEP.set((seq, 0))
    try:
        for attempt in range(team.draws):
            try:
                strategy = initial[seq] if seq < len(initial) and attempt == 0 else \
                    team.strategist.propose(replace(ctx, tried=frozenset(taken)), rng)
                if strategy.signature in taken:
                    continue
                parent = ctx.kernel_of(strategy.parents[0]) if strategy.parents else None
                kernel = team.coder.implement(strategy, parent, ctx, rng)
            except RoleError:
                continue
            if kernel.ast_hash not in ctx.seen_ast:
                return Step(seq, 0, strategy, kernel)
            taken.add(strategy.signature)
        return None
    finally:
        STEP.reset(token)


def fix(team: Team, ctx: Context, run: RunState, step: Step, result: EvalResult, seed: int) -> Step | None:
    """The next attempt of a failed step, if the fixer has one that was not evaluated before."""
    attempt = step.attempt + 1
    if result.ok or attempt > team.fix_attempts or result.status is EvalStatus.evaluator_error:
        return None
    token = STEP.set((step.seq, attempt))
    try:
        fixed = team.fixer.fix(step.strategy, step.draft, result, attempt, ctx,
                               np.random.default_rng([seed, step.seq, attempt]))
    except RoleError:
        return None
    finally:
        STEP.reset(token)
    if fixed is None or fixed[1].ast_hash in run.seen_ast:
        return None
    strategy, kernel = fixed
    return Step(step.seq, attempt, strategy, kernel if kernel.parent_kernel else replace(kernel, parent_kernel=step.draft.hash))


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


def speedup_measured(parent: EvalResult | None, child: EvalResult) -> float | None:
    """Parent time / child time when both are ok (the figure a strategy's prediction is checked against)."""
    if parent is None or not parent.ok or not child.ok or not math.isfinite(child.time_ns) or child.time_ns <= 0:
        return None
    return parent.time_ns / child.time_ns


__all__ = ["evolve", "draft", "fix", "summarize", "evaluate_unless_fatal", "speedup_measured", "RunSummary",
           "NoProgress", "Draft"]
