"""The LLM roles against a scripted fake client: strategies as validated JSON (re-asked when
the model names an unknown parent, family or knob, or repeats a tried strategy), kernels as
full source or SEARCH/REPLACE edits with one repair turn, no-op children, and the fixer.
One integration test drives strategist and coder through the real LLMClient and FakeLLM."""
from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from agents.llm.errors import MalformedOutput
from agents.llm.roles import (STRATEGY_SCHEMA, EditsDidNotApply, LLMCoder, LLMFixer, LLMStrategist, NoChange,
                              UnusableAnswer)
from agents.llm.settings import ModelSettings
from agents.roles import Context, Draft, RoleError, ast_hash, source_hash
from evaluator.result import EvalResult, EvalStatus
from evaluator.tasks import get_task
from hwmodel.spec import load_machine
from strategies.evolution import Elites, mutate
from strategies.families import FAMILIES

SETTINGS = ModelSettings(name="fake", model="fake-1", base_url="http://127.0.0.1:9/v1", api_key_env=None)
MACHINE = load_machine("ascend-910a")
FLOPS = 2.0 * 4096 ** 3


# ------------------------------------------------------------------ fakes and fixtures
@dataclass
class Call:
    settings: ModelSettings
    role: str
    messages: list[dict]
    schema: dict | None


@dataclass
class ScriptedClient:
    """Answers each ask with the next scripted text; like LLMClient it calls parse and re-asks
    (up to `reasks` times) with the error when parse raises ValueError."""
    texts: list[str]
    reasks: int = 2
    calls: list[Call] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def ask(self, settings, role, messages, parse, schema=None, schema_name="answer"):
        turns: list[dict] = []
        for _ in range(1 + self.reasks):
            text = self.texts.pop(0)
            self.calls.append(Call(settings, role, list(messages) + turns, schema))
            try:
                return parse(text)
            except ValueError as err:
                self.errors.append(str(err))
                turns += [{"role": "assistant", "content": text}, {"role": "user", "content": str(err)}]
        raise MalformedOutput(role, settings.name, 1 + self.reasks, self.errors[-1], text[:80])


def result(time_ns: float = 2.0e6, status: str = "ok", **fields) -> EvalResult:
    ok = status == "ok"
    base = dict(status=status, message="" if ok else "failed", stage="benchmark" if ok else "sandbox", task="sgemm",
                machine="ascend-910a", shape="4096x4096x4096", source_hash="0" * 32,
                errors={"uniform": 3.1e-7, "wide": 4.0e-7} if ok else {},
                budgets={"uniform": 2.4e-6, "wide": 3.0e-6} if ok else {},
                time_ns=time_ns if ok else math.inf, tflops=FLOPS / time_ns / 1e3 if ok else 0.0,
                pct_of_peak=70.0 if ok else 0.0, pct_of_roofline=70.0 if ok else 0.0, bottleneck="M" if ok else "",
                pipe_busy={"M": 0.79, "MTE2": 0.61, "MTE1": 0.45, "V": 0.2, "S": 0.08} if ok else {},
                l2_hit_rate=0.71 if ok else 0.0, hbm_bytes=900_000_000 if ok else 0)
    return EvalResult(**{**base, **fields})


def make_context(rng: np.random.Generator | None = None, elites: int = 6, failures: int = 1, **kw) -> Context:
    rng = rng or np.random.default_rng(7)
    cells = Elites()
    history = []
    for i, name in enumerate(("sgemm_cube", "sgemm_cube_otf", "sgemm_termwise", "sgemm_vector")):
        s = FAMILIES[name].strategy()
        history.append((s, result(2e6 * (i + 1))))
    for i in range(elites):
        history.append((mutate(history[0][0], rng), result(2.1e6 + 1e4 * i)))
    for i in range(failures):
        history.append((mutate(history[0][0], rng), result(
            status="hw_violation", rule="capacity", line=45,
            message="L0A: 73,728 B requested, 65,536 B capacity; use smaller tiles or fewer slots")))
    for s, r in history:
        cells.add(s, r)
    by_id = {s.id: r for s, r in history}
    return Context(task=get_task("sgemm"), machine=MACHINE, shape="4096x4096x4096", elites=cells,
                   history=tuple(history), result_of=by_id.get, **kw)


