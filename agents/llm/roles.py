"""The LLM implementations of the three roles: a strategist that answers JSON against a
schema, a coder that writes a whole kernel or SEARCH/REPLACE edits to its parent, and a
fixer that repairs a failed kernel from its structured failure.

Each asks through a client (`ask(settings, role, messages, parse, schema=None,
schema_name="answer")`, agents.llm.client.LLMClient in a run) and picks its model per call.
Parsing validates against the run's context, so a bad answer is re-asked by the client with
an error the model can act on (a kernel that does not parse is the evaluator's to report).
Model output is only read as text and passed on: it runs nowhere but in the evaluator's sandbox.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agents.edits import Edit, EditError, apply_edits, parse_edits
from agents.llm.errors import MalformedOutput
from agents.llm.parsing import extract_code_blocks
from agents.llm.ledger import estimate_prompt_tokens
from agents.llm.prompts import Prompt, PromptTooLarge, coder_prompt, fixer_prompt, strategist_prompt
from agents.roles import Context, Draft, RoleError, ast_hash, source_hash
from evaluator.result import EvalResult, EvalStatus
from strategies.evolution import random_strategy
from strategies.families import FAMILIES, Family, families_for
from strategies.strategy import CUSTOM, ExpectedEffect, Strategy

MODES = ("full", "diff")
INITIAL_DRAWS = 50          # random draws tried per missing member of a first population


class Client(Protocol):
    def ask(self, settings: Any, role: str, messages: list[dict], parse: Callable[[str], Any],
            schema: dict | None = None, schema_name: str = "answer") -> Any: ...


Picker = Callable[[np.random.Generator], Any]      # -> agents.llm.settings.ModelSettings


class NoChange(RoleError):
    """The coder's kernel is its parent again (same AST), or one already evaluated."""


class EditsDidNotApply(RoleError):
    """An edit block matched nowhere in the parent, also after the one repair turn."""


class UnusableAnswer(RoleError):
    """The model gave no usable answer after the client's bounded re-asks."""


# ------------------------------------------------------------------ strategist
class StrategyAnswer(BaseModel):
    # What the strategist answers; its JSON schema goes to the model (no docstring: it would
    # become the schema's description and cost tokens in every prompt)
    model_config = ConfigDict(extra="forbid")

    parents: list[str] = Field(min_length=1, max_length=2,
                               description="1 elite id (mutation) or 2 (crossover), from the elites shown")
    family: str = Field(description="a library family of the task to start from, or 'custom'")
    knobs: dict[str, int | float | bool | str] = Field(default_factory=dict,
                                                       description="values for knobs of that family")
    techniques: list[str] = Field(min_length=1, max_length=8, description="named techniques")
    plan: str = Field(min_length=10, max_length=1500, description="what to build, concretely")
    expected: ExpectedEffect


STRATEGY_SCHEMA = StrategyAnswer.model_json_schema()


class LLMStrategist:
    name = "llm"

    def __init__(self, client: Client, pick: Picker) -> None:
        self.client = client
        self.pick = pick

    def initial(self, ctx: Context, size: int, rng: np.random.Generator) -> list[Strategy]:
        """The published strategies of the task's families, then random points of their knob
        spaces until `size` (no model call: the library is the strategy-level seed)."""
        families = families_for(ctx.task.name)
        population = [f.strategy() for f in families]
        seen = set(ctx.tried) | {s.signature for s in population}
        for i in range(max(0, size - len(population)) * INITIAL_DRAWS):
            if len(population) >= size:
                break
            candidate = random_strategy(families[i % len(families)], rng)
            if candidate.signature not in seen:
                seen.add(candidate.signature)
                population.append(candidate)
        return population

    def propose(self, ctx: Context, rng: np.random.Generator) -> Strategy:
        settings = self.pick(rng)
        prompt = strategist_prompt(ctx, settings, STRATEGY_SCHEMA)
        parse = StrategyParser(ctx, f"strategist:{settings.name}")
        try:
            return self.client.ask(prompt.settings_for(settings), "strategist", list(prompt.messages), parse,
                                   schema=STRATEGY_SCHEMA, schema_name="strategy")
        except MalformedOutput as err:
            raise UnusableAnswer(str(err)) from err


