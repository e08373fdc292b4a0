"""SEARCH/REPLACE edits: parsing, exact and tolerant application, and the closest-match report
of a block that matches nowhere (what the coder's repair turn shows the model)."""
from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agents.edits import Edit, EditError, apply_edits, closest_region, parse_edits
from strategies.families import FAMILIES

pytestmark = pytest.mark.unit

SOURCE = FAMILIES["sgemm_cube"].source
LINES = SOURCE.splitlines()


def block(search: str, replace: str) -> str:
    return f"<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE"


def test_parse_blocks_in_prose_and_fences():
    text = ("I double the tile.\n```python\n" + block("BM, BN = 128, 256", "BM, BN = 256, 128") + "\n```\n"
            "and\n" + block("SLOTS = 2", "SLOTS = 3") + "\n")
    edits = parse_edits(text)
    assert edits == [Edit("BM, BN = 128, 256", "BM, BN = 256, 128"), Edit("SLOTS = 2", "SLOTS = 3")]


def test_parse_truncated_block_is_an_error():
    with pytest.raises(ValueError, match="cut off"):
        parse_edits("<<<<<<< SEARCH\nSLOTS = 2\n=======\nSLOTS = 3\n")


def test_parse_empty_replace_deletes():
    (edit,) = parse_edits("<<<<<<< SEARCH\nGROUP = 2\n=======\n>>>>>>> REPLACE")
    assert edit == Edit("GROUP = 2", "")


def test_exact_edit():
    edited = apply_edits(SOURCE, [Edit("SLOTS = 2                  # ring depth", "SLOTS = 3                  # ring depth")])
    assert "SLOTS = 3" in edited and edited.count("\n") == SOURCE.count("\n")


def test_edits_apply_in_order():
    edited = apply_edits("a = 1\nb = 2\n", [Edit("a = 1", "a = 10"), Edit("a = 10\nb = 2", "c = 3")])
    assert edited == "c = 3\n"


def test_tolerant_indentation_reindents_the_replacement():
    search = "for r in range(0, m, DRAIN_ROWS):\n    rows = min(DRAIN_ROWS, m - r)"     # model dropped 8 spaces
    replace = "for r in range(0, m, DRAIN_ROWS):\n    rows = min(DRAIN_ROWS, m - r)  # drained"
    edited = apply_edits(SOURCE, [Edit(search, replace)])
    assert "            rows = min(DRAIN_ROWS, m - r)  # drained" in edited.splitlines()


def test_tolerant_blank_lines_and_trailing_spaces():
    src = "def f(x):\n    a = 1\n\n    b = 2\n    return a + b\n"
    edited = apply_edits(src, [Edit("    a = 1   \n    b = 2", "    a = 3\n    b = 4")])
    assert edited == "def f(x):\n    a = 3\n    b = 4\n    return a + b\n"


def test_no_match_reports_closest_region():
    wrong = "k.copy(out[xo][:rows, :n], main[r:r + rows, :m])"      # :m where the source says :n
    with pytest.raises(EditError) as info:
        apply_edits(SOURCE, [Edit("BK1, BK = 256, 64", "BK1, BK = 128, 64"), Edit(wrong, "pass")])
    err = info.value
    assert err.index == 1 and "edit block 2" in str(err)
    assert "k.copy(out[xo][:rows, :n], main[r:r + rows, :n])" in err.closest
    assert LINES[err.closest_line - 1].strip() == err.closest.strip()
    assert "closest region" in err.explain() and wrong in err.explain()


def test_empty_search_is_an_error_on_nonempty_source():
    with pytest.raises(EditError, match="empty"):
        apply_edits(SOURCE, [Edit("", "x = 1")])


# ------------------------------------------------------------------ properties
regions = st.tuples(st.integers(0, len(LINES) - 1), st.integers(1, 6))
replacements = st.text(alphabet="abcxyz_=+ 0123456789()", min_size=0, max_size=30).map(lambda s: f"x = '{s}'")


def _region(start: int, length: int) -> tuple[int, int]:
    end = min(len(LINES), start + length)
    return start, end


@given(regions, replacements)
def test_edit_from_a_real_region_always_applies(region, replacement):
    start, end = _region(*region)
    search = "\n".join(LINES[start:end])
    assume(search.strip())
    edited = apply_edits(SOURCE, [Edit(search, replacement)])
    assert replacement not in SOURCE
    assert edited.replace(replacement, search.strip("\n"), 1) == SOURCE     # that region, nothing else


@given(regions, st.sampled_from(["", "  ", "\t", "    "]), st.integers(0, 3), st.booleans(), st.booleans())
def test_edit_applies_after_whitespace_perturbation(region, trailing, dedent_by, add_blank, strip_indent):
    start, end = _region(*region)
    lines = LINES[start:end]
    assume(any(line.strip() for line in lines))
    # a perturbed copy of the region: trailing spaces, a uniform dedent, blank lines dropped or added
    indent = min((len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0)
    cut = min(indent, 4 * dedent_by)
    perturbed = [(line[cut:] if line.strip() else "") + trailing for line in lines]
    if strip_indent:
        perturbed = [line.strip() for line in perturbed]
    if add_blank:
        perturbed = [p for line in perturbed for p in (line, "")]
    perturbed = [line for line in perturbed if line.strip() or add_blank]
    marker = "MARKER_LINE = 1"
    edited = apply_edits(SOURCE, [Edit("\n".join(perturbed), marker)])
    assert any(line.strip() == marker for line in edited.splitlines())
    removed = [line for line in lines if line.strip()]
    assert edited.count(removed[0].strip()) <= SOURCE.count(removed[0].strip())


@settings(max_examples=25)          # each example scans the whole source with difflib
@given(regions, st.text(alphabet="qwj", min_size=3, max_size=8))
def test_a_mangled_block_reports_the_region_it_came_from(region, junk):
    start, end = _region(*region)
    lines = LINES[start:end]
    target = next((i for i, line in enumerate(lines) if len(line.strip()) > 30), None)
    assume(target is not None)
    mangled = list(lines)
    mangled[target] = mangled[target] + junk                       # one line changed beyond whitespace
    search = "\n".join(mangled)
    assume(search not in SOURCE)
    with pytest.raises(EditError) as info:
        apply_edits(SOURCE, [Edit(search, "pass")])
    closest = info.value.closest.splitlines()
    assert lines[target].strip() in [c.strip() for c in closest]


def test_closest_region_of_empty_source():
    assert closest_region("", "x = 1") == ("", 0)
