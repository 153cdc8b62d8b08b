"""Training speed on real MNIST: the conventional course script vs the train stage's code vs a compute floor.

    python -m benchmarks.train_speed                  # 10 epochs, all three contenders (make bench)
    python -m benchmarks.train_speed --quick          # 2 epochs
    python -m benchmarks.train_speed --scale          # ours only: time vs epochs and vs batch size

Contenders (all on the real MNIST raw files, in ONE process, with the same torch thread count):
  baseline  the conventional script: torchvision.datasets.MNIST over the raw files with
            Compose([ToTensor(), Normalize((0.1307,), (0.3081,))]), DataLoader(batch_size=64, shuffle=True)
            for train and DataLoader(batch_size=64) for test, src.model.MLP with params' hidden sizes,
            SGD(lr 0.01, momentum 0.5), loss.backward()/optimizer.step(), loss.item() every step, test
            accuracy after every epoch.
  ours      the train stage's path: src.preprocess (numpy) functions -> normalized tensors in memory,
            src.train.make_optimizer, src.train.train_epoch(backward = train.backward) and
            src.train.predict(eval_batch_size) every epoch; seeded (weights, shuffle generator) and with
            deterministic algorithms like pipeline/train.py. Every train.* setting from params.yaml. With
            backward manual-cpp the C++ step is loaded (built if this machine never did) in setup.
  floor     only the five Linear layers' matrix products of a training pass (forward x@W^T; backward
            g^T@a and g@W, the latter not for the first layer) for the same samples, batch size and
            threads as ours, looped in C++ (benchmarks/floor.cpp): no Python loop overhead. No activations,
            loss, optimizer, bias, autograd or evaluation.
  floor_py  the same products looped in Python (the floor of the runs before 2026-11-29 afternoon): shows
            what Python's per-op cost adds to the products alone.

Like every stage process, this one asks MKL for strict conditional numerical reproducibility (src/mkl.py:
MKL_CBWR=AUTO,STRICT unless the environment sets MKL_CBWR), before anything is multiplied; every contender,
the peak-RSS children included, runs in that mode. settings.mkl_cbwr records it; another value adds a note.

The contenders run interleaved, epoch by epoch, in a rotating order (epoch 1: baseline, ours, floor, floor_py;
epoch 2: ours, floor, floor_py, baseline; ...), so drift of the machine's speed hits all alike.

What each reported number means:
  setup_s             loading the data (+ for ours the preprocessing from the raw files, which the real
                      pipeline does once in its preprocess stage) and building model/optimizer/loaders.
  total_s             sum of the contender's epoch times; an epoch = training pass + test evaluation
                      (floor: training products only).
  first_epoch_end_s   setup_s + the first epoch's time: how long until the first test accuracy exists.
  median_epoch_s      median of the per-epoch times (robust to a noisy neighbour on the machine).
  train_s             the training passes alone (no evaluation).
  samples_per_s       training samples processed per second of total_s (epochs × train size / total_s).
  peak_rss_mib        ru_maxrss of a separate spawned child that imports torch, sets the contender up and
                      runs one epoch (MiB). rss_after_import_mib is that child's ru_maxrss right after start
                      (Python + torch), peak_minus_import_mib the difference (data + training), vm_hwm_mib
                      the child's /proc VmHWM as a cross-check, rss_anon/file_end_mib its anonymous and
                      file-backed RSS at the end (file pages of torch's libraries vary by ~200 MiB between
                      runs: compare peak_minus_import). The children run before the parent loads torch, so
                      the ru_maxrss that survives exec from the parent is small. rss_child_epoch_s: the
                      child's one epoch (not part of the timings above).
  final_accuracy      test accuracy after the last epoch (floor: none).
  core_round_trip_ns_per_epoch   read after each round (one epoch of every contender), the round trip (ns)
                      of one cache line between the process's first two CPUs (benchmarks/core_latency.cpp;
                      None where not measurable): on the AMD VM ~60 ns or ~340 ns, the latter in its slow
                      state (README, Performance). A state can change within a round: it is not per epoch.
  ratios              ours/floor and baseline/ours of total_s and of median_epoch_s; ours_train/floor uses
                      ours' training passes only (floor has no evaluation); ours/floor_py against the
                      Python-loop floor; accuracy_diff_points = 100 × (baseline − ours) final accuracy.

--scale (ours only): one run of max(--scale-epochs) epochs recording the cumulative epoch time at each
listed epoch count (1, 5, 10, 20: cumulative within one 20-epoch run, not separate runs), then batch sizes
32, 64, 256 (fresh seeded models, interleaved epoch by epoch, train.lr unchanged so larger batches reach a
lower accuracy in the same epochs): per-epoch time, samples/s and final accuracy.

--limit-samples N is for checking the script only: results are not comparable and are marked so.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.common import RESULTS, ROOT, ensure_raw, log, machine_info, write_json

ORDER = ("baseline", "ours", "floor", "floor_py")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"), help="params.yaml (default: the project's)")
    ap.add_argument("--raw", help="folder with the four raw MNIST IDX files (default: data/raw, else download)")
    ap.add_argument("--epochs", type=int, default=10, help="epochs per contender (default 10)")
    ap.add_argument("--quick", action="store_true", help="2 epochs (with --scale: epochs 1,2; 1 epoch per batch size)")
    ap.add_argument("--threads", type=int, help="torch threads for every contender (default: train.threads)")
    ap.add_argument("--skip-baseline", action="store_true", help="time only ours and floor")
    ap.add_argument("--only", choices=ORDER, help="time this contender alone (benchmarks.sweep: the baseline)")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child processes")
    ap.add_argument("--no-probe", action="store_true",
                    help="skip the core-to-core probe between rounds (benchmarks.sweep: it times this process)")
    ap.add_argument("--limit-samples", type=int, help="debug only: use the first N train and test samples")
    ap.add_argument("--scale", action="store_true", help="ours only: time vs epochs and vs batch size")
    ap.add_argument("--scale-epochs", default="1,5,10,20", help="--scale: epoch counts to report (one run)")
    ap.add_argument("--scale-batch-sizes", default="32,64,256", help="--scale: batch sizes")
    ap.add_argument("--scale-batch-epochs", type=int, default=2, help="--scale: epochs per batch size")
    ap.add_argument("--out", help="JSON results (default benchmarks/results/train_speed.json, "
                                  "or train_speed_scale.json with --scale)")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs = 2
        args.scale_epochs = "1,2"
        args.scale_batch_epochs = 1
    return args


def measure_rss(names, cfg) -> dict:
    """Each contender's peak memory, one fresh spawned child per contender, one at a time."""
    out = {}
    ctx = multiprocessing.get_context("spawn")
    for name in names:
        t0 = time.perf_counter()
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            out[name] = pool.submit(_rss_child_entry, name, cfg).result()
        log(f"peak RSS: {name}: {out[name]['peak_rss_mib']:.0f} MiB (child process: setup + one epoch,"
            f" {time.perf_counter() - t0:.1f} s)")
    return out


