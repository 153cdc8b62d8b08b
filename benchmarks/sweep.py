"""The pipeline's own timings with the real `dvc` on real MNIST, in a throw-away copy of the project
(tests/harness.py's copy: the working tree as its own git repository, the project's venv first on PATH, its
own mlflow.db; the raw files from a `dir:` source beside it, so no network is needed):

  download_s          `dvc repro download` on the fresh copy (copy + SHA-256 check).
  repro_s             then `dvc repro`: preprocess, train, evaluate, plot with the raw data in place;
                      stage_s: each stage from its "Running stage" line to the next stage's (so DVC's
                      hashing and caching of its outputs included), the last one to the end.
  course_script_s     right after it, the conventional course script (`benchmarks.train_speed --only
                      baseline`, same epochs) as a new Python process, timed from outside.
  repro_over_course   repro_s / course_script_s.
  noop_repro_s        `dvc repro` with nothing changed (median of 3).
  forced_repro_s      `dvc repro -f`: all five stages again, the raw data in place (download re-checks it);
                      forced_stage_s per stage as above, and from it:
  train_over_epochs   the train stage's time / its epochs' (the run's system/epoch_seconds: each epoch's
                      training and test evaluation), what start-up, store, model logging and the guard add.
  forced_over_course  forced_repro_s / course_script_s; forced_over_train: / the train stage's time.
  exp_run_s           `dvc exp run -f` right after (the same stages as an experiment); exp_run_over_repro.
  trial_s             a one-trial study (`python -m mnist_softmax.team.sweep`, SQLite storage, one train.lr
                      value), against lr_exp_run_s, `dvc exp run -S train.lr=` another value:
                      trial_over_exp_run (the worker's start-up, Optuna, its study's MLflow run, `dvc exp
                      show`, all counted in the one trial).
  sweep[-j J]         4 learning rates queued with `dvc exp run --queue -S train.lr=... -S train.threads=T`,
                      then `dvc queue start -j J`, timed until the queue is done. -j 1 uses 2 threads, -j 2 one
                      thread per worker: both use the 2 cores. Different thread counts are different params,
                      so no experiment of the second sweep is restored from the first's run-cache.

    python -m benchmarks.sweep                 # 10 epochs -> benchmarks/results/sweep.json
    python -m benchmarks.sweep --epochs 2      # checks the script
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.train_speed import RESULTS, ROOT, log, machine, raw_mnist
from mnist_softmax.core.params import load_params
from tests import harness as H

EPOCH_SECONDS = "system/epoch_seconds"  # the train stage logs each epoch's time under this key
LRS = "0.005,0.02,0.03,0.05"
ONE_TRIAL = """study: bench
objective: {metric: test_accuracy, direction: maximize}
trials: 1
space:
  train.lr: {type: categorical, choices: [0.0123]}
