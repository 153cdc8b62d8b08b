"""Resumable training (`train.checkpoint: true`): one checkpoint file, rewritten atomically after every epoch.

It holds the state after the last completed epoch: model and optimizer state, the shuffle generator's and
torch's global RNG state, the history so far, and the MLflow run id of the training that wrote it. Resuming
from it gives weights and history byte-identical to an uninterrupted run (same params, data, code, threads).

A fingerprint of everything that can shape training (every param, the prepared data files' SHA-256, the
SHA-256 of the course's code in this folder and of the stage's, torch version, device: a new param or module
is in it by itself) is stored with it, and the file starts with the SHA-256
of the rest: a checkpoint that is damaged (one flipped bit), has another fingerprint, cannot be read, or
does not fit the model and optimizer is ignored with a message, and training starts from epoch 1. It is
loaded with weights_only=True (loading runs no code). The training stage deletes it after a successful run.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
from pathlib import Path

import torch

from mnist_softmax.core.history import EpochResult
from mnist_softmax.core.params import Params, flatten
from mnist_softmax.fileio import atomic_path, sha256_file

FORMAT = 2
MAGIC = b"mnist-softmax checkpoint\n"  # then the payload's SHA-256 in hex and a newline, then the payload
CORE_CODE = sorted(Path(__file__).parent.glob("*.py"))


def fingerprint(params: Params, data_dir: str | Path, code_files, device) -> str:
    """SHA-256 over every param, the data and code files' SHA-256, torch and device."""
    settings = flatten(params)
    data = {
        p.name: sha256_file(p) for p in sorted(Path(data_dir).iterdir()) if p.is_file() and not p.name.startswith(".")
    }
    code = [sha256_file(f) for f in code_files]  # in the caller's order (two of them are named train.py)
    blob = json.dumps(
        {
            "format": FORMAT,
            "settings": settings,
            "data": data,
            "code": code,
            "torch": torch.__version__,
            "device": str(device),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class Checkpoint:
    """The checkpoint file of one training: resume from it, save after each epoch, remove when done."""

    def __init__(
        self,
        path: str | Path,
        params: Params,
        data_dir: str | Path,
        device,
        code_files=(),
        log=print,
    ):
        self.path, self.log = Path(path), log
        code = [*code_files, *CORE_CODE]
        self.fingerprint = fingerprint(params, data_dir, code, device)

    def resume(self, model, optimizer, generator: torch.Generator) -> tuple[list[EpochResult], dict[str, str]]:
        """Restore the saved state if the checkpoint is usable: (epochs done, tags for the new run)."""
        state = load(self.path, self.fingerprint, self.log)
        if state is None:
            return [], {}
        try:
            history = restore(state, model, optimizer, generator)
        except Exception as e:  # well-formed and fingerprinted, but not a state this training can take
            self.log(
                f"train: ignoring checkpoint {self.path}: it does not fit this training"
                f" ({type(e).__name__}: {e}); starting at epoch 1"
            )
            return [], {}
        self.log(
            f"train: resuming from checkpoint {self.path}: epochs 1..{state['epoch']} done"
            f" (MLflow run {state['run_id'] or '-'})"
        )
        return history, {
            "resumed_from_run": state["run_id"],
            "resumed_from_epoch": str(state["epoch"]),
        }

    def save(
        self,
        model,
        optimizer,
        generator: torch.Generator,
        history: list[EpochResult],
        run_id: str | None,
    ) -> None:
        save(
            self.path,
            fingerprint=self.fingerprint,
            epoch=history[-1].epoch,
            model=model,
            optimizer=optimizer,
            generator=generator,
            history=[h.as_dict() for h in history],
            run_id=run_id,
        )

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def save(
    path: str | Path,
    *,
    fingerprint: str,
    epoch: int,
    model,
    optimizer,
    generator: torch.Generator,
    history: list[dict],
    run_id: str | None,
) -> None:
    """Write the state after `epoch` atomically: a crash leaves the previous checkpoint, never half of one."""
    state = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "epoch": epoch,
        "run_id": run_id or "",
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": [dict(h) for h in history],
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def load(path: str | Path, fingerprint: str, log=print) -> dict | None:
    """The checkpoint's state if it exists, reads and matches `fingerprint`; else None (saying why)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = path.read_bytes()
        digest, _, payload = data.removeprefix(MAGIC).partition(b"\n")
        if not data.startswith(MAGIC) or hashlib.sha256(payload).hexdigest().encode() != digest:
            raise ValueError("its SHA-256 does not match its contents (damaged or not a checkpoint)")
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # damaged or truncated file, or a pickle needing globals: never trusted
        log(f"train: ignoring checkpoint {path}: cannot read it ({type(e).__name__}: {e}); starting at epoch 1")
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        log(f"train: ignoring checkpoint {path}: not a checkpoint of this pipeline; starting at epoch 1")
        return None
    if state.get("fingerprint") != fingerprint:
        log(
            f"train: ignoring checkpoint {path}: it was made with other params, data or code"
            f" (fingerprint {str(state.get('fingerprint'))[:12]}, now {fingerprint[:12]}); starting at epoch 1"
        )
        return None
    return state


def restore(state: dict, model, optimizer, generator: torch.Generator) -> list[EpochResult]:
    """Put model, optimizer and both RNGs back to where the checkpointed epoch left them; the history so far.
    All or nothing: if any part does not fit, everything is put back as it was and the error raised."""
    before = (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(optimizer.state_dict()),
        generator.get_state(),
        torch.get_rng_state(),
    )
    try:
        history = [EpochResult(**h) for h in state["history"]]
        if [h.epoch for h in history] != list(range(1, state["epoch"] + 1)):
            raise ValueError(f"its history is not epochs 1..{state['epoch']}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # torch does not check the buffers' shapes: a wrong one fails later
            for param in group["params"]:
                for name, value in optimizer.state[param].items():
                    if torch.is_tensor(value) and value.dim() and value.shape != param.shape:
                        raise ValueError(
                            f"optimizer state {name} of shape {list(value.shape)} for a parameter"
                            f" of shape {list(param.shape)}"
                        )
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        return history
    except Exception:
        model.load_state_dict(before[0])
        optimizer.load_state_dict(before[1])
        generator.set_state(before[2])
        torch.set_rng_state(before[3])
        raise
