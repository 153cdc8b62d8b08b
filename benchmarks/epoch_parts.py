"""Where an epoch's time goes beyond the GEMM floor, with the kernels dvc.yaml pins for the train stage:
each of --epochs rounds times, in one process on real MNIST,

  epoch          the stage's epoch: train_epoch (the textbook step, fused SGD) then predict on the test set
  no_step        the same batches' forward, cross-entropy and backward, no optimizer step
  forward        the forward pass alone (no autograd graph)
  evaluation     predict on the test set alone
  floor          benchmarks.train_speed's floor: only the five layers' matrix products

    ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2,STRICT python -m benchmarks.epoch_parts   # as the stage runs
    -> benchmarks/results/epoch_parts.json: mean seconds an epoch of each, and epoch / floor
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.train_speed import RESULTS, ROOT, Floor, Ours, log, machine, raw_mnist
from mnist_softmax.core.evaluate import predict
from mnist_softmax.core.params import load_params


def passes(ours: Ours, step: bool, grad: bool) -> None:
    """One epoch's batches as train_epoch takes them, with or without the optimizer step and autograd."""
    order = torch.randperm(ours.train_x.shape[0], generator=ours.generator)
    labels = ours.train_y.index_select(0, order).split(ours.p.batch_size)
    with torch.set_grad_enabled(grad):
        for idx, y in zip(order.split(ours.p.batch_size), labels):
            logits = ours.model(ours.train_x.index_select(0, idx))
            if grad:
                loss = nn.functional.cross_entropy(logits, y)
                ours.optimizer.zero_grad()
                loss.backward()
                if step:
                    ours.optimizer.step()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "epoch_parts.json"))
    args = ap.parse_args(argv)
    params = load_params(ROOT / "params.yaml")
    torch.set_num_threads(params.train.threads)
    raw = raw_mnist(params)
    ours, floor = Ours(params, raw), Floor(params, raw)

    def floor_epoch() -> float:
        batches = floor.batches()
        t0 = time.perf_counter()
        floor.products(batches)
        return time.perf_counter() - t0

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    parts = {
        "epoch": lambda: timed(ours.epoch),
        "no_step": lambda: timed(lambda: passes(ours, step=False, grad=True)),
        "forward": lambda: timed(lambda: passes(ours, step=False, grad=False)),
        "evaluation": lambda: timed(
            lambda: predict(ours.model, ours.test_x, ours.test_y, batch_size=params.train.eval_batch_size)
        ),
        "floor": floor_epoch,
    }
    seconds: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(args.epochs):
        for name, part in parts.items():
            seconds[name].append(part())
        log("  ".join(f"{name} {s[-1]:.3f} s" for name, s in seconds.items()))
    mean = {name: statistics.mean(s) for name, s in seconds.items()}
    result = {
        "machine": machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "epochs": args.epochs,
        "mean_s": mean,
        "epoch_over_floor": mean["epoch"] / mean["floor"],
        "seconds": seconds,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log(json.dumps({k: v for k, v in result.items() if k != "seconds"}, indent=2))
    return result


if __name__ == "__main__":
    main()
