"""The Strategy record: what evolves, as the intermediate representation between agents.

A strategy is a plan in plain words, technique tags, numeric knobs and its lineage. The
builtin coder turns (family, knobs) into kernel source; an LLM coder reads the plan.
"""
from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Origin = Literal["library", "mutation", "crossover", "random", "repair", "llm"]
KnobValue = int | float | bool | str


class Strategy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str = Field(description="the technique family (a library kernel whose knobs this sets)")
    task: str
    plan: str = Field(description="a short natural-language plan")
    tags: dict[str, str] = Field(default_factory=dict, description="technique tags: split, buffering, tiling, ...")
    knobs: dict[str, KnobValue] = Field(default_factory=dict)
    parents: tuple[str, ...] = ()
    origin: Origin = "library"

    @property
    def id(self) -> str:
        """Content id: the same family, task and knobs is the same strategy."""
        body = json.dumps({"family": self.family, "task": self.task, "knobs": self.knobs}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:12]

    def describe(self) -> str:
        knobs = ", ".join(f"{k}={v}" for k, v in sorted(self.knobs.items()))
        return f"{self.family} [{knobs}]"
