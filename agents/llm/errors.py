"""The LLM layer's one exception root and its kinds: configuration, provider failures,
a provider that stays down, unusable model output, spent budgets and replay misses.
Messages say what went wrong and what to do; they never contain an API key."""
from __future__ import annotations


class LLMError(Exception):
    """Root of every error the LLM layer raises."""


class LLMConfigError(LLMError):
    """The configuration is wrong: missing key variable, bad key, unknown model or URL,
    a request the server rejects as invalid. Retrying will not help; fix the config."""


class ContextOverflow(LLMConfigError):
    """The server refused the request as longer than the model's context (prompt plus
    max_tokens): shorten the prompt or lower max_tokens / context_tokens."""


class ProviderError(LLMError):
    """One call failed at the provider after the SDK's own transport retries
    (connection, timeout, 429, 5xx) or ran past its deadline."""


class ProviderDown(LLMError):
    """`max_consecutive_failures` asks in a row failed at the provider: stop the run."""

    def __init__(self, failures: int, last: ProviderError) -> None:
        self.failures = failures
        self.last = last
        super().__init__(
            f"the model provider failed {failures} asks in a row; last error: {last}. "
            "Check that the server is up and reachable, then resume the run."
        )


class MalformedOutput(LLMError):
    """The model's answer could not be parsed, even after the bounded re-asks."""

    def __init__(self, role: str, model: str, requests: int, error: str, snippet: str) -> None:
        self.role = role
        self.model = model
        self.requests = requests
        self.error = error
        self.snippet = snippet
        super().__init__(
            f"{role} on model {model!r}: no usable answer after {requests} requests; "
            f"last parse error: {error}; last answer starts: {snippet!r}"
        )


class BudgetExhausted(LLMError):
    """A budget (tokens, dollars, wall time) would be passed by the next request."""

    def __init__(self, budget: str, spent: float, limit: float, needed: float = 0.0) -> None:
        self.budget = budget
        self.spent = spent
        self.limit = limit
        self.needed = needed
        tail = f" (the next request reserves {needed:g} more)" if needed else ""
        super().__init__(
            f"{budget} budget exhausted: spent {spent:g} of {limit:g}{tail}; "
            f"raise the {budget} budget in the config to go on"
        )


class ReplayMiss(LLMError):
    """Replaying a recorded run, and this prompt was not recorded (or asked more often
    than it was recorded)."""

    def __init__(self, role: str, model: str, cache_key: str) -> None:
        self.role = role
        self.model = model
        self.cache_key = cache_key
        super().__init__(
            f"replay: {role} on model {model!r} asked a prompt the recording does not hold "
            f"(key {cache_key[:12]}); the run diverged from the recorded one "
            "(different code, config or seed?)"
        )
