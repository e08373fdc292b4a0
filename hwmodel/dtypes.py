"""Element types the simulated machine knows: name, width in bits, numpy storage type.

int4 values are stored one per byte (ml_dtypes.int4) but cost 4 bits wherever bytes
are counted (capacity, bandwidth).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from hwmodel.errors import DtypeError

BITS: dict[str, int] = {
    "fp32": 32, "fp16": 16, "bf16": 16, "int32": 32, "int16": 16, "int8": 8, "int4": 4,
}
NUMPY: dict[str, type] = {
    "fp32": np.float32, "fp16": np.float16, "bf16": ml_dtypes.bfloat16,
    "int32": np.int32, "int16": np.int16, "int8": np.int8, "int4": ml_dtypes.int4,
}
FLOATS = frozenset({"fp32", "fp16", "bf16"})
INTS = frozenset({"int32", "int16", "int8", "int4"})
INT_RANGE: dict[str, tuple[int, int]] = {
    "int32": (-2**31, 2**31 - 1), "int16": (-2**15, 2**15 - 1), "int8": (-128, 127), "int4": (-8, 7),
}
_FROM_NUMPY = {np.dtype(v): k for k, v in NUMPY.items()}


def check_dtype(name: str) -> str:
    if name not in BITS:
        raise DtypeError(f"unknown dtype {name!r}; known: {', '.join(BITS)}")
    return name


def nbytes(dtype: str, elements: int) -> int:
    """Bytes occupied by `elements` values of `dtype` (int4 packs two per byte)."""
    return (elements * BITS[dtype] + 7) // 8


def from_numpy(dtype: np.dtype) -> str:
    try:
        return _FROM_NUMPY[np.dtype(dtype)]
    except KeyError:
        raise DtypeError(f"numpy dtype {dtype} has no machine equivalent; use one of {', '.join(BITS)}") from None
