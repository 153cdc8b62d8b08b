"""The torchvision:URL source against a local HTTP mirror (127.0.0.1, ephemeral port)."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from mnist_softmax.core.download import DownloadError
from tests.stages.helpers import run_download, staging_leftovers
from tests.synthetic import write_files


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_mirror(tmp_path, monkeypatch):
    """Serve a folder over HTTP; yields (folder, base URL, list of requested paths)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    folder = tmp_path / "mirror"
    folder.mkdir()
    requests = []

    class Handler(_QuietHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("slash", [True, False], ids=["url/", "url"])
def test_torchvision_source_from_a_local_mirror(tiny, http_mirror, slash):
    folder, url, requests = http_mirror
    write_files(folder, tiny.files, gz=True)
    source = f"torchvision:{url if slash else url.rstrip('/')}"
    assert run_download(tiny, tiny.params([source])) == source
    raw = tiny.paths["raw"]
    assert sorted(p.name for p in raw.iterdir()) == sorted(tiny.files)
    for name, data in tiny.files.items():
        assert (raw / name).read_bytes() == data
    assert {f"/{name}.gz" for name in tiny.files} <= set(requests)  # really fetched over HTTP
    assert staging_leftovers(raw.parent) == []


def test_mirror_answering_404_fails_clearly_then_falls_back(tiny, http_mirror, capsys):
    _, url, requests = http_mirror  # an empty folder: every file is a 404
    source, fallback = f"torchvision:{url}", f"dir:{tiny.source_dir}"
    assert run_download(tiny, tiny.params([source, fallback])) == fallback
    assert requests  # the mirror was asked
    out = capsys.readouterr().out
    failure = next(line for line in out.splitlines() if "failed" in line)
    assert failure.startswith(f"download: {source} failed")
    assert "404" in failure and f"{url}train-images-idx3-ubyte.gz" in failure
    assert sorted(p.name for p in tiny.paths["raw"].iterdir()) == sorted(tiny.files)


def test_mirror_serving_a_non_gzip_page(tiny, http_mirror):
    folder, url, _ = http_mirror
    for name in tiny.files:
        (folder / f"{name}.gz").write_bytes(b"<html>captive portal</html>")
    with pytest.raises(DownloadError) as err:
        run_download(tiny, tiny.params([f"torchvision:{url}"]))
    msg = str(err.value)
    assert f"torchvision:{url}" in msg and "train-images-idx3-ubyte.gz" in msg and "not a valid gzip stream" in msg
    assert not tiny.paths["raw"].exists()
    assert staging_leftovers(tiny.paths["raw"].parent) == []


def test_plain_torchvision_source_needs_a_mirror_for_an_unknown_dataset(tiny):
    with pytest.raises(DownloadError, match="torchvision has no mirror for tiny; give one as torchvision:URL"):
        run_download(tiny, tiny.params(["torchvision"]))
