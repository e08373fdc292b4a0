"""Roofline of a workload on a machine, and how close a timed run came to it.

The limit is min(engine peak, arithmetic intensity x HBM bandwidth) for the engine mode
the task is meant to use (FP16 cube, FP32 via split = FP16/3, INT8, INT4, vector FP32).
The text form is what an LLM agent reads as feedback.
"""
from __future__ import annotations

from dataclasses import dataclass

from hwmodel.spec import MachineSpec
from hwmodel.timing import TimingResult

ENGINES = ("fp16", "bf16", "fp32_split", "int8", "int4", "vector_fp32")
_ENGINE_LABEL = {
    "fp16": "FP16 cube", "bf16": "BF16 cube", "fp32_split": "FP32-via-split (FP16 cube / 3)",
    "int8": "INT8 cube", "int4": "INT4 cube", "vector_fp32": "FP32 vector unit",
}


def engine_peak_tflops(machine: MachineSpec, engine: str) -> float:
    if engine == "fp32_split":
        return machine.peak_tflops("fp16") / 3
    if engine == "vector_fp32":
        return machine.vector_fp32_tflops
    if engine not in machine.cube.modes:
        raise ValueError(f"{machine.name} has no {engine} cube mode; it has {', '.join(machine.cube.modes)}")
    return machine.peak_tflops(engine)


@dataclass(frozen=True)
class Roofline:
    flops: float
    compulsory_bytes: float
    engine: str
    peak_tflops: float
    hbm_gbps: float

    @property
    def intensity(self) -> float:
        """FLOP per compulsory byte."""
        return self.flops / self.compulsory_bytes if self.compulsory_bytes else float("inf")

    @property
    def ridge(self) -> float:
        """Intensity at which the engine peak and the HBM roof meet (FLOP/B)."""
        return self.peak_tflops * 1e3 / self.hbm_gbps

    @property
    def bound(self) -> str:
        return "compute" if self.intensity >= self.ridge else "memory"

    @property
    def limit_tflops(self) -> float:
        return min(self.peak_tflops, self.intensity * self.hbm_gbps / 1e3)

    @property
    def floor_ns(self) -> float:
        return self.flops / (self.limit_tflops * 1e3)


def roofline(machine: MachineSpec, flops: float, compulsory_bytes: float, engine: str) -> Roofline:
    return Roofline(flops, compulsory_bytes, engine, engine_peak_tflops(machine, engine), machine.gm.hbm_gbps)


@dataclass(frozen=True)
class RooflineReport:
    roofline: Roofline
    time_ns: float
    tflops: float
    attained: float                 # fraction of the roofline limit
    busiest_pipe: str
    busiest_fraction: float
    pipe_busy: dict[str, float]
    l2_hit_rate: float

    def text(self) -> str:
        r = self.roofline
        busy = ", ".join(f"{p} {f:.0%}" for p, f in sorted(self.pipe_busy.items(), key=lambda kv: -kv[1]) if f >= 0.005)
        kind = "MTE2-bound (GM loads)" if self.busiest_pipe == "MTE2" else f"{self.busiest_pipe}-bound"
        return (f"{self.tflops:.1f} TFLOP/s in {self.time_ns / 1e3:.1f} us = {self.attained:.0%} of the roofline limit "
                f"{r.limit_tflops:.1f} TFLOP/s ({r.bound}-bound workload on the {_ENGINE_LABEL[r.engine]}: "
                f"peak {r.peak_tflops:.1f} TFLOP/s, intensity {r.intensity:.0f} FLOP/B vs ridge {r.ridge:.0f}).\n"
                f"Kernel is {kind}: busiest pipe {self.busiest_pipe} {self.busiest_fraction:.0%}. "
                f"Pipe busy: {busy}. L2 hit rate {self.l2_hit_rate:.0%}.")


def report(roof: Roofline, timing: TimingResult) -> RooflineReport:
    tflops = roof.flops / timing.time_ns / 1e3 if timing.time_ns else 0.0
    pipe, frac = timing.busiest_pipe
    return RooflineReport(roof, timing.time_ns, tflops, tflops / roof.limit_tflops if roof.limit_tflops else 0.0,
                          pipe, frac, dict(timing.pipe_busy), timing.l2_hit_rate)
