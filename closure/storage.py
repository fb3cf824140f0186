"""Safe files: atomic writes, one lock per output, cleanup after a killed process.

Every file the framework writes goes through this module, so that a reader
never sees a half-written file and a kill at any point leaves either the old
file or the new one:

    write_text(path, text)              # also write_bytes, write_json
    write_with(path, lambda tmp: ds.to_netcdf(tmp, ...))   # any writer that takes a path
    save_figure(fig, path, dpi=150)     # matplotlib
    torch_save(obj, path)               # torch.save

Each writes a temp file in the same folder, named ``.<name>.<host>_<pid>.<random>.tmp``,
flushes it to disk (fsync), and renames it onto ``path`` (atomic on POSIX);
on any exception (Ctrl-C and SIGTERM included) the temp file is removed.
A temp file left by a process that was killed outright (SIGKILL, power loss)
is removed by `remove_stale_temps`, which `output_lock` calls when the next
run takes the output.

    with output_lock(path):             # fail fast if another process writes `path`
        ...

The lock is a ``flock`` on ``.<name>.lock`` next to the output (a file or a
folder); the kernel releases it when its process dies, so
a killed run never leaves a lock behind. A second process asking for the same
output gets a `ClosureError` naming the holder's pid and host. Locks are
reentrant within a process (a pipeline holds its folder while its stages take
their own outputs).
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Union

from closure.errors import ClosureError

__all__ = ["atomic_path", "write_text", "write_bytes", "write_json", "write_with", "save_figure", "torch_save",
           "output_lock", "remove_stale_temps", "temp_name", "same_file", "refuse_input_as_output"]

PathLike = Union[str, os.PathLike]
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]*)_(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64]


def temp_name(path: PathLike) -> Path:
    """The temp file a write of ``path`` goes through: same folder, our host and pid in its name."""
    path = Path(path)
    return path.with_name(f".{path.name}.{_host()}_{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _fsync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # not supported on every file system
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success fsync it and rename it onto ``path``.

    On any exception (KeyboardInterrupt included) the temp file is removed and
    ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(errno.ENOENT, "the writer produced no file", str(tmp))
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_with(path: PathLike, writer: Callable[[Path], Any]) -> Path:
    """Atomically write ``path`` with ``writer(tmp_path)`` (netCDF, numpy, any writer taking a path)."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_bytes(path: PathLike, data: bytes) -> Path:
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: PathLike, text: str, newline: str | None = None) -> Path:
    def writer(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline=newline) as fh:
            fh.write(text)

    return write_with(path, writer)


def write_json(path: PathLike, obj: Any, **kwargs) -> Path:
    """``json.dumps(obj, **kwargs)`` plus a final newline, atomically."""
    return write_text(path, json.dumps(obj, **kwargs) + "\n")


def save_figure(fig, path: PathLike, **kwargs) -> Path:
    """``fig.savefig`` atomically; the format comes from ``path``'s suffix (the temp name ends in .tmp)."""
    kwargs.setdefault("format", Path(path).suffix.lstrip(".") or "png")
    return write_with(path, lambda tmp: fig.savefig(tmp, **kwargs))


def torch_save(obj: Any, path: PathLike) -> Path:
    import torch

    return write_with(path, lambda tmp: torch.save(obj, tmp))


# --------------------------------------------------------------------------- stale temp files
def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return True
    return True


def _stale(entry: Path) -> bool:
    m = _TEMP.match(entry.name)
    return bool(m) and m["host"] == _host() and not _alive(int(m["pid"]))


def remove_stale_temps(path: PathLike) -> list[Path]:
    """Remove temp files of ``path`` (and, for a folder, in it) left by dead processes of this host."""
    path = Path(path)
    removed = []
    candidates = []
    if path.parent.is_dir():
        prefix = f".{path.name}."
        candidates += [p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")]
    if path.is_dir():
        for folder, _, files in os.walk(path):
            candidates += [Path(folder) / f for f in files if f.startswith(".") and f.endswith(".tmp")]
    for p in candidates:
        if _stale(p):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


# --------------------------------------------------------------------------- locks
_HELD: dict[str, list] = {}  # lock file -> [fd, count]


def _lock_file(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _holder(lock: Path) -> str:
    try:
        info = lock.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        info = []
    if len(info) >= 2:
        return f"pid {info[0][:12]} on {info[1][:64]}"
    return "unknown pid"


@contextmanager
def output_lock(path: PathLike) -> Iterator[Path]:
    """Hold the lock of output ``path`` (a file or a folder) for the block; fail fast if taken.

    Inside, temp files that dead processes left for ``path`` are removed first.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock_file(path).resolve()
    key = str(lock)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise ClosureError(f"{path}: in use by another closure process ({_holder(lock)}); "
                                   "wait for it to finish or choose another output") from None
            raise
        try:  # the file we locked may have been removed by its last holder meanwhile: retry
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {_host()}\n".encode())
    _HELD[key] = [fd, 1]
    try:
        remove_stale_temps(path)
        yield path
    finally:
        del _HELD[key]
        try:
            lock.unlink()
        except OSError:
            pass
        os.close(fd)


# --------------------------------------------------------------------------- refusals
def same_file(a: PathLike, b: PathLike) -> bool:
    """True if ``a`` and ``b`` name the same existing file (or the same path once resolved)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def refuse_input_as_output(output: PathLike, inputs, what: str = "output") -> None:
    """Raise `ClosureError` if ``output`` is one of ``inputs`` (the same file, by resolved path or inode)."""
    output = Path(output)
    for given in inputs:
        if given is None:
            continue
        given = Path(given)
        if same_file(output, given):
            raise ClosureError(f"{output}: the {what} is also an input ({given}); choose another {what}")
