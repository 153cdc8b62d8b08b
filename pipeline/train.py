"""Stage train: the course's MLP on the prepared tensors; one MLflow run per training.

With `train.checkpoint: true` the state after each epoch goes to --checkpoint (see src/checkpoint.py); a
training killed mid-way resumes there, in a new MLflow run that first re-logs the epochs already done (so the
new run alone holds every step once, in order) and is tagged resumed_from_run / resumed_from_epoch.
"""
import argparse
import os
import sys
from pathlib import Path

import torch

from src.checkpoint import Checkpoint
from src import mkl
from src.cli import StageError, run
from src.datasets import dataset_digest
from src.fileio import sha256_file, write_json_atomic
from src.model import MLP, architecture, save_model
from src.params import flatten, load_params
from src.prepared import TEST_FILE, TRAIN_FILE, load_info
from src.prepared_torch import load_split
from src.tracking import open_tracker, run_context_tags
from src.native import ops as native_ops
from src.train import ManualReluSGDStep, make_optimizer, resolve_device, train, use_deterministic_algorithms


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="params.yaml")
    parser.add_argument("--data", required=True, help="prepared folder (preprocess's output)")
    parser.add_argument("--model", required=True, help="model file to write")
    parser.add_argument("--history", required=True, help="per-epoch history JSON to write")
    parser.add_argument("--checkpoint", help="per-epoch checkpoint file, used when train.checkpoint is true")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    p = params.train
    if p.checkpoint and not args.checkpoint:
        raise StageError("train.checkpoint is true but no --checkpoint PATH was given")
    tracker = open_tracker(params.tracking.enabled, params.tracking.experiment)  # fails before training

    torch.set_num_threads(p.threads)
    use_deterministic_algorithms(True)
    device = resolve_device(p.device)
    info = load_info(Path(args.data))
    train_split, test_split = load_split(Path(args.data) / TRAIN_FILE), load_split(Path(args.data) / TEST_FILE)
    train_x, train_y = train_split.images.to(device), train_split.labels.to(device)  # moved once
    test_x, test_y = test_split.images.to(device), test_split.labels.to(device)

    torch.manual_seed(params.seed)  # weight init
    arch = architecture(train_x.shape[1], params.model.hidden_sizes, len(info["classes"]), params.model.activation)
    model = MLP(**arch).to(device)
    optimizer = make_optimizer(model, p.optimizer, p.lr, p.momentum, p.betas, p.weight_decay)
    if p.backward == "manual-cpp" and ManualReluSGDStep.applies(model, optimizer):
        native_ops()  # load (or build) the C++ step now: a machine that cannot build it fails before the run
    shuffle = torch.Generator().manual_seed(params.seed)
    ckpt = Checkpoint(args.checkpoint, params, args.data, device, [__file__]) if p.checkpoint else None
    done, resume_tags = ckpt.resume(model, optimizer, shuffle) if ckpt else ([], {})  # done: completed epochs

    logged_params = {**flatten(params),
                     "data.normalize.mean_used": repr(info["normalize"]["mean"]),
                     "data.normalize.std_used": repr(info["normalize"]["std"]),
                     "train.device_used": str(device),
                     "mkl_cbwr_used": mkl.requested() or ""}  # src/mkl.py: it decides the bits
    digest = dataset_digest(info["raw_sha256"])
    tags = {**run_context_tags(), "dataset": info["dataset"], "dataset_digest": digest,
            **{f"dataset_sha256.{name}": digest for name, digest in info["raw_sha256"].items()}, **resume_tags}
    with tracker.training_run(os.environ.get("DVC_EXP_NAME"), logged_params, tags) as mlrun:
        mlrun.log_dataset(info["dataset"], digest, str(Path(args.data).resolve()), context="train")

        def log_epoch(r):
            mlrun.log_metrics({"train_loss": r.train_loss, "test_loss": r.test_loss,
                               "test_accuracy": r.test_accuracy, "epoch_seconds": r.seconds}, step=r.epoch)

        for r in done:  # a resumed training's run gets the restored epochs too: one complete series
            log_epoch(r)

        def report(r):
            done.append(r)
            if ckpt:  # saved and logged before it is printed: an epoch the output shows is in both
                ckpt.save(model, optimizer, shuffle, done, mlrun.run_id)
            log_epoch(r)
            print(f"epoch {r.epoch:>3}/{p.epochs}  train_loss {r.train_loss:.4f}  test_loss {r.test_loss:.4f}"
                  f"  test_accuracy {100 * r.test_accuracy:.2f}%  ({r.seconds:.1f} s)", flush=True)

        train(model, train_x, train_y, test_x, test_y, epochs=p.epochs, batch_size=p.batch_size,
              eval_batch_size=p.eval_batch_size, optimizer=optimizer, generator=shuffle,
              backward=p.backward, start_epoch=len(done) + 1, on_epoch=report)
        save_model(args.model, model, arch)
        # No timings in the history: it must be byte-identical for the same params, data and threads.
        write_json_atomic(args.history, [{k: v for k, v in h.as_dict().items() if k != "seconds"}
                                         for h in done])
        model_hash = sha256_file(args.model)
        mlrun.log_artifact(args.model, "weights")
        if params.tracking.log_model:
            mlrun.log_pytorch_model(model.cpu(), test_split.images[:4].numpy())
        mlrun.set_model_hash(model_hash)  # last: the plot stage finds only complete runs
    if ckpt:
        ckpt.remove()  # the outputs are complete: nothing left to resume


if __name__ == "__main__":
    sys.exit(run(main, "train"))
