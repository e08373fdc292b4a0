"""Technique families: each is a library kernel, the task it solves, its knob space, and
how knobs map to technique tags and a plan in words. The builtin strategist searches
these spaces; the MAP-Elites archive uses the tags as cells."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Callable

from hwmodel.loader import knob_names
from strategies.library import kernel_path
from strategies.render import render
from strategies.strategy import Strategy

_BUFFERING = {1: "single", 2: "double", 3: "triple"}


@dataclass(frozen=True)
class Family:
    name: str                                   # library module
    task: str
    summary: str                                # the published recipe, one line
    space: dict[str, tuple[Any, ...]]           # knob -> allowed values
    tags: Callable[[dict[str, Any]], dict[str, str]] = field(default=lambda knobs: {})
    module: str = ""                            # library module, when it is not `name`
    fixed: tuple[tuple[str, Any], ...] = ()     # knobs this family pins (e.g. CAUSAL = True)

    @property
    def path(self):
        return kernel_path(self.module or self.name)

    @property
    def source(self) -> str:
        """The family's reference kernel: the library module with the fixed knobs set."""
        return _rendered(self.path.read_text(), self.fixed)

    def defaults(self) -> dict[str, Any]:
        names = _knobs(self.source)
        return {k: names[k] for k in self.space}

    def constants(self) -> dict[str, Any]:
        """Every module-level constant of the reference kernel (knobs beyond the space included)."""
        return dict(_knobs(self.source))

    def strategy(self, knobs: dict[str, Any] | None = None, parents: tuple[str, ...] = (), origin="library") -> Strategy:
        knobs = {**self.defaults(), **(knobs or {})}
        tags = {"family": self.name, **self.tags(knobs)}
        detail = ", ".join(f"{k} {v}" for k, v in tags.items() if k != "family")
        return Strategy(family=self.name, task=self.task, plan=f"{self.summary} ({detail})", tags=tags,
                        knobs=knobs, parents=parents, origin=origin)

    def implement(self, strategy: Strategy) -> str:
        return render(self.source, strategy.knobs)


@lru_cache(maxsize=256)
def _rendered(text: str, fixed: tuple[tuple[str, Any], ...]) -> str:
    return render(text, dict(fixed))


@lru_cache(maxsize=256)
def _knobs(source: str) -> MappingProxyType:
    """A module's knobs (parsed once per source text: strategies are built by the thousand)."""
    return MappingProxyType(knob_names(source))


def _gemm_tags(knobs: dict[str, Any]) -> dict[str, str]:
    tags = {"tiling": f"{knobs.get('BM')}x{knobs.get('BN')}",
            "buffering": _BUFFERING.get(knobs.get("SLOTS", 1), f"{knobs.get('SLOTS')}-deep"),
            "core mapping": "row-major" if knobs.get("GROUP", 1) == 1 else f"swizzle {knobs['GROUP']}"}
    if "BK1" in knobs and "BK" in knobs:
        tags["k chunking"] = f"L1 {knobs['BK1']} / L0 {knobs['BK']}"
    if "CHUNK" in knobs:
        tags["accumulation"] = "whole K on the cube" if not knobs["CHUNK"] else f"FP32 sums of {knobs['CHUNK']}-K chunks"
    return tags


def _attention_tags(knobs: dict[str, Any]) -> dict[str, str]:
    return {"softmax form": "online (flash)", "tiling": f"{knobs.get('BQ', 'auto')}x{knobs.get('BKV', 'auto')}",
            "buffering": _BUFFERING.get(knobs.get("SLOTS", 1), f"{knobs.get('SLOTS')}-deep"),
            "core mapping": "round-robin items"}


def _attention(name: str, task: str, summary: str, space: dict, extra: dict[str, str]) -> Family:
    """Causal entries render their base family's module with CAUSAL = True; the LUT-exp family
    is attention_flash with EXP_LUT = True."""
    base = name.removesuffix("_causal")
    fixed = (("EXP_LUT", True),) if base == "attention_lut" else ()
    fixed += (("CAUSAL", True),) if name.endswith("_causal") else ()
    return Family(name, task, summary, space, lambda k: {**_attention_tags(k), **extra},
                  module="attention_flash" if base == "attention_lut" else base, fixed=fixed)


