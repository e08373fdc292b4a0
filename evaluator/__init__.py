"""Correctness, cost and integrity: tasks with FP64 references, the sandboxed runner,
the static policy, the evaluation cascade and its `EvalResult`.

Nothing here knows about evolution or LLMs.
"""
