"""The simulated NPU: machine specs and presets, the kernel DSL, numerics, timing and roofline.

Nothing here knows about LLMs, tasks or evolution. `simulate` is the entry point:
it runs a kernel's Python to record an op trace, then times it and (optionally)
computes its numbers.
"""
