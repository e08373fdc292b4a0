"""Prompts as sections: each role's template (agents/prompts/<role>.j2) has one block per
section; this module renders them, estimates their tokens and fits them to a model's context.

A section has a priority and may be required (the task, the output format) or shrinkable (a
list shown with fewer items). The fit policy keeps everything when it fits; otherwise it
shrinks, then drops, the least valuable section first, and as a last resort lowers the
answer's max_tokens to what is left (not below a floor). What went is reported.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import jinja2

from agents.roles import RoleError

try:
    from agents.llm.ledger import MESSAGE_OVERHEAD_TOKENS, estimate_tokens
except ImportError:  # pragma: no cover - the ledger's helper is the one to use once it exists
    MESSAGE_OVERHEAD_TOKENS = 4

    def estimate_tokens(text: str) -> int:
        return math.ceil(len(text) / 4)

TEMPLATES = Path(__file__).resolve().parent.parent / "prompts"
OUTPUT_FLOOR_TOKENS = 512        # the answer never gets less than this
SAFETY = 0.05                    # share of the context kept free: chars/4 is an estimate


class PromptTooLarge(RoleError):
    """Even the required sections and the smallest answer do not fit the model's context."""


@dataclass(frozen=True)
class SectionSpec:
    """How a role treats one block of its template."""
    name: str
    title: str               # "" for the system message
    priority: int            # higher is kept longer
    required: bool = False
    limits: tuple[int, ...] = ()   # shrinkable: item counts to try, largest first


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    priority: int
    required: bool
    variants: tuple[str, ...]      # rendered texts, fullest first

    @property
    def tokens(self) -> int:
        return estimate_tokens(self.variants[0])


@dataclass(frozen=True)
class Prompt:
    """A fitted prompt: the messages to send, the answer's token limit, and what was left out."""
    role: str
    messages: tuple[dict, ...]
    max_tokens: int
    prompt_tokens: int
    context_tokens: int
    kept: tuple[tuple[str, int], ...]          # (section, tokens) in prompt order
    shrunk: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    section_tokens: dict[str, int] = field(default_factory=dict)   # full size of every section

    def settings_for(self, settings):
        """The model settings with the fitted answer limit."""
        if settings.max_tokens == self.max_tokens:
            return settings
        return settings.model_copy(update={"max_tokens": self.max_tokens})


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False,
                              autoescape=False)


def render_sections(role: str, specs: Sequence[SectionSpec], values: dict[str, Any]) -> list[Section]:
    """Render each section's block of `<role>.j2` (every limit of a shrinkable one); a section
    that renders empty (no failures yet, no misses) is left out."""
    template = environment().get_template(f"{role}.j2")
    sections = []
    for spec in specs:
        block = template.blocks[spec.name]
        variants = []
        for limit in spec.limits or (None,):
            context = template.new_context({**values, "limit": limit})
            text = "".join(block(context)).strip()
            if text and text not in variants:
                variants.append(text)
        if variants:
            sections.append(Section(spec.name, spec.title, spec.priority, spec.required, tuple(variants)))
        elif spec.required:
            raise ValueError(f"{role} prompt: required section {spec.name!r} rendered empty")
    return sections


def fit(role: str, sections: Sequence[Section], context_tokens: int, max_tokens: int,
        reserve_tokens: int = 0, floor_tokens: int = OUTPUT_FLOOR_TOKENS, answer_tokens: int | None = None) -> Prompt:
    """Messages (system = the section titled "", user = the rest, in order) that fit
    `context_tokens` with room for the answer. `answer_tokens`: what this answer needs (a
    whole kernel is longer than a JSON strategy); when the context is tight the answer is
    cut to that before any section goes. `reserve_tokens`: what the client may add (a
    schema in json_object mode). Raises PromptTooLarge when nothing fits."""
    room = context_tokens - reserve_tokens - math.ceil(SAFETY * context_tokens)
    level = {s.name: 0 for s in sections}         # variant index; len(variants) = dropped
    need = min(max_tokens, max(answer_tokens or max_tokens, floor_tokens))

    def last(s: Section) -> int:                  # required sections shrink but never go
        return len(s.variants) - 1 if s.required else len(s.variants)

    while _size(sections, level) + need > room:
        movable = [s for s in sections if level[s.name] < last(s)]
        if not movable:
            break
        victim = min(movable, key=lambda s: s.priority)
        level[victim.name] += 1
    used = _size(sections, level)
    answer = min(max_tokens, room - used)
    if answer < min(floor_tokens, max_tokens):
        raise PromptTooLarge(
            f"{role} prompt: the required sections take about {used} tokens; with a {context_tokens}-token "
            f"context that leaves {room - used} for the answer, below the floor of {floor_tokens} "
            "(use a model with a larger context_tokens, or a smaller parent kernel)")
    messages = _messages(sections, level)
    return Prompt(
        role=role, messages=tuple(messages), max_tokens=answer, prompt_tokens=used, context_tokens=context_tokens,
        kept=tuple((s.name, estimate_tokens(s.variants[level[s.name]])) for s in sections
                   if level[s.name] < len(s.variants)),
        shrunk=tuple(s.name for s in sections if 0 < level[s.name] < len(s.variants)),
        dropped=tuple(s.name for s in sections if level[s.name] >= len(s.variants)),
        section_tokens={s.name: s.tokens for s in sections})


