"""`LLMClient.ask`: one question to an OpenAI-compatible model, answered as a parsed value.
Transport retries are the SDK's alone; this layer adds structured output with fallback
(json_schema → json_object → fenced), bounded re-asks on malformed output (tenacity),
one deadline per request, budgets, records, a response cache and offline replay."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx2
import openai
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_none

from agents.llm.cache import CachedResponse, ResponseCache, cache_key
from agents.llm.errors import (ContextOverflow, LLMConfigError, MalformedOutput, ProviderDown, ProviderError,
                               ReplayMiss)
from agents.llm.ledger import Ledger, cost_usd, estimate_prompt_tokens, estimate_tokens
from agents.llm.parsing import extract_json, strip_reasoning
from agents.llm.records import CallRecord
from agents.llm.settings import ModelSettings

T = TypeVar("T")

AUTO_MODES = ("json_schema", "json_object", "fenced")
DEADLINE_MARGIN_S = 0.25  # how long past its deadline a caller may wait for the SDK to return
SNIPPET_CHARS = 300
_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "structured output", "grammar")
_CONTEXT_WORDS = ("context length", "context window", "maximum context", "context_length_exceeded",
                  "prompt is too long", "too many tokens", "exceeds the context")


@dataclass
class _CallState:
    """Per-request state the request hook sees (thread-local: the sync SDK sends on the
    thread that called it, its retries included)."""
    deadline: float
    attempts: int = 0


_current = threading.local()


def _enforce_deadline(request: httpx2.Request) -> None:
    """httpx request hook, run before every attempt the SDK makes (retries included): the
    attempt's timeouts shrink to the time left to the request's deadline, and no attempt
    starts after it."""
    state: _CallState | None = getattr(_current, "state", None)
    if state is None:
        return
    remaining = state.deadline - time.monotonic()
    if remaining <= 0:
        raise openai.APITimeoutError(request=request)  # an OpenAIError: the SDK does not retry it
    timeouts = request.extensions.get("timeout") or {}
    request.extensions["timeout"] = {
        k: remaining if timeouts.get(k) is None else min(timeouts[k], remaining)
        for k in ("connect", "read", "write", "pool")}
    state.attempts += 1


class _DeadlinePassed(Exception):
    pass


def _run_until(fn: Callable[[], Any], state: _CallState, wait_until: float) -> Any:
    """Run `fn` on a worker thread and wait for it until `wait_until` (monotonic): the SDK
    may sleep between retries past the deadline; the caller does not wait for that. The
    abandoned worker sends nothing more (`_enforce_deadline` refuses after the deadline)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        _current.state = state
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the caller below
            box["error"] = err
        finally:
            _current.state = None
            done.set()

    threading.Thread(target=work, name="llm-request", daemon=True).start()
    if not done.wait(max(0.0, wait_until - time.monotonic())):
        raise _DeadlinePassed
    if "error" in box:
        raise box["error"]
    return box["value"]


@dataclass(frozen=True)
class _Answer:
    text: str
    mode: str
    finish_reason: str


class _Unusable(Exception):
    """The answer did not parse; tenacity re-asks on this alone."""

    def __init__(self, answer: _Answer, error: str) -> None:
        super().__init__(error)
        self.answer = answer
        self.error = error


def _short(err: BaseException, limit: int = 400) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _with_schema(messages: Sequence[dict], schema: dict | None, mode: str) -> list[dict]:
    """Copies of the messages; in json_object and fenced modes the schema goes at the end
    of the last user message (a new user message when the last one is not the user's)."""
    sent = [dict(m) for m in messages]
    if schema is None or mode in ("text", "json_schema"):
        return sent
    schema_text = json.dumps(schema, indent=1, sort_keys=True)
    if mode == "json_object":
        note = f"Answer with one JSON object that matches this JSON schema:\n{schema_text}"
    else:
        note = ("Answer with one JSON object that matches this JSON schema, inside a ```json "
                f"fenced block:\n```json\n{schema_text}\n```")
    last = sent[-1] if sent else None
    if last is not None and last.get("role") == "user" and isinstance(last.get("content"), str):
        last["content"] = f"{last['content']}\n\n{note}"
    else:
        sent.append({"role": "user", "content": note})
    return sent


