"""Training speed on real MNIST, in one process, interleaved epoch by epoch (rotating order):

  baseline  the conventional course script: torchvision.datasets.MNIST with ToTensor + Normalize per sample,
            DataLoader(batch 64, shuffle=True), SGD(lr 0.01, momentum 0.5), loss.item() every step, the test
            set through DataLoader(64) after every epoch.
  ours      the train stage's code: the preprocess stage's arrays as tensors, MLP, make_optimizer, train_epoch,
            then predict on the test set, seeded and deterministic as pipeline/train.py runs.
  floor     only the five Linear layers' matrix products of ours' batches: per batch the forward products,
            then grad_W = g^T a for every layer and grad_in = g W for all but the first. The epoch's batches
            are gathered before the clock starts; no activation, loss, bias, optimizer, autograd, evaluation.

    python -m benchmarks.train_speed                  # 10 epochs, JSON to benchmarks/results/train_speed.json
    python -m benchmarks.train_speed --epochs 2       # checks the script
    python -m benchmarks.train_speed --only baseline  # the course script alone (benchmarks.sweep times it)

Ratios are of the summed epoch times: ours/floor and baseline/ours. Every contender uses train.threads.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from mnist_softmax.core.datasets import DATASETS
from mnist_softmax.core.download import download
from mnist_softmax.core.evaluate import predict
from mnist_softmax.core.model import MLP
from mnist_softmax.core.params import load_params
from mnist_softmax.core.preprocess import load_raw, normalization, normalize, to_unit
from mnist_softmax.core.train import make_optimizer, train_epoch, use_deterministic_algorithms

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"  # git-ignored
MNIST = DATASETS["mnist"]
COURSE: dict[str, Any] = {
    "batch_size": 64,
    "test_batch_size": 64,
    "lr": 0.01,
    "momentum": 0.5,
    "mean": 0.1307,
    "std": 0.3081,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def raw_mnist(params) -> Path:
    """A folder of the verified raw MNIST files: the project's data/raw, else a download with the project's
    own code into benchmarks/results/raw."""
    for folder in (ROOT / "data" / "raw", RESULTS / "raw"):
        if all((folder / name).is_file() for name in MNIST.sha256):
            return folder
    download(MNIST, list(params.data.sources["mnist"]), RESULTS / "raw", log=log)
    return RESULTS / "raw"


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


class Baseline:
    def __init__(self, params, raw: Path):
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms

        self._root = tempfile.TemporaryDirectory(prefix="bench-mnist-")  # <root>/MNIST/raw/, as torchvision wants
        folder = Path(self._root.name) / "MNIST" / "raw"
        folder.mkdir(parents=True)
        for name in MNIST.sha256:
            (folder / name).symlink_to(raw.resolve() / name)
        tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((COURSE["mean"],), (COURSE["std"],))])
        train_set = datasets.MNIST(self._root.name, train=True, download=False, transform=tf)
        test_set = datasets.MNIST(self._root.name, train=False, download=False, transform=tf)
        self.train_loader = DataLoader(train_set, batch_size=COURSE["batch_size"], shuffle=True)
        self.test_loader = DataLoader(test_set, batch_size=COURSE["test_batch_size"])
        torch.manual_seed(params.seed)
        self.model = MLP(784, params.model.hidden_sizes, 10, params.model.activation)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=COURSE["lr"], momentum=COURSE["momentum"])
        self.criterion = nn.CrossEntropyLoss()

    def epoch(self) -> float:
        self.model.train()
        for data, target in self.train_loader:
            self.optimizer.zero_grad()
            loss = self.criterion(self.model(data), target)
            loss.backward()
            self.optimizer.step()
            loss.item()  # the course prints a running loss
        self.model.eval()
        correct = 0
        with torch.no_grad():
            for data, target in self.test_loader:
                correct += (self.model(data).argmax(dim=1) == target).sum().item()
        return correct / len(cast(Sized, self.test_loader.dataset))  # an MNIST dataset: it has a length


def prepared_tensors(params, raw: Path):
    """Raw IDX -> the normalized tensors the preprocess stage writes, with its own functions."""
    train_images, train_labels, test_images, test_labels = load_raw(MNIST, raw)
    train_x, test_x = to_unit(train_images), to_unit(test_images)
    mean, std = normalization(params.data.normalize.mean, params.data.normalize.std, train_x)
    return [
        torch.from_numpy(a)
        for a in (
            normalize(train_x, mean, std),
            train_labels,
            normalize(test_x, mean, std),
            test_labels,
        )
    ]


class Ours:
    def __init__(self, params, raw: Path):
        self.p = params.train
        self.train_x, self.train_y, self.test_x, self.test_y = prepared_tensors(params, raw)
        torch.manual_seed(params.seed)
        self.model = MLP(784, params.model.hidden_sizes, 10, params.model.activation)
        self.optimizer = make_optimizer(
            self.model,
            self.p.optimizer,
            self.p.lr,
            self.p.momentum,
            self.p.betas,
            self.p.weight_decay,
        )
        self.generator = torch.Generator().manual_seed(params.seed)

    def epoch(self) -> float:
        train_epoch(
            self.model,
            self.train_x,
            self.train_y,
            batch_size=self.p.batch_size,
            optimizer=self.optimizer,
            generator=self.generator,
        )
        return predict(self.model, self.test_x, self.test_y, batch_size=self.p.eval_batch_size).accuracy


class Floor:
    def __init__(self, params, raw: Path):
        self.batch_size = params.train.batch_size
        self.train_x = prepared_tensors(params, raw)[0]
        torch.manual_seed(params.seed)
        model = MLP(784, params.model.hidden_sizes, 10, params.model.activation)
        self.weights = [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]
        self.generator = torch.Generator().manual_seed(params.seed)

    def batches(self) -> list[torch.Tensor]:
        order = torch.randperm(self.train_x.shape[0], generator=self.generator)
        return [self.train_x.index_select(0, idx) for idx in order.split(self.batch_size)]

    @torch.inference_mode()
    def products(self, batches) -> None:
        weights = self.weights
        for x in batches:
            acts = [x]
            for w in weights:
                acts.append(acts[-1] @ w.t())
            g = acts[-1]  # stands in for d(loss)/d(logits): same shape
            for i in range(len(weights) - 1, -1, -1):
                g.t() @ acts[i]  # grad_W
                if i:
                    g = g @ weights[i]  # grad_in


CONTENDERS: dict[str, type[Baseline | Ours | Floor]] = {"baseline": Baseline, "ours": Ours, "floor": Floor}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--only", choices=list(CONTENDERS), action="append", help="run only these (repeatable)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default=str(RESULTS / "train_speed.json"))
    args = ap.parse_args(argv)
    params = load_params(args.params)
    torch.set_num_threads(params.train.threads)
    use_deterministic_algorithms(torch.device("cpu"))  # as pipeline/train.py runs: the stage's bits
    raw = raw_mnist(params)
    names = args.only or list(CONTENDERS)
    contenders = {name: CONTENDERS[name](params, raw) for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    accuracy: dict[str, list[float]] = {name: [] for name in names if name != "floor"}
    for epoch in range(1, args.epochs + 1):
        shift = (epoch - 1) % len(names)
        for name in names[shift:] + names[:shift]:
            c = contenders[name]
            if name == "floor":
                assert isinstance(c, Floor)
                batches = c.batches()
                t0 = time.perf_counter()
                c.products(batches)
            else:
                assert not isinstance(c, Floor)
                t0 = time.perf_counter()
                accuracy[name].append(c.epoch())
            seconds[name].append(time.perf_counter() - t0)
        log(
            f"epoch {epoch:>2}  "
            + "  ".join(f"{n} {seconds[n][-1]:.2f} s" for n in names)
            + "".join(f"  {n} acc {100 * accuracy[n][-1]:.2f}%" for n in accuracy)
        )
    total = {name: sum(s) for name, s in seconds.items()}
    result = {
        "machine": machine(),
        "threads": params.train.threads,
        "epochs": args.epochs,
        "seconds_per_epoch": seconds,
        "total_s": total,
        "accuracy_per_epoch": accuracy,
    }
    if {"ours", "floor"} <= set(names):
        result["ours_over_floor"] = total["ours"] / total["floor"]
    if {"baseline", "ours"} <= set(names):
        result["baseline_over_ours"] = total["baseline"] / total["ours"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name in names:
        log(
            f"{name:>8}: {total[name]:.1f} s"
            + (f", final accuracy {100 * accuracy[name][-1]:.2f}%" if name in accuracy else "")
        )
    for ratio in ("ours_over_floor", "baseline_over_ours"):
        if ratio in result:
            log(f"{ratio}: {result[ratio]:.2f}")
    return result


if __name__ == "__main__":
    main()
