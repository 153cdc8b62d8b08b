"""Sweep throughput on real MNIST: trials an hour with 1 worker against 2 workers on this machine.

Two copies of the project (tests/harness.py's copies: the working tree, its own git repository, the raw files
from a `dir:` source), a baseline `dvc repro` at train.epochs=2 committed in the first and byte-copied to the
second, one SQLite Optuna storage and one MLflow store for both. Then a study of --trials trials
(train.lr, log-uniform) with one worker (`--set train.threads=2`), and another with two workers at once, one
in each copy (`--set train.threads=1` each: the machine's 2 cores either way). wall_s runs from starting the
workers until the last one exits.

    python -m benchmarks.trials              # 4 trials a study -> benchmarks/results/trials.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.train_speed import RESULTS, ROOT, log, machine, raw_mnist
from mnist_softmax.core.params import load_params
from tests import harness as H

SWEEP = """study: {study}
objective: {{metric: test_accuracy, direction: maximize}}
trials: {trials}
space:
  train.lr: {{type: float, low: 0.005, high: 0.1, log: true}}
"""


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "trials.json"))
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-trials-"))
    try:
        raw = work / "raw"
        shutil.copytree(raw_mnist(load_params(ROOT / "params.yaml")), raw)
        params = H.set_dotted(
            H.read_params(ROOT),
            {
                "data.dataset": "mnist",
                "data.sources": {"mnist": [f"dir:{raw}"]},
                "train.epochs": args.epochs,
            },
        )
        first = H.make_project(work / "a", params)
        env = H.env(
            MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
            OPTUNA_STORAGE=f"sqlite:///{work / 'optuna.db'}",
            PYTHONPATH="src",
        )
        H.dvc(first, "repro", env_=env, timeout=3600)
        H.commit_all(first, "baseline")
        second = H.clone_project(first, work / "b")
        result = {"machine": machine(), "epochs": args.epochs, "trials": args.trials}
        for workers, threads in ((1, 2), (2, 1)):
            study = f"bench-{workers}w"
            for clone in (first, second):
                (clone / "sweep.yaml").write_text(SWEEP.format(study=study, trials=args.trials))
            t0 = time.monotonic()
            procs = [
                H.Proc(
                    [
                        "python",
                        "-m",
                        "mnist_softmax.team.sweep",
                        "sweep.yaml",
                        "--set",
                        f"train.threads={threads}",
                    ],
                    clone,
                    env,
                )
                for clone in (first, second)[:workers]
            ]
            for proc in procs:
                assert proc.wait(timeout=7200) == 0, proc.output
            wall = time.monotonic() - t0
            result[f"{workers} worker{'s' if workers > 1 else ''}"] = {
                "threads_each": threads,
                "wall_s": wall,
                "trials_per_hour": args.trials / wall * 3600,
            }
            log(f"{workers} worker(s): {args.trials} trials in {wall:.1f} s")
        one, two = result["1 worker"], result["2 workers"]
        result["two_over_one"] = two["trials_per_hour"] / one["trials_per_hour"]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        log(json.dumps(result, indent=2))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main() and 0)  # type: ignore[arg-type]  # sys.exit takes any object: an empty result exits 1
