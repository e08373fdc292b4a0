"""A scripted model for end-to-end tests: answers the strategist, coder and fixer prompts
the way a (not very inventive) model would, by reading them. The strategist mutates one knob
of the fastest elite; the coder sets the strategy's knobs in the parent kernel and answers
with full source or a SEARCH/REPLACE edit, whichever the prompt asks for; the fixer gives up
politely (answers the kernel unchanged). `hostile=True` makes the coder write an escape."""
from __future__ import annotations

import itertools
import json
import random
import re
import threading

from strategies.families import FAMILIES
from strategies.render import render
from tests.fakellm import Reply

HOSTILE = '''import math
from hwmodel.dsl import Kernel
import os
os.system("touch /tmp/cubepilot-pwned")
ATTEMPT = {n}

def kernel(k, a, b, c):
    pass
'''


class Author:
    def __init__(self, hostile: bool = False, think: bool = False):
        self.hostile, self.think = hostile, think
        self.counter = itertools.count()
        self.lock = threading.Lock()
        self.roles: list[str] = []

    def __call__(self, body: dict) -> Reply:
        system = body["messages"][0]["content"]
        prompt = "\n".join(m["content"] for m in body["messages"])
        role = "strategist" if "strategist" in system else "fixer" if "fixer" in system else "coder"
        with self.lock:
            self.roles.append(role)
            n = next(self.counter)
        text = getattr(self, role)(prompt, n)
        return Reply(f"<think>step {n}: let me see</think>\n{text}" if self.think else text)

    def strategist(self, prompt: str, n: int) -> str:
        """One or two knobs of one of the two fastest elites, set to values drawn from step n."""
        rng = random.Random(n)
        elites = re.findall(r"^- ([0-9a-f]{12}): (\w+) \[", prompt, re.M)[:2]
        parent, name = elites[rng.randrange(len(elites))] if n else elites[0]
        family = FAMILIES[name]
        movable = sorted(k for k, values in family.space.items() if len(values) > 1)
        knobs = {k: rng.choice(family.space[k]) for k in rng.sample(movable, 1 + (n % 2))}
        what = ", ".join(f"{k} to {v}" for k, v in knobs.items())
        return json.dumps({"parents": [parent], "family": family.name, "knobs": knobs,
                           "techniques": [f"retune {k}" for k in knobs], "plan": f"Set {what} to move the bottleneck.",
                           "expected": {"bottleneck": "MTE2", "speedup": 1.1, "rationale": "fewer stalls"}})

    def coder(self, prompt: str, n: int) -> str:
        if self.hostile:
            return f"Escape.\n```python\n{HOSTILE.format(n=n)}```"
        parent = re.search(r"```python\n(.*?)```", prompt, re.S).group(1)
        knobs = dict(re.findall(r"(\w+)=([\w.]+)", re.search(r"knobs: (.*)", prompt).group(1)))
        child = render(parent, {k: _literal(v) for k, v in knobs.items() if re.search(rf"^{k}\b|, {k}\b", parent, re.M)})
        if child == parent:          # a plan without knobs (code-only, best-of-n): retune something itself
            family = next(f for f in FAMILIES.values() if f.source.splitlines()[0] == parent.splitlines()[0])
            rng = random.Random(n)
            name = rng.choice(sorted(k for k, v in family.space.items() if len(v) > 1))
            child = render(parent, {name: rng.choice(family.space[name])})
        if "SEARCH/REPLACE" not in prompt:
            return f"Set the knobs.\n```python\n{child}```"
        old = [line for line in parent.splitlines() if line not in child.splitlines()]
        new = [line for line in child.splitlines() if line not in parent.splitlines()]
        if not old:
            return "No change needed.\n<<<<<<< SEARCH\n" + parent.splitlines()[0] + "\n=======\n" + \
                parent.splitlines()[0] + "\n>>>>>>> REPLACE"
        return "Set the knobs.\n<<<<<<< SEARCH\n" + "\n".join(old) + "\n=======\n" + "\n".join(new) + "\n>>>>>>> REPLACE"

    def fixer(self, prompt: str, n: int) -> str:
        failed = re.search(r"```python\n(.*?)```", prompt, re.S).group(1)
        return f"Unchanged.\n```python\n{failed}```"


def _literal(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)
