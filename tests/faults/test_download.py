"""kill -9 of the download stage mid-fetch, then `dvc repro`: the next run fetches from scratch, ends with
verified files and removes the killed run's staging folder; nothing truncated reaches preprocess. The
mirror is a real HTTP server on 127.0.0.1 that trickles the .gz bytes (source
torchvision:http://127.0.0.1:PORT/), so the fetch is slow for real."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import signal
import threading
import time

import pytest

from tests import synthetic
from tests.harness import WAIT_S


class Mirror(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), Handler)
        self.gz = {f"/{name}.gz": gzip.compress(data, mtime=0) for name, data in files.items()}
        self.trickle = threading.Event()  # set: 512 bytes every 50 ms; clear: everything at once
        self.trickle.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Mirror  # the server it is made by

    def do_GET(self):
        body = self.server.gz.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if not self.server.trickle.is_set():
                self.wfile.write(body)
                return
            for i in range(0, len(body), 512):
                self.wfile.write(body[i : i + 512])
                self.wfile.flush()
                time.sleep(0.05)
        except (
            BrokenPipeError,
            ConnectionResetError,
        ):  # the client went away (killed, or torchvision's probe)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(raw_files):
    server = Mirror(raw_files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def partial_file(project):
    """(staging folder, a partly written raw file in it) while the download stage is fetching, else None."""
    for staging in (project.path / "data").glob(".raw.staging-*"):
        for part in staging.rglob("*-ubyte"):
            try:
                if part.stat().st_size > 0:
                    return staging, part
            except FileNotFoundError:
                pass
    return None


def test_kill_9_mid_fetch_then_repro_ends_with_verified_files(project, mirror, raw_files):
    project.params(**{"data.sources": {synthetic.NAME: [f"torchvision:{mirror.url}"]}})
    lock = project.read("dvc.lock")
    expected = synthetic.checksums(raw_files)

    repro = project.start("dvc", "repro", "preprocess")
    pid = project.stage_pid("pipeline.download")
    deadline = time.monotonic() + WAIT_S
    while (found := partial_file(project)) is None:
        assert repro.popen.poll() is None and time.monotonic() < deadline, repro.output
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    assert repro.wait() != 0
    staging, part = found
    total = len(raw_files[part.name])
    assert 0 < part.stat().st_size < total  # it really was cut mid-file
    assert not (project.path / "data/raw").exists()  # DVC removed the old output; no half set took its place
    assert project.read("dvc.lock") == lock

    mirror.trickle.clear()
    done = project.dvc("repro", "preprocess")
    assert done.returncode == 0, done.stdout
    assert "Running stage 'download'" in done.stdout
    assert "all 4 files match their SHA-256" in done.stdout
    raw = project.path / "data/raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(expected)
    for name, digest in expected.items():
        assert hashlib.sha256((raw / name).read_bytes()).hexdigest() == digest, name
    info = json.loads((project.path / "data/prepared/dataset.json").read_text())
    assert info["raw_sha256"] == expected  # what training reads was made from the verified files
    assert project.dvc("status", "preprocess").stdout.strip().endswith("Data and pipelines are up to date.")
    # The killed run's staging folder was never read, and the next run of the stage removed it.
    assert not staging.exists() and list((project.path / "data").glob(".raw.staging-*")) == []
