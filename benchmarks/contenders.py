"""The three ways train_speed.py times one epoch of MNIST training (imported lazily: it imports torch).

Each contender is built from a plain config dict (so a spawned child can rebuild it), then `setup()` loads
its data and builds its model, and every `run_epoch()` does one training pass (+ test evaluation where the
contender has one) and returns its timings.

cfg keys: raw (folder of the raw IDX files), params (params.yaml path), threads, limit (None, or use only the
first N train and test samples: a debug setting), batch_size (None: params' train.batch_size; ours/floor).
"""
from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from src.model import MLP
from src.params import load_params

# The course's conventional script, which the baseline reproduces as written.
COURSE = {"batch_size": 64, "test_batch_size": 64, "lr": 0.01, "momentum": 0.5, "mean": 0.1307, "std": 0.3081}
IN_FEATURES, NUM_CLASSES = 28 * 28, 10


def _normalized_tensors(cfg: dict, params):
    """Raw IDX -> normalized float32 N×784 tensors with the preprocess stage's own (numpy) functions."""
    from src.preprocess import dataset_stats, load_raw, normalize, to_unit
    from benchmarks.common import mnist_spec
    train_images, train_labels, test_images, test_labels = load_raw(mnist_spec(), Path(cfg["raw"]))
    train_x, test_x = to_unit(train_images), to_unit(test_images)
    norm = params.data.normalize
    auto_mean, auto_std = dataset_stats(train_x) if "auto" in (norm.mean, norm.std) else (None, None)
    mean = auto_mean if norm.mean == "auto" else norm.mean
    std = auto_std if norm.std == "auto" else norm.std
    train_x, test_x = normalize(train_x, mean, std), normalize(test_x, mean, std)
    limit = cfg.get("limit")
    if limit:
        train_x, train_labels, test_x, test_labels = (train_x[:limit], train_labels[:limit],
                                                      test_x[:limit], test_labels[:limit])
    return (torch.from_numpy(train_x), torch.from_numpy(train_labels), torch.from_numpy(test_x),
            torch.from_numpy(test_labels))


class Baseline:
    """The conventional course script: torchvision MNIST + ToTensor/Normalize per sample, DataLoader(64,
    shuffle), autograd + SGD(lr 0.01, momentum 0.5), loss.item() every step, test set via DataLoader(64)."""
    name = "baseline"

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.params = load_params(cfg["params"])

    def setup(self) -> None:
        from torch.utils.data import DataLoader, Subset
        from torchvision import datasets, transforms
        from benchmarks.common import mnist_spec
        self._root = tempfile.TemporaryDirectory(prefix="bench-mnist-")  # <root>/MNIST/raw/<name>, as torchvision wants
        raw = Path(self._root.name) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for name in mnist_spec().sha256:
            (raw / name).symlink_to(Path(self.cfg["raw"]).resolve() / name)
        transform = transforms.Compose([transforms.ToTensor(),
                                        transforms.Normalize((COURSE["mean"],), (COURSE["std"],))])
        train_set = datasets.MNIST(self._root.name, train=True, download=False, transform=transform)
        test_set = datasets.MNIST(self._root.name, train=False, download=False, transform=transform)
        if self.cfg.get("limit"):
            train_set = Subset(train_set, range(min(self.cfg["limit"], len(train_set))))
            test_set = Subset(test_set, range(min(self.cfg["limit"], len(test_set))))
        self.n_train, self.n_test = len(train_set), len(test_set)
        self.train_loader = DataLoader(train_set, batch_size=COURSE["batch_size"], shuffle=True)
        self.test_loader = DataLoader(test_set, batch_size=COURSE["test_batch_size"], shuffle=False)
        torch.manual_seed(self.params.seed)
        m = self.params.model
        self.model = MLP(IN_FEATURES, m.hidden_sizes, NUM_CLASSES, m.activation)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=COURSE["lr"], momentum=COURSE["momentum"])
        self.criterion = nn.CrossEntropyLoss()
        self.batch_size = COURSE["batch_size"]

    def run_epoch(self) -> dict:
        model, optimizer, criterion = self.model, self.optimizer, self.criterion
        t0 = time.perf_counter()
        model.train()
        running = 0.0
        for data, target in self.train_loader:
            optimizer.zero_grad()
            output = model(data)
            loss = criterion(output, target)
            loss.backward()
            optimizer.step()
            running += loss.item()
        t1 = time.perf_counter()
        model.eval()
        correct = 0
        with torch.no_grad():
            for data, target in self.test_loader:
                output = model(data)
                correct += (output.argmax(dim=1) == target).sum().item()
        t2 = time.perf_counter()
        return {"train_s": t1 - t0, "eval_s": t2 - t1, "accuracy": correct / self.n_test,
                "train_loss": running / len(self.train_loader)}


