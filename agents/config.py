"""`cubepilot.toml`: the run and its agents, nested and validated; CLI flags override it.

[run] says what to evolve; [agents] which backend plays the roles and how; [models.NAME]
each model endpoint (the API key only by the name of the environment variable that holds
it); [roles] which models play each role, with weights; [budget] the run's spend limits.
`cubepilot init` writes a commented file (`TEMPLATE`).
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agents.llm.settings import Budgets, ModelSettings

DEFAULT_CONFIG = Path("cubepilot.toml")
ROLES = ("strategist", "coder", "fixer")


class ConfigError(ValueError):
    """A configuration a user must fix: the message says where and what to write instead."""


class Arm(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str = Field(min_length=1, description="a [models.NAME] alias")
    weight: float = Field(1.0, gt=0)


class RunSection(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    task: str = "sgemm"
    machine: str = "ascend-910a"
    shape: str | None = None
    budget: int = Field(24, ge=1, description="evaluations, fixes included")
    seed: int = 0
    workers: int = Field(1, ge=1)
    fix_attempts: int = Field(1, ge=0, le=5)
    archive: str = ".cubepilot/archive.sqlite"


class AgentsSection(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    backend: Literal["builtin", "openai"] = "builtin"
    mode: Literal["strategy", "mutation-only", "random"] = "strategy"      # builtin ablations
    edit_modes: tuple[Literal["full", "diff"], ...] = ("full", "diff")
    strategy: bool = Field(True, description="false: code-only evolution, the coder mutates kernels directly")
    roofline: bool = Field(True, description="false: prompts leave out the bottleneck card")
    best_of_n: bool = Field(False, description="independent samples from the seed kernels, no evolution")
    max_in_flight: int = Field(4, ge=1)
    max_consecutive_failures: int = Field(5, ge=1)
    reasks: int = Field(2, ge=0, le=5)
    allow_unpriced: bool = False
    explore: float = Field(0.2, ge=0, le=1, description="share of picks the bandit draws by weight alone")


class Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    run: RunSection = RunSection()
    agents: AgentsSection = AgentsSection()
    budget: Budgets = Budgets()
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    roles: dict[Literal["strategist", "coder", "fixer"], tuple[Arm, ...]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _name_models(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("models"), dict):
            data = {**data, "models": {name: _model_table(name, body) for name, body in data["models"].items()}}
        return data

    def arms(self, role: str) -> tuple[Arm, ...]:
        if not self.models:
            return ()
        return self.roles.get(role) or (Arm(model=next(iter(self.models))),)

    def check_llm(self) -> None:
        """The checks an LLM run needs before it starts (a builtin run needs none of this)."""
        if self.agents.backend != "openai":
            return
        if not self.models:
            raise ConfigError("the openai backend needs a model: pass --model NAME --base-url URL, or add a "
                              "[models.default] table to cubepilot.toml (`cubepilot init` writes an example)")
        for role in ROLES:
            for arm in self.arms(role):
                if arm.model not in self.models:
                    raise ConfigError(f"[roles] {role} uses model {arm.model!r}, which has no [models.{arm.model}] "
                                      f"table; known: {', '.join(self.models)}")
        unpriced = [m.name for m in self.models.values() if not m.priced]
        if unpriced and not self.agents.allow_unpriced:
            raise ConfigError(f"model(s) {', '.join(unpriced)} have no price_in/price_out (USD per million tokens), "
                              "so the run's cost cannot be tracked; set them (--price-in/--price-out, or in the "
                              "model's table), or pass --allow-unpriced "
                              "(allow_unpriced = true) for a local server that costs nothing")

    def public(self) -> dict:
        """What a run stores: everything but secrets (there are none here: keys stay in the environment)."""
        return self.model_dump(mode="json", exclude={"run"})


def _model_table(name: str, body: Any) -> Any:
    """TOML has no null: api_key_env = "none" (or "") means the server takes no key."""
    if not isinstance(body, dict):
        return body
    body = {"name": name, **body}
    if isinstance(body.get("api_key_env"), str) and body["api_key_env"].lower() in ("", "none"):
        body["api_key_env"] = None
    return body


def load(path: Path | None) -> Config:
    """The config at `path`; without one, ./cubepilot.toml if it exists, else the defaults."""
    if path is None:
        if not DEFAULT_CONFIG.is_file():
            return Config()
        path = DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (`cubepilot init` writes one)")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return validate(data, str(path))


def validate(data: dict, where: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{where} has {len(lines)} problem(s):\n" + "\n".join(lines)) from None


def override(config: Config, **flags: Any) -> Config:
    """CLI flags on top of the file. `model`/`base_url`/`api_key_env`/`price_in`/`price_out`
    set the [models.default] entry (created when missing) that every role then uses unless
    [roles] names others."""
    data = config.model_dump(mode="python")
    for section, keys in (("run", RunSection.model_fields), ("agents", AgentsSection.model_fields)):
        for key in keys:
            if flags.get(key) is not None:
                data[section][key] = flags[key]
    for key in ("tokens", "dollars", "wall_s"):
        if flags.get(f"budget_{key}") is not None:
            data["budget"][key] = flags[f"budget_{key}"]
    model_flags = {k: flags[k] for k in ("model", "base_url", "api_key_env", "price_in", "price_out",
                                         "temperature", "max_tokens", "context_tokens") if flags.get(k) is not None}
    if flags.get("no_api_key"):
        model_flags["api_key_env"] = None
    if model_flags:
        name = next(iter(data["models"]), "default")
        current = data["models"].get(name, {"name": name, "model": model_flags.get("model", ""),
                                            "base_url": "https://api.openai.com/v1"})
        if model_flags.get("model", current["model"]) != current["model"]:     # another model: not its prices
            current = {k: v for k, v in current.items() if k not in ("price_in", "price_out")}
        data["models"][name] = {**current, **model_flags}
    return validate(data, "the command line")


TEMPLATE = '''\
# cubepilot.toml: what `cubepilot run` evolves and who plays the roles.
# Flags on the command line override these values (cubepilot run --help).

[run]
task = "sgemm"                 # cubepilot tasks
machine = "ascend-910a"        # cubepilot machines
# shape = "4096x4096x4096"     # default: the task's benchmark shape
budget = 24                    # evaluations, fixes included
seed = 0
workers = 1                    # evaluations side by side
fix_attempts = 1               # fixes tried per failed step
archive = ".cubepilot/archive.sqlite"

[agents]
backend = "builtin"            # "builtin" (offline, no model) or "openai" (any OpenAI-compatible server)
edit_modes = ["full", "diff"]  # how the coder writes: whole kernels, SEARCH/REPLACE edits, or both (a bandit picks)
strategy = true                # false: code-only evolution (no strategist), for comparisons
roofline = true                # false: prompts without the bottleneck card, for comparisons
best_of_n = false              # true: independent samples from the seed kernels, no evolution
max_in_flight = 4              # model requests at once
max_consecutive_failures = 5   # provider failures in a row before the run stops (resume later)
allow_unpriced = false         # true: allow models without prices (local servers)

[budget]                       # the run stops cleanly when one is spent; omit for no limit
# tokens = 2000000
# dollars = 5.0
# wall_s = 3600

# One table per model. The API key is read from the environment variable named by
# api_key_env and is never written anywhere (api_key_env = "none": the server takes no key).
[models.default]
model = "gpt-4.1-mini"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
temperature = 0.7
max_tokens = 4096
timeout_s = 120                # one deadline per request, the SDK's retries included
context_tokens = 128000
price_in = 0.40                # USD per million prompt tokens
price_out = 1.60               # USD per million completion tokens

# A local server (vLLM, Ollama, llama.cpp): no key, no price.
# [models.local]
# model = "qwen2.5-coder-7b-instruct"
# base_url = "http://127.0.0.1:8000/v1"
# api_key_env = "none"
# context_tokens = 8192
# max_tokens = 2048
# price_in = 0.0
# price_out = 0.0

# Which models play each role; several with weights make an ensemble (a bandit learns
# which gives the most improvement per dollar). Default: the first model for every role.
# [roles]
# strategist = [{ model = "default" }]
# coder = [{ model = "default", weight = 2 }, { model = "local", weight = 1 }]
# fixer = [{ model = "local" }]
'''