class StrategyParser:
    """JSON text -> a validated Strategy of this run, or a ValueError the model can act on."""

    def __init__(self, ctx: Context, author: str) -> None:
        self.ctx = ctx
        self.author = author
        self.families = {f.name: f for f in families_for(ctx.task.name)}
        known: dict[str, Strategy] = {s.id: s for s in (f.strategy() for f in self.families.values())}
        for strategy, result in ctx.history:
            if result.ok:
                known[strategy.id] = strategy
        for strategy, _ in [*ctx.elites.cells.values(), *ctx.elites.front]:
            known[strategy.id] = strategy
        self.known = known
        self.shown = [s.id for s, _ in sorted(ctx.elites.cells.values(), key=lambda sr: sr[1].time_ns)] \
            or list(known)

    def __call__(self, text: str) -> Strategy:
        answer = StrategyAnswer.model_validate(json.loads(text))
        parents = list(dict.fromkeys(p.strip() for p in answer.parents))
        for p in parents:
            if p not in self.known:
                raise ValueError(f"unknown parent id {p!r}; parents must be ids from the elites list: "
                                 f"{', '.join(self.shown[:8])}")
        knobs, tags = self._knobs(answer, self.known[parents[0]])
        techniques = tuple(t.strip() for t in answer.techniques if t.strip())
        if not techniques:
            raise ValueError("techniques is empty; name at least one technique")
        tags["techniques"] = "; ".join(techniques)
        strategy = Strategy(family=answer.family, task=self.ctx.task.name, plan=answer.plan.strip(), tags=tags,
                            knobs=knobs, parents=tuple(parents), origin="mutation" if len(parents) == 1 else "crossover",
                            techniques=techniques, expected=answer.expected, author=self.author)
        if strategy.signature in self.ctx.tried:
            raise ValueError(f"already tried: {strategy.describe()} from parent {parents[0]}; propose something "
                             "different (another family, other knob values or other techniques)")
        return strategy

    def _knobs(self, answer: StrategyAnswer, parent: Strategy) -> tuple[dict, dict[str, str]]:
        if answer.family == CUSTOM:
            if answer.knobs:
                raise ValueError("a 'custom' strategy has no knobs (it starts from no library kernel); give tile "
                                 "sizes and buffering in the plan, or pick a library family")
            return {}, {"family": CUSTOM}
        family = self.families.get(answer.family)
        if family is None:
            raise ValueError(f"unknown family {answer.family!r} for task {self.ctx.task.name}; use one of "
                             f"{', '.join(self.families)} or 'custom'")
        defaults = family.constants()
        settable = (set(defaults) - {name for name, _ in family.fixed}) | set(family.space)
        for name, value in answer.knobs.items():
            if name not in settable:
                raise ValueError(f"{name!r} is not a knob of family {family.name}; its knobs are "
                                 f"{', '.join(sorted(family.space))}")
            _check_type(family, name, value, defaults.get(name))
        start = dict(parent.knobs) if parent.family == family.name else family.defaults()
        knobs = {**start, **answer.knobs}
        try:
            tags = {"family": family.name, **family.tags(knobs)}
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"knobs {answer.knobs} do not fit family {family.name}: {err}") from None
        return knobs, tags


def _check_type(family: Family, name: str, value: Any, default: Any) -> None:
    """A knob keeps the type of its default (an int stays an int; a float knob takes ints too)."""
    if default is None:
        return
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(f"knob {name} of family {family.name} takes {type(default).__name__} values "
                         f"(e.g. {family.space.get(name, (default,))}), got {value!r}")


# ------------------------------------------------------------------ coder
@dataclass(frozen=True)
class CodeAnswer:
    """A parsed coder or fixer answer: full source, or edits still to apply."""
    mode: str
    source: str = ""
    edits: tuple[Edit, ...] = ()
    note: str = ""
    text: str = ""


