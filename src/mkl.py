"""MKL's conditional numerical reproducibility (CNR) in strict mode, for every stage, benchmark and test.

torch's CPU matrix products run in Intel MKL, which by default splits a product among the threads in a way
that depends on their count: 1 and 2 threads gave different weights here. With MKL_CBWR=AUTO,STRICT they
gave the same (Intel documents strict CNR for ?gemm on AVX2/AVX-512 code paths; builds without MKL ignore
the variable), and 2-thread training ran faster on the AMD VM: README, Performance, has the numbers.

MKL reads MKL_CBWR at its first call in a process: `use_strict_cnr` must run before the process multiplies
anything (importing torch is fine). A process that already used MKL keeps its mode.
"""
from __future__ import annotations

import os

MKL_CBWR = "AUTO,STRICT"  # AUTO: the code path MKL picks for this CPU (bits still differ across CPU types)


def use_strict_cnr() -> None:
    """Ask MKL for strict CNR in this process (and its children), unless MKL_CBWR is already set: a value
    set on purpose wins, and the train stage logs the one in effect (MLflow param mkl_cbwr_used)."""
    os.environ.setdefault("MKL_CBWR", MKL_CBWR)


def requested() -> str | None:
    """The MKL_CBWR this process asks for (None: MKL's default mode), as MKL reads it at its first call."""
    return os.environ.get("MKL_CBWR")