def _rejects_format(err: openai.APIStatusError) -> bool:
    """A 400/422 saying the server cannot honour response_format (vLLM without guided
    decoding, llama.cpp without json_schema, older Ollama, proxies), or a 500 whose body is a
    validation error of response_format (llama-cpp-python's server answers json_schema so)."""
    text = f"{err.message} {err.body}".lower()
    if err.status_code == 500 and "response_format" in text:
        return True
    if err.status_code not in (400, 422, 501):
        return False
    return any(word in text for word in _FORMAT_WORDS) or "not supported" in text or "unsupported" in text


class LLMClient:
    def __init__(self, ledger: Ledger, record: Callable[[CallRecord], None] | None = None,
                 cache: ResponseCache | None = None, replay: ResponseCache | None = None,
                 max_consecutive_failures: int = 5, reasks: int = 2, max_in_flight: int = 4,
                 transport: httpx2.BaseTransport | None = None) -> None:
        """`transport`: an httpx2 transport for every SDK client (tests, custom TLS); None
        keeps httpx2's default, which honours HTTP(S)_PROXY from the environment."""
        if max_consecutive_failures < 1 or reasks < 0 or max_in_flight < 1:
            raise LLMConfigError(
                f"LLMClient needs max_consecutive_failures >= 1, reasks >= 0, max_in_flight >= 1; "
                f"got {max_consecutive_failures}, {reasks}, {max_in_flight}")
        self.ledger = ledger
        self.reasks = reasks
        self.max_consecutive_failures = max_consecutive_failures
        self._record = record
        self._cache = cache
        self._replay = replay
        self._transport = transport
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._lock = threading.Lock()
        self._sdk: dict[tuple, openai.OpenAI] = {}
        self._modes: dict[tuple[str, str], str] = {}  # (base_url, model) -> working mode
        self._failures = 0
        self._secrets: set[str] = set()

    # -- the one public call -----------------------------------------------------------

    def ask(self, settings: ModelSettings, role: str, messages: list[dict], parse: Callable[[str], T],
            schema: dict | None = None, schema_name: str = "answer") -> T:
        """The model's answer to `messages`, reasoning stripped (and, with a schema, the JSON
        extracted), passed through `parse`. A ValueError from `parse` (pydantic's
        ValidationError included) re-asks with the error, at most `reasks` times.

        Raises MalformedOutput, ProviderError, ProviderDown (the N-th provider failure in a
        row), LLMConfigError, BudgetExhausted (before any request), ReplayMiss."""
        turns: list[dict] = []
        try:
            for attempt in Retrying(stop=stop_after_attempt(1 + self.reasks), wait=wait_none(),
                                    retry=retry_if_exception_type(_Unusable), reraise=True):
                with attempt:
                    answer = self._request(settings, role, messages, turns, schema, schema_name)
                    try:
                        return parse(self._usable_text(answer))
                    except ValueError as err:
                        error = self._redact(_short(err))
                        turns += self._reask_turns(settings, answer, error, schema is not None)
                        raise _Unusable(answer, error) from err
        except _Unusable as bad:
            raise MalformedOutput(role, settings.name, 1 + self.reasks, bad.error,
                                  self._redact(bad.answer.text[:SNIPPET_CHARS])) from None
        except ProviderError as err:
            with self._lock:
                self._failures += 1
                failures = self._failures
            if failures >= self.max_consecutive_failures:
                raise ProviderDown(failures, err) from err
            raise
        raise AssertionError("unreachable: tenacity either returns or reraises")

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def close(self) -> None:
        """Close the SDK clients' connection pools."""
        with self._lock:
            clients, self._sdk = list(self._sdk.values()), {}
        for client in clients:
            client.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- parsing and re-asking ---------------------------------------------------------

    @staticmethod
    def _usable_text(answer: _Answer) -> str:
        text = strip_reasoning(answer.text)
        return text if answer.mode == "text" else extract_json(text)

    @staticmethod
    def _reask_turns(settings: ModelSettings, answer: _Answer, error: str, structured: bool) -> list[dict]:
        if answer.finish_reason == "length":
            why = (f"Your answer was cut off at the {settings.max_tokens}-token limit ({error}). "
                   "Answer again, shorter, complete this time")
        else:
            why = f"Your answer could not be used: {error}. Answer again with the corrected answer"
        what = (", only the JSON object matching the schema." if structured else ", nothing else.")
        return [{"role": "assistant", "content": strip_reasoning(answer.text)},
                {"role": "user", "content": why + what}]

    # -- one request (or one replayed answer) ------------------------------------------

    def _modes_for(self, settings: ModelSettings, schema: dict | None) -> tuple[str, ...]:
        if schema is None:
            return ("text",)
        if settings.structured != "auto":
            return (settings.structured,)
        known = self._modes.get((settings.base_url, settings.model))  # start there, fall back on
        return AUTO_MODES[AUTO_MODES.index(known):] if known else AUTO_MODES

    def _request(self, settings: ModelSettings, role: str, messages: Sequence[dict], turns: list[dict],
                 schema: dict | None, schema_name: str) -> _Answer:
        modes = self._modes_for(settings, schema)
        if self._replay is not None:
            return self._replayed(settings, role, messages, turns, schema, modes)
        for index, mode in enumerate(modes):
            sent = _with_schema(messages, schema, mode) + turns
            key = cache_key(settings, sent, schema, mode)
            if self._cache is not None:
                hit = self._cache.get(key)
                while hit is not None and hit.error:  # a live cache serves answers, not failures
                    hit = self._cache.get(key)
                if hit is not None:
                    answer = self._from_store(settings, role, sent, key, mode, hit, charge=False)
                    assert answer is not None
                    return answer
            try:
                answer = self._send(settings, role, sent, key, mode, schema, schema_name)
            except openai.APIStatusError as err:
                if settings.structured == "auto" and mode != "fenced" and index + 1 < len(modes):
                    continue  # rejected response_format: next mode (the failure is recorded)
                raise LLMConfigError(
                    f"model {settings.name!r}: the server at {settings.base_url} rejects structured "
                    f"output mode {mode!r} ({self._redact(_short(err, 200))}); "
                    "set structured = \"auto\" or \"fenced\" for this model") from None
            if settings.structured == "auto" and schema is not None:
                self._modes[(settings.base_url, settings.model)] = mode
            return answer
        raise AssertionError("unreachable: the last mode raises or returns")

    def _replayed(self, settings: ModelSettings, role: str, messages: Sequence[dict], turns: list[dict],
                  schema: dict | None, modes: Sequence[str]) -> _Answer:
        assert self._replay is not None
        first_key = ""
        for mode in modes:
            sent = _with_schema(messages, schema, mode) + turns
            key = cache_key(settings, sent, schema, mode)
            first_key = first_key or key
            hit = self._replay.get(key)
            if hit is None:
                continue
            answer = self._from_store(settings, role, sent, key, mode, hit, charge=True)
            if answer is not None:
                if settings.structured == "auto" and schema is not None:
                    self._modes[(settings.base_url, settings.model)] = mode
                return answer
        raise ReplayMiss(role, settings.name, first_key)

    def _from_store(self, settings: ModelSettings, role: str, sent: list[dict], key: str, mode: str,
                    hit: CachedResponse, charge: bool) -> _Answer | None:
        """An answer from the replay store (charged at its recorded cost, so a replayed run
        meets its budgets where the original did) or the cache (no money spent: cost 0).
        A recorded failure happens again: a rejected response_format returns None (the
        caller falls back to the next mode, as the recorded run did), others raise."""
        reservation = self.ledger.reserve(settings, estimate_prompt_tokens(sent))
        if hit.error:
            failure = CallRecord(
                role=role, model=settings.name, served_model=hit.served_model or settings.model,
                messages=tuple(sent), response="", tokens_in=0, tokens_out=0, tokens_estimated=False,
                latency_s=0.0, cost_usd=0.0, cache_key=key, structured=mode, error=hit.error,
                replayed=True, attempts=0)
            self.ledger.release(reservation, failure)
            self._emit(failure)
            if hit.error.startswith("unsupported_format"):
                return None
            raise self._replayed_error(settings, hit.error)
        record = CallRecord(
            role=role, model=settings.name, served_model=hit.served_model or settings.model,
            messages=tuple(sent), response=hit.text, tokens_in=hit.tokens_in, tokens_out=hit.tokens_out,
            tokens_estimated=False, latency_s=0.0, cost_usd=hit.cost_usd if charge else 0.0,
            cache_key=key, structured=mode, error="", replayed=True, finish_reason=hit.finish_reason,
            attempts=0)
        self.ledger.settle(reservation, record)
        self._provider_answered()
        self._emit(record)
        return _Answer(hit.text, mode, hit.finish_reason)

    def _send(self, settings: ModelSettings, role: str, sent: list[dict], key: str, mode: str,
              schema: dict | None, schema_name: str) -> _Answer:
        """One chat completion through the SDK (its retries inside), recorded and settled.
        Raises ProviderError, LLMConfigError, or the APIStatusError of a rejected
        response_format (already recorded) for the caller to fall back on."""
        sdk = self._sdk_client(settings)  # may raise LLMConfigError (no key): nothing held or sent
        reservation = self.ledger.reserve(settings, estimate_prompt_tokens(sent))
        kwargs: dict[str, Any] = {"model": settings.model, "messages": sent,
                                  "temperature": settings.temperature, "max_tokens": settings.max_tokens,
                                  "timeout": settings.timeout_s}
        if mode == "json_schema":
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                "name": schema_name, "schema": schema, "strict": True}}
        elif mode == "json_object":
            kwargs["response_format"] = {"type": "json_object"}

        def failed(kind: str, text: str, state: _CallState, start: float) -> CallRecord:
            record = CallRecord(
                role=role, model=settings.name, served_model=settings.model, messages=tuple(sent),
                response="", tokens_in=0, tokens_out=0, tokens_estimated=False,
                latency_s=time.monotonic() - start, cost_usd=0.0, cache_key=key, structured=mode,
                error=f"{kind}: {self._redact(text)}", replayed=False, attempts=state.attempts)
            self.ledger.release(reservation, record)
            self._emit(record)
            return record

        with self._slots:
            start = time.monotonic()
            state = _CallState(deadline=start + settings.timeout_s)
            try:
                response = _run_until(lambda: sdk.chat.completions.create(**kwargs), state,
                                      state.deadline + DEADLINE_MARGIN_S)
            except _DeadlinePassed:
                failed("deadline", f"no answer within {settings.timeout_s:g} s", state, start)
                raise ProviderError(self._deadline_text(settings, state)) from None
            except openai.APIStatusError as err:
                if mode in ("json_schema", "json_object") and _rejects_format(err):
                    failed("unsupported_format", _short(err, 200), state, start)
                    raise
                record = failed(f"http_{err.status_code}", _short(err, 200), state, start)
                raise self._classify(settings, err, state, record) from None
            except openai.APITimeoutError as err:
                failed("timeout", _short(err, 200), state, start)
                raise ProviderError(self._deadline_text(settings, state)) from None
            except openai.APIConnectionError as err:
                failed("connection", _short(err.__cause__ or err, 200), state, start)
                raise ProviderError(
                    f"model {settings.name!r}: cannot reach {settings.base_url} after {state.attempts} "
                    f"attempts ({self._redact(_short(err.__cause__ or err, 200))}); is the server up?"
                ) from None
            except openai.OpenAIError as err:  # e.g. an answer that is not chat.completion JSON
                failed("bad_response", _short(err, 200), state, start)
                raise ProviderError(f"model {settings.name!r} at {settings.base_url} sent an unusable "
                                    f"response: {self._redact(_short(err, 200))}") from None
            latency = time.monotonic() - start
        if not response.choices:
            failed("bad_response", "no choices in the response", state, start)
            raise ProviderError(f"model {settings.name!r} at {settings.base_url} answered with no choices")
        choice = response.choices[0]
        text = choice.message.content or ""
        usage = response.usage
        if usage is not None and usage.prompt_tokens is not None and usage.completion_tokens is not None:
            tokens_in, tokens_out, estimated = usage.prompt_tokens, usage.completion_tokens, False
        else:
            tokens_in, tokens_out, estimated = estimate_prompt_tokens(sent), estimate_tokens(text), True
        record = CallRecord(
            role=role, model=settings.name, served_model=response.model or settings.model,
            messages=tuple(sent), response=text, tokens_in=tokens_in, tokens_out=tokens_out,
            tokens_estimated=estimated, latency_s=latency, cost_usd=cost_usd(settings, tokens_in, tokens_out),
            cache_key=key, structured=mode, error="", replayed=False,
            finish_reason=choice.finish_reason or "", attempts=state.attempts)
        self.ledger.settle(reservation, record)
        self._provider_answered()
        self._emit(record)
        if self._cache is not None:
            self._cache.put(key, CachedResponse(text, tokens_in, tokens_out, record.cost_usd,
                                                record.served_model, record.finish_reason))
        return _Answer(text, mode, record.finish_reason)

    # -- helpers -------------------------------------------------------------------------

    def _provider_answered(self) -> None:
        """Any answer resets the count of provider failures in a row."""
        with self._lock:
            self._failures = 0

    def _emit(self, record: CallRecord) -> None:
        if self._record is not None:
            self._record(record)

    def _sdk_client(self, settings: ModelSettings) -> openai.OpenAI:
        """One SDK client per (base_url, key variable, retries), built on first use."""
        slot = (settings.base_url, settings.api_key_env, settings.max_retries)
        with self._lock:
            client = self._sdk.get(slot)
            if client is None:
                key = settings.api_key()
                if key != "none":
                    self._secrets.add(key)
                http = openai.DefaultHttpx2Client(transport=self._transport,
                                                  event_hooks={"request": [_enforce_deadline]})
                client = openai.OpenAI(base_url=settings.base_url, api_key=key, http_client=http,
                                       max_retries=settings.max_retries, timeout=settings.timeout_s)
                self._sdk[slot] = client
            return client

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _deadline_text(self, settings: ModelSettings, state: _CallState) -> str:
        return (f"deadline: model {settings.name!r} at {settings.base_url} gave no answer within "
                f"timeout_s = {settings.timeout_s:g} s ({state.attempts} attempts); raise timeout_s "
                "for slow models or check the server")

    @staticmethod
    def _replayed_error(settings: ModelSettings, error: str) -> Exception:
        """The exception a recorded failure raised, raised again in replay (so a replayed run
        redraws, or stops as provider-down, where the recorded one did)."""
        kind = error.split(":", 1)[0]
        text = f"replayed failure of model {settings.name!r}: {error}"
        status = int(kind[5:]) if kind.startswith("http_") and kind[5:].isdigit() else None
        if status is not None and status < 500 and status not in (408, 409, 429):
            context = any(word in error.lower() for word in _CONTEXT_WORDS)
            return ContextOverflow(text) if context else LLMConfigError(text)
        return ProviderError(text)

    def _classify(self, settings: ModelSettings, err: openai.APIStatusError, state: _CallState,
                  record: CallRecord) -> Exception:
        status = err.status_code
        detail = self._redact(_short(err.message, 200))
        where = f"model {settings.name!r} ({settings.model!r} at {settings.base_url})"
        if status == 429 or status >= 500 or status in (408, 409):
            return ProviderError(f"{where}: HTTP {status} after {state.attempts} attempts "
                                 f"(SDK max_retries = {settings.max_retries}): {detail}")
        if status in (401, 403):
            return LLMConfigError(f"{where}: the server refused the API key (HTTP {status}); check the "
                                  f"value of environment variable {settings.api_key_env}: {detail}")
        if status == 404:
            return LLMConfigError(f"{where}: not found (HTTP 404); check the model id (the server lists "
                                  f"them at {settings.base_url}/models) and that base_url ends in the API "
                                  f"root (usually /v1): {detail}")
        if any(word in f"{err.message} {err.body}".lower() for word in _CONTEXT_WORDS):
            return ContextOverflow(f"{where}: the prompt plus max_tokens ({settings.max_tokens}) does not fit "
                                   f"the model's context (HTTP {status}: {detail}); shorten the prompt, lower "
                                   "max_tokens, or set context_tokens to the served context")
        return LLMConfigError(f"{where}: the server rejected the request (HTTP {status}): {detail}; "
                              f"check max_tokens ({settings.max_tokens}) and context_tokens "
                              f"({settings.context_tokens}) against the model")