class LLMCoder:
    name = "llm"

    def __init__(self, client: Client, pick: Picker, pick_mode: Callable[[np.random.Generator], str]) -> None:
        self.client = client
        self.pick = pick
        self.pick_mode = pick_mode

    def implement(self, strategy: Strategy, parent: str | None, ctx: Context, rng: np.random.Generator) -> Draft:
        """A kernel from the model. A builtin strategy (a library strategy or a knob point of
        one: the initial population) is its family's template, rendered without a model call."""
        if strategy.author == "builtin" and strategy.family in FAMILIES:
            return Draft(source=FAMILIES[strategy.family].implement(strategy), role="coder", author="builtin",
                         mode="template")
        settings = self.pick(rng)
        base, is_reference = parent, False
        if base is None and strategy.family in FAMILIES:
            base, is_reference = FAMILIES[strategy.family].implement(strategy), True
        mode = self.pick_mode(rng) if base is not None else "full"
        if mode not in MODES:
            raise ValueError(f"pick_mode returned {mode!r}; modes are {', '.join(MODES)}")
        prompt = coder_prompt(ctx, settings, strategy, base, mode, is_reference)
        if "parent" in prompt.dropped:          # no room for the parent and its rewrite: edit it instead
            mode = "diff"
            prompt = coder_prompt(ctx, settings, strategy, base, mode, is_reference)
        asked = prompt.settings_for(settings)
        messages = list(prompt.messages)
        try:         # a whole module is taken in diff mode, edits in full mode: what counts is a kernel
            answer = self.client.ask(asked, "coder", messages, parse_code if base is None else
                                     parse_diff if mode == "diff" else parse_full_or_edits)
            mode, source = answer.mode, answer.source
            if answer.edits:
                mode, source = self._apply(asked, messages, base, answer, prompt.context_tokens)
        except MalformedOutput as err:
            raise UnusableAnswer(str(err)) from err
        child = ast_hash(source)
        if parent is not None and child == ast_hash(parent):
            raise NoChange("the kernel is its parent again (same program up to formatting and comments)")
        if child in ctx.seen_ast:
            raise NoChange("this kernel was evaluated before (same program up to formatting and comments)")
        return Draft(source=source, role="coder", author=settings.name, mode=mode,
                     parent_kernel=source_hash(base) if base is not None else "", note=answer.note)

    def _apply(self, settings, messages: list[dict], base: str, answer: CodeAnswer,
               context_tokens: int) -> tuple[str, str]:
        """(mode, source): the edits applied to the parent; one repair turn when a block
        matches nowhere (its answer may also be the whole module)."""
        try:
            return "diff", apply_edits(base, list(answer.edits))
        except EditError as err:
            failure = err
        repair = messages + [
            {"role": "assistant", "content": answer.text},
            {"role": "user", "content": f"{failure.explain()}\nSend all your SEARCH/REPLACE blocks again, "
                                        "corrected: each SEARCH part must copy the parent's lines exactly."}]
        room = context_tokens - estimate_prompt_tokens(repair)
        if room < min(512, settings.max_tokens):
            raise EditsDidNotApply(f"{failure} (no room in the context for a repair turn)") from failure
        retry = settings if room >= settings.max_tokens else settings.model_copy(update={"max_tokens": room})
        again = self.client.ask(retry, "coder", repair, parse_diff)
        if not again.edits:
            return again.mode, again.source
        try:
            return "diff", apply_edits(base, list(again.edits))
        except EditError as err:
            raise EditsDidNotApply(f"{err} (after a repair turn)\n{err.explain()}") from err


_FENCE_START = re.compile(r"^\s*(```|<{5,9}\s*SEARCH)", re.MULTILINE)


def _note(text: str) -> str:
    """The first line of prose before any code: what the author says it changed."""
    head = text[:_FENCE_START.search(text).start()] if _FENCE_START.search(text) else text
    for line in head.splitlines():
        line = line.strip().strip("#*_>` ").strip()
        if line:
            return line if len(line) <= 200 else line[:199] + "…"
    return ""