# BQ 16/32 and BKV 64 are the tiles that fit the h100 preset at head dim 128 (UB 64 KiB, L0B 32 KiB:
# BQ 16 x BKV 128 double-buffered with KV_STEP 32, or BQ 32 x BKV 64 single-buffered); 910A fits the defaults
_FLASH_SPACE = {"BQ": (16, 32, 64, 128), "BKV": (64, 128, 256, 512), "D_STEP": (32, 64), "KV_STEP": (32, 64, 128),
                "SLOTS": (1, 2, 3)}
_LUT_SPACE = {**_FLASH_SPACE, "LUT_SEGMENTS": (32, 48, 63)}
_XY_SPACE = {"SLOTS": (1, 2), "MAX_BQ": (64, 128, 256), "MAX_BKV": (256, 512)}
_ATTENTION = [
    (f"{base}{suffix}", task, summary, space, extra)
    for suffix, task in (("", "attention"), ("_causal", "attention-causal"))
    for base, summary, space, extra in (
        ("attention_flash", "Flash attention: online softmax, cube for QK^T and PV, vector for exp/max/sum",
         _FLASH_SPACE, {"exp": "exact"}),
        ("attention_xyserve", "XY-Serve meta-kernel: tiles chosen from the machine's capacities, virtual padding",
         _XY_SPACE, {"exp": "exact", "tile choice": "architecture-aware"}),
        ("attention_lut", "Flash attention with a GQA-LUT piecewise-linear exp (error counted against the budget)",
         _LUT_SPACE, {"exp": "piecewise-linear LUT"}))]


