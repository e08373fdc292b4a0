"""The outcome of evaluating one candidate: a frozen record, failures included.

Failures are data: a status, a message an LLM (or a person) can act on, and time = inf.
"""
from __future__ import annotations

import math
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field


class EvalStatus(str, Enum):
    ok = "ok"
    policy_violation = "policy_violation"
    compile_error = "compile_error"
    runtime_error = "runtime_error"
    hw_violation = "hw_violation"
    wrong = "wrong"
    timeout = "timeout"
    oom = "oom"
    invalid_trace = "invalid_trace"      # the sandbox's reply or trace is malformed or claims the impossible
    implausible = "implausible"          # faster than the roofline allows: a cheat or a simulator bug
    evaluator_error = "evaluator_error"  # the trusted side failed; the traceback is kept for developers


class EvalResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")  # failed time is inf

    status: EvalStatus
    message: str = Field(description="what failed, where, with numbers; empty when ok")
    line: int = Field(0, description="kernel source line the failure points at (0: none)")
    rule: str = Field("", description="the broken rule, as a short stable name (e.g. 'capacity', "
                      "'policy.import', 'correctness.budget'); empty when ok")
    traceback: str = Field("", description="trusted-side traceback of an evaluator_error; for developers, "
                           "never shown to a model")
    stage: str = Field(description="last cascade stage reached: policy, sandbox, correctness, benchmark")
    task: str
    machine: str
    shape: str
    source_hash: str
    errors: dict[str, float] = Field(default_factory=dict, description="worst relative error per distribution")
    budgets: dict[str, float] = Field(default_factory=dict, description="error budget per distribution")
    bench_error: float | None = None
    trials: int = 0
    time_ns: float = math.inf
    tflops: float = 0.0
    pct_of_peak: float = 0.0
    pct_of_roofline: float = 0.0
    bottleneck: str = ""
    pipe_busy: dict[str, float] = Field(default_factory=dict)
    l2_hit_rate: float = 0.0
    hbm_bytes: int = Field(0, description="bytes the timed run moved between L2 and HBM (fills and write-backs)")
    roofline: str = ""
    ops: int = 0
    seed: int = 0
    eval_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is EvalStatus.ok

    def feedback(self, max_chars: int = 1200) -> str:
        """A few lines for an agent, built from the structured fields: the failure (status, rule,
        line, the evaluator's message — kernel-written text in it is quoted and capped where it
        is produced) or the roofline picture. At most `max_chars` characters."""
        if not self.ok:
            rule = f" [{self.rule}]" if self.rule else ""
            where = f" (kernel line {self.line})" if self.line else ""
            text = f"{self.status.value}{rule}{where}: {self.message}"
        else:
            errs = ", ".join(f"{d} {e:.2e} (budget {self.budgets.get(d, 0):.1e})" for d, e in self.errors.items())
            text = f"ok at {self.shape}: {self.roofline}\nErrors: {errs}."
        return text if len(text) <= max_chars else text[:max_chars - 1] + "…"