def _rss_child_entry(name, cfg):
    from benchmarks.contenders import rss_child
    return rss_child(name, cfg)


def summarize(name, setup_s, epochs, n_train) -> dict:
    epoch_s = [e["train_s"] + e["eval_s"] for e in epochs]
    total = sum(epoch_s)
    return {
        "setup_s": setup_s,
        "total_s": total,
        "first_epoch_end_s": setup_s + epoch_s[0],
        "median_epoch_s": statistics.median(epoch_s),
        "train_s": sum(e["train_s"] for e in epochs),
        "eval_s": sum(e["eval_s"] for e in epochs),
        "epoch_s": epoch_s,
        "samples_per_s": n_train * len(epochs) / total,
        "train_samples_per_s": n_train * len(epochs) / sum(e["train_s"] for e in epochs),
        "accuracy_per_epoch": [e["accuracy"] for e in epochs],
        "final_accuracy": epochs[-1]["accuracy"],
        "train_loss_per_epoch": [e["train_loss"] for e in epochs],
        "n_train": n_train,
    }


def compare(args, cfg, params, names) -> tuple[dict, list]:
    """Per-contender summaries, and the core-to-core round trip (ns; None: not measurable) after each round."""
    import torch
    from benchmarks.contenders import CONTENDERS, core_probe
    probe = None if args.no_probe else core_probe()
    torch.set_num_threads(cfg["threads"])
    contenders, setup_s = {}, {}
    for name in names:
        t0 = time.perf_counter()
        c = CONTENDERS[name](cfg)
        c.setup()
        setup_s[name] = time.perf_counter() - t0
        contenders[name] = c
        log(f"setup {name}: {setup_s[name]:.2f} s ({c.n_train} train / {c.n_test} test samples, batch {c.batch_size})")
    epochs = {name: [] for name in names}
    round_trips = []
    for epoch in range(args.epochs):
        k = epoch % len(names)
        order = names[k:] + names[:k]  # rotate who goes first
        for name in order:
            epochs[name].append(contenders[name].run_epoch())
        round_trips.append(probe() if probe else None)  # the machine's state, right after this round
        log(f"epoch {epoch + 1}/{args.epochs}: " + "  ".join(
            f"{n} {epochs[n][-1]['train_s'] + epochs[n][-1]['eval_s']:.2f} s"
            + (f" acc {100 * epochs[n][-1]['accuracy']:.2f}%" if epochs[n][-1]["accuracy"] is not None else "")
            for n in names) + (f"  (core round trip {round_trips[-1]:.0f} ns)" if round_trips[-1] else ""))
    results = {n: summarize(n, setup_s[n], epochs[n], contenders[n].n_train) for n in names}
    for n in names:
        results[n]["batch_size"] = contenders[n].batch_size
    return results, round_trips


