"""Atomic writes: the target is replaced whole on success, untouched on failure, and no temp is left."""

from __future__ import annotations

import json
import os

import pytest

from mnist_softmax.fileio import (
    atomic_dir,
    atomic_path,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
)


def listing(folder):
    return sorted(os.listdir(folder))


def test_write_bytes_atomic_creates_and_replaces(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    write_bytes_atomic(target, b"first")
    assert target.read_bytes() == b"first"
    write_bytes_atomic(target, b"second, longer")
    assert target.read_bytes() == b"second, longer"
    assert listing(target.parent) == ["out.bin"]


def test_write_json_atomic_round_trip(tmp_path):
    target = tmp_path / "m.json"
    obj = {"b": [1, 2.5], "a": "x"}
    write_json_atomic(target, obj)
    assert read_json(target) == obj == json.loads(target.read_text())
    assert list(read_json(target)) == ["b", "a"]  # key order kept
    assert target.read_text().endswith("\n")
    assert listing(tmp_path) == ["m.json"]


def test_atomic_path_yields_a_sibling_temp(tmp_path):
    target = tmp_path / "x.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
        assert not target.exists()  # nothing under the final name until success
    assert target.read_text() == "new"
    assert listing(tmp_path) == ["x.txt"]


def test_failure_inside_atomic_path_keeps_the_previous_target(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["x.txt"]


def test_failure_inside_atomic_path_with_no_previous_target(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "x.txt") as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert listing(tmp_path) == []


def test_atomic_dir_replaces_the_folder_whole(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("from an older run")
    with atomic_dir(target) as staging:
        assert staging.parent == tmp_path and listing(staging) == []
        (staging / "a.txt").write_text("A")
        (staging / "nested").mkdir()
        (staging / "nested" / "b.txt").write_text("B")
    assert listing(target) == ["a.txt", "nested"]  # stale.txt is gone
    assert (target / "nested" / "b.txt").read_text() == "B"
    assert listing(tmp_path) == ["out"]


def test_failure_inside_atomic_dir_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("previous")
    with pytest.raises(OSError), atomic_dir(target) as staging:
        (staging / "partial.txt").write_text("x")
        raise OSError("disk full")
    assert listing(target) == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "previous"
    assert listing(tmp_path) == ["out"]  # no .out.staging-* left


def test_failure_inside_atomic_dir_with_no_previous_folder(tmp_path):
    with pytest.raises(ValueError), atomic_dir(tmp_path / "out") as staging:
        (staging / "partial.txt").write_text("x")
        raise ValueError
    assert listing(tmp_path) == []
