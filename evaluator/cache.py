"""The evaluation cache: results by content key, in memory and as JSON files in a directory.

The key covers everything that decides a result: kernel source, task, machine, shape, the
evaluation config and the source code of the evaluator and the simulator (hashed once per
process), so editing either invalidates old entries with no version number to bump. Files
are written atomically and never through a symlink; an entry that does not parse is a miss.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import re
import secrets
import stat
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from evaluator.errors import EvalError
from evaluator.result import EvalResult, EvalStatus
from evaluator.tasks.base import Shape, Task
from hwmodel.spec import MachineSpec

NOT_CACHED = frozenset({EvalStatus.timeout, EvalStatus.evaluator_error})   # say nothing about the kernel
MAX_ENTRY_BYTES = 16 * 2**20
_KEY = re.compile(r"[0-9a-f]{16,64}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ROOT = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def code_hash() -> str:
    """SHA-256 of every .py file under evaluator/ and hwmodel/ and of the machine presets."""
    files = sorted([*(_ROOT / "evaluator").rglob("*.py"), *(_ROOT / "hwmodel").rglob("*.py"),
                    *(_ROOT / "hwmodel" / "presets").glob("*.toml")])
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(_ROOT).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def fingerprint(record: Any) -> str:
    """A stable text of a frozen dataclass or frozen pydantic model, every field included."""
    return repr(_canonical(record))


def _canonical(x: Any) -> Any:
    if isinstance(x, BaseModel):
        if not x.model_config.get("frozen"):
            raise TypeError(f"{type(x).__qualname__} is not frozen: a cache key needs an immutable record")
        return type(x).__qualname__, x.model_dump(mode="json")
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        if not type(x).__dataclass_params__.frozen:
            raise TypeError(f"{type(x).__qualname__} is not frozen: a cache key needs an immutable record")
        return type(x).__qualname__, tuple((f.name, _canonical(getattr(x, f.name))) for f in dataclasses.fields(x))
    if isinstance(x, (tuple, list)):
        return tuple(_canonical(v) for v in x)
    if isinstance(x, dict):
        return tuple(sorted((repr(k), _canonical(v)) for k, v in x.items()))
    return x


def cache_key(source: str, task: Task, machine: MachineSpec, shape: Shape, config: Any) -> str:
    """Content key of one evaluation; `config` is the frozen evaluation config (e.g. EvalConfig)."""
    h = hashlib.sha256()
    for part in (code_hash(), source, task.name, fingerprint(task), machine.model_dump_json(),
                 task.format_shape(shape), fingerprint(config)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


class EvalCache:
    """Results by key, in memory and (optionally) as `<key>.json` files in a directory that
    several runs may share. Timeouts and evaluator errors are never stored."""

    def __init__(self, directory: str | Path | None = None):
        self._memory: dict[str, EvalResult] = {}
        self._dir = Path(directory) if directory else None
        if self._dir:
            if self._dir.is_symlink():
                raise EvalError(f"cache directory {self._dir} is a symlink; give the real directory")
            self._dir.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> EvalResult | None:
        hit = self._memory.get(key)
        if hit is None and self._dir and _KEY.fullmatch(key):
            hit = self._read(key)
            if hit is not None:
                self._memory[key] = hit
        return hit

    def put(self, key: str, result: EvalResult) -> None:
        if result.status in NOT_CACHED:
            return
        self._memory[key] = result
        if self._dir:
            if not _KEY.fullmatch(key):
                raise EvalError(f"cache key {key!r} is not a hex digest")
            try:
                self._write(key, result.model_dump_json().encode())
            except OSError as exc:   # the result stays cached in memory; the run goes on
                warnings.warn(f"could not store cache entry {key} in {self._dir}: {exc}", RuntimeWarning, stacklevel=2)

    # ---- files: every path is resolved against a directory fd opened without following symlinks
    def _read(self, key: str) -> EvalResult | None:
        try:
            dfd = os.open(self._dir, _DIR_FLAGS)
        except OSError:
            return None
        try:
            fd = os.open(f"{key}.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        except OSError:
            return None
        finally:
            os.close(dfd)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_ENTRY_BYTES:
                return None
            with os.fdopen(fd, "rb") as f:
                fd = -1
                data = f.read(MAX_ENTRY_BYTES + 1)
            result = EvalResult.model_validate_json(data)
        except (OSError, ValueError, ValidationError):
            return None
        finally:
            if fd >= 0:
                os.close(fd)
        return None if result.status in NOT_CACHED else result

    def _write(self, key: str, data: bytes) -> None:
        dfd = os.open(self._dir, _DIR_FLAGS)
        try:
            for _ in range(8):
                tmp = _temp_name(key)
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                                 dir_fd=dfd)
                    break
                except FileExistsError:
                    continue
            else:
                raise OSError(errno.EEXIST, "no free temporary name", tmp)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, f"{key}.json", src_dir_fd=dfd, dst_dir_fd=dfd)   # replaces a link, never follows it
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=dfd)
                except OSError:
                    pass
                raise
        finally:
            os.close(dfd)


def _temp_name(key: str) -> str:
    """Unpredictable and unique: runs may share a cache directory."""
    return f".{key}.{os.getpid()}.{secrets.token_hex(8)}.tmp"
