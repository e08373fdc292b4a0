"""The Strategy record: what evolves, as the intermediate representation between agents.

A strategy is a plan in plain words, technique names and tags, numeric knobs, its lineage
and, when an agent wrote it, the effect it expects (which bottleneck it attacks and the
speed-up it predicts over its first parent). The builtin coder turns (family, knobs) into
kernel source; an LLM coder reads the plan. A strategy may have several kernels.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Origin = Literal["library", "mutation", "crossover", "random", "repair", "llm"]
KnobValue = int | float | bool | str
CUSTOM = "custom"          # the family of a strategy written from scratch, not from a library kernel


class ExpectedEffect(BaseModel):
    """What a strategy predicts; stored with the measurement after its evaluation."""
    model_config = ConfigDict(frozen=True, extra="forbid")

    bottleneck: str = Field(min_length=1, max_length=40,
                            description="what it attacks: a pipe of the bottleneck card (cube, vector, MTE2, ...), "
                                        "'hbm', 'l2', 'latency' or 'accuracy'")
    speedup: float = Field(gt=0, le=100, description="predicted time of the first parent / time of this strategy")
    rationale: str = Field("", max_length=600, description="why, in a sentence or two")


class Strategy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str = Field(description="the library family it starts from (whose knobs it may set), or 'custom'")
    task: str
    plan: str = Field(description="a short natural-language plan")
    tags: dict[str, str] = Field(default_factory=dict, description="technique tags: split, buffering, tiling, ...")
    knobs: dict[str, KnobValue] = Field(default_factory=dict)
    parents: tuple[str, ...] = ()
    origin: Origin = "library"
    techniques: tuple[str, ...] = Field((), description="named techniques, e.g. 'double buffering', 'swizzle'")
    expected: ExpectedEffect | None = None
    author: str = Field("builtin", description="'builtin', or the role and model that wrote it ('strategist:gpt')")

    @field_validator("techniques")
    @classmethod
    def _techniques(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(t.strip() for t in value if t.strip())

    @property
    def id(self) -> str:
        """Content id. A builtin strategy is its family, task and knobs; one an agent wrote also
        covers its plan and techniques (two plans with the same knobs are two strategies)."""
        body = {"family": self.family, "task": self.task, "knobs": self.knobs}
        if self.author != "builtin":
            body.update(plan=self.plan, techniques=list(self.techniques))
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def signature(self) -> str:
        """Canonical form for novelty: family, normalised techniques, knobs and first parent.
        A second plan saying the same thing in other words is a repeat."""
        words = sorted({re.sub(r"[^a-z0-9]+", " ", t.lower()).strip() for t in self.techniques})
        body = {"family": self.family, "task": self.task, "knobs": self.knobs, "techniques": words,
                "parent": self.parents[0] if self.parents else ""}
        if self.author == "builtin":
            body.pop("parent")
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        knobs = ", ".join(f"{k}={v}" for k, v in sorted(self.knobs.items()))
        if self.author == "builtin":
            return f"{self.family} [{knobs}]"
        techniques = "; ".join(self.techniques)
        return f"{self.family} [{knobs}] {techniques}".rstrip()
