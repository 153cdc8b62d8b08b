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

SOURCE = Path(__file__).with_name("manual_step.cpp")
LIBRARY = "mnist_softmax"  # TORCH_LIBRARY namespace in SOURCE

# library -> the build folder this process loaded it from. A second build of one TORCH_LIBRARY namespace in
# one process aborts it (torch's registration check runs in the library's static initializer).
_loaded: dict[str, Path] = {}


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
    try:
        cpp_extension = _import_cpp_extension()
        code = source.read_bytes()
        root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()  # as torch's
        build_dir = (Path(root) / f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}"
                     / f"{library}_{hashlib.sha256(code).hexdigest()[:16]}")
        if library in _loaded:
            if _loaded[library] != build_dir:
                raise NativeBuildError(f"this process already loaded {library} from {_loaded[library]}, not "
                                       f"{build_dir}: a new source or cache folder needs a new process")
            return getattr(torch.ops, library)
        staged = build_dir / source.name
        build_dir.mkdir(parents=True, exist_ok=True)
        _stage(staged, code)
        cpp_extension.load(build_dir.name, [str(staged)], extra_cflags=["-O2"], build_directory=str(build_dir),
                           is_python_module=False, verbose=False)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        raise NativeBuildError(f"could not build or load {source.name} (it needs a C++ compiler, g++, and "
                               f"ninja): {_reason(exc)}; {fix}") from exc
    _loaded[library] = build_dir
    return getattr(torch.ops, library)


def _import_cpp_extension():
    """torch.utils.cpp_extension, without the warning its import logs when no CUDA toolkit matches torch's
    CUDA version (these are CPU builds); its later warnings, such as a wrong compiler, still show."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension


def _stage(staged: Path, code: bytes) -> None:
    """The build's own copy of the source, written once: a rewrite (even of the same bytes, by another
    process starting at the same moment) would make ninja rebuild a library that others may have loaded."""
    if staged.is_file() and staged.read_bytes() == code:
        return
    tmp = staged.with_name(f".{staged.name}.{os.getpid()}.tmp")
    tmp.write_bytes(code)
    try:
        os.link(tmp, staged)  # fails if another process staged it first: theirs stays, same bytes
    except FileExistsError:
        if staged.read_bytes() != code:  # a damaged copy: replace it
            os.replace(tmp, staged)
    finally:
        tmp.unlink(missing_ok=True)


def _reason(exc: BaseException) -> str:
    """The compiler's error lines from a failed build (torch puts the build output in the message), else the
    message's last line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() and not line.startswith("ninja:")]
    return " | ".join(errors[:3]) if errors else (lines[-1] if lines else type(exc).__name__)


@functools.cache
def ops():
    """torch.ops.mnist_softmax (the manual step's epoch), built or loaded once per process."""
    return load(LIBRARY, SOURCE, "install g++, or set train.backward: manual (the same step in Python)")
