"""Per-model settings (endpoint, sampling, timeouts, structured-output mode, prices) and
run budgets. The API key is never stored here: `ModelSettings.api_key()` reads the
environment variable the config names, at call time."""
from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agents.llm.errors import LLMConfigError

StructuredMode = Literal["auto", "json_schema", "json_object", "fenced"]

NO_KEY = "none"  # placeholder sent to local servers that take no key


class ModelSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="the config's alias for this model")
    model: str = Field(min_length=1, description="the served model id")
    base_url: str
    api_key_env: str | None = "OPENAI_API_KEY"
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(4096, gt=0)
    timeout_s: float = Field(120.0, gt=0.0, description="one deadline per request, SDK retries included")
    max_retries: int = Field(2, ge=0, description="the SDK's transport retries")
    context_tokens: int = Field(32768, gt=0)
    structured: StructuredMode = "auto"
    price_in: float | None = Field(None, ge=0.0, description="USD per million prompt tokens")
    price_out: float | None = Field(None, ge=0.0, description="USD per million completion tokens")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or len(value) <= len("https://"):
            raise ValueError(
                f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {value!r}"
            )
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c.isspace() or c == "=" for c in value)):
            raise ValueError(
                f"api_key_env names an environment variable (e.g. OPENAI_API_KEY), got {value!r}; "
                "put the key itself in that variable, never in the config"
            )
        return value

    @property
    def priced(self) -> bool:
        return self.price_in is not None and self.price_out is not None

    def api_key(self) -> str:
        """The key from the environment now; `NO_KEY` when the model takes none."""
        if self.api_key_env is None:
            return NO_KEY
        key = os.environ.get(self.api_key_env)
        if not key:
            raise LLMConfigError(
                f"model {self.name!r}: environment variable {self.api_key_env} is not set; "
                f"export {self.api_key_env}=... or set api_key_env = none for a local server"
            )
        return key


class Budgets(BaseModel):
    """Run budgets; None is unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens: int | None = Field(None, gt=0)
    dollars: float | None = Field(None, gt=0.0)
    wall_s: float | None = Field(None, gt=0.0)
