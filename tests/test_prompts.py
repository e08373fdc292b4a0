"""Prompt material and fitting: the DSL reference is generated from the simulator's code, the
cards and briefs carry the numbers, and the fit policy gives a 4k-token model a valid prompt
(required sections kept, the least valuable shrunk or dropped first) while 128k keeps it all."""
from __future__ import annotations

import math

import numpy as np
import pytest

from agents import dslref
from agents.cards import bottleneck_card, machine_brief, render_card, technique_library
from agents.dslref import dsl_reference, kernel_methods
from agents.llm.ledger import estimate_prompt_tokens, estimate_tokens
from agents.llm.prompts import (PromptTooLarge, Section, coder_prompt, fit, fixer_prompt, schema_outline,
                                strategist_prompt)
from agents.llm.roles import STRATEGY_SCHEMA, StrategyParser
from agents.roles import Context, Draft, Miss
from evaluator import policy
from hwmodel.dsl import Kernel
from strategies.families import FAMILIES, families_for
from test_llm_roles import MACHINE, PARENT, SETTINGS, make_context, result

pytestmark = pytest.mark.unit

SMALL = SETTINGS.model_copy(update={"context_tokens": 4096, "max_tokens": 1024})
LARGE = SETTINGS.model_copy(update={"context_tokens": 131072, "max_tokens": 4096})


# ------------------------------------------------------------------ DSL reference
def test_dsl_reference_lists_every_public_kernel_method():
    text = dsl_reference()
    public = [n for n in dir(Kernel) if not n.startswith("_") and callable(getattr(Kernel, n))]
    assert sorted(public) == sorted(kernel_methods())
    for name in public:
        assert f"k.{name}(" in text or f"/{name}(" in text or f"k.{name}/" in text or f"/{name}/" in text, name
    for attr in ("k.core_id", "k.num_cores"):
        assert attr in text
    assert "math" in text and f"from {policy.DSL_MODULE} import Kernel" in text
    assert "getattr" in text and "open" in text                 # forbidden builtins come from the policy
    assert estimate_tokens(text) < 1200 and estimate_tokens(dsl_reference(detail=False)) < 700


def test_a_new_kernel_method_shows_up(monkeypatch):
    def frobnicate(self, dst, src, depth: int = 2) -> None:
        """Frobnicate src into dst, depth times.

        Second paragraph is not shown."""

    # Kernel itself is sealed (kernels cannot patch it): the reference reads a subclass here
    monkeypatch.setattr(dslref, "Kernel", type("Kernel", (Kernel,), {"frobnicate": frobnicate,
                                                                      **{n: m for n, m in vars(Kernel).items()
                                                                         if not n.startswith("__")}}))
    dslref.dsl_reference.cache_clear()
    try:
        text = dsl_reference()
        assert "k.frobnicate(dst, src, depth=2): Frobnicate src into dst, depth times." in text
        assert "Second paragraph" not in text
    finally:
        monkeypatch.undo()
        dslref.dsl_reference.cache_clear()
    assert "frobnicate" not in dsl_reference()


# ------------------------------------------------------------------ cards and briefs
def test_bottleneck_card_fields_and_rendering():
    strategy = FAMILIES["sgemm_cube"].strategy()
    card = bottleneck_card(strategy, result(2.0e6), result(2.5e6), MACHINE)
    assert card["bound"] == "compute" and card["bottleneck"] == "M"
    assert list(card["pipe_busy"]) == ["M", "MTE2", "MTE1", "V", "S"]
    assert card["time_vs_parent"] == 0.8 and card["l2_hit_rate"] == 0.71
    assert card["errors"]["wide"] == {"error": 4.0e-7, "budget": 3.0e-6, "of_budget": 0.13}
    text = render_card(card)
    assert "68.7 TFLOP/s = 70.0% of roofline" in text and "x0.800 of its parent" in text
    assert "M 79% MTE2 61%" in text and "L2 hit 71%" in text and "wide 4.0e-07 (0.13)" in text
    assert len(text.splitlines()) == 3 and estimate_tokens(text) < 130
    assert "time_vs_parent" not in bottleneck_card(strategy, result(2.0e6), None, MACHINE)


def test_failed_card_says_rule_and_line():
    bad = result(status="hw_violation", rule="capacity", line=45, message="L0A: 73,728 B requested, 65,536 B capacity")
    text = render_card(bottleneck_card(FAMILIES["sgemm_cube"].strategy(), bad, None, MACHINE))
    assert "FAILED hw_violation [capacity] line 45" in text and "65,536 B capacity" in text


