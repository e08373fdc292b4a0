"""The executors: results in job order and equal to in-process results; a worker killed
mid-job is an error and leaves nothing behind; workers and their sandbox children die with
the process that started them, even when it is SIGKILLed; `cubepilot run --workers` exits
by itself when done, also on a loaded machine."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from evaluator.cascade import EvalConfig
from evaluator.errors import EvalError
from evaluator.executor import EvalJob, InProcessExecutor, ProcessExecutor, WorkerCrashed
from evaluator.sandbox import SandboxLimits
from hwmodel.spec import load_machine
from strategies.library import kernel_path

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[1]
REDTEAM = Path(__file__).parent / "redteam"
SHAPE = "256x256x256"
SPIN = EvalConfig(seed=1, limits=SandboxLimits(wall_s=60, cpu_s=60))   # the endless loop runs until killed


def job(source: str, seed: int = 1, config: EvalConfig | None = None) -> EvalJob:
    return EvalJob(source, "hgemm", load_machine("ascend-910a"), SHAPE, config or EvalConfig(seed=seed))


def spin_job() -> EvalJob:
    return job((REDTEAM / "infinite_loop.py").read_text(), config=SPIN)


def processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, start time, command line) of every process now."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table[int(stat.parent.name)] = (int(fields[1]), fields[19], cmdline)
    return table


def descendants(root: int) -> dict[int, tuple[str, str]]:
    """pid -> (start time, command line) of root's children, their children, ..."""
    table, found, todo = processes(), {}, [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, started, cmdline) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = (started, cmdline)
                todo.append(pid)
    return found


def alive(procs: dict[int, tuple[str, str]]) -> dict[int, str]:
    """The processes of `procs` still running (same pid and start time, not a zombie)."""
    now = processes()
    out = {}
    for pid, (started, cmdline) in procs.items():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if pid in now and now[pid][1] == started and state != "Z":
            out[pid] = cmdline
    return out


def wait_until(condition, timeout_s: float, every_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every_s)
    return condition()


def kill_all(procs: dict[int, tuple[str, str]]) -> None:
    """Test hygiene: kill what this test started and is still running."""
    for pid in alive(procs):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def sandboxes_under(pids: list[int]) -> dict[int, tuple[str, str]]:
    found = {}
    for pid in pids:
        found.update({p: v for p, v in descendants(pid).items() if "sandbox_child" in v[1]})
    return found


def comparable(result) -> dict:
    return result.model_dump(exclude={"eval_seconds"})


def test_results_come_in_job_order_and_equal_in_process_results():
    jobs = [job(kernel_path("hgemm_cube").read_text(), seed=1),
            job((REDTEAM / "dunder_import.py").read_text()),     # fails at once: finishes before the first
            job((REDTEAM / "no_output.py").read_text(), seed=2),
            job(kernel_path("sgemm_cube").read_text(), seed=3)]
    with ProcessExecutor(2) as executor:
        pooled = list(executor.map(jobs))
        again = list(executor.map(jobs[1:2]))                 # a second map on the same workers
    here = list(InProcessExecutor().map(jobs))
    assert [r.status.value for r in pooled][:3] == ["ok", "policy_violation", "wrong"]
    assert [comparable(r) for r in pooled] == [comparable(r) for r in here]
    assert comparable(again[0]) == comparable(here[1])


def test_an_evaluator_error_in_a_worker_is_raised_here():
    with ProcessExecutor(1) as executor:
        with pytest.raises(EvalError, match="unknown task"):
            list(executor.map([EvalJob("def kernel(k, a, b, c): pass", "no-such-task",
                                       load_machine("ascend-910a"), SHAPE)]))


def each_evaluating(worker_pids: list[int]) -> bool:
    return all(sandboxes_under([pid]) for pid in worker_pids)


