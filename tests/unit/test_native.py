"""src/native.py: the C++ step's build on first use, its cache, and what a machine without a compiler sees."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.native import LIBRARY, SOURCE, NativeBuildError, load, ops

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env})


def _cache_root() -> Path:
    """Where src.native builds: $TORCH_EXTENSIONS_DIR, else torch's default (imported after ops(), which
    quiets the import's warning)."""
    from torch.utils.cpp_extension import get_default_build_root
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def test_ops_registers_the_epoch_op():
    ops()
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
    assert "could not build or load manual_step.cpp" in done.stdout
    assert "set train.backward: manual" in done.stdout


def test_a_compile_error_is_reported_with_the_compiler_s_words(tmp_path):
    """The message carries the compiler's error line, not just ninja's 'build stopped'."""
    broken = tmp_path / "broken.cpp"
    broken.write_text("#error this source is broken on purpose\n")
    done = _python("from pathlib import Path\nfrom src.native import NativeBuildError, load\n"
                   f"try:\n    load('broken_lib', Path({str(broken)!r}), 'the fix')\n"
                   "except NativeBuildError as e:\n    print(e)\n",
                   TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    assert done.returncode == 0, done.stderr
    assert "this source is broken on purpose" in done.stdout and done.stdout.strip().endswith("the fix")


def test_copies_of_the_project_share_one_build(tmp_path):
    """DVC's queued experiments and the e2e tests run from other folders: the same source there loads the
    existing build (the library file is not rewritten), and another source gets a folder of its own."""
    ops()
    libraries = sorted(_cache_root().glob(f"*/{LIBRARY}_*/*.so"))
    assert libraries
    before = {lib: lib.stat().st_mtime_ns for lib in libraries}
    for copy in ("a", "b"):
        (tmp_path / copy).mkdir()
        (tmp_path / copy / "manual_step.cpp").write_bytes(SOURCE.read_bytes())
        done = _python(f"from pathlib import Path\nfrom src.native import LIBRARY, load\n"
                       f"load(LIBRARY, Path({str(tmp_path / copy / 'manual_step.cpp')!r}), 'fix')\n")
        assert done.returncode == 0, done.stderr
    after = sorted(_cache_root().glob(f"*/{LIBRARY}_*/*.so"))
    assert {lib: lib.stat().st_mtime_ns for lib in after} == before


def test_another_source_builds_in_a_folder_of_its_own(tmp_path):
    """An edited source (here: one more comment) must not reuse, or overwrite, the build of the other."""
    ops()
    root = _cache_root()
    before = {p: p.stat().st_mtime_ns for p in root.glob(f"*/{LIBRARY}_*/*.so")}
    edited = tmp_path / "manual_step.cpp"
    edited.write_bytes(SOURCE.read_bytes() + b"// edited\n")
    done = _python(f"from pathlib import Path\nfrom src.native import LIBRARY, load\n"
                   f"load(LIBRARY, Path({str(edited)!r}), 'fix')\n")
    assert done.returncode == 0, done.stderr
    new = [p for p in root.glob(f"*/{LIBRARY}_*/*.so") if p not in before]
    try:
        assert len(new) == 1 and (new[0].parent / "manual_step.cpp").read_bytes() == edited.read_bytes()
        assert {p: p.stat().st_mtime_ns for p in before} == before
    finally:
        for lib in new:
            shutil.rmtree(lib.parent)


def test_a_second_build_of_the_library_in_one_process_is_refused_not_loaded(tmp_path):
    """Loading another build of the same TORCH_LIBRARY namespace would abort the whole process."""
    ops()
    other = tmp_path / "manual_step.cpp"
    other.write_bytes(SOURCE.read_bytes() + b"// another build\n")
    with pytest.raises(NativeBuildError, match="already loaded mnist_softmax from"):
        load(LIBRARY, other, "fix")
    digest = hashlib.sha256(other.read_bytes()).hexdigest()[:16]
    assert not list(_cache_root().glob(f"*/{LIBRARY}_{digest}"))  # refused before building anything
