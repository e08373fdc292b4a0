"""The LLM client layer: settings and budgets, one client for any OpenAI-compatible
endpoint (structured output, re-asks on malformed answers, deadlines), accounting,
call records, a response cache and offline replay."""
from agents.llm.cache import CachedResponse, MemoryCache, ResponseCache, cache_key
from agents.llm.client import LLMClient
from agents.llm.errors import (BudgetExhausted, ContextOverflow, LLMConfigError, LLMError, MalformedOutput,
                               ProviderDown, ProviderError, ReplayMiss)
from agents.llm.ledger import Ledger, Reservation, cost_usd, estimate_prompt_tokens, estimate_tokens
from agents.llm.parsing import extract_code_blocks, extract_json, strip_reasoning
from agents.llm.records import CallRecord
from agents.llm.settings import Budgets, ModelSettings

__all__ = [
    "BudgetExhausted", "Budgets", "CachedResponse", "CallRecord", "ContextOverflow", "LLMClient", "LLMConfigError",
    "LLMError", "Ledger", "MalformedOutput", "MemoryCache", "ModelSettings", "ProviderDown",
    "ProviderError", "ReplayMiss", "Reservation", "ResponseCache", "cache_key", "cost_usd",
    "estimate_prompt_tokens", "estimate_tokens", "extract_code_blocks", "extract_json",
    "strip_reasoning",
]