def best_id(ctx: Context) -> str:
    return ctx.elites.best()[0].id


def answer(ctx: Context, **over) -> str:
    body = {"parents": [best_id(ctx)], "family": "sgemm_cube", "knobs": {"BK1": 512},
            "techniques": ["double buffering", "larger K panel"],
            "plan": "Load K panels of 512 so each L1 fill feeds twice the cube work.",
            "expected": {"bottleneck": "MTE2", "speedup": 1.08, "rationale": "fewer, larger loads"}}
    body.update(over)
    return json.dumps(body)


def fixed(value):
    return lambda rng: value


REFERENCE = FAMILIES["sgemm_cube"].source
PARENT = FAMILIES["sgemm_cube"].implement(FAMILIES["sgemm_cube"].strategy({"SLOTS": 3}))


def python(source: str, note: str = "Deepen the ring.") -> str:
    return f"{note}\n```python\n{source}```\n"


unit = pytest.mark.unit          # every test here but the one through the real client


# ------------------------------------------------------------------ strategist
@unit
def test_initial_is_the_library_without_a_model_call(rng):
    client = ScriptedClient([])
    ctx = make_context()
    population = LLMStrategist(client, fixed(SETTINGS)).initial(ctx, 6, rng)
    names = [s.family for s in population[:4]]
    assert names == ["sgemm_cube", "sgemm_cube_otf", "sgemm_termwise", "sgemm_vector"]
    assert len(population) == 6 and len({s.signature for s in population}) == 6
    assert client.calls == []


@unit
def test_valid_strategy_json(rng):
    ctx = make_context()
    client = ScriptedClient([answer(ctx)])
    strategy = LLMStrategist(client, fixed(SETTINGS)).propose(ctx, rng)
    parent = ctx.elites.best()[0]
    assert strategy.parents == (parent.id,) and strategy.origin == "mutation"
    assert strategy.knobs == {**parent.knobs, "BK1": 512}
    assert strategy.author == "strategist:fake" and strategy.expected.speedup == 1.08
    assert strategy.tags["family"] == "sgemm_cube" and "larger K panel" in strategy.tags["techniques"]
    assert strategy.tags["buffering"] == "double"
    (call,) = client.calls
    assert call.role == "strategist" and call.schema == STRATEGY_SCHEMA
    assert parent.id in call.messages[-1]["content"]


@unit
def test_crossover_of_two_elites(rng):
    ctx = make_context()
    ids = [s.id for s, _ in sorted(ctx.elites.cells.values(), key=lambda sr: sr[1].time_ns)[:2]]
    client = ScriptedClient([answer(ctx, parents=ids, family="sgemm_cube_otf", knobs={"SPLIT_SLOTS": 3})])
    strategy = LLMStrategist(client, fixed(SETTINGS)).propose(ctx, rng)
    assert strategy.origin == "crossover" and strategy.parents == tuple(ids)
    assert strategy.knobs == {**FAMILIES["sgemm_cube_otf"].defaults(), "SPLIT_SLOTS": 3}


@unit
@pytest.mark.parametrize("bad, complaint", [
    ({"parents": ["feedfacecafe"]}, "unknown parent id 'feedfacecafe'"),
    ({"family": "sgemm_magic"}, "unknown family 'sgemm_magic'"),
    ({"knobs": {"TILE": 64}}, "'TILE' is not a knob of family sgemm_cube"),
    ({"knobs": {"BM": "big"}}, "knob BM of family sgemm_cube takes int"),
    ({"family": "custom", "knobs": {"BM": 64}}, "'custom' strategy has no knobs"),
    ({"parents": []}, "parents"),
    ({"expected": {"bottleneck": "MTE2", "speedup": -1}}, "speedup"),
])
def test_invalid_strategy_is_reasked_with_the_reason(rng, bad, complaint):
    ctx = make_context()
    client = ScriptedClient([answer(ctx, **bad), answer(ctx)])
    strategy = LLMStrategist(client, fixed(SETTINGS)).propose(ctx, rng)
    assert strategy.knobs["BK1"] == 512
    assert len(client.calls) == 2 and complaint in client.errors[0]
    assert complaint in client.calls[1].messages[-1]["content"]


