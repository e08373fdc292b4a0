"""Shared fixtures and the hypothesis profile (no deadline: the first example of a test pays
numpy's warm-up; a fixed example budget keeps the suite fast)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("cubepilot", deadline=None, max_examples=100)
settings.load_profile("cubepilot")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)