class Ours:
    """The train stage's code path: src.preprocess arrays as tensors, make_optimizer, train_epoch (manual
    backward when params say so), predict with eval_batch_size; seeded and deterministic like
    pipeline/train.py."""
    name = "ours"

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.params = load_params(cfg["params"])

    def setup(self) -> None:
        from src.train import make_optimizer
        p = self.params.train
        if p.backward == "manual-cpp":
            from src.native import ops
            ops()  # load (or build, on a machine that never has) the C++ step before any epoch is timed
        self.train_x, self.train_y, self.test_x, self.test_y = _normalized_tensors(self.cfg, self.params)
        self.n_train, self.n_test = len(self.train_y), len(self.test_y)
        torch.manual_seed(self.params.seed)  # weight init, as pipeline/train.py
        m = self.params.model
        self.model = MLP(self.train_x.shape[1], m.hidden_sizes, NUM_CLASSES, m.activation)
        self.optimizer = make_optimizer(self.model, p.optimizer, p.lr, p.momentum, p.betas, p.weight_decay)
        self.generator = torch.Generator().manual_seed(self.params.seed)  # the per-epoch shuffle
        self.batch_size = self.cfg.get("batch_size") or p.batch_size

    def run_epoch(self) -> dict:
        from src.train import predict, train_epoch, use_deterministic_algorithms
        p = self.params.train
        was_deterministic = torch.are_deterministic_algorithms_enabled()
        use_deterministic_algorithms(True)  # as pipeline/train.py runs
        try:
            t0 = time.perf_counter()
            loss = train_epoch(self.model, self.train_x, self.train_y, batch_size=self.batch_size,
                               optimizer=self.optimizer, generator=self.generator,
                               backward=p.backward)
            t1 = time.perf_counter()
            _, accuracy, _, _ = predict(self.model, self.test_x, self.test_y, batch_size=p.eval_batch_size)
            t2 = time.perf_counter()
        finally:
            use_deterministic_algorithms(was_deterministic)
        return {"train_s": t1 - t0, "eval_s": t2 - t1, "accuracy": accuracy, "train_loss": loss}