@unit
def test_tried_signature_is_reasked(rng):
    ctx = make_context()
    first = LLMStrategist(ScriptedClient([answer(ctx)]), fixed(SETTINGS)).propose(ctx, rng)
    ctx = Context(**{**ctx.__dict__, "tried": frozenset({first.signature})})
    client = ScriptedClient([answer(ctx), answer(ctx, knobs={"BK1": 512, "GROUP": 4})])
    second = LLMStrategist(client, fixed(SETTINGS)).propose(ctx, rng)
    assert "already tried" in client.errors[0] and second.knobs["GROUP"] == 4


@unit
def test_custom_strategy_without_knobs(rng):
    ctx = make_context()
    client = ScriptedClient([answer(ctx, family="custom", knobs={}, techniques=["stream-K"])])
    strategy = LLMStrategist(client, fixed(SETTINGS)).propose(ctx, rng)
    assert strategy.family == "custom" and strategy.knobs == {} and strategy.tags["techniques"] == "stream-K"


@unit
def test_three_bad_answers_are_a_role_error(rng):
    ctx = make_context()
    client = ScriptedClient(["not json"] * 3)
    with pytest.raises(UnusableAnswer) as info:
        LLMStrategist(client, fixed(SETTINGS)).propose(ctx, rng)
    assert isinstance(info.value, RoleError) and len(client.calls) == 3


@unit
def test_the_picker_chooses_the_model_per_call(rng):
    ctx = make_context()
    other = SETTINGS.model_copy(update={"name": "big"})
    picks = iter([SETTINGS, other])
    client = ScriptedClient([answer(ctx), answer(ctx, knobs={"BK1": 128})])
    strategist = LLMStrategist(client, lambda r: next(picks))
    a, b = strategist.propose(ctx, rng), strategist.propose(ctx, rng)
    assert (a.author, b.author) == ("strategist:fake", "strategist:big")
    assert [c.settings.name for c in client.calls] == ["fake", "big"]


# ------------------------------------------------------------------ coder
def strategy_for(family: str = "sgemm_cube"):
    ctx = make_context()
    return ctx, FAMILIES[family].strategy({"SLOTS": 3}).model_copy(
        update={"author": "strategist:fake", "plan": "triple-buffer the L1 panels", "origin": "mutation"})


@unit
def test_builtin_strategies_are_rendered_without_a_model_call(rng):
    ctx = make_context()
    strategy = FAMILIES["sgemm_cube"].strategy({"SLOTS": 3})
    client = ScriptedClient([])
    draft = LLMCoder(client, fixed(SETTINGS), fixed("diff")).implement(strategy, None, ctx, rng)
    assert draft.source == PARENT and draft.mode == "template" and draft.author == "builtin"
    assert client.calls == []


@unit
def test_full_answer(rng):
    ctx, strategy = strategy_for()
    new = PARENT.replace("GROUP = 2 ", "GROUP = 4 ")
    client = ScriptedClient([python(new, "Swizzle in bands of 4.")])
    draft = LLMCoder(client, fixed(SETTINGS), fixed("full")).implement(strategy, PARENT, ctx, rng)
    assert draft.source == new and draft.mode == "full" and draft.role == "coder" and draft.author == "fake"
    assert draft.parent_kernel == source_hash(PARENT) and draft.note == "Swizzle in bands of 4."
    user = client.calls[0].messages[-1]["content"]
    assert "## Parent kernel" in user and "## DSL reference" in user and "triple-buffer" in user


