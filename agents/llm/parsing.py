"""Pure helpers that turn a model's raw answer into parseable text: strip reasoning
(`<think>` blocks), pull the JSON object out of prose or a fenced block, and collect
fenced code blocks. No I/O; every function is total on strings or raises ValueError."""
from __future__ import annotations

import json
import re

_THINK_OPEN = re.compile(r"<(think|thinking)>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</(think|thinking)>", re.IGNORECASE)
_THINK_BLOCK = re.compile(r"<(think|thinking)>.*?</\1>", re.IGNORECASE | re.DOTALL)
_FENCE = re.compile(
    r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL
)
_MAX_JSON_STARTS = 256  # '{' positions tried before giving up (bounds the scan on long prose)


def strip_reasoning(text: str) -> str:
    """The answer without reasoning: drops `<think>…</think>` blocks (also `<thinking>`),
    a reasoning prefix closed by `</think>` whose opening tag the chat template put in the
    prompt, and an unterminated `<think>` at the start (an answer cut off while
    reasoning leaves nothing). Surrounding whitespace is trimmed."""
    close = _THINK_CLOSE.search(text)
    opening = _THINK_OPEN.search(text)
    if close and (opening is None or close.start() < opening.start()):
        text = text[close.end():]
    text = _THINK_BLOCK.sub("", text)
    stripped = text.strip()
    if _THINK_OPEN.match(stripped):
        return ""
    return stripped


def extract_code_blocks(text: str, lang: str | None = None) -> list[str]:
    """Contents of the complete ``` fenced blocks, in order; with `lang`, only blocks
    tagged with that language (case-insensitive). An unterminated fence (an answer cut
    at max_tokens) yields nothing."""
    blocks = []
    for match in _FENCE.finditer(text):
        tag, body = match.group(1), match.group(2)
        if lang is None or tag.lower() == lang.lower():
            blocks.append(body.rstrip("\n"))
    return blocks


def extract_json(text: str) -> str:
    """The JSON text in an answer: the first fenced block (```json or untagged) that parses,
    else the outermost `{...}` object in the prose that parses. Raises ValueError with a
    short reason when there is none."""
    text = strip_reasoning(text)
    for block in extract_code_blocks(text):
        candidate = block.strip()
        try:
            json.loads(candidate)
        except ValueError:
            continue
        return candidate
    decoder = json.JSONDecoder()
    start = text.find("{")
    tried = 0
    while start != -1 and tried < _MAX_JSON_STARTS:
        try:
            _, end = decoder.raw_decode(text, start)
        except ValueError:
            tried += 1
            start = text.find("{", start + 1)
            continue
        return text[start:end]
    if "{" in text:
        raise ValueError("the answer holds no complete, valid JSON object (cut off or malformed?)")
    raise ValueError("the answer holds no JSON object")