"""  # none is params.yaml's lr: every experiment trains


def timed(fn, *args, **kw) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def timed_repro(root: Path, *args: str) -> tuple[float, dict[str, float]]:
    """`dvc repro ARGS`'s wall time, and each stage's (see the module's docstring)."""
    t0 = time.monotonic()
    proc = H.Proc([H.BIN / "dvc", "repro", *args], root)
    assert proc.wait(timeout=3600) == 0, proc.output
    end = time.monotonic()
    starts = {
        name: at for line, at in zip(proc.lines, proc.times) for name in H.STAGES if f"Running stage '{name}'" in line
    }
    assert list(starts) == (H.STAGES if "-f" in args else H.STAGES[1:]), proc.output
    ends = [*list(starts.values())[1:], end]
    return end - t0, {name: stop - start for (name, start), stop in zip(starts.items(), ends)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--no-sweeps", action="store_true", help="only the repro, course-script and no-op timings")
    ap.add_argument("--out", default=str(RESULTS / "sweep.json"))
    args = ap.parse_args(argv)
    params = load_params(ROOT / "params.yaml")
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        raw = work / "raw"
        shutil.copytree(raw_mnist(params), raw)
        project = H.read_params(ROOT)
        H.set_dotted(
            project,
            {
                "data.dataset": "mnist",
                "data.sources": {"mnist": [f"dir:{raw}"]},
                "train.epochs": args.epochs,
            },
        )
        root = H.make_project(work / "project", project)
        result = {"machine": machine(), "epochs": args.epochs}
        result["download_s"], _ = timed(H.dvc, root, "repro", "download", timeout=3600)
        result["repro_s"], result["stage_s"] = timed_repro(root)
        result["course_script_s"], _ = timed(
            H.run,
            [
                H.BIN / "python",
                "-m",
                "benchmarks.train_speed",
                "--only",
                "baseline",
                "--epochs",
                args.epochs,
                "--out",
                work / "course.json",
            ],
            ROOT,
            timeout=3600,
        )
        result["repro_over_course"] = result["repro_s"] / result["course_script_s"]
        H.commit_all(root, "results")
        noop = [timed(H.dvc, root, "repro")[0] for _ in range(3)]
        result["noop_repro_s"] = {"median": statistics.median(noop), "all": noop}
        result["forced_repro_s"], result["forced_stage_s"] = timed_repro(root, "-f")
        train_run = H.runs(root)[-1]  # the forced repro's
        result["train_epochs_s"] = sum(v for _, v in H.metric_steps(root, train_run.info.run_id, EPOCH_SECONDS))
        result["train_over_epochs"] = result["forced_stage_s"]["train"] / result["train_epochs_s"]
        result["forced_over_course"] = result["forced_repro_s"] / result["course_script_s"]
        result["forced_over_train"] = result["forced_repro_s"] / result["forced_stage_s"]["train"]
        result["exp_run_s"], _ = timed(H.dvc, root, "exp", "run", "-f", timeout=3600)
        result["exp_run_over_repro"] = result["exp_run_s"] / result["forced_repro_s"]
        result["lr_exp_run_s"], _ = timed(H.dvc, root, "exp", "run", "-S", "train.lr=0.0124", timeout=3600)
        (root / "one-trial.yaml").write_text(ONE_TRIAL)
        sweep = [H.BIN / "python", "-m", "mnist_softmax.team.sweep", "one-trial.yaml"]
        result["trial_s"], _ = timed(H.run, sweep, root, timeout=3600, env_=H.env(PYTHONPATH="src"))
        result["trial_over_exp_run"] = result["trial_s"] / result["lr_exp_run_s"]
        log(json.dumps(result, indent=2))
        if not args.no_sweeps:
            result["sweeps"] = {}
            succeeded = 0
            for jobs, threads in ((1, 2), (2, 1)):
                H.dvc(
                    root,
                    "exp",
                    "run",
                    "--queue",
                    "-S",
                    f"train.lr={LRS}",
                    "-S",
                    f"train.threads={threads}",
                )
                t0 = time.perf_counter()
                H.start_queue(root, jobs, work / f"queue-{jobs}.log")
                n = len(LRS.split(","))
                table = H.wait_queue_done(root, succeeded + n, timeout=7200)
                wall = time.perf_counter() - t0
                H.stop_queue(root)
                assert table.count("Success") == succeeded + n, table  # every experiment of this sweep
                succeeded += n
                result["sweeps"][f"-j {jobs}"] = {
                    "threads": threads,
                    "experiments": n,
                    "wall_s": wall,
                    "experiments_per_hour": n / wall * 3600,
                }
                log(f"sweep -j {jobs}: {wall:.1f} s for {n} experiments")
            sweeps = result["sweeps"]
            result["j2_over_j1_throughput"] = (
                sweeps["-j 2"]["experiments_per_hour"] / sweeps["-j 1"]["experiments_per_hour"]
            )
        result["mlflow_runs"] = len(H.runs(root))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        log(json.dumps(result, indent=2))
        return result
    finally:
        if (work / "project" / ".dvc").exists():
            H.stop_queue(work / "project", kill=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main() and 0)  # type: ignore[arg-type]  # sys.exit takes any object: an empty result exits 1