@unit
def test_full_mode_edits_when_the_parent_and_its_rewrite_do_not_fit(rng):
    ctx, strategy = strategy_for()
    small = SETTINGS.model_copy(update={"context_tokens": 3500, "max_tokens": 4096})
    text = "<<<<<<< SEARCH\nGROUP = 2                  # block swizzle\n=======\nGROUP = 4\n>>>>>>> REPLACE\n"
    client = ScriptedClient([text])
    draft = LLMCoder(client, fixed(small), fixed("full")).implement(strategy, PARENT, ctx, rng)
    assert draft.mode == "diff" and "GROUP = 4" in draft.source
    user = client.calls[0].messages[-1]["content"]
    assert "## Parent kernel" in user and ">>>>>>> REPLACE" in user
    assert client.calls[0].settings.max_tokens < 4096


@unit
def test_edits_are_taken_in_full_mode_and_a_module_in_diff_mode(rng):
    ctx, strategy = strategy_for()
    edit = "<<<<<<< SEARCH\nGROUP = 2                  # block swizzle\n=======\nGROUP = 4\n>>>>>>> REPLACE\n"
    draft = LLMCoder(ScriptedClient([edit]), fixed(SETTINGS), fixed("full")).implement(strategy, PARENT, ctx, rng)
    assert draft.mode == "diff" and "GROUP = 4" in draft.source
    new = PARENT.replace("GROUP = 2 ", "GROUP = 8 ")
    draft = LLMCoder(ScriptedClient([python(new)]), fixed(SETTINGS), fixed("diff")).implement(
        strategy, PARENT, ctx, rng)
    assert draft.mode == "full" and draft.source == new


@unit
def test_diff_answer(rng):
    ctx, strategy = strategy_for()
    text = ("Bands of four.\n<<<<<<< SEARCH\nGROUP = 2                  # block swizzle\n=======\n"
            "GROUP = 4                  # block swizzle\n>>>>>>> REPLACE\n")
    draft = LLMCoder(ScriptedClient([text]), fixed(SETTINGS), fixed("diff")).implement(strategy, PARENT, ctx, rng)
    assert draft.mode == "diff" and "GROUP = 4" in draft.source and draft.note == "Bands of four."
    assert draft.source.replace("GROUP = 4", "GROUP = 2") == PARENT


@unit
def test_edit_that_does_not_apply_gets_one_repair_turn(rng):
    ctx, strategy = strategy_for()
    wrong = "<<<<<<< SEARCH\nGROUP = 3  # swizzle\n=======\nGROUP = 4\n>>>>>>> REPLACE\n"
    right = "<<<<<<< SEARCH\nGROUP = 2                  # block swizzle\n=======\nGROUP = 4\n>>>>>>> REPLACE\n"
    client = ScriptedClient([wrong, right])
    draft = LLMCoder(client, fixed(SETTINGS), fixed("diff")).implement(strategy, PARENT, ctx, rng)
    assert "GROUP = 4" in draft.source and len(client.calls) == 2
    repair = client.calls[1].messages
    assert repair[-2] == {"role": "assistant", "content": wrong}
    assert "closest region" in repair[-1]["content"] and "GROUP = 2" in repair[-1]["content"]


@unit
def test_edits_failing_twice_give_up(rng):
    ctx, strategy = strategy_for()
    wrong = "<<<<<<< SEARCH\nGROUP = 3  # swizzle\n=======\nGROUP = 4\n>>>>>>> REPLACE\n"
    client = ScriptedClient([wrong, wrong, wrong])
    with pytest.raises(EditsDidNotApply, match="after a repair turn"):
        LLMCoder(client, fixed(SETTINGS), fixed("diff")).implement(strategy, PARENT, ctx, rng)
    assert len(client.calls) == 2


@unit
def test_child_identical_to_parent_is_no_change(rng):
    ctx, strategy = strategy_for()
    same = "# a comment the parent lacks\n" + PARENT.replace("    return counter", "    return (counter)")
    client = ScriptedClient([python(same)])
    with pytest.raises(NoChange):
        LLMCoder(client, fixed(SETTINGS), fixed("full")).implement(strategy, PARENT, ctx, rng)


