"""The task registry: every task the evaluator knows, by name."""
from __future__ import annotations

from evaluator.errors import EvalError
from evaluator.tasks.attention import ATTENTION, ATTENTION_CAUSAL
from evaluator.tasks.base import Task
from evaluator.tasks.gemm import HGEMM, QGEMM, SGEMM

TASKS: dict[str, Task] = {t.name: t for t in (SGEMM, HGEMM, QGEMM, ATTENTION, ATTENTION_CAUSAL)}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise EvalError(f"unknown task {name!r}; tasks: {', '.join(TASKS)} (see `cubepilot tasks`)") from None
