"""SEARCH/REPLACE edit blocks: parsing them out of a model's answer and applying them to a
kernel's source.

A block is `<<<<<<< SEARCH`, the lines to find, `=======`, the lines to put there,
`>>>>>>> REPLACE`. Matching is exact first, then tolerant of what models get wrong without
meaning anything by it: trailing spaces, a different indentation, blank lines. A block that
matches nowhere raises `EditError` with the block and the closest region of the source
(difflib), which is what the one repair turn shows the model. Nothing here runs code.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

_BLOCK = re.compile(
    r"^[ \t]*<{5,9}[ \t]*SEARCH[^\n]*\n(.*?)^[ \t]*={5,9}[ \t]*\n(.*?)^[ \t]*>{5,9}[ \t]*REPLACE[^\n]*$",
    re.MULTILINE | re.DOTALL)
_MARKER = re.compile(r"^[ \t]*(<{5,9}[ \t]*SEARCH|={5,9}[ \t]*$|>{5,9}[ \t]*REPLACE)", re.MULTILINE)


@dataclass(frozen=True)
class Edit:
    search: str
    replace: str

    def render(self) -> str:
        return f"<<<<<<< SEARCH\n{self.search}\n=======\n{self.replace}\n>>>>>>> REPLACE"


class EditError(ValueError):
    """An edit block found no place in the source. Carries the block, its position among the
    edits, and the closest region of the source (with its first line number)."""

    def __init__(self, edit: Edit, index: int, closest: str, closest_line: int, reason: str = "") -> None:
        self.edit = edit
        self.index = index
        self.closest = closest
        self.closest_line = closest_line
        why = reason or "its SEARCH lines do not occur in the source"
        super().__init__(f"edit block {index + 1}: {why}")

    def explain(self) -> str:
        """What the repair turn tells the model."""
        near = (f"The closest region of the source (from line {self.closest_line}) is:\n```\n{self.closest}\n```"
                if self.closest else "Nothing in the source resembles it.")
        return f"{self}.\nThe failing block:\n{self.edit.render()}\n{near}"


def parse_edits(text: str) -> list[Edit]:
    """The edit blocks of an answer, in order (fences around them are fine). A block with a
    SEARCH marker but no complete structure (an answer cut off at max_tokens) is a ValueError."""
    edits = [Edit(_strip_newline(m.group(1)), _strip_newline(m.group(2))) for m in _BLOCK.finditer(text)]
    markers = len(_MARKER.findall(text))
    if markers != 3 * len(edits):
        raise ValueError(f"found {len(edits)} complete SEARCH/REPLACE block(s) but {markers} marker lines; every "
                         "block needs '<<<<<<< SEARCH', '=======' and '>>>>>>> REPLACE' on lines of their own "
                         "(was the answer cut off?)")
    return edits


def _strip_newline(body: str) -> str:
    return body[:-1] if body.endswith("\n") else body


def apply_edits(source: str, edits: list[Edit]) -> str:
    """Apply the edits in order, each to the result of the ones before."""
    for index, edit in enumerate(edits):
        source = apply_edit(source, edit, index)
    return source


def apply_edit(source: str, edit: Edit, index: int = 0) -> str:
    """One edit; blank lines around the SEARCH and REPLACE parts do not count."""
    edit = Edit(edit.search.strip("\n"), edit.replace.strip("\n")) if edit.search.strip() else edit
    if not edit.search.strip():
        if not source.strip():
            return edit.replace + "\n"
        raise EditError(edit, index, "", 0, "its SEARCH part is empty; copy the lines to replace from the source")
    at = _line_aligned(source, edit.search)
    if at is not None:
        return source[:at] + edit.replace + source[at + len(edit.search):]
    lines = source.splitlines()
    found = _tolerant_match(lines, edit.search.splitlines())
    if found is None:
        if source.count(edit.search) == 1:          # part of a line, unambiguous
            at = source.index(edit.search)
            return source[:at] + edit.replace + source[at + len(edit.search):]
        closest, line = closest_region(source, edit.search)
        raise EditError(edit, index, closest, line)
    start, end, indent_delta = found
    replacement = _reindent(edit.replace.splitlines(), indent_delta)
    tail = "\n" if source.endswith("\n") else ""
    return "\n".join(lines[:start] + replacement + lines[end:]) + tail


# ------------------------------------------------------------------ tolerant matching
def _line_aligned(source: str, search: str) -> int | None:
    """Offset of the first exact occurrence of `search` that starts and ends on line boundaries."""
    at = source.find(search)
    while at != -1:
        end = at + len(search)
        if (at == 0 or source[at - 1] == "\n") and (end == len(source) or source[end] == "\n"):
            return at
        at = source.find(search, at + 1)
    return None


def _tolerant_match(lines: list[str], search: list[str]) -> tuple[int, int, tuple[str, str]] | None:
    """(start, end, (indent to drop, indent to add)) of the first region of `lines` equal to
    `search` up to trailing spaces, a uniform indentation shift and blank lines."""
    want = [s for s in search if s.strip()]
    if not want:
        return None
    have = [(i, line) for i, line in enumerate(lines) if line.strip()]
    for shift_relative in (False, True):
        for pos in range(len(have) - len(want) + 1):
            window = have[pos:pos + len(want)]
            delta = _same_up_to_indent(want, [line for _, line in window], shift_relative)
            if delta is not None:
                return window[0][0], window[-1][0] + 1, delta
    return None


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip())]


def _same_up_to_indent(want: list[str], got: list[str], loose: bool) -> tuple[str, str] | None:
    """The indentation shift that turns `want` into `got`; first pass: one uniform shift
    (whitespace normalised, tabs as four spaces), second pass: any indentation (stripped)."""
    if loose:
        if all(w.strip() == g.strip() for w, g in zip(want, got)):
            return _indent(want[0].expandtabs(4)), _indent(got[0].expandtabs(4))
        return None
    w0, g0 = _indent(want[0].expandtabs(4)), _indent(got[0].expandtabs(4))
    for w, g in zip(want, got):
        w, g = w.rstrip().expandtabs(4), g.rstrip().expandtabs(4)
        if not w.startswith(w0) or not g.startswith(g0) or w[len(w0):] != g[len(g0):]:
            return None
    return w0, g0


def _reindent(lines: list[str], delta: tuple[str, str]) -> list[str]:
    drop, add = delta
    out = []
    for line in lines:
        line = line.rstrip().expandtabs(4)
        if not line:
            out.append("")
        elif line.startswith(drop):
            out.append(add + line[len(drop):])
        else:
            out.append(add + line.lstrip())
    return out


def closest_region(source: str, search: str) -> tuple[str, int]:
    """The region of the source most like `search` (as many non-blank lines as it has, blank
    lines between them kept) and the number of its first line (1-based); ("", 0) when empty."""
    lines = source.splitlines()
    have = [(i, line.strip()) for i, line in enumerate(lines) if line.strip()]
    if not have:
        return "", 0
    want = [s.strip() for s in search.splitlines() if s.strip()] or [search.strip()]
    n = min(len(want), len(have))
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2("\n".join(want))
    best, best_at = -1.0, 0
    for start in range(len(have) - n + 1):
        matcher.set_seq1("\n".join(text for _, text in have[start:start + n]))
        if matcher.real_quick_ratio() <= best or matcher.quick_ratio() <= best:
            continue
        ratio = matcher.ratio()
        if ratio > best:
            best, best_at = ratio, start
    first, last = have[best_at][0], have[best_at + n - 1][0]
    return "\n".join(lines[first:last + 1]), first + 1