TILE = (64, 128, 256)
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sgemm_cube", "sgemm", "SGEMM-cube: pre-split A and B into fp16 hi/lo in GM, three cube terms, "
           "two FP32 accumulators", {"BM": TILE, "BN": TILE, "BK1": (128, 256, 512), "BK": (32, 64, 128),
                                     "SLOTS": (1, 2, 3), "GROUP": (1, 2, 4, 8), "DRAIN_ROWS": (16, 32)},
           lambda k: {"split": "pre-split in GM", **_gemm_tags(k)}),
    Family("sgemm_cube_otf", "sgemm", "SGEMM-cube with on-the-fly split: fp32 K-panels split in UB on their way "
           "to L1 (no pre-split phase, no barrier), three cube terms, two FP32 accumulators",
           {"BM": TILE, "BN": TILE, "BK1": (128, 256), "BK": (32, 64), "SLOTS": (1, 2), "SPLIT_SLOTS": (2, 3, 4),
            "SPLIT_ROWS": (8, 16, 32), "GROUP": (1, 2, 4, 8), "DRAIN_ROWS": (16, 32)},
           lambda k: {"split": "on-the-fly in UB", **_gemm_tags(k)}, module="sgemm_cube",
           fixed=(("ON_THE_FLY", True), ("SPLIT_SLOTS", 4), ("SPLIT_ROWS", 16))),
    Family("sgemm_termwise", "sgemm", "Termwise (Ootomo) split GEMM: cube terms per K chunk, summed in FP32 "
           "on the vector unit", {"BM": TILE, "BN": TILE, "BK1": (128, 256), "BK": (32, 64), "CHUNK": (0, 256, 1024),
                                  "SLOTS": (1, 2), "ACC_SLOTS": (1, 2), "GROUP": (1, 2, 4, 8)},
           lambda k: {"split": "pre-split in GM", **_gemm_tags(k)}),
    Family("sgemm_vector", "sgemm", "Naive FP32 GEMM on the vector unit: rank-1 updates",
           {"BM": (32, 64, 128), "BN": (128, 256, 512), "SLOTS": (1, 2)},
           lambda k: {"split": "none (vector FP32)", **_gemm_tags(k)}),
    Family("hgemm_cube", "hgemm", "Native FP16 cube GEMM with L1 panels and L0 steps",
           {"BM": TILE, "BN": TILE, "BK1": (64, 128, 256, 512), "BK": (32, 64, 128), "SLOTS": (1, 2, 3),
            "GROUP": (1, 2, 4, 8), "DRAIN_ROWS": (16, 32, 64)}, _gemm_tags),
    Family("qgemm_int8", "qgemm-int8", "INT8 direct: per-row/per-column absmax scales, INT8 cube, dequantize",
           {"BM": TILE, "BN": TILE, "SLOTS": (1, 2), "GROUP": (1, 2, 4, 8), "QROWS_A": (8, 16, 32, 64)},
           lambda k: {"quantization": f"int8 per-row/col (A in {k['QROWS_A']}-row passes)", "residual": "none",
                      **_gemm_tags(k)}),
    Family("qgemm_fp16", "qgemm", "Plain FP16 cube GEMM: FP32 inputs rounded to fp16 in GM, fp32 accumulation",
           {"BM": TILE, "BN": TILE, "BK1": (64, 128, 256), "BK": (32, 64), "SLOTS": (1, 2, 3),
            "GROUP": (1, 2, 4, 8), "DRAIN_ROWS": (16, 32, 64)},
           lambda k: {"quantization": "fp16 inputs", "residual": "none", **_gemm_tags(k)}),
    Family("qgemm_int8_dense", "qgemm", "INT8 direct + dense FP16 residual compensation: "
           "[R_A | deq(Q(A))] @ [B ; R_B] on the fp16 cube added to the dequantized INT8 product",
           {"BM": (64, 128), "BN": (64, 128), "BK1": (128, 256), "SLOTS": (1, 2), "GROUP": (1, 2, 4, 8),
            "COMPENSATE_B": (True, False)},
           lambda k: {"quantization": "int8 per-row/col",
                      "residual": "dense fp16 (A and B)" if k["COMPENSATE_B"] else "dense fp16 (A only)",
                      **_gemm_tags(k)}),
    Family("qgemm_int8_lowrank", "qgemm", "INT8 + low-rank FP16 part (LRQMM): randomized range finder of A on the "
           "device, the rank-r part kept in fp16, only the remainder quantized",
           {"RANK": (8, 16, 24), "BM": (64, 128), "BN": (64, 128), "SLOTS": (1, 2), "GROUP": (1, 2, 4, 8)},
           lambda k: {"quantization": "int8 per-row/col", "residual": f"low-rank r={k['RANK']} (randomized)",
                      **_gemm_tags(k)}),
    Family("qgemm_int8_sparse", "qgemm-int8", "INT8 + sparse top-k FP16 part (LRQMM): outlier channels of A found on "
           "the device (column absmax over a threshold), up to TOPK of them gathered by a 0/1 selection matrix and "
           "multiplied in fp16, the rest of A quantized",
           {"TOPK": (16, 32, 64), "THRESH": (3.0, 5.0, 8.0), "DETECT_ROWS": (0, 256, 1024), "BM": (64, 128),
            "BN": (64, 128), "SLOTS": (1, 2), "GROUP": (1, 2, 4, 8)},
           lambda k: {"quantization": "int8 per-row/col",
                      "residual": f"sparse top-k: <= {k['TOPK']} outlier channels of A in fp16 "
                                  f"(absmax > {k['THRESH']:g}x mean)", **_gemm_tags(k)}),
    Family("qgemm_apsq", "qgemm-int8", "APSQ-style INT8: K in passes, partial sums between passes requantized to "
           "int16/int8 with per-row scales (the error they add is counted)",
           {"BM": (64, 128), "BN": (64, 128), "SLOTS": (1, 2), "GROUP": (1, 2, 4, 8), "KPASS": (256, 512, 1024),
            "PSUM_DTYPE": ("int16", "int8")},
           lambda k: {"quantization": f"int8 inputs, {k['PSUM_DTYPE']} partial sums", "residual": "none",
                      **_gemm_tags(k)}),
    *(_attention(*spec) for spec in _ATTENTION),
)}


def families_for(task: str) -> list[Family]:
    found = [f for f in FAMILIES.values() if f.task == task and f.path.exists()]
    if not found:
        raise KeyError(f"no strategy family solves task {task!r}; families: "
                       + ", ".join(f"{f.name} ({f.task})" for f in FAMILIES.values()))
    return found
