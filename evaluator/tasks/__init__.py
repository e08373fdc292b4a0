"""The task registry: every task the evaluator knows, by name."""
from __future__ import annotations

from evaluator.errors import EvalError
from evaluator.tasks.attention import ATTENTION, ATTENTION_CAUSAL
from evaluator.tasks.base import Task
from evaluator.tasks.gemm import HGEMM, QGEMM, QGEMM_INT8, SGEMM

TASKS: dict[str, Task] = {t.name: t for t in (SGEMM, HGEMM, QGEMM, QGEMM_INT8, ATTENTION, ATTENTION_CAUSAL)}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise EvalError(f"unknown task {name!r}; tasks: {', '.join(TASKS)} (see `cubepilot tasks`)") from None
