"""A wall-clock budget for the trusted side's work on one candidate.

Replaying and timing a trace costs CPU in the trusted process; a trace built to be
expensive must end as a status, not hold a run for hours. In the main thread the budget
is enforced with a real-time interval timer (SIGALRM), which interrupts Python code and
numpy between calls; elsewhere (a signal cannot be delivered to another thread) it is
checked at the stage boundaries with `check()`.
"""
from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator


class BudgetExceeded(Exception):
    """The trusted side spent its whole wall-clock budget on one candidate."""


class Deadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.ends = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.ends:
            raise BudgetExceeded(f"{self.seconds:.0f} s")


@contextmanager
def deadline(seconds: float) -> Iterator[Deadline]:
    """Raise BudgetExceeded in the body once `seconds` of wall-clock time have passed."""
    budget = Deadline(seconds)
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield budget
        return

    def expire(signum, frame):
        raise BudgetExceeded(f"{seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield budget
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
