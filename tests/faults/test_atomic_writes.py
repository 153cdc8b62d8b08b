"""Kill -9 at any point of writing the model, history or metrics never leaves a truncated file under its
final name. A real child process rewrites the three files in a loop with the project's writers (save_model,
write_json_atomic), alternating two versions; it is SIGKILLed the moment a temp file for one of them appears
(so mid-write), many times. After every kill each file is absent or byte-equal to one complete version."""

from __future__ import annotations

import os
import signal
import time

import torch

from mnist_softmax.core.model import MLP, architecture, load_model, save_model
from mnist_softmax.fileio import read_json, write_json_atomic

ROUNDS = 24
WAIT_S = 60


def versions():
    """Two complete versions of each file, big enough (MBs) that writing one takes a while."""
    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        arch = architecture(784, [1024, 1024], 10, "relu")
        history = [
            {
                "epoch": e,
                "train_loss": seed / (e + 1),
                "test_loss": seed / (e + 2),
                "test_accuracy": 0.5,
            }
            for e in range(1, 30001)
        ]
        out.append(
            {
                "model": (MLP(**arch), arch),
                "history": history,
                "metrics": {
                    "accuracy": seed / 3,
                    "per_class": {str(k): k / seed for k in range(10)},
                    "padding": [seed] * 200000,
                },
            }
        )
    return out


def write_all(folder, version):
    model, arch = version["model"]
    save_model(folder / "model.pt", model, arch)
    write_json_atomic(folder / "history.json", version["history"])
    write_json_atomic(folder / "metrics.json", version["metrics"])


def writer_loop(folder, both):
    while True:
        for version in both:
            write_all(folder, version)


def temp_of(folder, name):
    return list(folder.glob(f".{name}.*.tmp"))


def test_kill_9_mid_write_never_leaves_a_truncated_file(tmp_path):
    both = versions()
    complete: dict[str, set[bytes]] = {}  # file name -> the set of byte strings a complete version has
    for i, version in enumerate(both):
        ref = tmp_path / f"ref{i}"
        write_all(ref, version)  # also imports everything the writers use before any fork
        for name in ("model.pt", "history.json", "metrics.json"):
            complete.setdefault(name, set()).add((ref / name).read_bytes())
    assert all(len(v) == 2 for v in complete.values())  # the versions differ, and each writes the same bytes

    folder = tmp_path / "out"
    folder.mkdir()
    cut_mid_write = 0
    for round_ in range(ROUNDS):
        target = ("model.pt", "history.json", "metrics.json")[round_ % 3]
        before = set(temp_of(folder, target))  # leftovers of earlier kills
        pid = os.fork()
        if pid == 0:  # the writer: never returns into pytest
            try:
                writer_loop(folder, both)
            finally:
                os._exit(1)
        try:
            deadline = time.monotonic() + WAIT_S
            while not set(temp_of(folder, target)) - before:
                assert time.monotonic() < deadline, f"no temp file of {target} appeared in {WAIT_S} s"
                time.sleep(0.0005)
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if set(temp_of(folder, target)) - before:
            cut_mid_write += 1  # the kill landed between creating the temp file and renaming it

        for name, good in complete.items():
            path = folder / name
            if path.exists():
                data = path.read_bytes()
                assert data in good, f"round {round_}: {name} is {len(data)} bytes, not a complete version"
        if (folder / "model.pt").exists():
            load_model(folder / "model.pt")
        for name in ("history.json", "metrics.json"):
            if (folder / name).exists():
                read_json(folder / name)
    assert cut_mid_write >= ROUNDS // 2, f"only {cut_mid_write} of {ROUNDS} kills landed mid-write"