def test_a_worker_killed_mid_job_is_worker_crashed_and_close_leaves_nothing():
    executor = ProcessExecutor(2)
    mine = descendants(os.getpid())
    workers = {pid: mine[pid] for pid in executor.pids}
    victim, other = executor.pids
    survivor: dict[int, tuple[str, str]] = {}
    orphans: dict[int, tuple[str, str]] = {}      # the killed worker's sandbox children: its own cleanup is gone

    def kill_the_victim_mid_job() -> None:
        if wait_until(lambda: each_evaluating(executor.pids), 120):
            survivor.update(sandboxes_under([other]))
            orphans.update(sandboxes_under([victim]))
            os.kill(victim, signal.SIGKILL)

    try:
        threading.Thread(target=kill_the_victim_mid_job, daemon=True).start()
        with pytest.raises(WorkerCrashed, match="evaluations recorded so far are kept") as crash:
            list(executor.map([spin_job(), spin_job()]))
        assert "signal 9" in str(crash.value)
    finally:
        started = time.monotonic()
        executor.close()
        close_s = time.monotonic() - started
        kill_all(orphans)
    assert close_s < 10
    assert survivor and not alive(workers), "a worker outlived close()"
    assert wait_until(lambda: not alive(survivor), 5), "a stopped evaluation left its sandbox child running"
    with pytest.raises(EvalError, match="closed"):
        list(executor.map([spin_job()]))


EXECUTOR_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from evaluator.executor import ProcessExecutor
from tests.test_executor import spin_job
executor = ProcessExecutor(2)
print(*executor.pids, flush=True)
list(executor.map([spin_job(), spin_job(), spin_job()]))
"""


def outside_sandboxes(procs: dict[int, tuple[str, str]]) -> dict[int, tuple[str, str]]:
    return {pid: v for pid, v in procs.items() if "sandbox_child" not in v[1]}


def test_workers_and_sandbox_children_die_with_a_sigkilled_parent():
    parent = subprocess.Popen([sys.executable, "-c", EXECUTOR_SCRIPT.format(root=str(ROOT))], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen: dict[int, tuple[str, str]] = {}
    try:
        worker_pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(worker_pids) == 2, parent.stderr.read() if parent.poll() is not None else "no worker pids"

        def evaluating() -> bool:
            seen.update(descendants(parent.pid))
            return each_evaluating(worker_pids)
        assert wait_until(evaluating, 120), "jobs never started"
        seen.update(descendants(parent.pid))
        parent.kill()
        parent.wait(timeout=10)
        assert wait_until(lambda: not alive(outside_sandboxes(seen)), 5), f"outlived the parent: {alive(seen)}"
        assert wait_until(lambda: not alive(seen), 5), f"sandbox children outlived their worker: {alive(seen)}"
    finally:
        parent.kill()
        parent.wait(timeout=10)
        kill_all(seen)


CLI = [sys.executable, "-c", "from agents.cli import main; main()"]


def test_runs_with_workers_exit_when_done_on_a_loaded_machine(tmp_path):
    """Three 3-worker runs and a CPU burner side by side on this machine: each run prints its
    summary and exits by itself (with a pool library, one run in four hung at exit)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    runs = []
    try:
        for i in range(3):
            (tmp_path / str(i)).mkdir()
            runs.append(subprocess.Popen(
                [*CLI, "run", "--budget", "6", "--seed", str(i), "--workers", "3", "--json", "--shape", SHAPE,
                 "--archive", str(tmp_path / str(i) / "runs.sqlite")], cwd=tmp_path, env=env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
        for run in runs:
            out, err = run.communicate(timeout=540)
            assert run.returncode == 0, err
            assert json.loads(out)["evaluations"] == 6
    finally:
        burner.kill()
        burner.wait()
        for run in runs:
            if run.poll() is None:        # hung: kill it and its workers
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()


def test_ctrl_c_stops_a_run_with_workers_and_leaves_no_process(tmp_path):
    """Ctrl-C reaches the run's whole process group: workers ignore it, the run stops them
    (each busy one kills its sandbox child), prints its summary and exits 130."""
    archive = tmp_path / "runs.sqlite"
    run = subprocess.Popen([*CLI, "run", "--budget", "30", "--seed", "2", "--workers", "2", "--json", "--shape", SHAPE,
                            "--archive", str(archive)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    seen: dict[int, tuple[str, str]] = {}
    try:
        def two_recorded() -> bool:
            seen.update(descendants(run.pid))
            return recorded(archive) >= 2
        assert wait_until(two_recorded, 300), "the run recorded nothing"
        seen.update(descendants(run.pid))
        os.killpg(run.pid, signal.SIGINT)
        out, err = run.communicate(timeout=60)
        assert run.returncode == 130, err
        assert 2 <= json.loads(out)["evaluations"] < 30
        assert wait_until(lambda: not alive(seen), 5), f"left running: {alive(seen)}"
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        kill_all(seen)


def recorded(archive: Path) -> int:
    try:
        with sqlite3.connect(archive) as db:
            return db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
    except sqlite3.Error:
        return 0
