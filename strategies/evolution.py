"""Strategy-level evolution: the quality-diversity archive and the operators on strategies.

Elites keeps, per MAP-Elites cell (family x buffering x core mapping), the fastest correct
strategy, and the Pareto front of time and error for approximate tasks. Operators work on
knobs: mutation changes one or two, a local step moves one knob of an elite to an adjacent
value, crossover mixes two parents (across families it carries
over the knobs both understand: tiles, buffering, swizzle), random draws a fresh point.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from evaluator.result import EvalResult
from strategies.families import FAMILIES, Family
from strategies.strategy import Strategy


def cell_of(strategy: Strategy) -> tuple[str, str, str]:
    t = strategy.tags
    return (strategy.family, t.get("buffering", "-"), t.get("core mapping", "-"))


@dataclass
class Elites:
    cells: dict[tuple, tuple[Strategy, EvalResult]] = field(default_factory=dict)
    front: list[tuple[Strategy, EvalResult]] = field(default_factory=list)

    def add(self, strategy: Strategy, result: EvalResult) -> bool:
        """Offer an evaluated strategy; True when it became an elite of its cell."""
        if not result.ok:
            return False
        self._offer_front(strategy, result)
        cell = cell_of(strategy)
        current = self.cells.get(cell)
        if current is None or result.time_ns < current[1].time_ns:
            self.cells[cell] = (strategy, result)
            return True
        return False

    def _offer_front(self, strategy: Strategy, result: EvalResult) -> None:
        err = max(result.errors.values(), default=0.0)

        def dominated(r: EvalResult, by: EvalResult) -> bool:
            e, e_by = max(r.errors.values(), default=0.0), max(by.errors.values(), default=0.0)
            return by.time_ns <= r.time_ns and e_by <= e and (by.time_ns < r.time_ns or e_by < e)

        if any(dominated(result, r) for _, r in self.front):
            return
        self.front = [(s, r) for s, r in self.front if not dominated(r, result)] + [(strategy, result)]
        self.front.sort(key=lambda sr: (sr[1].time_ns, err))

    def best(self) -> tuple[Strategy, EvalResult] | None:
        return min(self.cells.values(), key=lambda sr: sr[1].time_ns, default=None)

    def select(self, rng: np.random.Generator) -> Strategy:
        """Half the time the overall best (exploit), otherwise a uniformly chosen cell's elite."""
        elites = sorted(self.cells.values(), key=lambda sr: sr[1].time_ns)
        if rng.random() < 0.5:
            pick = min(int(rng.integers(0, 2)), len(elites) - 1)   # best or runner-up
        else:
            pick = int(rng.integers(0, len(elites)))
        return elites[pick][0]


def _neighbour(values: tuple, current, rng: np.random.Generator):
    if current in values and rng.random() < 0.6:
        i = values.index(current) + int(rng.choice([-1, 1]))
        return values[min(max(i, 0), len(values) - 1)]
    return values[int(rng.integers(0, len(values)))]


def mutate(parent: Strategy, rng: np.random.Generator) -> Strategy:
    family = FAMILIES[parent.family]
    knobs = dict(parent.knobs)
    names = sorted(family.space)
    for name in rng.choice(names, size=min(len(names), int(rng.integers(1, 3))), replace=False):
        knobs[str(name)] = _neighbour(family.space[str(name)], knobs.get(str(name)), rng)
    return family.strategy(knobs, parents=(parent.id,), origin="mutation")


def local_step(parent: Strategy, rng: np.random.Generator) -> Strategy:
    """One knob moved to an adjacent value (pattern search around an elite)."""
    family = FAMILIES[parent.family]
    knobs = dict(parent.knobs)
    movable = sorted(n for n, v in family.space.items() if len(v) > 1)
    name = movable[int(rng.integers(0, len(movable)))]
    values = family.space[name]
    i = values.index(knobs[name]) if knobs.get(name) in values else 0
    step = int(rng.choice([-1, 1])) if 0 < i < len(values) - 1 else (1 if i == 0 else -1)
    knobs[name] = values[i + step]
    return family.strategy(knobs, parents=(parent.id,), origin="mutation")


def crossover(a: Strategy, b: Strategy, rng: np.random.Generator) -> Strategy:
    """Child in a's family; each knob both families share comes from b with probability 1/2."""
    family = FAMILIES[a.family]
    knobs = dict(a.knobs)
    for name, value in b.knobs.items():
        if name in family.space and value in family.space[name] and rng.random() < 0.5:
            knobs[name] = value
    return family.strategy(knobs, parents=(a.id, b.id), origin="crossover")


def random_strategy(family: Family, rng: np.random.Generator) -> Strategy:
    knobs = {name: values[int(rng.integers(0, len(values)))] for name, values in family.space.items()}
    return family.strategy(knobs, origin="random")