def ratios(res: dict) -> dict:
    r = {}
    if "ours" in res and "floor" in res:
        r["ours_over_floor_total"] = res["ours"]["total_s"] / res["floor"]["total_s"]
        r["ours_over_floor_median_epoch"] = res["ours"]["median_epoch_s"] / res["floor"]["median_epoch_s"]
        r["ours_train_over_floor"] = res["ours"]["train_s"] / res["floor"]["train_s"]
    if "ours" in res and "floor_py" in res:
        r["ours_over_floor_py_total"] = res["ours"]["total_s"] / res["floor_py"]["total_s"]
    if "baseline" in res and "ours" in res:
        r["baseline_over_ours_total"] = res["baseline"]["total_s"] / res["ours"]["total_s"]
        r["baseline_over_ours_median_epoch"] = res["baseline"]["median_epoch_s"] / res["ours"]["median_epoch_s"]
        r["baseline_over_ours_first_epoch_end"] = (res["baseline"]["first_epoch_end_s"]
                                                   / res["ours"]["first_epoch_end_s"])
        r["accuracy_diff_points"] = 100 * (res["baseline"]["final_accuracy"] - res["ours"]["final_accuracy"])
    return r


def _fmt(v, spec):
    return "—" if v is None else format(v, spec)


def print_compare(res, rat, rss, epochs):
    print(f"\nMNIST training, {epochs} epochs per contender (times in seconds; an epoch = train pass + test eval,"
          " floor: products only)")
    head = f"{'contender':<10}{'setup':>8}{'total':>9}{'1st epoch end':>15}{'median/ep':>11}{'train':>9}" \
           f"{'samples/s':>11}{'peak RSS MiB':>14}{'final acc':>11}"
    print(head)
    print("-" * len(head))
    for name, r in res.items():
        acc = None if r["final_accuracy"] is None else 100 * r["final_accuracy"]
        print(f"{name:<10}{r['setup_s']:>8.2f}{r['total_s']:>9.2f}{r['first_epoch_end_s']:>15.2f}"
              f"{r['median_epoch_s']:>11.3f}{r['train_s']:>9.2f}{r['samples_per_s']:>11.0f}"
              f"{_fmt(rss.get(name, {}).get('peak_rss_mib'), '.0f'):>14}{_fmt(acc, '.2f') + ('%' if acc else ''):>11}")
    print()
    labels = {
        "ours_over_floor_total": "ours / floor (total)",
        "ours_over_floor_median_epoch": "ours / floor (median epoch)",
        "ours_train_over_floor": "ours train-only / floor",
        "ours_over_floor_py_total": "ours / floor_py (Python-loop floor, total)",
        "baseline_over_ours_total": "baseline / ours (total)",
        "baseline_over_ours_median_epoch": "baseline / ours (median epoch)",
        "baseline_over_ours_first_epoch_end": "baseline / ours (time to first epoch end)",
        "accuracy_diff_points": "accuracy baseline − ours (points)",
    }
    for k, v in rat.items():
        print(f"  {labels[k]:<44}{v:>8.2f}{'' if k == 'accuracy_diff_points' else 'x'}")
    if rss:
        print("\n  peak RSS (MiB) per child: " + "; ".join(
            f"{n} {v['peak_rss_mib']:.0f} (after import {v['rss_after_import_mib']:.0f}, peak − import"
            f" {v['peak_minus_import_mib']:.0f}, VmHWM {_fmt(v['vm_hwm_mib'], '.0f')}, at end anon"
            f" {_fmt(v['rss_anon_end_mib'], '.0f')} / file {_fmt(v['rss_file_end_mib'], '.0f')})"
            for n, v in rss.items()))
        print("  (RSS counts the torch shared libraries' resident file pages, which vary by ~200 MiB from run to"
              " run; peak − import and anon are the steadier comparisons)")


