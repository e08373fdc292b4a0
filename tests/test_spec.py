"""Machine specs: presets load, derived peaks match the published figures, and a broken user
file fails with a SpecError that names the field and what is allowed."""
from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from hwmodel.errors import HwError, SpecError
from hwmodel.spec import PRESET_DIR, MachineSpec, load_machine, preset_names

pytestmark = pytest.mark.unit


def test_all_presets_load():
    names = preset_names()
    assert {"ascend-910a", "ascend-910b", "h100"} <= set(names)
    for name in names:
        spec = load_machine(name)
        assert isinstance(spec, MachineSpec) and spec.name == name
        assert {"S", "V", "M"} <= set(spec.pipes)
        for p in spec.paths:                               # every path resolves both ways
            assert spec.path(p.src, p.dst) is p


def test_preset_loads_by_path_too():
    assert load_machine(PRESET_DIR / "h100.toml") == load_machine("h100")


@pytest.mark.parametrize("name,mode,tflops,tol", [
    ("ascend-910a", "fp16", 256.0, 0.5),
    ("ascend-910a", "int8", 512.0, 1.0),
    ("ascend-910b", "fp16", 353.9, 0.5),
    ("h100", "fp16", 989.0, 1.0),
    ("h100", "int8", 1979.0, 2.0),
])
def test_derived_peaks(name, mode, tflops, tol):
    spec = load_machine(name)
    assert spec.peak_tflops(mode) == pytest.approx(tflops, abs=tol)
    # independently: 2 ops x (m n k) MAC per cycle x cores x GHz
    cm = spec.cube.modes[mode]
    assert spec.peak_tflops(mode) == pytest.approx(2 * cm.m * cm.n * cm.k * spec.num_cores * spec.clock_ghz / 1e3)


def test_derived_rates_910a():
    spec = load_machine("ascend-910a")
    assert spec.vector_fp32_tflops == pytest.approx(2 * 64 * 32 * 0.9765625 / 1e3)   # 64 fp32 lanes
    assert spec.hbm_bytes_per_cycle == pytest.approx(1200 / 0.9765625)
    assert spec.ns(976.5625) == pytest.approx(1000.0)
    assert spec.path("GM", "L0C") is None and spec.path("L0C", "UB").pipe == "V"


# ---------------------------------------------------------------- broken user files
@pytest.fixture
def user_toml(tmp_path):
    text = (PRESET_DIR / "ascend-910a.toml").read_text()

    def write(old: str, new: str, count: int = 1):
        assert old in text, old
        path = tmp_path / "my-chip.toml"
        path.write_text(text.replace(old, new, count))
        return path

    return write


def test_unchanged_copy_loads(user_toml):
    assert load_machine(user_toml("name =", "name =")) == load_machine("ascend-910a")


def test_misspelled_field_is_named(user_toml):
    path = user_toml("hbm_gbps = 1200", "hbm_gbsp = 1200")
    with pytest.raises(SpecError) as info:
        load_machine(path)
    msg = str(info.value)
    assert "gm.hbm_gbsp" in msg and "unknown field" in msg
    assert "gm.hbm_gbps" in msg and "missing" in msg
    assert str(path) in msg


def test_wrong_enum_value_names_allowed_values(user_toml):
    with pytest.raises(SpecError) as info:
        load_machine(user_toml('accumulation = "rne"', 'accumulation = "up"'))
    msg = str(info.value)
    assert "cube.accumulation" in msg and "'rne'" in msg and "'rz'" in msg and "'up'" in msg


def test_path_to_unknown_memory(user_toml):
    with pytest.raises(SpecError) as info:
        load_machine(user_toml('dst = "L0A"', 'dst = "L0X"'))
    msg = str(info.value)
    assert "GM->L0X" in msg and "'L0X' is not defined" in msg and "L0A" in msg and "UB" in msg


def test_path_on_unknown_pipe(user_toml):
    with pytest.raises(SpecError) as info:
        load_machine(user_toml('pipe = "MTE2"', 'pipe = "DMA"'))
    assert "'DMA'" in str(info.value) and "MTE2" in str(info.value)


def test_non_positive_capacity(user_toml):
    with pytest.raises(SpecError) as info:
        load_machine(user_toml("capacity_bytes = 65536 ", "capacity_bytes = 0 "))
    assert re.search(r"memories\.L0A\.capacity_bytes: .*greater than 0", str(info.value))


def test_invalid_toml(user_toml):
    with pytest.raises(SpecError, match="not valid TOML"):
        load_machine(user_toml("[cube]", "[cube"))


def test_unknown_preset_lists_presets():
    with pytest.raises(SpecError) as info:
        load_machine("ascend-910c")
    msg = str(info.value)
    assert "'ascend-910c'" in msg
    for name in preset_names():
        assert name in msg


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_machine(tmp_path / "nope.toml")


def test_model_copy_with_changed_cube_is_used():
    h100 = load_machine("h100")
    rne = h100.model_copy(update={"cube": h100.cube.model_copy(update={"accumulation": "rne"})})
    assert rne.cube.accumulation == "rne" and h100.cube.accumulation == "rz"
    assert rne.cube.modes == h100.cube.modes


def test_model_copy_with_changed_paths_is_used():
    spec = load_machine("ascend-910a")
    assert spec.path("GM", "L1").bytes_per_cycle == 256           # fills the lookup cache
    slow = tuple(p.model_copy(update={"bytes_per_cycle": 16.0}) if (p.src, p.dst) == ("GM", "L1") else p
                 for p in spec.paths)
    copy = spec.model_copy(update={"paths": slow})
    assert copy.path("GM", "L1").bytes_per_cycle == 16.0


def test_spec_error_is_a_hw_error():
    assert issubclass(SpecError, HwError)


def test_specs_are_frozen():
    spec = load_machine("ascend-910a")
    with pytest.raises(ValidationError):
        spec.num_cores = 64
