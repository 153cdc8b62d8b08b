"""Atomic writes and hashing: a crash never leaves a half-written file under its final name.

Temp files and staging folders sit beside their target as `.<name>.<pid>-<random>.tmp` and
`.<name>.staging-<pid>-<random>`: git ignores them, and the next write of the same target removes those
whose process is gone. Outputs get the modes the umask gives any new file (0644 / 0755 under umask 022).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from mnist_softmax.errors import ExplainedError

CHUNK = 1 << 20


class DiskFullError(ExplainedError):
    """A write found no space left on its device (not an OSError: no other source or retry can help)."""


def progress(total: int | None, desc: str, unit: str = "B", initial: int = 0):
    """A tqdm bar on stderr, silent when stderr is not a terminal (CI, DVC's captured logs)."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "B",
        leave=False,
        initial=initial,
        disable=not sys.stderr.isatty(),
    )


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


@functools.cache
def umask() -> int:
    """The process's umask (read by setting it, then putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(folder: Path, prefix: str) -> None:
    """Remove the temp files and staging folders `prefix<pid>-...` in `folder` whose process is gone."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)-")
    for entry in folder.iterdir() if folder.is_dir() else ():
        m = pattern.match(entry.name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


@contextlib.contextmanager
def explained_disk_full(path: str | Path):
    """Turn 'no space left on device' into a one-line error naming what was being written."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFullError(f"no space left on the device while writing {path}") from e
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temp path beside `path`; on success fsync it and rename it over `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    remove_stale(path.parent, prefix)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f"{prefix}{os.getpid()}-", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with explained_disk_full(path):
            yield tmp
            tmp.chmod(0o666 & ~umask())  # mkstemp makes it 0600 (and a writer may have made it anew)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | Path, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux's renameat2 with RENAME_EXCHANGE, which Python's os module does not
    offer); False where the system or file system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield an empty staging folder beside `path`; on success it replaces `path` whole, else it is deleted.
    The old folder is swapped out in one step: `path` always holds the old or the new folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.staging-"
    remove_stale(path.parent, prefix)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{prefix}{os.getpid()}-"))
    staging.chmod(0o777 & ~umask())  # mkdtemp makes it 0700
    try:
        with explained_disk_full(path):
            yield staging
        if not path.exists():
            os.replace(staging, path)
        elif not _exchange(staging, path):  # where it cannot swap: a moment without `path`
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{prefix}{os.getpid()}-"))
            os.replace(path, old / path.name)
            os.replace(staging, path)
            staging = old
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
