"""Machine specifications: frozen, unit-suffixed records loaded from TOML presets.

A `MachineSpec` describes one chip as composed parts (cores, memories, data paths,
cube, vector unit, global memory). Presets live in `hwmodel/presets/*.toml`; a user
may pass a path to their own file. Errors name the field and the allowed values.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hwmodel.errors import SpecError

PRESET_DIR = Path(__file__).parent / "presets"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MemorySpec(_Frozen):
    """One per-core on-chip memory (L1, L0A, L0B, L0C, UB)."""

    capacity_bytes: int = Field(gt=0)
    alignment_bytes: int = Field(gt=0, description="start offset and row length of a view must be multiples")
    fractal_rows: int = Field(1, gt=0, description="cube-fractal memories: view offsets must be multiples")


class PathSpec(_Frozen):
    """A data path that exists: which pipe moves the data and how fast (per core)."""

    src: str
    dst: str
    pipe: str
    bytes_per_cycle: float = Field(gt=0)
    latency_cycles: int = Field(ge=0, description="from issue to data ready; overlaps with later transfers")
    setup_cycles: int = Field(ge=0, description="pipe occupancy per transfer (descriptor processing)")


class CubeModeSpec(_Frozen):
    """One input precision of the cube: the fractal it computes per cycle."""

    acc_dtype: Literal["fp32", "int32"]
    m: int = Field(gt=0)
    n: int = Field(gt=0)
    k: int = Field(gt=0)

    @property
    def macs_per_cycle(self) -> int:
        return self.m * self.n * self.k


class CubeSpec(_Frozen):
    modes: dict[str, CubeModeSpec]
    startup_cycles: int = Field(ge=0, description="pipeline fill per mma instruction")
    accumulation: Literal["rne", "rz"] = Field(
        description="rounding when adding a group of exact products into the FP32 accumulator: "
        "rne = round to nearest even, rz = truncation toward zero (what NVIDIA tensor cores do)")
    accumulation_group_k: int = Field(gt=0, description="products summed exactly before each rounding")


class VectorSpec(_Frozen):
    bytes_per_cycle: int = Field(gt=0, description="datapath width: one repeat of the vector unit")
    max_repeat: int = Field(gt=0, description="repeats per instruction; longer ops issue several")
    startup_cycles: int = Field(ge=0, description="pipeline fill per vector instruction")
    op_passes: dict[str, float] = Field(
        description="datapath passes per element for ops slower than one pass (exp, split_fp16, ...)")


class GlobalMemorySpec(_Frozen):
    capacity_bytes: int = Field(gt=0)
    hbm_gbps: float = Field(gt=0)
    l2_bytes: int = Field(ge=0)
    l2_gbps: float = Field(gt=0)
    core_hbm_bytes_per_cycle: float = Field(gt=0, description="one core's link when a read misses in L2")
    core_write_bytes_per_cycle: float = Field(
        gt=0, description="one core's link for writes: they land in L2 (write-back) and reach HBM through "
        "the chip's shared HBM bandwidth")
    core_l2_bytes_per_cycle: float = Field(gt=0, description="one core's link when hitting in L2")
    hbm_latency_cycles: int = Field(ge=0)
    l2_latency_cycles: int = Field(ge=0)
    sector_bytes: int = Field(gt=0, description="GM transaction granularity; partial sectors cost whole")
    l2_block_rows: int = Field(gt=0, description="L2 residency is tracked per block of rows x bytes")
    l2_block_bytes: int = Field(gt=0)


class MachineSpec(_Frozen):
    name: str
    description: str
    clock_ghz: float = Field(gt=0)
    num_cores: int = Field(gt=0)
    pipes: tuple[str, ...]
    issue_cycles: int = Field(ge=0, description="scalar-pipe cost of issuing any op")
    barrier_cycles: int = Field(ge=0, description="cost of an all-core barrier")
    memories: dict[str, MemorySpec]
    paths: tuple[PathSpec, ...]
    cube: CubeSpec
    vector: VectorSpec
    gm: GlobalMemorySpec
    notes: str = ""

    @model_validator(mode="after")
    def _check_references(self) -> "MachineSpec":
        known = set(self.memories) | {"GM"}
        for p in self.paths:
            for end in (p.src, p.dst):
                if end not in known:
                    raise ValueError(f"path {p.src}->{p.dst}: memory {end!r} is not defined; "
                                     f"defined: {sorted(known)}")
            if p.pipe not in self.pipes:
                raise ValueError(f"path {p.src}->{p.dst}: pipe {p.pipe!r} is not one of {list(self.pipes)}")
        for req in ("S", "V", "M"):
            if req not in self.pipes:
                raise ValueError(f"pipes must include {req!r} (scalar, vector, cube); got {list(self.pipes)}")
        return self

    # ---- derived figures -------------------------------------------------
    def path(self, src: str, dst: str) -> PathSpec | None:
        for p in self.paths:        # a dozen paths: a scan is cheap, and stays right under model_copy
            if p.src == src and p.dst == dst:
                return p
        return None

    def peak_tflops(self, mode: str) -> float:
        """Peak of one cube mode in T(FL)OP/s (2 ops per MAC)."""
        return 2 * self.cube.modes[mode].macs_per_cycle * self.num_cores * self.clock_ghz / 1e3

    @property
    def vector_fp32_tflops(self) -> float:
        """Vector unit FP32 peak counting one multiply-add as 2 ops."""
        return 2 * self.vector.bytes_per_cycle / 4 * self.num_cores * self.clock_ghz / 1e3

    @property
    def hbm_bytes_per_cycle(self) -> float:
        return self.gm.hbm_gbps / self.clock_ghz

    @property
    def l2_bytes_per_cycle(self) -> float:
        return self.gm.l2_gbps / self.clock_ghz

    def ns(self, cycles: float) -> float:
        return cycles / self.clock_ghz


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_machine(name_or_path: str | Path) -> MachineSpec:
    """Load a preset by name (`ascend-910a`) or a user TOML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise SpecError(f"unknown machine {str(name_or_path)!r}; presets: {', '.join(preset_names())}, "
                            "or pass the path of a TOML file (copy a preset and change its numbers)")
    if not path.exists():
        raise SpecError(f"machine file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    try:
        return MachineSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{path}: invalid machine description:\n{_explain(exc)}") from None


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling against a preset in hwmodel/presets/)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "literal_error":
            msg = f"{msg} (got {err.get('input')!r})"
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)