def test_machine_brief_has_peaks_ridges_memories_and_paths():
    text = machine_brief(MACHINE, "sgemm")
    assert "fp32_split 85.3 TFLOP/s (ridge 71 FLOP/B) <- this task" in text
    assert "fp16 256.0 TFLOP/s" in text and "int8 512.0" in text
    for name, mem in MACHINE.memories.items():
        assert f"{name} {mem.capacity_bytes // 1024} KiB" in text
    for p in MACHINE.paths:
        assert f"{p.src}->{p.dst} {p.pipe} {p.bytes_per_cycle:g} B/cycle" in text
    assert "L2 32 MiB" in text and "HBM 1.20 TB/s" in text


@pytest.mark.parametrize("task", ["sgemm", "attention", "qgemm"])
def test_technique_library_is_one_line_per_family(task):
    lines = technique_library(task).splitlines()
    families = families_for(task)
    assert len(lines) == len(families)
    for line, family in zip(lines, families):
        assert line.startswith(f"- {family.name}: ") and all(f"{k}{{" in line for k in family.space)


# ------------------------------------------------------------------ the fit policy
def sections(*specs) -> list[Section]:
    return [Section(name, name.title() if name != "system" else "", prio, req, tuple("x" * (4 * t) for t in toks))
            for name, prio, req, toks in specs]


def test_fit_keeps_everything_when_it_fits():
    secs = sections(("system", 1000, True, [50]), ("a", 10, False, [100]), ("b", 20, False, [100]))
    prompt = fit("r", secs, 4096, 1024)
    assert prompt.dropped == () and prompt.shrunk == () and prompt.max_tokens == 1024
    assert prompt.prompt_tokens == estimate_prompt_tokens(prompt.messages)


def test_fit_shrinks_then_drops_the_least_valuable_first():
    secs = sections(("system", 1000, True, [100]), ("task", 1000, True, [200]), ("cheap", 10, False, [900, 300]),
                    ("dear", 50, False, [900]), ("list", 1000, True, [900, 400]), ("out", 1000, True, [100]))
    prompt = fit("r", secs, 4096, 1024)
    assert prompt.shrunk == ("cheap",) and prompt.dropped == ()         # a shorter form before dropping
    assert prompt.prompt_tokens + prompt.max_tokens <= 4096
    tighter = fit("r", secs, 3200, 1024)
    assert tighter.dropped == ("cheap", "dear") and tighter.shrunk == ()
    tightest = fit("r", secs, 2400, 1024)
    assert tightest.dropped == ("cheap", "dear") and tightest.shrunk == ("list",)    # required: shrunk, kept
    assert [name for name, _ in tightest.kept] == ["system", "task", "list", "out"]
    assert tightest.max_tokens == 1024


def test_fit_shrinks_the_answer_to_what_is_left_but_not_below_the_floor():
    secs = sections(("system", 1000, True, [100]), ("task", 1000, True, [1500]))
    prompt = fit("r", secs, 2600, 2048)
    assert 512 <= prompt.max_tokens < 2048
    assert prompt.prompt_tokens + prompt.max_tokens <= 2600
    with pytest.raises(PromptTooLarge, match="below the floor of 512"):
        fit("r", secs, 2000, 2048)


# ------------------------------------------------------------------ role prompts at 4k and at 128k
def crowded_context() -> Context:
    ctx = make_context(elites=12, failures=6)
    misses = tuple(Miss(s, 1.3, None if i % 2 else 0.9) for i, (s, _) in enumerate(ctx.history[:4]))
    return Context(**{**ctx.__dict__, "misses": misses})


def check_fits(prompt, settings, required: list[str]) -> str:
    assert prompt.prompt_tokens == estimate_prompt_tokens(prompt.messages)
    assert prompt.prompt_tokens + prompt.max_tokens <= settings.context_tokens
    assert prompt.max_tokens >= 512
    system, user = prompt.messages
    assert system["role"] == "system" and system["content"]
    for title in required:
        assert f"## {title}" in user["content"], title
    return user["content"]