@unit
def test_kernel_already_evaluated_is_no_change(rng):
    ctx, strategy = strategy_for()
    new = PARENT.replace("GROUP = 2 ", "GROUP = 4 ")
    ctx = Context(**{**ctx.__dict__, "seen_ast": frozenset({ast_hash(new)})})
    with pytest.raises(NoChange):
        LLMCoder(ScriptedClient([python(new)]), fixed(SETTINGS), fixed("full")).implement(strategy, PARENT, ctx, rng)


@unit
def test_library_strategy_without_parent_starts_from_the_rendered_reference(rng):
    ctx, strategy = strategy_for()
    rendered = FAMILIES["sgemm_cube"].implement(strategy)
    text = "<<<<<<< SEARCH\nDRAIN_ROWS = 16\n=======\nDRAIN_ROWS = 32\n>>>>>>> REPLACE\n"
    client = ScriptedClient([text])
    draft = LLMCoder(client, fixed(SETTINGS), fixed("diff")).implement(strategy, None, ctx, rng)
    assert draft.parent_kernel == source_hash(rendered) and "DRAIN_ROWS = 32" in draft.source
    assert "library reference kernel" in client.calls[0].messages[-1]["content"]


@unit
def test_custom_strategy_from_scratch_forces_full_mode(rng):
    ctx, strategy = strategy_for()
    custom = strategy.model_copy(update={"family": "custom", "knobs": {}, "tags": {"family": "custom"}})
    client = ScriptedClient([python(REFERENCE)])
    draft = LLMCoder(client, fixed(SETTINGS), fixed("diff")).implement(custom, None, ctx, rng)
    assert draft.mode == "full" and draft.parent_kernel == ""
    user = client.calls[0].messages[-1]["content"]
    assert "## Parent kernel" not in user and "```python block" in user


@unit
def test_missing_code_is_reasked_and_broken_code_goes_to_the_evaluator(rng):
    """No kernel in the answer is re-asked; a kernel that does not parse is a kernel: the
    evaluator reports its syntax error (compile_error, with the line) and the fixer repairs it."""
    ctx, strategy = strategy_for()
    cut = "```python\ndef kernel(k, a, b, c):\n    pass"                       # unterminated fence
    broken = "def kernel(k, a, b, c):\n    for\n"
    client = ScriptedClient([cut, python(broken)])
    draft = LLMCoder(client, fixed(SETTINGS), fixed("full")).implement(strategy, PARENT, ctx, rng)
    assert draft.source == broken and draft.ast_hash.startswith("text:")
    assert len(client.errors) == 1 and "no complete ```python block" in client.errors[0]


@unit
def test_model_output_is_text_never_run(rng, tmp_path):
    ctx, strategy = strategy_for()
    marker = tmp_path / "ran"
    hostile = f"open({str(marker)!r}, 'w').write('x')\nimport os\ndef kernel(k, a, b, c):\n    os._exit(3)\n"
    draft = LLMCoder(ScriptedClient([python(hostile)]), fixed(SETTINGS), fixed("full")).implement(
        strategy, PARENT, ctx, rng)
    assert draft.source == hostile and not marker.exists()


