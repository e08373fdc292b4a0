"""Response cache and replay source, keyed by what determines an answer: served model,
endpoint, sampling settings, structured-output mode, the messages sent and the schema
(never the API key). Identical prompts get their recorded answers in order."""
from __future__ import annotations

import hashlib
import json
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from agents.llm.records import CallRecord
from agents.llm.settings import ModelSettings


@dataclass(frozen=True)
class CachedResponse:
    text: str
    tokens_in: int
    tokens_out: int
    cost_usd: float
    served_model: str = ""
    finish_reason: str = ""
    error: str = ""  # a recorded failure ("<kind>: <text>"), replayed as that failure


@runtime_checkable
class ResponseCache(Protocol):
    def get(self, key: str) -> CachedResponse | None:
        """The next unread answer stored for `key`, or None."""

    def put(self, key: str, entry: CachedResponse) -> None:
        """Store a new answer for `key` (it counts as read)."""


def cache_key(settings: ModelSettings, messages: Sequence[dict], schema: dict | None, mode: str) -> str:
    """sha256 over (served model, base_url, temperature, max_tokens, mode, messages, schema)."""
    payload = {
        "model": settings.model,
        "base_url": settings.base_url,
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
        "mode": mode,
        "messages": list(messages),
        "schema": schema,
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class MemoryCache:
    """In-memory ResponseCache built from recorded calls: the n-th identical prompt gets
    the n-th recorded outcome. Failed calls are kept, so a replay fails where the recorded
    run failed (a live cache skips them)."""

    def __init__(self, entries: Iterable[CallRecord] = ()) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, list[CachedResponse]] = defaultdict(list)
        self._read: dict[str, int] = defaultdict(int)
        for record in entries:
            self._entries[record.cache_key].append(CachedResponse(
                record.response, record.tokens_in, record.tokens_out, record.cost_usd,
                record.served_model, record.finish_reason, record.error))

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._entries.values())

    def get(self, key: str) -> CachedResponse | None:
        with self._lock:
            stored = self._entries.get(key, [])
            index = self._read[key]
            if index >= len(stored):
                return None
            self._read[key] = index + 1
            return stored[index]

    def put(self, key: str, entry: CachedResponse) -> None:
        with self._lock:
            self._entries[key].append(entry)
            self._read[key] = len(self._entries[key])
