"""A tracking URI may carry credentials: what is printed, written to the run file or put on a command line
never holds them."""

from __future__ import annotations

import pytest

from mnist_softmax.tracking import last_word
from mnist_softmax.tracking.context import without_secrets
from mnist_softmax.tracking.lifecycle import _Guard
from mnist_softmax.tracking.run_file import read_link, write_link

SECRET_URI = "http://alice:s3cret@127.0.0.1:5000/?token=t0ken"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (SECRET_URI, "http://127.0.0.1:5000/"),
        (
            "postgresql+psycopg2://mlflow:pw@db.example:5432/runs?sslpassword=x",
            "postgresql+psycopg2://db.example:5432/runs",
        ),
        ("https://user@tracking.example", "https://tracking.example"),
        ("sqlite:////home/me/project/mlflow.db", "sqlite:////home/me/project/mlflow.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ],
)
def test_without_secrets_drops_user_password_and_query(uri, shown):
    assert without_secrets(uri) == shown


def test_the_run_file_holds_no_credentials_and_still_matches_its_store(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    path = tmp_path / ".mlflow-run.json"
    write_link(path, "run1", "abc", False, SECRET_URI)
    text = path.read_text()
    assert "s3cret" not in text and "alice" not in text and "t0ken" not in text
    link = read_link(path, "abc", SECRET_URI)
    assert link is not None and link.run_id == "run1"
    assert read_link(path, "abc", "http://127.0.0.1:5001/") is None  # another store


def test_the_stage_guard_gets_the_store_uri_in_its_environment_not_its_arguments():
    guard = _Guard(SECRET_URI, "run1", "train", "")
    try:
        with open(f"/proc/{guard.proc.pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        with open(f"/proc/{guard.proc.pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
    finally:
        guard.tell(last_word.DONE)
        guard.close()
    assert not any(b"s3cret" in arg for arg in argv), argv
    assert f"MLFLOW_TRACKING_URI={SECRET_URI}".encode() in environ
    assert guard.proc.returncode == 0
