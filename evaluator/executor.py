"""Where evaluations run: the `Executor` seam that the evolution loop, an LLM layer or a
distributed executor hands `EvalJob`s to. `InProcessExecutor` evaluates here;
`ProcessExecutor` evaluates in N worker processes of its own (no pool library, no threads,
no exit handlers) that die with this process, even when it is SIGKILLed, and never outlive
`close()`.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Iterator, NoReturn, Protocol, Sequence

from evaluator.cascade import EvalCache, EvalConfig, evaluate
from evaluator.errors import EvalError
from evaluator.result import EvalResult
from evaluator.tasks import get_task
from hwmodel.spec import MachineSpec

STOP_GRACE_S = 5.0        # close(): how long workers get to exit (idle: stop message, busy: SIGTERM) before SIGKILL


@dataclass(frozen=True)
class EvalJob:
    """One evaluation, complete in itself: the same job gives the same result in any process."""

    source: str
    task: str                         # task name (see `cubepilot tasks`)
    machine: MachineSpec
    shape: str                        # benchmark shape as the task writes it, e.g. "256x256x256"
    config: EvalConfig = EvalConfig()  # config.seed fixes the test inputs; None draws fresh ones


class Executor(Protocol):
    """Evaluates jobs; `map` yields one result per job, in job order, as soon as it is known."""

    def map(self, jobs: Sequence[EvalJob]) -> Iterator[EvalResult]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


class WorkerCrashed(EvalError):
    """A worker process died during an evaluation (killed, or out of memory)."""


class InProcessExecutor:
    """Evaluates each job in this process, one after another."""

    def __init__(self, cache_dir: str | Path | None = None):
        self.cache = EvalCache(cache_dir)

    def run(self, job: EvalJob) -> EvalResult:
        task = get_task(job.task)
        return evaluate(job.source, task, job.machine, task.parse_shape(job.shape), job.config, self.cache)

    def map(self, jobs: Sequence[EvalJob]) -> Iterator[EvalResult]:
        for job in list(jobs):
            yield self.run(job)

    def close(self) -> None:
        pass

    def __enter__(self) -> InProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_executor(workers: int, cache_dir: str | Path | None = None) -> Executor:
    """One evaluation at a time in this process, or `workers` side by side in worker processes."""
    return ProcessExecutor(workers, cache_dir) if workers > 1 else InProcessExecutor(cache_dir)


@dataclass
class _Worker:
    proc: multiprocessing.process.BaseProcess
    conn: Connection
    job_id: int | None = None         # the job it is evaluating; None: idle


class ProcessExecutor:
    """Evaluates up to `workers` jobs side by side, one per worker process ("spawn"), each
    worker with its own pipe. Create it in the thread that outlives it: workers are killed
    when that thread's process or thread ends (PR_SET_PDEATHSIG on Linux)."""

    def __init__(self, workers: int, cache_dir: str | Path | None = None):
        ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._jobs_sent = 0
        self._crash: str | None = None
        try:
            for i in range(workers):
                ours, theirs = ctx.Pipe(duplex=True)
                proc = ctx.Process(target=_serve, args=(theirs, os.getpid(), str(cache_dir) if cache_dir else None),
                                   name=f"cubepilot-eval-{i}", daemon=True)
                proc.start()
                theirs.close()            # so a dead worker reads as EOF here
                self._workers.append(_Worker(proc, ours))
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def map(self, jobs: Sequence[EvalJob]) -> Iterator[EvalResult]:
        if not self._workers:
            raise EvalError("this executor is closed; open another one to evaluate more jobs")
        todo = list(enumerate(jobs))
        index_of: dict[int, int] = {}     # job id -> position in jobs (a job of an abandoned map is absent)
        done: dict[int, EvalResult] = {}
        for position in range(len(todo)):
            while True:
                for worker in self._workers:      # idle workers take the next jobs
                    if worker.job_id is None and todo:
                        index, job = todo.pop(0)
                        index_of[self._send(worker, job)] = index
                if position in done:
                    break
                busy = [w for w in self._workers if w.job_id is not None]
                ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in busy]))
                for worker in busy:
                    if worker.conn in ready or worker.proc.sentinel in ready:
                        job_id, result = self._receive(worker)
                        if job_id in index_of:
                            done[index_of.pop(job_id)] = result
            yield done.pop(position)

    def _send(self, worker: _Worker, job: EvalJob) -> int:
        if self._crash:
            raise WorkerCrashed(self._crash)
        self._jobs_sent += 1
        worker.job_id = self._jobs_sent
        try:
            worker.conn.send((worker.job_id, job))
        except OSError:                   # it died while idle
            self._crashed(worker)
        return worker.job_id

    def _receive(self, worker: _Worker) -> tuple[int, EvalResult]:
        try:                              # only its sentinel may be ready: it died without an answer
            message = worker.conn.recv() if worker.conn.poll() else None
        except (EOFError, OSError):
            message = None
        if message is None:
            self._crashed(worker)
        job_id, ok, payload = message
        worker.job_id = None
        if not ok:
            raise payload                 # the evaluator itself failed (e.g. an unknown task)
        return job_id, payload

    def _crashed(self, worker: _Worker) -> NoReturn:
        worker.proc.join(timeout=1.0)
        code = worker.proc.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        self._crash = (f"a worker process died during an evaluation ({how}; killed, or out of memory); the "
                       f"evaluations recorded so far are kept, and resuming the run evaluates the rest")
        raise WorkerCrashed(self._crash)

    def close(self) -> None:
        """Stop every worker: an idle one gets a stop message, a busy one SIGTERM (its evaluation
        then kills its sandbox child); any still alive after STOP_GRACE_S gets SIGKILL."""
        for worker in self._workers:
            try:
                if worker.job_id is None:
                    worker.conn.send(None)
                else:
                    worker.proc.terminate()
            except OSError:               # it is gone already
                pass
        deadline = time.monotonic() + STOP_GRACE_S
        for worker in self._workers:
            worker.proc.join(max(0.0, deadline - time.monotonic()))
        for worker in self._workers:
            if worker.proc.is_alive():
                worker.proc.kill()
                worker.proc.join(1.0)
        for worker in self._workers:
            worker.conn.close()
        self._workers = []

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies, then make sure the parent has
    not already died (it may have before the request). Elsewhere: nothing to ask."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os._exit(1)


def _serve(conn: Connection, parent_pid: int, cache_dir: str | None) -> None:
    """A worker: evaluate each job received, answer (job id, ok, result or error); stop on None."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)                     # Ctrl-C is the parent's
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))  # unwinds: the sandbox child is killed
    here = InProcessExecutor(cache_dir)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        job_id, job = message
        try:
            answer = (job_id, True, here.run(job))
        except Exception as exc:          # the parent raises it
            exc.add_note(f"in evaluation worker {os.getpid()}:\n{traceback.format_exc()}")
            answer = (job_id, False, exc)
        try:
            conn.send(answer)
        except OSError:                   # the parent is gone
            return
        except Exception:                 # an error that does not pickle: its text then
            conn.send((job_id, False, EvalError(f"{type(answer[2]).__name__}: {answer[2]}")))
