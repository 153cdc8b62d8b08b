"""src/native.py: the C++ step's build on first use, its cache, and what a machine without a compiler sees."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from src.native import LIBRARY, SOURCE, ops

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env})


def test_ops_builds_once_and_registers_the_epoch_op():
    assert ops() is ops()
    assert hasattr(getattr(torch.ops, LIBRARY), "manual_sgd_epoch")


def test_a_cached_build_loads_silently_in_a_new_process():
    """Stages report on stdout and keep stderr for errors: loading the library (cache warm after the test
    above) prints nothing, not even cpp_extension's warning about the CUDA toolkit."""
    ops()
    done = _python("from src.native import ops; print(ops().manual_sgd_epoch)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{LIBRARY}.manual_sgd_epoch" and done.stderr == ""


def test_no_compiler_is_an_explained_error(tmp_path):
    """A machine without a working C++ compiler gets one message naming the fix, not a build log."""
    done = _python("from src.native import NativeBuildError, ops\n"
                   "try:\n    ops()\nexcept NativeBuildError as e:\n    print(e)\n",
                   CXX="/bin/false", TORCH_EXTENSIONS_DIR=str(tmp_path))  # an empty cache: it must build
    assert done.returncode == 0, done.stderr
    assert "could not build manual_step.cpp" in done.stdout
    assert "set train.backward: manual" in done.stdout


def test_copies_of_the_project_share_one_build(tmp_path):
    """DVC's queued experiments and the e2e tests run from other folders: the same source there loads the
    existing build (the library file is not rewritten), and another source gets a folder of its own."""
    ops()
    from torch.utils.cpp_extension import get_default_build_root  # after ops(): it quiets the import's warning
    libraries = sorted(Path(get_default_build_root()).glob(f"*/{LIBRARY}_*/*.so"))
    assert libraries
    before = {lib: lib.stat().st_mtime_ns for lib in libraries}
    for copy in ("a", "b"):
        (tmp_path / copy).mkdir()
        (tmp_path / copy / "manual_step.cpp").write_bytes(SOURCE.read_bytes())
        done = _python(f"from pathlib import Path\nfrom src.native import LIBRARY, load\n"
                       f"load(LIBRARY, Path({str(tmp_path / copy / 'manual_step.cpp')!r}), 'fix')\n")
        assert done.returncode == 0, done.stderr
    after = sorted(Path(get_default_build_root()).glob(f"*/{LIBRARY}_*/*.so"))
    assert {lib: lib.stat().st_mtime_ns for lib in after} == before
