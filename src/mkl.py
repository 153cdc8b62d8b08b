"""MKL's conditional numerical reproducibility (CNR) in strict mode, for every stage, benchmark and test.

torch's CPU matrix products run in Intel MKL. By default MKL splits a product among the threads in a way
that depends on the thread count, so 1 and 2 threads give different bits; and the split does not line up
with the rows each thread later updates elementwise (`lerp_` of the weights), so each step moves half of
the weights between the cores' caches. Strict CNR (MKL_CBWR=AUTO,STRICT) gives the same bits for any thread
count on one CPU, and on the 2-vCPU AMD VM of 2026-11-29 it also made 2-thread training faster: the weight
update's `lerp_` fell from ~100 to ~55 ms an epoch, and from ~510 to ~180 ms in the VM's slow state, whose
core-to-core round trip of ~340 ns (against ~60 ns) makes every such move expensive (README, Performance).

MKL reads MKL_CBWR at its first call in a process: `use_strict_cnr` must run before the process multiplies
anything (importing torch is fine). A process that already used MKL keeps its mode.
"""
from __future__ import annotations

import os

MKL_CBWR = "AUTO,STRICT"  # AUTO: the code path MKL picks for this CPU (bits still differ across CPU types)


def use_strict_cnr() -> None:
    """Ask MKL for strict CNR in this process (and its children), unless MKL_CBWR is already set."""
    os.environ.setdefault("MKL_CBWR", MKL_CBWR)
