"""Recording all cores in one run (hwmodel.spmd) gives exactly the traces of recording core by
core: for the library at every shape and preset, for kernels that branch on their core id,
keep state, catch the recorder's exceptions or look at per-core values every way Python
allows, and for random index arithmetic (hypothesis). Where cores diverge the recorder
falls back; the tests also pin down that the library's kernels take the fast path."""
from __future__ import annotations

import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import gemm_args, machine
from hwmodel.corevals import Cores, CoreVal, Diverged, lift
from hwmodel.dsl import KernelModule, _Shared, record_trace
from hwmodel.errors import HwError
from hwmodel.simulate import TensorArg, declare
from hwmodel.spmd import record_all_cores, refusal
from hwmodel.views import View
from evaluator.tasks import get_task
from strategies.families import FAMILIES

pytestmark = pytest.mark.unit


def _sig(v: View) -> tuple:
    return (v.space, v.base, v.slot, v.offset, v.extent, v.keep, v.dtype)


def same_trace(a, b) -> bool:
    """Equal programs: the same ops (kind, line, params, views) in the same order on every core."""
    def op_sig(op):
        return op.kind, op.line, op.params, tuple(map(_sig, op.dst)), tuple(map(_sig, op.src))
    return (a.tensors == b.tensors and a.buffers == b.buffers and len(a.ops) == len(b.ops)
            and all(len(x) == len(y) and all(p is q or op_sig(p) == op_sig(q) for p, q in zip(x, y))
                    for x, y in zip(a.ops, b.ops)))


def fast_path(module: KernelModule, machine_spec, decls) -> bool:
    """Whether the all-cores run succeeds (no divergence, no exception)."""
    args = [View.whole("GM", t.id, 0, t.shape, t.dtype) for t in decls]
    shared = _Shared(len(decls), frozenset(t.id for t in decls if t.role == "input"))
    return not module.refusal and record_all_cores(module.instantiate, machine_spec, args, shared) is not None


def both(source: str, args=None, preset: str = "ascend-910a"):
    """(all-cores trace or exception, core-by-core trace or exception, fast path taken)."""
    module = KernelModule(compile(textwrap.dedent(source), "kernel.py", "exec"))
    decls = declare(args or [TensorArg("a", (512, 64), "fp32"), TensorArg("c", (512, 64), "fp32", "output")])
    out = []
    for all_cores in (True, False):
        try:
            out.append(record_trace(module, machine(preset), decls, all_cores=all_cores))
        except Exception as exc:   # the same failure either way
            out.append(exc)
    return out[0], out[1], fast_path(module, machine(preset), decls)


def assert_same(fast, slow) -> None:
    if isinstance(slow, Exception):
        assert type(fast) is type(slow) and str(fast) == str(slow)
    else:
        assert same_trace(fast, slow)


COPY_ROWS = """
def kernel(k, a, c):
    ub = k.alloc("UB", (16, 64), "fp32")
    for r in range({start}, 512, 16 * k.num_cores):
        k.copy(ub, a[r:r + 16, :])
        k.copy(c[r:r + 16, :], ub)
"""


def test_per_core_offsets_take_the_fast_path_and_match():
    fast, slow, took = both(COPY_ROWS.format(start="16 * k.core_id"))
    assert not took and same_trace(fast, slow)   # range() needs one start: the cores diverge
    fast, slow, took = both("""
    def kernel(k, a, c):
        ub = k.alloc("UB", (16, 64), "fp32")
        for i, _ in k.tiles((512, 64), (16, 64)):
            k.copy(ub, a[i:i + 16, :])
            k.muls(ub, ub, 2.0)
            k.copy(c[i:i + 16, :], ub)
    """)
    assert took and same_trace(fast, slow)


