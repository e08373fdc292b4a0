"""Reference kernels of the published strategies, one DSL module each (`kernel(k, ...)`).

Each module's upper-case constants are its knobs; the module docstring says which
published recipe it implements.
"""
from pathlib import Path

LIBRARY_DIR = Path(__file__).parent


def kernel_path(name: str) -> Path:
    return LIBRARY_DIR / f"{name}.py"
