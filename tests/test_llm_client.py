"""LLMClient through the real openai SDK against the scripted loopback server (FakeLLM):
structured-output modes and fallback, re-asks, reasoning, SDK retries without stacking,
deadlines, provider outages, budgets under concurrency, key hygiene, cache and replay."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator

import openai
import pytest
from pydantic import BaseModel, ConfigDict

from agents.llm import (BudgetExhausted, Budgets, CallRecord, ContextOverflow, LLMClient, LLMConfigError, Ledger,
                        MalformedOutput, MemoryCache, ModelSettings, ProviderDown, ProviderError,
                        ReplayMiss)
from agents.llm.ledger import estimate_prompt_tokens
from fakellm import FakeLLM, Reply

pytestmark = pytest.mark.integration

KEY_ENV = "CUBEPILOT_TEST_LLM_KEY"
KEY = "sk-cubepilot-SECRET-7f3a9c21d4"
FAST_RETRY = {"retry-after-ms": "10"}  # the SDK honours it: retries in 10 ms, not 0.5-8 s


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: int
    note: str


SCHEMA = Answer.model_json_schema() | {"additionalProperties": False}
GOOD = '{"value": 7, "note": "tile 128"}'
ASK = [{"role": "system", "content": "You tune kernels."}, {"role": "user", "content": "Propose a value."}]


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


def settings_for(fake: FakeLLM, **changes: object) -> ModelSettings:
    base = dict(name="default", model="fake-model", base_url=fake.base_url, api_key_env=KEY_ENV,
                max_retries=1, timeout_s=5.0, max_tokens=200, price_in=1.0, price_out=2.0)
    return ModelSettings(**{**base, **changes})


class Recorder(list):
    def __call__(self, record: CallRecord) -> None:
        self.append(record)


def make_client(budgets: Budgets = Budgets(), **kwargs: object) -> tuple[LLMClient, Recorder]:
    records = Recorder()
    return LLMClient(Ledger(budgets), record=records, **kwargs), records


def ask(client: LLMClient, settings: ModelSettings, messages: list[dict] = ASK, role: str = "strategist") -> Answer:
    return client.ask(settings, role, messages, Answer.model_validate_json, schema=SCHEMA)


# -- structured output --------------------------------------------------------------------

def test_json_schema_mode_sends_strict_schema(fake: FakeLLM) -> None:
    fake.push(Reply(GOOD))
    client, records = make_client()
    assert ask(client, settings_for(fake)) == Answer(value=7, note="tile 128")
    [body] = fake.requests
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}
    assert body["messages"] == ASK and body["max_tokens"] == 200
    [record] = records
    assert (record.structured, record.error, record.response, record.finish_reason) == ("json_schema", "", GOOD, "stop")
    assert record.tokens_in == 5 + 4 and record.tokens_out == 8 and not record.tokens_estimated  # chars/4
    assert record.cost_usd == pytest.approx((9 * 1.0 + 8 * 2.0) / 1e6)


def test_json_object_mode_puts_schema_in_prompt(fake: FakeLLM) -> None:
    fake.push(Reply(f"Here it is: {GOOD} hope it helps"))
    client, records = make_client()
    assert ask(client, settings_for(fake, structured="json_object")).value == 7
    [body] = fake.requests
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][-1]["content"].startswith("Propose a value.\n\nAnswer with one JSON object")
    assert '"value"' in body["messages"][-1]["content"]
    assert ASK[-1]["content"] == "Propose a value."  # the caller's messages are not mutated
    assert records[0].messages == tuple(body["messages"])  # the record holds the exact prompt sent


def test_fenced_mode_reads_the_fenced_block(fake: FakeLLM) -> None:
    fake.push(Reply(f"Plan {{tile}}:\n```json\n{GOOD}\n```\nDone."))
    client, records = make_client()
    assert ask(client, settings_for(fake, structured="fenced")).note == "tile 128"
    assert "response_format" not in fake.requests[0] and "```json" in fake.requests[0]["messages"][-1]["content"]
    assert records[0].structured == "fenced"


def test_auto_falls_back_and_remembers_the_working_mode() -> None:
    with FakeLLM([Reply(GOOD), Reply(GOOD)], response_formats=()) as fake:  # no response_format at all
        client, records = make_client()
        settings = settings_for(fake)
        assert ask(client, settings).value == 7
        assert [b.get("response_format", {}).get("type") for b in fake.requests] == ["json_schema", "json_object", None]
        assert [r.error.split(":")[0] for r in records] == ["unsupported_format", "unsupported_format", ""]
        assert records[0].cost_usd == records[1].cost_usd == 0.0 and records[0].attempts == 1  # no SDK retry of a 400
        assert ask(client, settings).value == 7  # remembered: one request, fenced
        assert len(fake.requests) == 4 and records[-1].structured == "fenced"
    with FakeLLM([Reply(GOOD)], response_formats=("json_object",)) as fake:  # Ollama-like
        client, records = make_client()
        assert ask(client, settings_for(fake)).value == 7
        assert [r.structured for r in records] == ["json_schema", "json_object"]


def test_a_500_that_is_a_validation_error_of_response_format_falls_back_too() -> None:
    """llama-cpp-python's server answers a json_schema response_format with HTTP 500 and a
    pydantic validation error (found by the live tier); that is a refusal, not an outage."""
    body = ("1 validation error: {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
            "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}")

    def script(request: dict) -> Reply:
        if request.get("response_format", {}).get("type") == "json_schema":
            return Reply(body, status=500)
        return Reply(GOOD)
    with FakeLLM(script) as fake:
        client, records = make_client()
        assert ask(client, settings_for(fake, max_retries=0)).value == 7
        assert [r.structured for r in records] == ["json_schema", "json_object"]
        assert records[0].error.startswith("unsupported_format") and client.consecutive_failures == 0


def test_explicit_mode_rejected_is_a_config_error(fake: FakeLLM) -> None:
    fake.push(Reply(GOOD, reject_response_format=True))
    client, _ = make_client()
    with pytest.raises(LLMConfigError, match="structured"):
        ask(client, settings_for(fake, structured="json_schema"))


def test_plain_text_without_schema(fake: FakeLLM) -> None:
    fake.push(Reply("<think>which tile?</think>\nuse 128x128 tiles"))
    client, records = make_client()
    assert client.ask(settings_for(fake), "fixer", ASK, str.upper) == "USE 128X128 TILES"
    assert "response_format" not in fake.requests[0] and records[0].structured == "text"
    assert records[0].response.startswith("<think>")  # raw text kept in the record


# -- malformed output and re-asks --------------------------------------------------------

def test_malformed_then_good_reasks_once_and_costs_both(fake: FakeLLM) -> None:
    fake.push(Reply('{"value": "seven", "note": 1}'), Reply(GOOD))
    client, records = make_client()
    assert ask(client, settings_for(fake)).value == 7
    assert len(fake.requests) == 2 and len(records) == 2
    reask = fake.requests[1]["messages"]
    assert reask[:2] == ASK and reask[2] == {"role": "assistant", "content": '{"value": "seven", "note": 1}'}
    assert reask[3]["role"] == "user" and "could not be used" in reask[3]["content"] and "value" in reask[3]["content"]
    assert all(r.ok and r.cost_usd > 0 for r in records)  # a malformed answer is a good request: kept, costed
    totals = client.ledger.totals()
    assert totals["calls"] == 2 and totals["dollars"] == pytest.approx(sum(r.cost_usd for r in records))
    assert totals["by_role"]["strategist"]["tokens_in"] == sum(r.tokens_in for r in records)


@pytest.mark.parametrize("reasks", [0, 2])
def test_always_malformed_gives_up_after_bounded_reasks(fake: FakeLLM, reasks: int) -> None:
    fake.push(*[Reply("I think the value is seven.")] * 5)
    client, records = make_client(reasks=reasks)
    with pytest.raises(MalformedOutput, match="no usable answer") as caught:
        ask(client, settings_for(fake))
    assert len(fake.requests) == len(records) == 1 + reasks
    assert caught.value.snippet == "I think the value is seven." and caught.value.requests == 1 + reasks
    assert client.consecutive_failures == 0  # the provider answered: not a provider failure


def test_think_blocks_are_stripped_before_parsing(fake: FakeLLM) -> None:
    fake.push(Reply('<think>maybe {"value": 1}? no...</think>\n' + GOOD),
              Reply('the value is obviously 3 {"value": 3</think>' + GOOD),  # template opened <think>
              Reply("<think>I keep thinking and never answ"), Reply(GOOD))
    client, records = make_client()
    assert ask(client, settings_for(fake)).value == 7
    assert ask(client, settings_for(fake)).value == 7
    assert ask(client, settings_for(fake)).value == 7  # unterminated reasoning: re-asked
    assert fake.requests[-1]["messages"][-2] == {"role": "assistant", "content": ""}
    assert records[0].response.startswith("<think>")


def test_truncated_answer_is_reasked_as_cut_off(fake: FakeLLM) -> None:
    fake.push(Reply('{"value": 7, "note": "a very long no', truncated=True), Reply(GOOD))
    client, records = make_client()
    assert ask(client, settings_for(fake)).value == 7
    assert records[0].finish_reason == "length" and records[1].finish_reason == "stop"
    assert "cut off at the 200-token limit" in fake.requests[1]["messages"][-1]["content"]


def test_missing_usage_is_estimated_and_flagged(fake: FakeLLM) -> None:
    fake.push(Reply(GOOD, usage=None))
    client, records = make_client()
    ask(client, settings_for(fake))
    [record] = records
    assert record.tokens_estimated and record.tokens_out == 8
    assert record.tokens_in == estimate_prompt_tokens(fake.requests[0]["messages"]) and record.cost_usd > 0


# -- transport failures: the SDK retries, we do not --------------------------------------

def test_429_with_retry_after_is_retried_by_the_sdk_alone(fake: FakeLLM) -> None:
    fake.push(Reply("slow down", status=429, headers={"retry-after": "0.05"}), Reply(GOOD))
    client, records = make_client()
    start = time.monotonic()
    assert ask(client, settings_for(fake, max_retries=2)).value == 7
    assert time.monotonic() - start < 2.0
    assert len(fake.requests) == 2  # one retry by the SDK, none by us
    assert [h.get("x-stainless-retry-count") for h in fake.request_headers] == ["0", "1"]
    [record] = records  # one call, two HTTP attempts inside it
    assert record.attempts == 2 and record.ok


def test_500s_raise_provider_error_then_provider_down_reset_by_success(fake: FakeLLM) -> None:
    client, records = make_client(max_consecutive_failures=3)
    settings = settings_for(fake, max_retries=1)
    fail = Reply("overloaded", status=500, headers=FAST_RETRY)
    fake.push(fail, fail, fail, fail, Reply(GOOD), *[fail] * 6)
    for _ in range(2):
        with pytest.raises(ProviderError, match="HTTP 500 after 2 attempts"):
            ask(client, settings)
    assert len(fake.requests) == 4  # 1 + max_retries per ask: retries never stacked
    assert ask(client, settings).value == 7  # success resets the count
    assert client.consecutive_failures == 0
    for _ in range(2):
        with pytest.raises(ProviderError):
            ask(client, settings)
    with pytest.raises(ProviderDown, match="3 asks in a row") as down:
        ask(client, settings)
    assert "HTTP 500" in str(down.value)
    assert [r.error.split(":")[0] for r in records].count("http_500") == 5
    assert client.ledger.totals()["reserved_dollars"] == 0  # failed calls released their reservations


def test_client_errors_are_config_errors_at_once(fake: FakeLLM) -> None:
    fake.push(Reply("The model `gpt-9` does not exist", status=404), Reply("bad key", status=401))
    client, _ = make_client(max_consecutive_failures=1)
    with pytest.raises(LLMConfigError, match="model id"):
        ask(client, settings_for(fake))
    with pytest.raises(LLMConfigError, match=KEY_ENV):
        ask(client, settings_for(fake))
    assert len(fake.requests) == 2  # 4xx: no SDK retry; no ProviderDown either


def test_prompt_longer_than_the_context_is_reported_as_such(fake: FakeLLM) -> None:
    fake.push(Reply("This model's maximum context length is 4096 tokens. However, you requested 5000 "
                    "tokens (800 in the messages, 4200 in the completion).", status=400))
    client, records = make_client()
    with pytest.raises(ContextOverflow, match="max_tokens"):
        ask(client, settings_for(fake))
    assert len(fake.requests) == 1 and records[0].error.startswith("http_400")


def test_fake_server_lists_models(fake: FakeLLM) -> None:
    sdk = openai.OpenAI(base_url=fake.base_url, api_key=KEY, max_retries=0)
    assert [m.id for m in sdk.models.list().data] == ["fake-model"]
    sdk.close()


def test_answer_slower_than_deadline_returns_in_time(fake: FakeLLM) -> None:
    fake.push(*[Reply(GOOD, delay_s=10.0)] * 3)
    client, records = make_client()
    start = time.monotonic()
    with pytest.raises(ProviderError, match="deadline"):
        ask(client, settings_for(fake, timeout_s=0.5, max_retries=2))
    elapsed = time.monotonic() - start
    assert 0.5 <= elapsed < 0.5 + 0.25 + 0.35  # deadline + the client's margin + slack for a busy machine
    time.sleep(0.8)  # the SDK's retry (after its backoff) would have come by now
    assert len(fake.requests) == 1  # nothing sent after the deadline
    assert records[0].error.startswith(("timeout", "deadline")) and records[0].cost_usd == 0


def test_sdk_retries_share_the_one_deadline(fake: FakeLLM) -> None:
    """A 429 asks for 0.3 s of patience; the SDK's retry then gets only the 0.2 s left, not
    a fresh timeout_s: the call ends as a timeout at the deadline, not 0.5 s after it."""
    fake.push(Reply("busy", status=429, headers={"retry-after": "0.3"}), Reply(GOOD, delay_s=10.0))
    client, records = make_client()
    start = time.monotonic()
    with pytest.raises(ProviderError, match="deadline"):
        ask(client, settings_for(fake, timeout_s=0.5, max_retries=1))
    assert time.monotonic() - start < 0.5 + 0.2
    assert len(fake.requests) == 2 and records[0].attempts == 2 and records[0].error.startswith("timeout")


def test_server_goes_away_and_comes_back(fake: FakeLLM) -> None:
    client, records = make_client(max_consecutive_failures=5)
    settings = settings_for(fake, max_retries=0)
    fake.push(Reply(GOOD))
    assert ask(client, settings).value == 7
    fake.stop()
    with pytest.raises(ProviderError, match="cannot reach"):
        ask(client, settings)
    assert records[-1].error.startswith("connection")
    fake.push(Reply(GOOD))
    fake.start()  # same port
    assert ask(client, settings).value == 7
    assert client.consecutive_failures == 0 and len(fake.requests) == 2


def test_dropped_connection_is_retried_by_the_sdk(fake: FakeLLM) -> None:
    fake.push(Reply(drop=True), Reply(GOOD))
    client, records = make_client()
    assert ask(client, settings_for(fake, max_retries=1)).value == 7
    assert len(fake.requests) == 2 and records[0].attempts == 2


# -- budgets and concurrency -------------------------------------------------------------

def test_concurrent_asks_never_overshoot_the_dollar_budget(fake: FakeLLM) -> None:
    # each request reserves (prompt estimate + max_tokens) = 5 + 100 tokens at $1000/M: $0.105;
    # each answer really costs about $0.1 (100 tokens out), so $0.35 holds exactly 3 requests
    fake.push(*[Reply('{"value": 1, "note": "' + "x" * 372 + '"}', delay_s=0.2)] * 8)
    settings = settings_for(fake, max_tokens=100, price_in=1000.0, price_out=1000.0)
    client, records = make_client(Budgets(dollars=0.35), max_in_flight=8)
    outcomes: list[str] = []

    def one() -> None:
        try:
            ask(client, settings, [{"role": "user", "content": "q"}])
            outcomes.append("ok")
        except BudgetExhausted:
            outcomes.append("refused")

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("ok") == 3 and outcomes.count("refused") == 5
    assert len(fake.requests) == 3  # a refused ask sent nothing
    totals = client.ledger.totals()
    assert totals["dollars"] <= 0.35 and totals["reserved_dollars"] == 0
    assert totals["dollars"] == pytest.approx(sum(r.cost_usd for r in records))


def test_token_budget_refuses_before_sending(fake: FakeLLM) -> None:
    fake.push(Reply(GOOD), Reply(GOOD))
    settings = settings_for(fake, max_tokens=50)
    client, _ = make_client(Budgets(tokens=80))  # an ask reserves 17 (estimate) + 50, spends 9 + 8
    ask(client, settings)
    with pytest.raises(BudgetExhausted, match="tokens budget exhausted"):
        ask(client, settings)
    assert len(fake.requests) == 1 and client.ledger.totals()["tokens_in"] == 9


def test_unpriced_model_costs_nothing_but_counts_tokens(fake: FakeLLM) -> None:
    fake.push(Reply(GOOD))
    client, records = make_client(Budgets(dollars=0.01))
    ask(client, settings_for(fake, price_in=None, price_out=None, api_key_env=None))
    assert records[0].cost_usd == 0.0 and records[0].tokens_out == 8
    assert client.ledger.totals()["dollars"] == 0.0 and client.ledger.spent_text() == "$0.0000, 17 tok"
    assert fake.request_headers[0]["authorization"] == "Bearer none"


def test_in_flight_requests_are_limited(fake: FakeLLM) -> None:
    in_flight, peak, lock = [0], [0], threading.Lock()

    def script(body: dict) -> Reply:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.1)
        with lock:
            in_flight[0] -= 1
        return Reply(GOOD)

    with FakeLLM(script) as server:
        client, _ = make_client(max_in_flight=2)
        threads = [threading.Thread(target=ask, args=(client, settings_for(server))) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(server.requests) == 6 and peak[0] == 2


# -- the API key -------------------------------------------------------------------------

def test_api_key_reaches_only_the_authorization_header(fake: FakeLLM, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake.push(Reply(GOOD), Reply("nonsense"), Reply("nonsense"),
              Reply(f"Incorrect API key provided: {KEY}", status=401),
              Reply(f"upstream said {KEY}", status=500))
    client, records = make_client(reasks=1)
    settings = settings_for(fake, max_retries=0)
    messages: list[str] = []
    ask(client, settings)
    for _ in range(3):
        with pytest.raises((MalformedOutput, LLMConfigError, ProviderError)) as caught:
            ask(client, settings)
        messages.append(str(caught.value))
    assert all(KEY not in m for m in messages) and "***" in messages[1]
    assert all(KEY not in r.to_json() for r in records) and len(records) == 5
    assert KEY not in json.dumps(fake.requests)
    assert KEY not in caplog.text
    assert all(h["authorization"] == f"Bearer {KEY}" for h in fake.request_headers)


def test_missing_key_variable_fails_before_sending(fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    client, records = make_client()
    with pytest.raises(LLMConfigError, match=f"{KEY_ENV} is not set"):
        ask(client, settings_for(fake))
    assert fake.requests == [] and records == [] and client.ledger.totals()["reserved_tokens"] == 0


# -- cache and replay --------------------------------------------------------------------

def test_cache_answers_what_it_holds_then_goes_live(fake: FakeLLM) -> None:
    """A cache from an earlier run: the n-th identical prompt gets the n-th stored answer,
    free; asked once more than stored, the prompt goes to the server (and is stored)."""
    fake.push(Reply(GOOD), Reply('{"value": 2, "note": "b"}'))
    first, recorded = make_client()
    ask(first, settings_for(fake))
    cache = MemoryCache(recorded)
    client, records = make_client(cache=cache)
    assert ask(client, settings_for(fake)).value == 7
    assert len(fake.requests) == 1
    assert records[0].replayed and records[0].cost_usd == 0.0 and records[0].tokens_out == recorded[0].tokens_out
    assert ask(client, settings_for(fake)).value == 2  # beyond the stored answers: live
    assert len(fake.requests) == 2 and not records[1].replayed and len(cache) == 2


def test_replay_reproduces_a_recorded_run_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = [ASK, [{"role": "user", "content": "another"}], ASK]
    with FakeLLM([Reply("garbage"), Reply(GOOD), Reply('{"value": 2, "note": "b"}'),
                  Reply('{"value": 3, "note": "c"}')], response_formats=("json_object",)) as fake:
        live, recorded = make_client()
        settings = settings_for(fake)
        first = [ask(live, settings, p) for p in prompts]
    # the server is gone now, and the key too: replay from the records alone
    monkeypatch.delenv(KEY_ENV)
    replayer, replayed = make_client(replay=MemoryCache(recorded))
    assert [ask(replayer, settings, p) for p in prompts] == first
    assert len(fake.requests) == len(recorded) == len(replayed) == 5  # json_schema refused, a re-ask
    assert all(r.replayed for r in replayed) and not any(r.replayed for r in recorded)
    same = ("messages", "response", "tokens_in", "tokens_out", "cost_usd", "cache_key", "structured", "error")
    assert [[getattr(r, f) for f in same] for r in replayed] == [[getattr(r, f) for f in same] for r in recorded]
    assert replayer.ledger.totals()["dollars"] == pytest.approx(live.ledger.totals()["dollars"])


def test_replay_fails_where_the_recording_failed(fake: FakeLLM) -> None:
    fake.push(Reply("down", status=503), Reply(GOOD))
    live, recorded = make_client(max_consecutive_failures=2)
    settings = settings_for(fake, max_retries=0)
    with pytest.raises(ProviderError):
        ask(live, settings)
    assert ask(live, settings).value == 7
    replayer, replayed = make_client(replay=MemoryCache(recorded), max_consecutive_failures=2)
    with pytest.raises(ProviderError, match="replayed failure.*http_503"):
        ask(replayer, settings)
    assert ask(replayer, settings).value == 7
    assert [r.error[:8] for r in replayed] == [r.error[:8] for r in recorded] == ["http_503", ""]
    assert replayer.consecutive_failures == live.consecutive_failures == 0
    assert len(fake.requests) == 2


def test_replay_miss(fake: FakeLLM) -> None:
    fake.push(Reply(GOOD))
    live, recorded = make_client()
    settings = settings_for(fake)
    ask(live, settings)
    replayer, _ = make_client(replay=MemoryCache(recorded))
    with pytest.raises(ReplayMiss, match="does not hold"):
        ask(replayer, settings, [{"role": "user", "content": "never asked"}])
    ask(replayer, settings)
    with pytest.raises(ReplayMiss):  # asked more often than recorded
        ask(replayer, settings)
    assert len(fake.requests) == 1