def scale(args, cfg, params) -> dict:
    import torch
    from benchmarks.contenders import Ours
    torch.set_num_threads(cfg["threads"])
    points = sorted({int(e) for e in args.scale_epochs.split(",")})
    # 1) one long run, cumulative time at each listed epoch count
    t0 = time.perf_counter()
    ours = Ours(cfg)
    ours.setup()
    setup_s = time.perf_counter() - t0
    cumulative, rows = 0.0, []
    for epoch in range(1, max(points) + 1):
        e = ours.run_epoch()
        cumulative += e["train_s"] + e["eval_s"]
        if epoch in points:
            rows.append({"epochs": epoch, "cumulative_s": cumulative, "accuracy": e["accuracy"],
                         "samples_per_s": ours.n_train * epoch / cumulative})
            log(f"scale epochs: {epoch} epochs -> {cumulative:.2f} s cumulative, acc {100 * e['accuracy']:.2f}%")
    # 2) batch sizes, fresh seeded models, interleaved epoch by epoch
    sizes = [int(b) for b in args.scale_batch_sizes.split(",")]
    runs = {}
    for b in sizes:
        c = Ours({**cfg, "batch_size": b})
        c.setup()
        runs[b] = (c, [])
    for epoch in range(args.scale_batch_epochs):
        k = epoch % len(sizes)
        for b in sizes[k:] + sizes[:k]:
            runs[b][1].append(runs[b][0].run_epoch())
    batch_rows = []
    for b in sizes:
        c, eps = runs[b]
        times = [e["train_s"] + e["eval_s"] for e in eps]
        batch_rows.append({"batch_size": b, "epochs": len(eps), "per_epoch_s": statistics.mean(times),
                           "epoch_s": times, "samples_per_s": c.n_train * len(eps) / sum(times),
                           "train_samples_per_s": c.n_train * len(eps) / sum(e["train_s"] for e in eps),
                           "final_accuracy": eps[-1]["accuracy"]})
        log(f"scale batch {b}: {statistics.mean(times):.2f} s/epoch, acc {100 * eps[-1]['accuracy']:.2f}%")
    return {"setup_s": setup_s, "vs_epochs": rows, "vs_batch_size": batch_rows,
            "lr": params.train.lr, "n_train": ours.n_train}