def _messages(sections: Sequence[Section], level: dict[str, int]) -> list[dict]:
    system, parts = [], []
    for s in sections:
        if level[s.name] >= len(s.variants):
            continue
        text = s.variants[level[s.name]]
        if not s.title:
            system.append(text)
        else:
            parts.append(f"## {s.title}\n{text}")
    messages = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    return messages + [{"role": "user", "content": "\n\n".join(parts)}]


def _size(sections: Sequence[Section], level: dict[str, int]) -> int:
    return sum(estimate_tokens(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in _messages(sections, level))


def schema_reserve(settings, schema: dict | None) -> int:
    """Tokens the client adds when it falls back to json_object or fenced mode (the schema
    goes into the prompt then); none when the model is set to json_schema."""
    if schema is None or getattr(settings, "structured", "auto") == "json_schema":
        return 0
    return estimate_tokens(json.dumps(schema, indent=1, sort_keys=True)) + 40


def build(role: str, specs: Sequence[SectionSpec], values: dict[str, Any], settings,
          schema: dict | None = None, answer_tokens: int | None = None) -> Prompt:
    """Render and fit one role's prompt for a model's settings."""
    sections = render_sections(role, specs, values)
    return fit(role, sections, settings.context_tokens, settings.max_tokens, schema_reserve(settings, schema),
               answer_tokens=answer_tokens)


STRATEGY_ANSWER_TOKENS = 1024     # a JSON strategy, with room for some reasoning
EDITS_ANSWER_TOKENS = 1024
NEW_KERNEL_TOKENS = 2048          # a kernel written from scratch


def kernel_answer_tokens(source: str | None) -> int:
    """What a whole-module answer needs: the kernel it rewrites, a quarter more, and a note."""
    return NEW_KERNEL_TOKENS if source is None else math.ceil(1.25 * estimate_tokens(source)) + 128


# ------------------------------------------------------------------ the three roles
REQUIRED = 1000

STRATEGIST_SECTIONS = (
    SectionSpec("system", "", REQUIRED, True),
    SectionSpec("task", "Task", REQUIRED, True),
    SectionSpec("machine", "Machine", 30),
    SectionSpec("library", "Technique library (seed families and their knob spaces)", 60),
    SectionSpec("elites", "Elites", REQUIRED, True, limits=(8, 4, 2)),
    SectionSpec("cards", "Bottleneck cards", 50, limits=(3, 1)),
    SectionSpec("failures", "Recent failures (the rule each broke)", 40, limits=(6, 3)),
    SectionSpec("misses", "Large prediction misses", 20, limits=(4, 2)),
    SectionSpec("output", "Answer format", REQUIRED, True),
)


def coder_sections(mode: str, has_parent: bool) -> tuple[SectionSpec, ...]:
    parent = (SectionSpec("parent", "Parent kernel", REQUIRED if mode == "diff" else 90, mode == "diff"),) \
        if has_parent else ()
    return (SectionSpec("system", "", REQUIRED, True), SectionSpec("strategy", "Strategy", REQUIRED, True),
            SectionSpec("task", "Task and signature", REQUIRED, True), *parent,
            SectionSpec("dsl", "DSL reference", 80, limits=(1, 0)), SectionSpec("machine", "Machine", 20),
            SectionSpec("output", "Answer format", REQUIRED, True))


FIXER_SECTIONS = (
    SectionSpec("system", "", REQUIRED, True),
    SectionSpec("failure", "Failure", REQUIRED, True),
    SectionSpec("kernel", "Failed kernel", REQUIRED, True),
    SectionSpec("strategy", "Strategy it implements", 60),
    SectionSpec("task", "Task and signature", REQUIRED, True),
    SectionSpec("dsl", "DSL reference", 80, limits=(1, 0)),
    SectionSpec("output", "Answer format", REQUIRED, True),
)


def _task_values(ctx) -> dict[str, Any]:
    task = ctx.task
    shape = task.parse_shape(ctx.shape) if isinstance(ctx.shape, str) else tuple(ctx.shape)
    args = [{"name": a.name, "role": a.role, "shape": tuple(a.shape), "dtype": a.dtype} for a in task.args(shape)]
    return {"task": task, "shape": task.format_shape(shape), "shape_names": "x".join(task.shape_names),
            "machine_name": ctx.machine.name, "arg_names": [a["name"] for a in args], "args": args,
            "small_shapes": ", ".join(task.format_shape(s) for s in task.small_shapes)}


def schema_outline(schema: dict) -> str:
    """The JSON schema as a one-line outline: field, type, bounds and description, with
    references inlined (what the model needs of it, at a third of its size)."""
    defs = schema.get("$defs", {})

    def kind(node: dict) -> str:
        if "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        if "anyOf" in node:
            return "|".join(kind(n) for n in node["anyOf"])
        t = node.get("type", "any")
        if t == "object" and "properties" in node:
            required = set(node.get("required", ()))
            fields = []
            for name, sub in node["properties"].items():
                desc = f" ({sub['description']})" if sub.get("description") else ""
                fields.append(f'"{name}"{"" if name in required else "?"}: {kind(sub)}{desc}')
            return "{" + ", ".join(fields) + "}"
        if t == "object":
            return "{name: " + kind(node.get("additionalProperties", {})) + "}"
        if t == "array":
            bounds = f" x{node.get('minItems', 0)}..{node['maxItems']}" if "maxItems" in node else ""
            return f"[{kind(node.get('items', {}))}{bounds}]"
        return t
    return kind(schema)


def _worst_of_budget(result) -> str:
    ratios = [e / result.budgets[d] for d, e in result.errors.items() if result.budgets.get(d)]
    return f"{max(ratios):.2f}" if ratios else "-"


def strategist_prompt(ctx, settings, schema: dict) -> Prompt:
    from agents.cards import bottleneck_card, machine_brief, render_card, technique_library
    from strategies.families import families_for

    elites = sorted(ctx.elites.cells.values(), key=lambda sr: sr[1].time_ns)
    cards = []
    if ctx.roofline:
        for strategy, result in elites[:3]:
            parent = ctx.result_of(strategy.parents[0]) if strategy.parents else None
            cards.append(render_card(bottleneck_card(strategy, result, parent, ctx.machine)))
    families = families_for(ctx.task.name)
    values = {
        **_task_values(ctx),
        "machine_brief": machine_brief(ctx.machine, ctx.task),
        "library": technique_library(ctx.task),
        "elites": [{"id": s.id, "describe": s.describe(), "time_us": round(r.time_ns / 1e3, 1),
                    "tflops": round(r.tflops, 1), "pct_of_roofline": round(r.pct_of_roofline, 1),
                    "of_budget": _worst_of_budget(r)} for s, r in elites],
        "library_ids": [f"{f.strategy().id} ({f.name})" for f in families],
        "cards": cards,
        "failures": [{"id": s.id, "describe": s.describe(), "status": r.status.value, "rule": r.rule,
                      "message": _clip(r.message, 200)} for s, r in reversed(ctx.failures(6))],
        "misses": [{"id": m.strategy.id, "describe": m.strategy.describe(), "predicted": f"{m.predicted:.2f}",
                    "measured": "failed" if m.measured is None else f"x{m.measured:.2f}"}
                   for m in ctx.misses[-4:]],
        "schema": schema_outline(schema),
        "families": [f.name for f in families],
    }
    return build("strategist", STRATEGIST_SECTIONS, values, settings, schema, STRATEGY_ANSWER_TOKENS)


def coder_prompt(ctx, settings, strategy, parent: str | None, mode: str, parent_is_reference: bool) -> Prompt:
    from agents.cards import machine_brief
    from agents.dslref import dsl_reference

    values = {**_task_values(ctx), "strategy": strategy, "parent": parent or "", "mode": mode,
              "parent_is_reference": parent_is_reference, "dsl_reference": dsl_reference(),
              "dsl_brief": dsl_reference(detail=False),
              "machine_brief": machine_brief(ctx.machine, ctx.task)}
    need = EDITS_ANSWER_TOKENS if mode == "diff" else kernel_answer_tokens(parent)
    return build("coder", coder_sections(mode, parent is not None), values, settings, answer_tokens=need)


def fixer_prompt(ctx, settings, strategy, draft, result, attempt: int) -> Prompt:
    from agents.dslref import dsl_reference

    lines = draft.source.splitlines()
    feedback = result.feedback()
    if 0 < result.line <= len(lines):
        feedback += f"\nLine {result.line} reads: {lines[result.line - 1].strip()}"
    values = {**_task_values(ctx), "strategy": strategy, "kernel": draft.source, "result": result,
              "feedback": feedback, "attempt": attempt, "mode": "full", "dsl_reference": dsl_reference(),
              "dsl_brief": dsl_reference(detail=False)}
    return build("fixer", FIXER_SECTIONS, values, settings, answer_tokens=kernel_answer_tokens(draft.source))


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