ADVERSARIAL = {   # kernels that try to tell the all-cores run from a core's own run
    "branch_on_core": """
        def kernel(k, a, c):
            ub = k.alloc("UB", (16, 64), "fp32")
            for i, _ in k.tiles((512, 64), (16, 64)):
                k.copy(ub, a[i:i + 16, :])
                if k.core_id == 3:
                    k.muls(ub, ub, 2.0)
                k.copy(c[i:i + 16, :], ub)
    """,
    "odd_cores_skip": """
        def kernel(k, a, c):
            ub = k.alloc("UB", (16, 64), "fp32")
            if k.core_id % 2:
                return
            for i, _ in k.tiles((512, 64), (16, 64)):
                k.copy(ub, a[i:i + 16, :])
                k.copy(c[i:i + 16, :], ub)
    """,
    "module_state": """
        SEEN = []
        def kernel(k, a, c):
            SEEN.append(1)
            ub = k.alloc("UB", (16, 64), "fp32")
            for i, _ in k.tiles((512, 64), (16, 64)):
                k.copy(ub, a[i:i + 16, :])
                if len(SEEN) > 1:      # only a core that saw another core's state skips the scaling
                    continue
                k.muls(ub, ub, 2.0)
                k.copy(c[i:i + 16, :], ub)
    """,
    "default_argument_state": """
        def kernel(k, a, c, seen=[]):
            seen.append(0)
            ub = k.alloc("UB", (16, 64), "fp32")
            for i, _ in k.tiles((512, 64), (16, 64)):
                k.copy(ub, a[i:i + 16, :])
                k.muls(ub, ub, float(len(seen)))
                k.copy(c[i:i + 16, :], ub)
    """,
    "isinstance": """
        def kernel(k, a, c):
            ub = k.alloc("UB", (16, 64), "fp32")
            for i, _ in k.tiles((512, 64), (16, 64)):
                k.copy(ub, a[i:i + 16, :])
                if isinstance(k.core_id, int) and isinstance(i, int) and not isinstance(i, float):
                    k.muls(ub, ub, 2.0)
                k.copy(c[i:i + 16, :], ub)
    """,
    "identity": """
        def kernel(k, a, c):
            ub = k.alloc("UB", (16, 64), "fp32")
            for i, _ in k.tiles((512, 64), (16, 64)):
                k.copy(ub, a[i:i + 16, :])
                if k.core_id is 0:
                    k.muls(ub, ub, 2.0)
                k.copy(c[i:i + 16, :], ub)
    """,
    "match": """
        def kernel(k, a, c):
            ub = k.alloc("UB", (16, 64), "fp32")
            for i, _ in k.tiles((512, 64), (16, 64)):
                k.copy(ub, a[i:i + 16, :])
                match k.core_id:
                    case int():
                        k.muls(ub, ub, 2.0)
                k.copy(c[i:i + 16, :], ub)
    """,
    "catches_divergence": """
        def kernel(k, a, c):
            ub = k.alloc("UB", (16, 64), "fp32")
            try:
                scale = [1.0, 2.0][k.core_id % 2]
            except Exception:
                scale = 3.0
            for i, _ in k.tiles((512, 64), (16, 64)):
                k.copy(ub, a[i:i + 16, :])
                k.muls(ub, ub, scale)
                k.copy(c[i:i + 16, :], ub)
    """,
    "strings_and_dicts": """
        def kernel(k, a, c):
            names = {k.core_id: "x"}
            ub = k.alloc("UB", (16, 64), "fp32", name=f"ub{k.core_id % 3}")
            for i, _ in k.tiles((512, 64), (16, 64)):
                k.copy(ub, a[i:i + 16, :])
                k.copy(c[i:i + 16, :], ub)
    """,
    "print": """
        def kernel(k, a, c):
            print("core", k.num_cores)
            ub = k.alloc("UB", (16, 64), "fp32")
            for i, _ in k.tiles((512, 64), (16, 64)):
                k.copy(ub, a[i:i + 16, :])
                k.copy(c[i:i + 16, :], ub)
    """,
    "raises_on_one_core": """
        def kernel(k, a, c):
            ub = k.alloc("UB", (16, 64), "fp32")
            x = 1 // (k.core_id - 5)
            for i, _ in k.tiles((512, 64), (16, 64)):
                k.copy(ub, a[i:i + 16, :])
                k.copy(c[i:i + 16, :], ub)
    """,
    "out_of_range_on_some_cores": """
        def kernel(k, a, c):
            ub = k.alloc("UB", (16, 64), "fp32")
            k.copy(ub, a[k.core_id * 20:k.core_id * 20 + 16, :])
            k.copy(c[k.core_id * 16:k.core_id * 16 + 16, :], ub)
    """,
    "view_attributes": """
        def kernel(k, a, c):
            ub = k.alloc("UB", (16, 64), "fp32")
            for i, _ in k.tiles((512, 64), (16, 64)):
                v = a[i:i + 16, :]
                k.copy(ub, v)
                if v.offset[0] + v.shape[0] > 512 or v.extent != (16, 64) or v.dtype != "fp32":
                    k.muls(ub, ub, 0.5)
                k.copy(c[v.offset[0]:v.offset[0] + 16, :], ub)
    """,
    "view_equality": """
        def kernel(k, a, c):
            ub = k.alloc("UB", (16, 64), "fp32")
            first = a[0:16, :]
            for i, _ in k.tiles((512, 64), (16, 64)):
                v = a[i:i + 16, :]
                k.copy(ub, v)
                if v == v and not v != v and v in [v, first] and v != first[0:8, :]:
                    k.muls(ub, ub, 0.5)
                k.copy(c[i:i + 16, :], ub)
    """,
    "mutates_a_view": """
        def kernel(k, a, c):
            a.offset = (8, 0)
            ub = k.alloc("UB", (16, 64), "fp32")
            k.copy(ub, a[0:16, :])
    """,
    "patches_the_dsl": """
        from hwmodel.dsl import Kernel
        def kernel(k, a, c):
            Kernel.copy = Kernel.muls
    """,
    "shared_mutable_items": """
        def kernel(k, a, c):
            items = [[0] for _ in range(2 * k.num_cores)]   # equal lists, each core's own
            mine = k.share(items)
            mine[0].append(1)
            ub = k.alloc("UB", (16, 64), "fp32")
            for i, _ in k.tiles((512, 64), (16, 64)):
                k.copy(ub, a[i:i + 16, :])
                if len(items[0]) > 1:          # only core 0 appended to items[0]
                    k.muls(ub, ub, 2.0)
                k.copy(c[i:i + 16, :], ub)
    """,
    "rule_broken_on_one_core": """
        def kernel(k, a, c):
            ub = k.alloc("UB", (16, 64), "fp32")
            for i, _ in k.tiles((512, 64), (16, 64)):
                try:
                    k.copy(ub[0:8, :], a[i:i + 16, :])   # shapes differ: every core raises...
                except Exception:
                    pass
                row = 8 + 8 * (k.core_id == 3)
                try:
                    k.copy(ub[0:8, :], a[i:i + row, :])  # ...but only core 3 here
                except Exception:
                    pass
                k.copy(c[i:i + 16, :], ub)
    """,
    "three_argument_pow": """
        def kernel(k, a, c):
            ub = k.alloc("UB", (16, 64), "fp32")
            for i, _ in k.tiles((512, 64), (16, 64)):
                k.copy(ub, a[i:i + 16, :])
                k.muls(ub, ub, float(pow(2, k.core_id * 4 + 3, 5)))
                k.copy(c[i:i + 16, :], ub)
    """,
    "uneven_tiles": """
        def kernel(k, a, c):
            ub = k.alloc("UB", (16, 64), "fp32")
            for i, _ in k.tiles((500, 64), (16, 64)):
                n = min(16, 500 - i)
                k.copy(ub[:n, :], a[i:i + n, :])
                k.copy(c[i:i + n, :], ub[:n, :])
    """,
    "rings_at_per_core_slots": """
        def kernel(k, a, c):
            ring = k.ring("UB", (16, 64), "fp32", "r", 4)
            for t, (i, _) in enumerate(k.tiles((512, 64), (16, 64))):
                x = ring[(t + k.core_id) % 4]
                k.copy(x, a[i:i + 16, :])
                k.copy(c[i:i + 16, :], x)
    """,
    "arithmetic": """
        import math
        def kernel(k, a, c):
            ub = k.alloc("UB", (16, 64), "fp32")
            q, r = divmod(k.core_id, 4)
            row = (q * 4 + r) * 16 + 0 * abs(-k.core_id) + (k.core_id ** 2 - k.core_id * k.core_id)
            row = max(row, 0) + math.floor(k.core_id / 64) + round(k.core_id * 0.0) + (k.core_id >> 10) + (~k.core_id + 1 + k.core_id)
            k.copy(ub, a[row:row + 16, :])
            k.copy(c[row:row + 16, :], ub)
            ones = (k.core_id | 1) - (k.core_id & ~1) - (k.core_id ^ k.core_id) + (+k.core_id - k.core_id)
            k.muls(ub, ub, float(min(ones, 1)))
    """,
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_kernels_record_as_core_by_core(name):
    fast, slow, took = both(ADVERSARIAL[name])
    assert_same(fast, slow)
    expected_fast = {"arithmetic", "rings_at_per_core_slots", "isinstance", "view_attributes", "view_equality",
                     "module_state", "default_argument_state", "uneven_tiles", "three_argument_pow"}
    assert took == (name in expected_fast), name


def test_state_does_not_pass_between_cores():
    fast, slow, _ = both(ADVERSARIAL["module_state"])
    assert all(any(op.kind == "muls" for op in ops) for ops in slow.ops)   # every core starts afresh


def test_refusals_are_static_and_precise():
    def why(src):
        return refusal(compile(textwrap.dedent(src), "k", "exec"))
    assert why("def kernel(k):\n    x = k.core_id is None\n    if k.num_cores is not None: pass\n") == ""
    assert "identity" in why("def kernel(k):\n    f = lambda: k.core_id is 0\n")
    assert "identity" in why("def kernel(k):\n    x = None is k.core_id\n")
    assert why("def kernel(k):\n    match k.core_id:\n        case 0: pass\n") == ""   # value patterns compare
    assert "match" in why("def kernel(k):\n    match k.core_id:\n        case int(): pass\n")


def test_corevals_are_exact_or_diverge():
    cores = Cores(3)
    x = CoreVal(cores, (0, 1, 2))
    assert lift(cores, (4, 4, 4)) == 4 and type(lift(cores, (1, 1.0, True))) is CoreVal
    assert type(lift(cores, (0.0, -0.0, 0.0))) is CoreVal
    assert (x * 0) == 0 and (x - x) == 0 and +x is x and (x + 1)._v == (1, 2, 3)
    assert bool(x < 5) is True and int(x // 10) == 0 and hash(x * 0 + 7) == hash(7)
    with pytest.raises(Diverged):
        bool(x)
    with pytest.raises(Diverged):
        len(x)
    with pytest.raises(Diverged):
        x + [1]
    assert cores.divergences == 3
    with pytest.raises(Diverged):
        x.bit_length()
    with pytest.raises(Diverged):
        x // (x - 1)   # core 1 divides by zero


# ---------------------------------------------------------------- hypothesis: index arithmetic
_TERMS = st.recursive(
    st.sampled_from(["k.core_id", "k.num_cores", "3", "7", "i"]),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "//", "%"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(inner, inner).map(lambda t: f"min({t[0]}, {t[1]})"),
        st.tuples(inner, inner).map(lambda t: f"max({t[0]}, {t[1]})"),
        st.tuples(inner, st.sampled_from(["<", ">=", "=="]), inner, inner).map(
            lambda t: f"({t[2]} if {t[0]} {t[1]} {t[3]} else {t[3]})"),
    ), max_leaves=6)


@settings(max_examples=60, deadline=None)
@given(_TERMS)
def test_random_index_arithmetic_records_exactly(expr):
    source = f"""
    def kernel(k, a, c):
        ub = k.alloc("UB", (16, 64), "fp32")
        for i, _ in k.tiles((512, 64), (16, 64)):
            row = ({expr}) % 32 * 16
            k.copy(ub, a[row:row + 16, :])
            k.copy(c[i:i + 16, :], ub)
    """
    fast, slow, _ = both(source)
    assert_same(fast, slow)


# ---------------------------------------------------------------- the library
FAST = {("sgemm_cube", "1024x1024x512"), ("hgemm_cube", "2048x2048x256"), ("sgemm_termwise", "1024x1024x256"),
        ("qgemm_int8", "2048x2048x256"), ("qgemm_apsq", "2048x2048x256"), ("attention_flash", "1x4x1024x64"),
        ("attention_lut", "1x4x1024x64")}   # shapes where every core gets as many tiles: one run records all


def _library_cases():
    for name, fam in sorted(FAMILIES.items()):
        task = get_task(fam.task)
        for shape in task.small_shapes:
            yield pytest.param(name, task.format_shape(shape), id=f"{name}-{task.format_shape(shape)}")
    for name, shape in sorted(FAST):
        yield pytest.param(name, shape, id=f"{name}-{shape}-fast")


@pytest.mark.parametrize("name,shape", list(_library_cases()))
def test_library_kernels_record_identically(name, shape):
    fam = FAMILIES[name]
    task = get_task(fam.task)
    decls = declare(task.args(task.parse_shape(shape)))
    module = KernelModule(compile(fam.source, f"{name}.py", "exec"))
    for preset in ("ascend-910a", "h100"):
        try:
            slow = record_trace(module, machine(preset), decls, all_cores=False)
        except HwError:
            continue   # not runnable on this preset
        assert same_trace(record_trace(module, machine(preset), decls), slow)
    if (name, shape) in FAST:
        assert fast_path(module, machine("ascend-910a"), decls), f"{name} at {shape} fell back to core by core"


@pytest.mark.parametrize("preset,shape", [("ascend-910a", (1024, 1000, 1024)), ("ascend-910b", (3072, 500, 2048)),
                                          ("h100", (4224, 500, 1024))])
def test_fast_path_on_every_preset(preset, shape):
    """K = 500 ends in a partial K panel on every core: min() is taken core by core and the
    edge panels stay on the fast path."""
    if preset == "ascend-910a":
        module = KernelModule(compile(FAMILIES["sgemm_cube"].source, "sgemm_cube.py", "exec"))
        decls = declare(gemm_args(*shape, "fp32"))
    else:
        module = KernelModule(compile(FAMILIES["hgemm_cube"].source, "hgemm_cube.py", "exec"),
                              knobs=dict(BM=128, BN=256, BK1=128, BK=32, DRAIN_ROWS=32, GROUP=8))
        decls = declare(gemm_args(*shape, "fp16"))
    assert fast_path(module, machine(preset), decls), preset
    assert same_trace(record_trace(module, machine(preset), decls),
                      record_trace(module, machine(preset), decls, all_cores=False))


# ---------------------------------------------------------------- in the sandbox
@pytest.mark.integration
def test_sandbox_gives_every_core_a_fresh_module_and_math():
    """A kernel that counts its calls in a module list, or in an attribute it sets on math,
    would stop after the first core if state passed between cores: every core must work."""
    from evaluator.cascade import EvalConfig, evaluate
    from hwmodel.spec import load_machine
    source = FAMILIES["hgemm_cube"].source.replace("def kernel(k, a, b, c):\n", (
        "import math\nmath.tau = math.tau + 1.0\nCALLS = []\n\n\ndef kernel(k, a, b, c):\n"
        "    CALLS.append(1)\n    if len(CALLS) > 1 or math.tau > 7.5:\n        return\n"), 1)
    task = get_task("hgemm")
    result = evaluate(source, task, load_machine("ascend-910a"), (1024, 1024, 256), EvalConfig(seed=3))
    assert result.status.value == "ok", result.message
    import math
    assert math.tau < 6.3   # the trusted side's math is untouched