def print_scale(s, threads):
    print(f"\nours vs epochs — ONE run of {s['vs_epochs'][-1]['epochs']} epochs, cumulative epoch time at each"
          f" count (setup {s['setup_s']:.2f} s not included), {threads} threads")
    print(f"{'epochs':>7}{'cumulative s':>14}{'samples/s':>11}{'test acc':>10}")
    for r in s["vs_epochs"]:
        print(f"{r['epochs']:>7}{r['cumulative_s']:>14.2f}{r['samples_per_s']:>11.0f}{100 * r['accuracy']:>9.2f}%")
    print(f"\nours vs batch size — fresh seeded model per size, lr {s['lr']} unchanged, epochs interleaved")
    print(f"{'batch':>7}{'epochs':>7}{'s/epoch':>9}{'samples/s':>11}{'final acc':>11}")
    for r in s["vs_batch_size"]:
        print(f"{r['batch_size']:>7}{r['epochs']:>7}{r['per_epoch_s']:>9.2f}{r['samples_per_s']:>11.0f}"
              f"{100 * r['final_accuracy']:>10.2f}%")


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from src.mkl import MKL_CBWR, requested, use_strict_cnr
    use_strict_cnr()  # as every stage process: before this process or its children multiply anything
    from src.params import load_params
    params = load_params(args.params)
    threads = args.threads or params.train.threads
    raw = ensure_raw(args.raw, params)
    cfg = {"raw": str(raw), "params": str(Path(args.params).resolve()), "threads": threads,
           "limit": args.limit_samples, "batch_size": None}
    notes = []
    if args.limit_samples:
        notes.append(f"DEBUG: --limit-samples {args.limit_samples}: numbers are NOT comparable to full runs")
    mkl_cbwr = requested()
    if mkl_cbwr != MKL_CBWR:
        notes.append(f"MKL_CBWR={mkl_cbwr!r}: not the stages' strict CNR mode (src/mkl.py)")
    if os.environ.get("OMP_NUM_THREADS"):
        notes.append(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} was set")

    if args.scale:
        import torch  # noqa: F401
        info = machine_info(threads)
        s = scale(args, cfg, params)
        info["loadavg_at_end"] = list(os.getloadavg())
        data = {"benchmark": "train_speed", "mode": "scale", "machine": info, "notes": notes,
                "settings": {"threads": threads, "mkl_cbwr": mkl_cbwr, "params": cfg["params"],
                             "raw": cfg["raw"], "epoch_points": args.scale_epochs, "batch_sizes": args.scale_batch_sizes,
                             "epochs_per_batch_size": args.scale_batch_epochs, "limit_samples": args.limit_samples,
                             "train": _train_params(params)},
                "scale": s}
        print_scale(s, threads)
        print(f"  MKL_CBWR (src/mkl.py): {mkl_cbwr}")
        out = write_json(args.out or RESULTS / "train_speed_scale.json", data)
        print(f"\nwrote {out}")
        return 0

    names = [args.only] if args.only else [n for n in ORDER if not (args.skip_baseline and n == "baseline")]
    # Peak-RSS children first, while this process is small: ru_maxrss survives exec, so a child spawned from a
    # parent that already holds torch and the data would report at least the parent's size.
    rss = {} if args.no_rss else measure_rss(names, cfg)
    info = machine_info(threads)
    if "baseline" in names:
        from benchmarks.contenders import COURSE  # imports torch: only after the RSS children
        p = params.train
        if (p.batch_size, p.lr, p.momentum, p.optimizer) != (COURSE["batch_size"], COURSE["lr"], COURSE["momentum"], "sgd"):
            notes.append("params.yaml's train settings differ from the course's (batch 64, SGD lr 0.01 momentum 0.5)"
                         " the baseline uses: the accuracy comparison is not like for like")
    res, round_trips = compare(args, cfg, params, names)
    for n in names:
        res[n].update({k: v for k, v in rss.get(n, {}).items()})
    rat = ratios(res)
    info["loadavg_at_end"] = list(os.getloadavg())
    data = {"benchmark": "train_speed", "mode": "compare", "machine": info, "notes": notes,
            "settings": {"epochs": args.epochs, "threads": threads, "mkl_cbwr": mkl_cbwr,
                         "params": cfg["params"], "raw": cfg["raw"],
                         "limit_samples": args.limit_samples, "order": "interleaved epoch by epoch, rotating",
                         "train": _train_params(params)},
            "contenders": res, "ratios": rat, "core_round_trip_ns_per_epoch": round_trips}
    print_compare(res, rat, rss, args.epochs)
    print(f"  MKL_CBWR, every contender (src/mkl.py): {mkl_cbwr}")
    for n in notes:
        print(f"  note: {n}")
    out = write_json(args.out or RESULTS / "train_speed.json", data)
    print(f"\nwrote {out}")
    return 0


def _train_params(params) -> dict:
    import dataclasses
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(params.train).items()}


if __name__ == "__main__":
    sys.exit(main())
