"""The C++ build of the manual training step (src/manual_step.cpp), compiled on first use and cached.

torch.utils.cpp_extension builds it with the machine's C++ compiler and ninja under torch's extension cache
(~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR), in one folder per source content, Python and torch
version, from a copy of the source kept there: every copy of the project (DVC's queued experiments run in
temp copies, the tests in others) shares one build, where building from each copy's own path would rebuild
it each time and overwrite a library another process has loaded. A build holds a lock there, so concurrent
first uses build once. `make setup` builds it, so stages only load it (~0.1 s).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from src.errors import ExplainedError
from src.fileio import write_bytes_atomic

SOURCE = Path(__file__).with_name("manual_step.cpp")
LIBRARY = "mnist_softmax"  # TORCH_LIBRARY namespace in SOURCE


class NativeBuildError(ExplainedError, RuntimeError):
    """The C++ step could not be built (no compiler?): say what failed and how to train without it."""


def load(library: str, source: Path, fix: str):
    """torch.ops.<library>, the TORCH_LIBRARY defined in `source`, built on first use (`fix`: what to tell
    a user whose machine cannot build it)."""
    # torch builds with the first ninja on PATH. Use the pinned pip one whether or not the venv is activated:
    # another ninja release (a system one) reads the build log of this one as stale and rebuilds everything.
    try:
        import ninja
        if shutil.which("ninja") != str(Path(ninja.BIN_DIR) / "ninja"):
            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    # cpp_extension warns at import that no CUDA toolkit matches; these CPU builds do not use one.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension
    code = source.read_bytes()
    name = f"{library}_{hashlib.sha256(code).hexdigest()[:16]}"
    build_dir = (Path(cpp_extension.get_default_build_root())
                 / f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}" / name)
    staged = build_dir / source.name
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        if not staged.is_file() or staged.read_bytes() != code:  # rewriting it would make ninja rebuild
            write_bytes_atomic(staged, code)
        cpp_extension.load(name, [str(staged)], extra_cflags=["-O2"], build_directory=str(build_dir),
                           is_python_module=False, verbose=False)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise NativeBuildError(f"could not build {source.name}, which needs a C++ compiler (g++) and ninja: "
                               f"{reason}; {fix}") from exc
    return getattr(torch.ops, library)


@functools.cache
def ops():
    """torch.ops.mnist_softmax (the manual step's epoch), built or loaded once per process."""
    return load(LIBRARY, SOURCE, "install g++, or set train.backward: manual (the same step in Python)")