@unit
def test_roles_never_exec_or_import_model_output():
    """No call that runs or imports code anywhere in the modules that handle model output."""
    banned_names = {"exec", "eval", "compile", "__import__"}
    banned_attrs = {"import_module", "exec_module", "load_kernel", "load_kernel_source", "run_path"}
    for path in ("agents/llm/roles.py", "agents/llm/prompts.py", "agents/edits.py", "agents/cards.py",
                 "agents/dslref.py"):
        tree = ast.parse((Path(__file__).resolve().parent.parent / path).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                assert not (isinstance(f, ast.Name) and f.id in banned_names), f"{path}:{node.lineno} {f.id}"
                assert not (isinstance(f, ast.Attribute) and f.attr in banned_attrs), f"{path}:{node.lineno}"
            if isinstance(node, ast.Import):
                assert not {a.name for a in node.names} & {"importlib", "runpy"}, f"{path}:{node.lineno}"
            if isinstance(node, ast.ImportFrom) and node.module in ("importlib", "runpy", "hwmodel.loader"):
                assert [a.name for a in node.names] == ["knob_names"], f"{path}:{node.lineno}"   # AST only


# ------------------------------------------------------------------ fixer
def failed_draft():
    source = PARENT.replace("BM, BN = 128, 256", "BM, BN = 256, 256")
    return Draft(source=source, role="coder", author="fake", mode="full", parent_kernel=source_hash(PARENT))


@unit
def test_fixer_repairs_with_the_structured_failure(rng):
    ctx, strategy = strategy_for()
    draft = failed_draft()
    bad = result(status="hw_violation", rule="capacity", line=11, message="L0C: 524,288 B requested, 262,144 B capacity")
    client = ScriptedClient([python(PARENT, "Back to 128-row tiles.")])
    out = LLMFixer(client, fixed(SETTINGS)).fix(strategy, draft, bad, 1, ctx, rng)
    assert out is not None
    fixed_strategy, repaired = out
    assert fixed_strategy == strategy and repaired.role == "fixer" and repaired.mode == "full"
    assert repaired.parent_kernel == draft.hash and repaired.source == PARENT
    user = client.calls[0].messages[-1]["content"]
    assert "hw_violation" in user and "rule capacity" in user and "kernel line 11" in user
    assert "262,144 B capacity" in user and "BM, BN = 256, 256" in user
    assert "## DSL reference" in user


@unit
def test_fixer_reasks_an_unchanged_kernel_and_gives_up_quietly(rng):
    ctx, strategy = strategy_for()
    draft = failed_draft()
    bad = result(status="wrong", rule="correctness.budget", message="error 3e-3 over budget 2.4e-6 on wide")
    client = ScriptedClient([python(draft.source)] * 3)
    assert LLMFixer(client, fixed(SETTINGS)).fix(strategy, draft, bad, 1, ctx, rng) is None
    assert len(client.calls) == 3 and "unchanged" in client.errors[0]


@unit
def test_fixer_leaves_evaluator_errors_alone(rng):
    ctx, strategy = strategy_for()
    client = ScriptedClient([])
    bad = result(status="evaluator_error", message="trusted side crashed")
    assert LLMFixer(client, fixed(SETTINGS)).fix(strategy, failed_draft(), bad, 1, ctx, rng) is None
    assert client.calls == []


# ------------------------------------------------------------------ through the real client
@pytest.mark.integration
def test_strategist_and_coder_through_llmclient_and_fakellm(rng):
    fakellm = pytest.importorskip("fakellm")
    from agents.llm.client import LLMClient
    from agents.llm.ledger import Ledger
    from agents.llm.settings import Budgets

    ctx = make_context()
    edit = "<<<<<<< SEARCH\nGROUP = 2                  # block swizzle\n=======\nGROUP = 4\n>>>>>>> REPLACE"
    script = [fakellm.Reply(f"<think>the parent is MTE2-heavy {{\"parents\": []}}</think>\n```json\n{answer(ctx)}\n```"),
              fakellm.Reply(f"<think>```python\ndef kernel(k, a, b, c):\n    pass\n```</think>Bands of four.\n{edit}")]
    with fakellm.FakeLLM(script) as server:
        settings = SETTINGS.model_copy(update={"base_url": server.base_url, "structured": "json_object"})
        client = LLMClient(Ledger(Budgets()))
        strategy = LLMStrategist(client, fixed(settings)).propose(ctx, rng)
        parent = FAMILIES["sgemm_cube"].implement(ctx.elites.best()[0])
        draft = LLMCoder(client, fixed(settings), fixed("diff")).implement(strategy, parent, ctx, rng)
    assert strategy.knobs["BK1"] == 512 and strategy.author == "strategist:fake"
    assert draft.mode == "diff" and "GROUP = 4" in draft.source and draft.note == "Bands of four."
    assert draft.parent_kernel == source_hash(parent)
