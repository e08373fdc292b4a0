"""`CallRecord`: one HTTP request to a model (or one replayed answer), exactly as sent and
received, with tokens, latency and cost. The archive stores these; replay rebuilds a
cache from them. A record never holds the API key."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class CallRecord:
    role: str
    model: str  # the config's alias (settings.name)
    served_model: str  # the id the server reported (or asked for, when it reported none)
    messages: tuple[dict, ...]  # the exact prompt sent
    response: str  # raw text as received, think blocks included; "" on failure
    tokens_in: int
    tokens_out: int
    tokens_estimated: bool  # the server sent no usage: tokens estimated by chars/4
    latency_s: float
    cost_usd: float
    cache_key: str
    structured: str  # mode used: "text", "json_schema", "json_object" or "fenced"
    error: str  # "" when ok, else "<kind>: <short text>"
    replayed: bool
    finish_reason: str = ""  # "stop", "length" (cut at max_tokens), ... ; "" on failure
    attempts: int = 1  # HTTP attempts inside this call (the SDK's transport retries + 1)

    @property
    def ok(self) -> bool:
        return not self.error

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CallRecord:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"CallRecord JSON has unknown fields {sorted(unknown)}")
        data["messages"] = tuple(data["messages"])
        return cls(**data)
