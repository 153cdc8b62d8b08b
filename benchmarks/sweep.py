"""Pipeline-level timings with the real `dvc` on real MNIST, in a throw-away copy of the project.

    python -m benchmarks.sweep            # 10 epochs, 4-experiment sweeps
    python -m benchmarks.sweep --quick    # 2 epochs, 2-experiment sweeps, 1 no-op repeat: checks the script
    python -m benchmarks.sweep --no-sweeps --out /tmp/repro.json   # full repro vs course script, no-op only

The copy: the project's tracked and untracked-but-not-ignored files (work in progress included, no data,
models, stores, dvc.lock or metrics), its own git repository, the project's .venv first on PATH, no DVC_* /
MLFLOW_* variables from outside (MLflow uses the copy's own mlflow.db, the project default). The verified raw
MNIST files are copied beside the copy and params.yaml's mnist sources become `dir:<that folder>`, so the
download stage is a local copy + SHA-256 check and no network is needed. train.epochs is set to --epochs.

What each reported number means (wall-clock seconds of the dvc command, measured from this process):
  download_s        `dvc repro download` on the fresh copy (copy from the dir: source + verify).
  repro_rest_s      then `dvc repro`: preprocess, train, evaluate, plot with the raw data already in place
                    (the full pipeline's cost on a machine that has the data). train_epoch_s: the train
                    stage's own per-epoch times, parsed from its output.
  baseline          right after that repro, the conventional course script (train_speed's baseline contender,
                    same epochs) alone in a new Python process: script_s is that process's wall time (start,
                    imports, data, every epoch), the way the course runs it as a plain script, and
                    full_repro_over_baseline = repro_rest_s / script_s (issue #4's "full dvc repro with raw
                    data in place ≤ 0.35 × the baseline's time", both measured within minutes of each other).
  noop_repro_s      `dvc repro` with nothing changed (results committed): median and every repeat.
  sweep[jobs=J]     an N-experiment learning-rate sweep queued with
                    `dvc exp run --queue -S train.lr=<list> -S train.threads=T` (queue_s: that command), then
                    `dvc queue start -j J`; wall_s runs from `queue start` until the last experiment's result
                    exists (its git ref appears; `dvc queue status` is checked every few seconds for failures).
                    experiments_per_hour = N / wall_s × 3600. J=1 uses train.threads=2, J=2 uses
                    train.threads=1 per worker, so both use the machine's 2 cores. The learning rates avoid
                    the committed baseline's train.lr so no experiment is restored from DVC's run-cache;
                    mlflow_runs_added counts the training runs the sweep really logged.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import RESULTS, ROOT, ensure_raw, log, machine_info, mnist_spec, write_json

BIN = Path(sys.executable).parent  # the venv running this: its dvc
GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid"}
STAGES = ("download", "preprocess", "train", "evaluate", "plot")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 epochs, 2 experiments per sweep, 1 no-op repeat")
    ap.add_argument("--epochs", type=int, default=10, help="train.epochs in the copy (default 10)")
    ap.add_argument("--lrs", default="0.005,0.02,0.03,0.05", help="learning rates of each sweep")
    ap.add_argument("--noop-repeats", type=int, default=3, help="no-op `dvc repro` repeats (median reported)")
    ap.add_argument("--no-baseline", action="store_true", help="skip timing the course script after the repro")
    ap.add_argument("--no-sweeps", action="store_true", help="only the repro, baseline and no-op timings")
    ap.add_argument("--raw", help="folder with the four raw MNIST IDX files (default: data/raw, else download)")
    ap.add_argument("--workdir", help="parent folder of the temp copy (default: the system temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the temp copy (its path is printed)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds allowed per dvc command / sweep")
    ap.add_argument("--out", help="JSON results (default results/sweep.json; with --no-sweeps"
                                  " results/repro_vs_course.json, so the committed sweep is not overwritten)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = str(RESULTS / ("repro_vs_course.json" if args.no_sweeps else "sweep.json"))
    if args.quick:
        args.epochs = 2
        args.lrs = ",".join(args.lrs.split(",")[:2])
        args.noop_repeats = 1
    return args


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("DVC_", "MLFLOW_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    e.update(GIT_ENV)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", GIT_TERMINAL_PROMPT="0")
    return e


def run(args: list[str], cwd: Path, timeout: float, check: bool = True) -> tuple[float, str]:
    """(wall seconds, stdout+stderr); raises with the output on a non-zero exit when check."""
    t0 = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} exited {done.returncode} in {cwd}:\n{done.stdout[-4000:]}")
    return wall, done.stdout


def dvc(cwd, *a, timeout=3600, check=True):
    return run([str(BIN / "dvc"), *a], cwd, timeout, check)


def git(cwd, *a):
    return run(["git", *a], cwd, 120)[1]


def ran_stages(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


def make_copy(work: Path, raw: Path, epochs: int) -> Path:
    """The working tree in work/project, raw files in work/raw, params pointing there; committed."""
    raw_copy = work / "raw"
    raw_copy.mkdir()
    for name in mnist_spec().sha256:
        shutil.copy2(raw / name, raw_copy / name)
    proj = work / "project"
    proj.mkdir()
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():  # a deleted-but-tracked file is skipped
            (proj / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, proj / rel)
    for stale in ("dvc.lock", "metrics/eval.json"):  # the project's own results: start from nothing
        (proj / stale).unlink(missing_ok=True)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["data"]["dataset"] = "mnist"
    params["data"]["sources"]["mnist"] = [f"dir:{raw_copy}"]
    params["train"]["epochs"] = epochs
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(proj, "init", "-q", "-b", "main")
    git(proj, "add", "-A")
    git(proj, "commit", "-q", "-m", "benchmark copy of the project")
    return proj


def exp_refs(proj: Path) -> set[str]:
    """Refs of finished experiments (refs/exps/<baseline>/<rest>/<name>; not DVC's internal celery/exec/temp refs)."""
    out = git(proj, "for-each-ref", "--format=%(refname)", "refs/exps/")
    return {r for r in out.split() if not re.match(r"refs/exps/(celery|exec|temp|runs|stash)\b", r)}


def queue_rows(proj: Path) -> tuple[list[list[str]], str]:
    table = dvc(proj, "queue", "status", check=False)[1]
    rows = [line.split() for line in table.splitlines() if line.strip()]
    return rows, table


def count_status(rows, *names) -> int:
    return sum(1 for row in rows if any(n in row for n in names))


def mlflow_runs(proj: Path) -> int:
    db = proj / "mlflow.db"
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        try:
            return con.execute("SELECT count(*) FROM runs").fetchone()[0]
        except sqlite3.Error:
            return 0


def stop_workers(proj: Path, timeout: float = 120) -> None:
    """`dvc queue stop`, then wait until `dvc queue status` reports no worker left."""
    dvc(proj, "queue", "stop", check=False, timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        table = queue_rows(proj)[1]
        m = re.search(r"Worker status:\s*(\d+)\s*active,\s*(\d+)\s*idle", table)
        if not m or (m.group(1) == "0" and m.group(2) == "0"):
            return
        time.sleep(2)
    log("warning: queue workers still reported after dvc queue stop")


def sweep(proj: Path, lrs: list[str], jobs: int, threads: int, timeout: float) -> dict:
    refs_before, runs_before = exp_refs(proj), mlflow_runs(proj)
    queue_s, out = dvc(proj, "exp", "run", "--queue", "-S", f"train.lr={','.join(lrs)}",
                       "-S", f"train.threads={threads}")
    rows, table = queue_rows(proj)
    queued = count_status(rows, "Queued")
    if queued != len(lrs):
        raise RuntimeError(f"expected {len(lrs)} queued experiments, dvc queue status shows {queued}:\n{table}")
    log(f"sweep -j {jobs} (threads {threads}): {queued} experiments queued in {queue_s:.1f} s; starting workers")
    t0 = time.perf_counter()
    dvc(proj, "queue", "start", "-j", str(jobs))
    last_status, failed = time.perf_counter(), 0
    while True:
        done = len(exp_refs(proj) - refs_before)
        now = time.perf_counter()
        if done >= len(lrs):
            break
        if now - last_status > 5:  # `dvc queue status` costs a Python start: only every few seconds
            rows, table = queue_rows(proj)
            last_status = time.perf_counter()
            failed = count_status(rows, "Failed")
            if count_status(rows, "Queued", "Running") == 0:
                done = len(exp_refs(proj) - refs_before)
                break
        if now - t0 > timeout:
            raise RuntimeError(f"sweep -j {jobs} not done after {timeout} s:\n{queue_rows(proj)[1]}")
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    rows, table = queue_rows(proj)
    failed = count_status(rows, "Failed")
    log(f"sweep -j {jobs}: {done} experiments done, {failed} failed, {wall:.1f} s")
    stop_workers(proj)
    return {"jobs": jobs, "threads_per_worker": threads, "experiments": len(lrs), "lrs": lrs,
            "succeeded": done, "failed": failed, "queue_s": queue_s, "wall_s": wall,
            "experiments_per_hour": done / wall * 3600 if done else 0.0,
            "mlflow_runs_added": mlflow_runs(proj) - runs_before, "queue_status_table": table.strip()}


def baseline_script(raw: Path, epochs: int, out: Path, timeout: float) -> dict:
    """The course's conventional script (train_speed's baseline) alone in a new process, timed from outside."""
    cmd = [sys.executable, "-m", "benchmarks.train_speed", "--only", "baseline", "--no-rss", "--no-probe",
           "--epochs", str(epochs), "--raw", str(raw), "--out", str(out)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, timeout=timeout, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"baseline script failed (exit {done.returncode}): {' '.join(cmd)}\n"
                           f"{(done.stdout + done.stderr)[-3000:]}")
    script_s = time.perf_counter() - t0
    b = json.loads(out.read_text())["contenders"]["baseline"]
    log(f"baseline script: {script_s:.1f} s (its epochs {b['total_s']:.1f} s, accuracy {100 * b['final_accuracy']:.2f}%)")
    return {"script_s": script_s, "epochs_total_s": b["total_s"], "final_accuracy": b["final_accuracy"]}


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from src import mkl
    from src.params import load_params
    params = load_params(ROOT / "params.yaml")
    raw = ensure_raw(args.raw, params)
    lrs = [s.strip() for s in args.lrs.split(",") if s.strip()]
    if any(float(lr) == params.train.lr for lr in lrs):
        raise SystemExit(f"--lrs must not contain params.yaml's train.lr ({params.train.lr}): that experiment"
                         " would be restored from DVC's run-cache instead of trained")
    info = machine_info()
    work = Path(tempfile.mkdtemp(prefix="mnist-sweep-", dir=args.workdir))
    results = {"benchmark": "sweep", "machine": info,
               "settings": {"epochs": args.epochs, "lrs": lrs, "noop_repeats": args.noop_repeats,
                            "copy": str(work / "project"), "raw": str(raw), "quick": args.quick,
                            "tracking": "MLflow default store: the copy's mlflow.db",
                            "sweep_threads": "jobs=1: train.threads=2; jobs=2: train.threads=1 per worker",
                            # what the stages inherit (None: each sets src/mkl.py's strict mode itself); the
                            # course script runs through train_speed, which sets it too
                            "mkl_cbwr_env": mkl.requested()}}
    proj = None
    try:
        proj = make_copy(work, raw, args.epochs)
        log(f"copy: {proj}")
        # (a) full pipeline: download timed apart, then everything else with the raw data in place
        download_s, out = dvc(proj, "repro", "download", timeout=args.timeout)
        log(f"dvc repro download: {download_s:.1f} s")
        rest_s, out = dvc(proj, "repro", timeout=args.timeout)
        ran = ran_stages(out)
        if ran != list(STAGES[1:]):
            raise RuntimeError(f"dvc repro ran {ran}, expected {list(STAGES[1:])}:\n{out[-3000:]}")
        epoch_s = [float(s) for s in re.findall(r"epoch\s+\d+/\d+ .*\((\d+\.\d+) s\)", out)]
        log(f"dvc repro (preprocess..plot): {rest_s:.1f} s; train epochs {epoch_s}")
        results["full_repro"] = {"download_s": download_s, "repro_rest_s": rest_s, "stages": ran,
                                 "train_epoch_s": epoch_s, "total_s": download_s + rest_s}
        if not args.no_baseline:
            results["baseline"] = baseline_script(raw, args.epochs, work / "baseline.json", args.timeout)
            results["full_repro"]["full_repro_over_baseline"] = rest_s / results["baseline"]["script_s"]
        git(proj, "add", "-A")
        git(proj, "commit", "-q", "-m", "pipeline results")
        # (b) no-op repro
        noop = []
        for _ in range(args.noop_repeats):
            s, out = dvc(proj, "repro", timeout=args.timeout)
            if ran_stages(out):
                raise RuntimeError(f"no-op dvc repro ran {ran_stages(out)}:\n{out[-3000:]}")
            noop.append(s)
        log(f"no-op dvc repro: {noop}")
        results["noop_repro"] = {"median_s": statistics.median(noop), "runs_s": noop}
        # (c) sweeps
        if not args.no_sweeps:
            results["sweeps"] = [sweep(proj, lrs, jobs, threads, args.timeout)
                                 for jobs, threads in ((1, 2), (2, 1))]
    finally:
        info["loadavg_at_end"] = list(os.getloadavg())
        if proj is not None and (proj / ".dvc").exists():
            try:
                stop_workers(proj)
            except Exception as e:  # noqa: BLE001 - cleanup must not hide the real error
                log(f"warning: stopping queue workers: {e}")
        out_path = write_json(args.out, results)
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_results(results)
    print(f"\nwrote {out_path}")
    return 0


def print_results(r: dict) -> None:
    s = r["settings"]
    print(f"\nDVC pipeline timings on real MNIST, {s['epochs']} epochs (wall seconds)")
    if "full_repro" in r:
        f = r["full_repro"]
        print(f"  dvc repro download (dir: source, copy + SHA-256)      {f['download_s']:8.1f}")
        print(f"  dvc repro preprocess..plot (raw data in place)        {f['repro_rest_s']:8.1f}")
        if f["train_epoch_s"]:
            print(f"    train stage epochs: {', '.join(f'{x:.1f}' for x in f['train_epoch_s'])}")
    if "baseline" in r:
        print(f"  course script (baseline), a plain Python process       {r['baseline']['script_s']:8.1f}")
        print(f"  full repro / baseline script                          {r['full_repro']['full_repro_over_baseline']:8.2f}x")
    if "noop_repro" in r:
        n = r["noop_repro"]
        print(f"  no-op dvc repro, median of {len(n['runs_s'])}                          {n['median_s']:8.1f}")
    for w in r.get("sweeps", []):
        print(f"  sweep of {w['experiments']} (lr {','.join(w['lrs'])}), queue start -j {w['jobs']}, "
              f"threads {w['threads_per_worker']}/worker: {w['wall_s']:.1f} s, "
              f"{w['experiments_per_hour']:.1f} experiments/hour "
              f"({w['succeeded']} ok, {w['failed']} failed, {w['mlflow_runs_added']} MLflow runs; queueing {w['queue_s']:.1f} s)")
    sw = {w["jobs"]: w for w in r.get("sweeps", [])}
    if 1 in sw and 2 in sw and sw[2]["wall_s"]:
        print(f"  -j 2 vs -j 1 throughput: {sw[2]['experiments_per_hour'] / max(sw[1]['experiments_per_hour'], 1e-9):.2f}x")


if __name__ == "__main__":
    sys.exit(main())
