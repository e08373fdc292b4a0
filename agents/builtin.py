"""The builtin roles: no LLM. The strategist mutates and crosses structured knobs, the
coder renders the family's parametric template, the fixer shrinks tiles or buffers that
broke a capacity rule. It searches for real; nothing here knows a good answer."""
from __future__ import annotations

import re

import numpy as np

from evaluator.result import EvalResult, EvalStatus
from evaluator.sandbox import SandboxLimits
from evaluator.tasks import get_task
from hwmodel.dsl import record_trace
from hwmodel.errors import HwError
from hwmodel.loader import load_kernel_source
from hwmodel.simulate import declare
from agents.roles import Context, Draft, Team
from hwmodel.spec import MachineSpec
from strategies.evolution import Elites, crossover, local_step, mutate, random_strategy
from strategies.families import FAMILIES, families_for
from strategies.strategy import Strategy

CROSSOVER_RATE = 0.35
LOCAL_RATE = 0.4          # share of proposals that step one knob of the best strategy (both search modes)


MAX_PROPOSALS = 25


class BuiltinStrategist:
    """`machine` given: proposals whose kernel breaks a hardware rule at a small shape are
    redrawn before they cost an evaluation (the templates are trusted library code, so they
    can be dry-run here; a check a person would make before submitting). `bench_shape` given
    as well: so are proposals whose op count, extrapolated from the small shape by FLOPs,
    would exceed the evaluator's op limit at the benchmark shape (tiles far too small)."""

    def __init__(self, mode: str = "strategy", machine: MachineSpec | None = None, bench_shape=None):
        if mode not in ("strategy", "mutation-only", "random"):
            raise ValueError(f"mode must be strategy, mutation-only or random, got {mode!r}")
        self.mode = mode
        self.machine = machine
        self.bench_shape = bench_shape
        self.name = "builtin" if mode == "strategy" else f"builtin-{mode}"
        self.task = ""            # set by initial()

    def feasible(self, strategy: Strategy) -> bool:
        if self.machine is None:
            return True
        task = get_task(strategy.task)
        try:
            fn = load_kernel_source(self.implement(strategy))
            for shape in task.small_shapes:     # the benchmark shape is too big to dry-run every time
                trace = record_trace(fn, self.machine, declare(task.args(shape)))
                if shape == task.small_shapes[0] and self.bench_shape is not None:
                    ops = trace.num_ops * task.flops(self.bench_shape) / task.flops(shape)
                    if ops > SandboxLimits().max_ops:
                        return False
        except HwError:
            return False
        return True

    def initial(self, ctx: Context | str, size: int, rng: np.random.Generator) -> list[Strategy]:
        self.task = ctx if isinstance(ctx, str) else ctx.task.name
        families = families_for(self.task)
        population = [f.strategy() for f in families]               # the published strategies
        while len(population) < size:                                 # then spread over families
            family = families[len(population) % len(families)]
            for _ in range(MAX_PROPOSALS):
                candidate = random_strategy(family, rng)
                if self.feasible(candidate):
                    break
            population.append(candidate)
        return population

    def propose(self, ctx: Context, rng: np.random.Generator) -> Strategy:
        """Draws until a feasible strategy not tried yet; once half the draws came back tried
        (the neighbourhood of the elites is used up), draws at random over the families."""
        for attempt in range(MAX_PROPOSALS):
            strategy = self._draw(ctx.elites, rng, explore=attempt >= MAX_PROPOSALS // 2)
            if strategy.signature not in ctx.tried and self.feasible(strategy):
                break
        return strategy

    def _draw(self, elites: Elites, rng: np.random.Generator, explore: bool = False) -> Strategy:
        if self.mode == "random" or explore or not elites.cells:
            families = [FAMILIES[c[0]] for c in elites.cells] or families_for(self.task)
            return random_strategy(families[int(rng.integers(0, len(families)))], rng)
        if rng.random() < LOCAL_RATE:                 # exploit: a neighbour of the incumbent best
            return local_step(elites.best()[0], rng)
        parent = elites.select(rng)
        if self.mode == "strategy" and len(elites.cells) > 1 and rng.random() < CROSSOVER_RATE:
            other = elites.select(rng)
            if other.id != parent.id:
                return crossover(parent, other, rng)
        return mutate(parent, rng)

    def implement(self, strategy: Strategy) -> str:
        return FAMILIES[strategy.family].implement(strategy)


class TemplateCoder:
    """Renders the family's reference kernel with the strategy's knobs."""
    name = "builtin"

    def implement(self, strategy: Strategy, parent: str | None, ctx: Context, rng: np.random.Generator) -> Draft:
        return Draft(FAMILIES[strategy.family].implement(strategy), role="coder", author="builtin", mode="template")


class KnobFixer:
    """Capacity failures of a library-family strategy: the same kernel with a smaller tile."""
    name = "builtin"

    def fix(self, strategy: Strategy, draft: Draft, result: EvalResult, attempt: int, ctx: Context,
            rng: np.random.Generator) -> tuple[Strategy, Draft] | None:
        if strategy.family not in FAMILIES or strategy.author != "builtin":
            return None
        fixed = repair(strategy, result)
        if fixed is None:
            return None
        return fixed, Draft(FAMILIES[fixed.family].implement(fixed), role="fixer", author="builtin", mode="template",
                            parent_kernel=draft.hash, note=f"{fixed.describe()} after {result.rule or result.status.value}")


def builtin_team(mode: str = "strategy", machine: MachineSpec | None = None, bench_shape=None,
                 fix_attempts: int = 1) -> Team:
    return Team(BuiltinStrategist(mode, machine, bench_shape), TemplateCoder(), KnobFixer(), fix_attempts)


def repair(strategy: Strategy, result: EvalResult) -> Strategy | None:
    """Capacity failures: halve the biggest tile knob of the memory that overflowed, or drop a slot."""
    rule = result.rule or ("capacity" if "capacity" in result.message else "")   # rows from before rules
    if result.status is not EvalStatus.hw_violation or rule != "capacity":
        return None
    family = FAMILIES[strategy.family]
    knobs = dict(strategy.knobs)
    memory = re.search(r"\b(L1|L0A|L0B|L0C|UB)\b", result.message)
    order = {"L0A": ("BK", "BM", "KV_STEP", "BQ", "SLOTS"), "L0B": ("BK", "BN", "KV_STEP", "D_STEP", "SLOTS"),
             "L0C": ("BM", "BN", "BQ", "BKV"), "L1": ("BK1", "SLOTS", "BN", "BM", "BKV"),
             "UB": ("SPLIT_SLOTS", "DRAIN_ROWS", "SLOTS", "BN", "BKV", "BQ")}.get(memory.group(1) if memory else "",
                                                                 ("BM", "BN", "BK1", "BQ", "BKV"))
    for name in order:
        values = family.space.get(name)
        if values and knobs.get(name) in values and values.index(knobs[name]) > 0:
            knobs[name] = values[values.index(knobs[name]) - 1]
            return family.strategy(knobs, parents=(strategy.id,), origin="repair")
    return None