def parse_code(text: str) -> CodeAnswer:
    """One complete kernel module from a ```python block (the last that defines kernel)."""
    blocks = extract_code_blocks(text, "python") or extract_code_blocks(text)
    kernels = [b for b in blocks if re.search(r"^def kernel\s*\(", b, re.MULTILINE)]
    if not kernels:
        raise ValueError("the answer holds no complete ```python block defining kernel(k, ...) at module level; "
                         "send the whole kernel module in one ```python block")
    source = kernels[-1].strip("\n") + "\n"
    # A kernel that does not parse is not re-asked: the evaluator reports the syntax error
    # (compile_error, with its line) and the fixer gets it, like any other failure; the
    # kernel the model wrote is recorded either way.
    return CodeAnswer(mode="full", source=source, note=_note(text), text=text)


def parse_full_or_edits(text: str) -> CodeAnswer:
    """Full mode with a parent: a whole module, or edits if that is what the model sent."""
    try:
        return parse_code(text)
    except ValueError:
        if "SEARCH" not in text:
            raise
    return parse_diff(text)


def parse_diff(text: str) -> CodeAnswer:
    """SEARCH/REPLACE blocks (applied by the coder); a whole module instead is taken as full."""
    edits = parse_edits(text)
    if not edits:
        try:
            return parse_code(text)
        except ValueError:
            raise ValueError("the answer holds no SEARCH/REPLACE blocks; answer with blocks of the form\n"
                             "<<<<<<< SEARCH\n<lines of the parent>\n=======\n<new lines>\n>>>>>>> REPLACE") from None
    return CodeAnswer(mode="diff", edits=tuple(edits), note=_note(text), text=text)


# ------------------------------------------------------------------ fixer
NOT_FIXABLE = frozenset({EvalStatus.ok, EvalStatus.evaluator_error})


class LLMFixer:
    name = "llm"

    def __init__(self, client: Client, pick: Picker) -> None:
        self.client = client
        self.pick = pick

    def fix(self, strategy: Strategy, draft: Draft, result: EvalResult, attempt: int, ctx: Context,
            rng: np.random.Generator) -> tuple[Strategy, Draft] | None:
        """A repaired kernel for the same strategy; None when the failure is not the kernel's
        (evaluator errors), the prompt cannot fit, or the model gives nothing usable."""
        if result.status in NOT_FIXABLE:
            return None
        settings = self.pick(rng)
        try:
            prompt = fixer_prompt(ctx, settings, strategy, draft, result, attempt)
        except PromptTooLarge:
            return None
        failed = draft.ast_hash

        def parse(text: str) -> CodeAnswer:
            answer = parse_code(text)
            if ast_hash(answer.source) == failed:
                raise ValueError("the kernel is unchanged; change what the failure names")
            return answer

        try:
            answer = self.client.ask(prompt.settings_for(settings), "fixer", list(prompt.messages), parse)
        except MalformedOutput:
            return None
        if ast_hash(answer.source) in ctx.seen_ast:
            return None
        return strategy, Draft(source=answer.source, role="fixer", author=settings.name, mode="full",
                               parent_kernel=draft.hash, note=answer.note)


def first_prompt(role: str, ctx: Context, settings) -> Prompt:
    """A role's prompt at the start of a run (ctx: the seed strategies, nothing evaluated): the
    strategist's proposal, the coder rewriting the first seed kernel, the fixer repairing it
    after a correctness failure. What `cubepilot run --dry-run` and benchmarks/llm_loop.py size."""
    seed = families_for(ctx.task.name)[0]
    strategy = seed.strategy()
    if role == "strategist":
        return strategist_prompt(ctx, settings, STRATEGY_SCHEMA)
    if role == "coder":
        return coder_prompt(ctx, settings, strategy, seed.implement(strategy), "full", True)
    failed = EvalResult(status=EvalStatus.wrong, stage="correctness", rule="correctness.budget",
                        message="max relative error 3.1e-02 on 'wide' (budget 1.2e-05)", task=ctx.task.name,
                        machine=ctx.machine.name, shape=ctx.shape, source_hash="0" * 32)
    return fixer_prompt(ctx, settings, strategy, Draft(seed.implement(strategy), "coder", settings.name, "full"),
                        failed, 1)
