"""What the same-bytes CPU kernels cost: `benchmarks.train_speed --only ours --only floor` as a new process,
alternately with the kernels dvc.yaml pins for train and evaluate (ATEN_CPU_CAPABILITY=avx2,
MKL_CBWR=AVX2,STRICT) and with the ones torch and MKL pick for this CPU, --rounds times each.

    python -m benchmarks.kernels                 # 2 rounds of 5 epochs -> benchmarks/results/kernels.json
    python -m benchmarks.kernels --epochs 1 --rounds 1   # checks the script

pinned_over_native: the pinned epochs' total / the native ones' (ours, then floor).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.train_speed import RESULTS, ROOT, log, machine
from tests.harness import read_yaml


def same_kernels() -> dict[str, str]:
    """The variables dvc.yaml's `same_kernels` sets, as a dict."""
    spec = next(v for v in read_yaml(ROOT / "dvc.yaml")["vars"] if "same_kernels" in v)["same_kernels"]
    return dict(item.split("=", 1) for item in spec.split())


def run(epochs: int, env: dict[str, str], out: Path) -> dict:
    args = [sys.executable, "-m", "benchmarks.train_speed", "--only", "ours", "--only", "floor"]
    subprocess.run([*args, "--epochs", str(epochs), "--out", str(out)], cwd=ROOT, env=env, check=True)
    return json.loads(out.read_text())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "kernels.json"))
    args = ap.parse_args(argv)
    pins = same_kernels()
    native = {k: v for k, v in os.environ.items() if k not in pins}
    totals: dict[str, dict[str, float]] = {"pinned": {"ours": 0, "floor": 0}, "native": {"ours": 0, "floor": 0}}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for name, env in (("pinned", {**native, **pins}), ("native", native))[:: 1 if i % 2 == 0 else -1]:
                done = run(args.epochs, env, Path(tmp) / f"{name}-{i}.json")
                for contender in ("ours", "floor"):
                    totals[name][contender] += done["total_s"][contender]
                log(f"round {i + 1} {name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in done["total_s"].items()))
    result = {
        "machine": machine(),
        "same_kernels": pins,
        "epochs": args.epochs * args.rounds,
        "total_s": totals,
        "pinned_over_native": {c: totals["pinned"][c] / totals["native"][c] for c in ("ours", "floor")},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
