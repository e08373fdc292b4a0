"""The evaluation cache: keys cover config and evaluator code, files are written atomically
and never through a symlink, a corrupt entry is a miss, concurrent writers leave a valid entry."""
from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass

import pytest

import evaluator.cache as cache_mod
from evaluator.cache import EvalCache, cache_key
from evaluator.cascade import EvalConfig
from evaluator.result import EvalResult, EvalStatus
from evaluator.tasks import get_task
from hwmodel.spec import load_machine

SOURCE = "def kernel(k, a, b, c):\n    pass\n"


def result(message: str = "", status: EvalStatus = EvalStatus.ok) -> EvalResult:
    return EvalResult(status=status, stage="benchmark", message=message, task="hgemm", machine="ascend-910a",
                      shape="256x256x256", source_hash="0" * 32, time_ns=123.0)


def key(config=EvalConfig(seed=1)) -> str:
    task = get_task("hgemm")
    return cache_key(SOURCE, task, load_machine("ascend-910a"), (256, 256, 256), config)


# ---------------------------------------------------------------- the key
def test_key_changes_with_config_and_with_evaluator_source(monkeypatch):
    base = key()
    assert key() == base and len(base) == 32
    assert key(EvalConfig(seed=2)) != base
    assert key(EvalConfig(seed=1, seeds=5)) != base
    monkeypatch.setattr(cache_mod, "code_hash", lambda: "edited evaluator")
    assert key() != base


def test_key_takes_any_frozen_record_and_refuses_mutable_ones():
    @dataclass(frozen=True)
    class Frozen:
        x: int = 1

    @dataclass
    class Mutable:
        x: int = 1

    assert key(Frozen(1)) != key(Frozen(2))
    with pytest.raises(TypeError, match="not frozen"):
        key(Mutable())


def test_code_hash_is_computed_once_and_covers_the_simulator():
    assert cache_mod.code_hash() is cache_mod.code_hash()
    assert len(cache_mod.code_hash()) == 64


# ---------------------------------------------------------------- files
def test_round_trip_through_a_fresh_cache(tmp_path):
    k = key()
    EvalCache(tmp_path).put(k, result("stored"))
    got = EvalCache(tmp_path).get(k)
    assert got == result("stored")
    assert sorted(os.listdir(tmp_path)) == [f"{k}.json"]          # no temporary file left behind


def test_timeouts_and_evaluator_errors_are_not_cached(tmp_path):
    c = EvalCache(tmp_path)
    c.put(key(), result("slow", EvalStatus.timeout))
    c.put(key(EvalConfig(seed=2)), result("bug", EvalStatus.evaluator_error))
    assert c.get(key()) is None and c.get(key(EvalConfig(seed=2))) is None
    assert os.listdir(tmp_path) == []


def test_corrupt_entry_is_a_miss(tmp_path):
    k = key()
    for text in ("{not json", '{"status": "ok"}', "", "\0" * 100):
        (tmp_path / f"{k}.json").write_text(text)
        assert EvalCache(tmp_path).get(k) is None
    os.unlink(tmp_path / f"{k}.json")
    os.mkfifo(tmp_path / f"{k}.json")                             # not a regular file: no blocking read
    assert EvalCache(tmp_path).get(k) is None


def test_symlink_at_the_entry_name_is_replaced_not_followed(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    store = tmp_path / "cache"
    store.mkdir()
    k = key()
    os.symlink(target, store / f"{k}.json")
    assert EvalCache(store).get(k) is None                        # reads do not follow it either
    EvalCache(store).put(k, result("new"))
    assert target.read_text() == "precious"
    assert not (store / f"{k}.json").is_symlink()
    assert EvalCache(store).get(k) == result("new")


def test_symlink_at_the_temporary_name_is_not_followed(tmp_path, monkeypatch):
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    store = tmp_path / "cache"
    store.mkdir()
    k = key()
    planted = f".{k}.planted.tmp"
    os.symlink(target, store / planted)
    names = iter([planted, f".{k}.fresh.tmp"])
    monkeypatch.setattr(cache_mod, "_temp_name", lambda _key: next(names))
    EvalCache(store).put(k, result("new"))
    assert target.read_text() == "precious"
    assert (store / planted).is_symlink()                         # left alone; the write took another name
    assert EvalCache(store).get(k) == result("new")


def test_cache_directory_that_is_a_symlink_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(Exception, match="symlink"):
        EvalCache(tmp_path / "link")


def _writer(directory: str, k: str, tag: str, n: int) -> None:
    c = EvalCache(directory)
    for i in range(n):
        c.put(k, result(f"{tag} {i} " + "x" * 20_000))              # big enough that a torn write would show


def test_concurrent_writers_of_one_key_leave_a_valid_entry(tmp_path):
    k = key()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), k, tag, 200)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    seen = 0
    while any(p.is_alive() for p in procs):                       # readers never see a partial file
        got = EvalCache(tmp_path).get(k)
        if got is not None:
            assert got.message.split()[0] in ("a", "b")
            seen += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    got = EvalCache(tmp_path).get(k)
    assert got is not None and got.message.split()[:2] in (["a", "199"], ["b", "199"])
    assert os.listdir(tmp_path) == [f"{k}.json"]