def test_strategist_prompt_at_4k():
    ctx = crowded_context()
    prompt = strategist_prompt(ctx, SMALL, STRATEGY_SCHEMA)          # fits whole, schema fallback reserved
    user = check_fits(prompt, SMALL, ["Task", "Elites", "Answer format"])
    assert ctx.elites.best()[0].id in user and '"parents": [string x1..2]' in user
    greedy = SMALL.model_copy(update={"max_tokens": 4096})        # asks for the whole context as answer
    prompt = strategist_prompt(ctx, greedy, STRATEGY_SCHEMA)
    check_fits(prompt, greedy, ["Task", "Machine", "Elites", "Bottleneck cards", "Answer format"])
    assert prompt.dropped == () and 1024 <= prompt.max_tokens < 4096  # the answer gives way, not the sections
    tight = SMALL.model_copy(update={"context_tokens": 3072})
    prompt = strategist_prompt(ctx, tight, STRATEGY_SCHEMA)
    check_fits(prompt, tight, ["Task", "Technique library (seed families and their knob spaces)", "Elites",
                               "Bottleneck cards", "Answer format"])
    assert prompt.dropped == ("machine", "failures", "misses") and prompt.max_tokens == 1024


def test_strategist_prompt_at_128k_keeps_everything():
    ctx = crowded_context()
    prompt = strategist_prompt(ctx, LARGE, STRATEGY_SCHEMA)
    user = check_fits(prompt, LARGE, ["Task", "Machine", "Technique library (seed families and their knob spaces)",
                                      "Elites", "Bottleneck cards", "Recent failures (the rule each broke)",
                                      "Large prediction misses", "Answer format"])
    assert prompt.dropped == () and prompt.shrunk == () and prompt.max_tokens == LARGE.max_tokens
    assert "[capacity]" in user and "measured failed" in user and "% of roofline" in user


def test_no_roofline_leaves_out_the_cards():
    ctx = Context(**{**make_context().__dict__, "roofline": False})
    user = strategist_prompt(ctx, LARGE, STRATEGY_SCHEMA).messages[-1]["content"]
    assert "## Bottleneck cards" not in user and "pipes busy" not in user


@pytest.mark.parametrize("mode", ["full", "diff"])
def test_coder_prompt_at_4k_and_128k(mode):
    ctx = make_context()
    strategy = FAMILIES["sgemm_cube"].strategy({"SLOTS": 3})
    small = coder_prompt(ctx, SMALL, strategy, PARENT, mode, False)
    user = check_fits(small, SMALL, ["Strategy", "Task and signature", "Parent kernel", "Answer format"])
    assert "machine" in small.dropped and PARENT.strip() in user
    assert "def kernel(k, a, b, c):" in user and "a: GM input (4096, 4096) fp32" in user
    assert ("SEARCH" in user) == (mode == "diff")
    large = coder_prompt(ctx, LARGE, strategy, PARENT, mode, False)
    check_fits(large, LARGE, ["Strategy", "Task and signature", "Parent kernel", "DSL reference", "Machine",
                              "Answer format"])
    assert large.dropped == () and dsl_reference() in large.messages[-1]["content"]


def test_diff_mode_never_drops_the_parent():
    ctx = make_context()
    strategy = FAMILIES["sgemm_cube"].strategy()
    tiny = SETTINGS.model_copy(update={"context_tokens": 2600, "max_tokens": 1024})
    prompt = coder_prompt(ctx, tiny, strategy, PARENT, "diff", False)
    assert "parent" not in prompt.dropped and "dsl" in prompt.dropped and prompt.max_tokens < 1024
    with pytest.raises(PromptTooLarge):
        coder_prompt(ctx, SETTINGS.model_copy(update={"context_tokens": 1500}), strategy, PARENT, "diff", False)


def test_fixer_prompt_at_4k():
    ctx = make_context()
    strategy = FAMILIES["sgemm_cube"].strategy()
    draft = Draft(source=PARENT, role="coder", author="fake", mode="full")
    bad = result(status="hw_violation", rule="capacity", line=12, message="L0C: 524,288 B requested")
    prompt = fixer_prompt(ctx, SMALL, strategy, draft, bad, 2)
    user = check_fits(prompt, SMALL, ["Failure", "Failed kernel", "Task and signature", "Answer format"])
    assert "Attempt 2" in user and "rule capacity" in user and f"Line 12 reads: {PARENT.splitlines()[11].strip()}" in user


def test_schema_outline_is_compact_and_complete():
    outline = schema_outline(STRATEGY_SCHEMA)
    for name in ("parents", "family", "knobs", "techniques", "plan", "expected", "bottleneck", "speedup"):
        assert f'"{name}"' in outline
    assert estimate_tokens(outline) < 260


def test_think_blocks_are_the_clients_business():
    """Parsers receive what the client extracted (JSON text, reasoning stripped); they do not
    strip reasoning themselves."""
    ctx = make_context()
    parse = StrategyParser(ctx, "strategist:fake")
    with pytest.raises(ValueError):
        parse('<think>hmm</think>{"parents": []}')
