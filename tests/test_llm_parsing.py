"""Unit tests of the LLM layer's pure parts: reasoning stripping, JSON and code-block
extraction (hypothesis where inputs vary), settings validation, records, the ledger."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from agents.llm import (BudgetExhausted, Budgets, CallRecord, LLMConfigError, Ledger, MemoryCache,
                        ModelSettings, cache_key, estimate_tokens, extract_code_blocks, extract_json,
                        strip_reasoning)

pytestmark = pytest.mark.unit

prose = st.text(st.characters(blacklist_characters="{}`<>", blacklist_categories=("Cs",)), max_size=60)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)


@given(reasoning=prose, answer=prose)
def test_think_block_is_dropped(reasoning: str, answer: str) -> None:
    assert strip_reasoning(f"<think>{reasoning}</think>{answer}") == answer.strip()
    assert strip_reasoning(f"{reasoning}</think>{answer}") == answer.strip()  # opening tag in the prompt
    assert strip_reasoning(f"  <think>{reasoning}") == ""  # cut off while reasoning


def test_think_variants() -> None:
    assert strip_reasoning("a <think>x</think> b <THINKING>y</THINKING> c") == "a  b  c"
    assert strip_reasoning("plain answer") == "plain answer"
    assert strip_reasoning("answer mentions <think> later") == "answer mentions <think> later"


@given(obj=json_objects, before=prose, after=prose)
def test_extract_json_from_prose(obj: dict, before: str, after: str) -> None:
    assert json.loads(extract_json(f"{before}{json.dumps(obj)}{after}")) == obj


@given(obj=json_objects, before=prose, after=prose)
def test_extract_json_from_fence_after_thinking(obj: dict, before: str, after: str) -> None:
    text = f"<think>{{draft}}</think>{before}\n```json\n{json.dumps(obj, indent=1)}\n```\n{after}"
    assert json.loads(extract_json(text)) == obj


def test_extract_json_skips_braces_that_are_not_json() -> None:
    assert json.loads(extract_json('use {tile} then {"a": {"b": [1, 2]}} ok')) == {"a": {"b": [1, 2]}}
    with pytest.raises(ValueError, match="no complete"):
        extract_json('{"a": [1, 2')  # cut off
    with pytest.raises(ValueError, match="no JSON"):
        extract_json("no json here")


@given(bodies=st.lists(st.text(st.characters(blacklist_characters="`\r", blacklist_categories=("Cs",)),
                               max_size=40), max_size=3))
def test_code_blocks_round_trip(bodies: list[str]) -> None:
    bodies = [b.strip("\n") for b in bodies]
    text = "".join(f"step {i}:\n```python\n{b}\n```\n" for i, b in enumerate(bodies))
    assert extract_code_blocks(text, "python") == bodies
    assert extract_code_blocks(text, "json") == []
    assert extract_code_blocks("```python\nunterminated") == []


def test_settings_validation_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="http"):
        ModelSettings(name="d", model="m", base_url="localhost:8000/v1")
    with pytest.raises(ValidationError, match="temperature"):
        ModelSettings(name="d", model="m", base_url="http://h/v1", temperature=3.0)
    with pytest.raises(ValidationError, match="max_tokens"):
        ModelSettings(name="d", model="m", base_url="http://h/v1", max_tokens=0)
    with pytest.raises(ValidationError, match="extra"):
        ModelSettings(name="d", model="m", base_url="http://h/v1", api_key="sk-x")
    settings = ModelSettings(name="d", model="m", base_url="http://h/v1/", api_key_env="CP_UNSET_KEY_VAR")
    assert settings.base_url == "http://h/v1"
    monkeypatch.delenv("CP_UNSET_KEY_VAR", raising=False)
    with pytest.raises(LLMConfigError, match="CP_UNSET_KEY_VAR"):
        settings.api_key()
    assert settings.model_copy(update={"api_key_env": None}).api_key() == "none"


def _record(**changes: object) -> CallRecord:
    base = dict(role="coder", model="d", served_model="m", messages=({"role": "user", "content": "q"},),
                response="a", tokens_in=10, tokens_out=5, tokens_estimated=False, latency_s=0.1,
                cost_usd=0.002, cache_key="k1", structured="text", error="", replayed=False)
    return CallRecord(**{**base, **changes})


def test_record_json_round_trip() -> None:
    record = _record(finish_reason="length", attempts=2)
    assert CallRecord.from_json(record.to_json()) == record
    with pytest.raises(ValueError, match="unknown"):
        CallRecord.from_json(json.dumps({**json.loads(record.to_json()), "api_key": "x"}))


def test_ledger_reserve_settle_release_and_wall_clock() -> None:
    now = [0.0]
    settings = ModelSettings(name="d", model="m", base_url="http://h/v1", max_tokens=100,
                             price_in=1000.0, price_out=1000.0)
    ledger = Ledger(Budgets(tokens=1000, dollars=1.0, wall_s=10.0), clock=lambda: now[0])
    held = ledger.reserve(settings, 50)  # 150 tokens, $0.15
    assert ledger.totals()["reserved_tokens"] == 150
    ledger.settle(held, _record(tokens_in=50, tokens_out=20, cost_usd=0.07))
    assert ledger.totals()["reserved_tokens"] == 0 and ledger.totals()["tokens_out"] == 20
    ledger.release(ledger.reserve(settings, 0))
    assert ledger.spent_text() == "$0.0700, 70 tok"
    with pytest.raises(BudgetExhausted, match="tokens"):
        ledger.reserve(settings, 900)
    now[0] = 11.0
    with pytest.raises(BudgetExhausted, match="wall"):
        ledger.reserve(settings, 1)
    assert ledger.remaining_fraction() == 0.0
    assert estimate_tokens("") == 0 and estimate_tokens("abcde") == 2


def test_memory_cache_answers_in_recorded_order() -> None:
    cache = MemoryCache([_record(response="one"), _record(response="", error="timeout: x"),
                         _record(response="two")])
    assert len(cache) == 3
    got = [cache.get("k1") for _ in range(4)]
    assert [(g.text, g.error) for g in got[:3]] == [("one", ""), ("", "timeout: x"), ("two", "")]
    assert got[3] is None
    settings = ModelSettings(name="d", model="m", base_url="http://h/v1")
    msgs = [{"role": "user", "content": "q"}]
    assert cache_key(settings, msgs, None, "text") == cache_key(settings, list(msgs), None, "text")
    assert cache_key(settings, msgs, None, "text") != cache_key(settings, msgs, None, "fenced")
    hotter = settings.model_copy(update={"temperature": 0.1})
    assert cache_key(settings, msgs, None, "text") != cache_key(hotter, msgs, None, "text")