class FloorPython:
    """Only the Linear layers' matrix products of a training pass: per batch, a@W^T forward through every
    layer, then backward grad_W = g^T@a for every layer and grad_in = g@W for all but the first. Same
    samples (contiguous slices, no shuffle), batch size and threads as ours; no activation, loss, optimizer,
    bias, autograd or evaluation. A Python loop: ~20 op calls from Python a step, which Floor avoids."""
    name = "floor_py"

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.params = load_params(cfg["params"])

    def setup(self) -> None:
        self.train_x, _, _, _ = _normalized_tensors(self.cfg, self.params)
        self.n_train, self.n_test = self.train_x.shape[0], 0
        torch.manual_seed(self.params.seed)
        m = self.params.model
        model = MLP(self.train_x.shape[1], m.hidden_sizes, NUM_CLASSES, m.activation)
        self.weights = [layer.weight.detach().clone() for layer in model.modules() if isinstance(layer, nn.Linear)]
        self.weights_t = [w.t() for w in self.weights]  # views, made once
        self.batch_size = self.cfg.get("batch_size") or self.params.train.batch_size

    @torch.inference_mode()
    def run_epoch(self) -> dict:
        x, weights, weights_t, bs = self.train_x, self.weights, self.weights_t, self.batch_size
        last = len(weights) - 1
        t0 = time.perf_counter()
        for start in range(0, x.shape[0], bs):
            acts = [x[start:start + bs]]
            for wt in weights_t:
                acts.append(acts[-1] @ wt)
            g = acts[-1]  # stands in for d(loss)/d(logits): same shape, no loss computed
            for i in range(last, -1, -1):
                g.t() @ acts[i]  # grad_W (discarded: no optimizer)
                if i:
                    g = g @ weights[i]  # grad_in
        t1 = time.perf_counter()
        return {"train_s": t1 - t0, "eval_s": 0.0, "accuracy": None, "train_loss": None}


FLOOR_SOURCE = Path(__file__).with_name("floor.cpp")


class Floor(FloorPython):
    """FloorPython's products in the same order, looped in C++ (benchmarks/floor.cpp, built on first use):
    no Python between them. What no implementation of this MLP on this CPU can go below."""
    name = "floor"

    def setup(self) -> None:
        from src.native import load
        super().setup()
        self.ops = load("mnist_softmax_bench", FLOOR_SOURCE, "the benchmark's floor needs it")

    def run_epoch(self) -> dict:
        t0 = time.perf_counter()
        self.ops.floor_epoch(self.train_x, self.batch_size, self.weights)
        t1 = time.perf_counter()
        return {"train_s": t1 - t0, "eval_s": 0.0, "accuracy": None, "train_loss": None}


CONTENDERS = {c.name: c for c in (Baseline, Ours, Floor, FloorPython)}

PROBE_SOURCE = Path(__file__).with_name("core_latency.cpp")


def core_probe(seconds: float = 0.2):
    """A function giving the round trip (ns) of one cache line between this process's first two CPUs
    (benchmarks/core_latency.cpp), or None where that cannot be measured (one CPU, no compiler, not Linux)."""
    import os
    from src.native import NativeBuildError, load
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return None
    try:
        ops = load("mnist_softmax_probe", PROBE_SOURCE, "the benchmark's core-latency probe needs it")
    except NativeBuildError as exc:
        print(f"core-latency probe not available, not measured: {str(exc)[:300]}", file=sys.stderr)
        return None

    def probe():
        try:
            ns = ops.core_round_trip_ns(cpus[0], cpus[1], seconds)
        except RuntimeError:  # e.g. no second thread could be started
            return None
        return ns if ns > 0 else None
    return probe


def _proc_status_mib(*keys: str) -> dict:
    """Fields of /proc/self/status in MiB (None where unreadable). VmHWM: peak RSS of this process image
    (unlike ru_maxrss, not carried over from the process that exec'ed it); RssAnon / RssFile: now."""
    out = dict.fromkeys(keys)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in out:
                out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def rss_child(name: str, cfg: dict) -> dict:
    """Runs in a fresh spawned process: set up one contender, run one epoch, report peak memory (MiB)."""
    after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    torch.set_num_threads(cfg["threads"])
    contender = CONTENDERS[name](cfg)
    contender.setup()
    epoch = contender.run_epoch()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    status = _proc_status_mib("VmHWM", "RssAnon", "RssFile")
    return {"peak_rss_mib": peak, "rss_after_import_mib": after_import,
            "peak_minus_import_mib": peak - after_import, "vm_hwm_mib": status["VmHWM"],
            "rss_anon_end_mib": status["RssAnon"], "rss_file_end_mib": status["RssFile"],
            "rss_child_epoch_s": epoch["train_s"] + epoch["eval_s"]}
