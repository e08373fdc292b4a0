"""The three roles of an evolution step, as small protocols, and the records they pass.

Strategist: proposes the next strategy from what the run has seen (a mutation of one
parent, or a crossover of two). Coder: turns a strategy (and its parent's kernel) into a
kernel. Fixer: repairs a kernel that failed, given the structured failure. Each role has a
builtin implementation (agents/builtin.py), an LLM one (agents/llm/roles.py) and fakes in
the tests; `agents.team.build_team` picks them from the configuration.
"""
from __future__ import annotations

import dis
import hashlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from types import CodeType
from typing import Callable, Protocol

import numpy as np

from evaluator.result import EvalResult
from evaluator.tasks.base import Task
from hwmodel.spec import MachineSpec
from strategies.evolution import Elites
from strategies.strategy import Strategy


STEP: ContextVar[tuple[int, int]] = ContextVar("cubepilot_step", default=(-1, 0))   # (seq, attempt) being drafted


class RoleError(Exception):
    """A role produced nothing usable this time (malformed answer, an edit that does not
    apply, a kernel identical to its parent); the loop draws again, within bounds."""


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:32]


@lru_cache(maxsize=4096)
def ast_hash(source: str) -> str:
    """The same program up to comments, docstrings, asserts and formatting hashes the same:
    the hash of its compiled code without line numbers (compiling runs nothing; it is ~3x
    faster than dumping the AST). Source that does not compile hashes its text (the
    evaluator will report the syntax error)."""
    try:
        code = compile(source, "<kernel>", "exec", optimize=2, dont_inherit=True)
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError):
        return "text:" + source_hash(source)[:27]
    return hashlib.sha256(repr(_canonical(code)).encode()).hexdigest()[:32]


_NOP = dis.opmap["NOP"]


def _without_nops(code: bytes) -> bytes:
    """Bytecode without NOPs (a removed docstring or assert can leave one for its line number)."""
    return b"".join(code[i:i + 2] for i in range(0, len(code), 2) if code[i] != _NOP)


def _canonical(value):
    if isinstance(value, CodeType):
        return ("code", _without_nops(value.co_code), value.co_names, value.co_varnames, value.co_freevars, value.co_cellvars,
                value.co_argcount, value.co_kwonlyargcount, value.co_posonlyargcount, value.co_flags,
                tuple(_canonical(c) for c in value.co_consts))
    if isinstance(value, (tuple, frozenset)):      # a frozenset's order depends on the hash seed
        items = tuple(_canonical(v) for v in value)
        return (type(value).__name__, items if isinstance(value, tuple) else tuple(sorted(items, key=repr)))
    return (type(value).__name__, repr(value))


@dataclass(frozen=True)
class Draft:
    """A kernel as written by a role, before evaluation."""
    source: str
    role: str                 # "coder", "fixer" (template coders say "coder" too)
    author: str               # "builtin" or the model alias
    mode: str                 # "template", "full" or "diff"
    parent_kernel: str = ""   # source hash of the kernel it was derived from ("" if none)
    note: str = ""            # a line from the author (what it changed), for people

    @property
    def hash(self) -> str:
        return source_hash(self.source)

    @property
    def ast_hash(self) -> str:
        return ast_hash(self.source)


@dataclass(frozen=True)
class Miss:
    """A strategy whose measured effect was far from what it predicted."""
    strategy: Strategy
    predicted: float
    measured: float | None      # None: it failed


@dataclass(frozen=True)
class Context:
    """What the roles see at a step: the problem, the machine, and the run so far."""
    task: Task
    machine: MachineSpec
    shape: str
    elites: Elites
    history: tuple[tuple[Strategy, EvalResult], ...] = ()      # every evaluation so far, oldest first
    misses: tuple[Miss, ...] = ()
    tried: frozenset[str] = frozenset()                         # strategy signatures already taken
    kernel_of: Callable[[str], str | None] = field(default=lambda strategy_id: None)   # its best kernel source
    result_of: Callable[[str], EvalResult | None] = field(default=lambda strategy_id: None)
    roofline: bool = True                                       # False: prompts leave out the bottleneck card
    seen_ast: frozenset[str] = frozenset()                      # AST hashes of every kernel evaluated

    def failures(self, n: int = 6) -> list[tuple[Strategy, EvalResult]]:
        return [(s, r) for s, r in self.history if not r.ok][-n:]


class Strategist(Protocol):
    name: str

    def initial(self, ctx: Context, size: int, rng: np.random.Generator) -> list[Strategy]:
        """A first population (the published strategies, then spread over the families)."""

    def propose(self, ctx: Context, rng: np.random.Generator) -> Strategy:
        """The next strategy; one whose signature is in ctx.tried is redrawn by the loop."""


class Coder(Protocol):
    name: str

    def implement(self, strategy: Strategy, parent: str | None, ctx: Context, rng: np.random.Generator) -> Draft:
        """A kernel for `strategy`; `parent` is the source of its first parent's kernel, if any."""


class Fixer(Protocol):
    name: str

    def fix(self, strategy: Strategy, draft: Draft, result: EvalResult, attempt: int, ctx: Context,
            rng: np.random.Generator) -> tuple[Strategy, Draft] | None:
        """A repaired kernel (and the strategy it now implements), or None when there is no fix."""


# told each evaluated step: (seq, attempt, strategy, kernel, result, best time before it)
Learn = Callable[[int, int, Strategy, Draft, EvalResult, "float | None"], None]


@dataclass(frozen=True)
class Team:
    strategist: Strategist
    coder: Coder
    fixer: Fixer
    fix_attempts: int = 1        # fixes tried per failed step (each is an evaluation of the same step)
    learn: Learn | None = None   # told every evaluated step (a bandit over models learns from it)
    population: int = 8          # size of the first population (the published strategies, then random points)
    draws: int = 30              # proposals per step before it is given up (repeats, unusable answers)
    parallel: bool = False       # draft the steps of a batch side by side (model calls wait on the network)

    @property
    def name(self) -> str:
        names = {self.strategist.name, self.coder.name, self.fixer.name}
        return names.pop() if len(names) == 1 else f"{self.strategist.name}+{self.coder.name}+{self.fixer.name}"
