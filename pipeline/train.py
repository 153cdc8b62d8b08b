"""Stage train: the course's MLP on the prepared tensors; one MLflow run per training.

With `train.checkpoint: true` the state after each epoch goes to --checkpoint (see checkpoint.py); a
training killed mid-way resumes there, in a new MLflow run that first re-logs the epochs already done (so the
new run alone holds every step once, in order) and is tagged resumed_from_run / resumed_from_epoch.
"""

import argparse
import os
import sys
from pathlib import Path

import torch

from mnist_softmax.cli import StageError, run
from mnist_softmax.core.checkpoint import Checkpoint
from mnist_softmax.core.datasets import dataset_digest
from mnist_softmax.core.history import epoch_line, write_history
from mnist_softmax.core.model import MLP, architecture, save_model
from mnist_softmax.core.params import flatten, load_params
from mnist_softmax.core.prepared import TEST_FILE, TRAIN_FILE, load_info, load_split
from mnist_softmax.core.preprocess import to_pixels
from mnist_softmax.core.train import (
    make_optimizer,
    resolve_device,
    train,
    use_deterministic_algorithms,
)
from mnist_softmax.fileio import sha256_file
from mnist_softmax.tracking import open_tracker


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="params.yaml")
    parser.add_argument("--data", required=True, help="prepared folder (preprocess's output)")
    parser.add_argument("--model", required=True, help="model file to write")
    parser.add_argument("--history", required=True, help="per-epoch history JSON to write")
    parser.add_argument("--checkpoint", help="per-epoch checkpoint file, used when train.checkpoint is true")
    parser.add_argument("--run-file", help="where this working copy notes its MLflow run (git-ignored)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    p = params.train
    if p.checkpoint and not args.checkpoint:
        raise StageError("train.checkpoint is true but no --checkpoint PATH was given")
    tracker = open_tracker(params.tracking.enabled, params.tracking.experiment, args.run_file)  # fails before training

    torch.set_num_threads(p.threads)
    device = resolve_device(p.device)
    use_deterministic_algorithms(device)
    data = Path(args.data)
    info = load_info(data)
    (train_x, train_y), (test_x, test_y) = (
        [torch.from_numpy(a).to(device) for a in load_split(data / name)] for name in (TRAIN_FILE, TEST_FILE)
    )  # on the device once

    torch.manual_seed(params.seed)  # weight init
    arch = architecture(train_x.shape[1], params.model.hidden_sizes, len(info["classes"]), params.model.activation)
    model = MLP(**arch).to(device)
    optimizer = make_optimizer(model, p.optimizer, p.lr, p.momentum, p.betas, p.weight_decay)
    shuffle = torch.Generator().manual_seed(params.seed)
    ckpt = Checkpoint(args.checkpoint, params, data, device, [__file__]) if p.checkpoint else None
    done, resume_tags = ckpt.resume(model, optimizer, shuffle) if ckpt else ([], {})  # done: completed epochs

    logged_params = {
        **flatten(params),
        "data.normalize.mean_used": repr(info["normalize"]["mean"]),
        "data.normalize.std_used": repr(info["normalize"]["std"]),
        "train.device_used": str(device),
    }
    digest = dataset_digest(info["raw_sha256"])
    tags = {
        "dataset": info["dataset"],
        "dataset_digest": digest,
        **{f"dataset_sha256.{name}": digest for name, digest in info["raw_sha256"].items()},
        **resume_tags,
    }
    with tracker.training_run(os.environ.get("DVC_EXP_NAME"), logged_params, tags) as mlrun:
        mlrun.log_dataset(info["dataset"], digest, str(data.resolve()), context="train")

        def log_epoch(r):
            mlrun.log_metrics(
                {
                    "train_loss": r.train_loss,
                    "test_loss": r.test_loss,
                    "test_accuracy": r.test_accuracy,
                    "system/epoch_seconds": r.seconds,  # the UI's system section, below the curves
                },
                step=r.epoch,
            )

        for r in done:  # a resumed training's run gets the restored epochs too: one complete series
            log_epoch(r)

        def report(r):
            done.append(r)
            if ckpt:  # saved and logged before it is printed: an epoch the output shows is in both
                ckpt.save(model, optimizer, shuffle, done, mlrun.run_id)
            log_epoch(r)
            print(epoch_line(r, p.epochs), flush=True)

        train(
            model,
            train_x,
            train_y,
            test_x,
            test_y,
            epochs=p.epochs,
            batch_size=p.batch_size,
            eval_batch_size=p.eval_batch_size,
            optimizer=optimizer,
            generator=shuffle,
            start_epoch=len(done) + 1,
            on_epoch=report,
        )
        save_model(args.model, model, arch)
        write_history(args.history, done)
        mlrun.log_artifact(args.model, "weights")
        if params.tracking.log_model:
            norm = info["normalize"]
            preprocessing = {**norm, "image_shape": info["image_shape"], "classes": info["classes"]}
            example = to_pixels(test_x[:4].cpu().numpy(), norm["mean"], norm["std"])  # as the model takes them
            mlrun.log_model(model.cpu(), arch, preprocessing, example)
        mlrun.set_model_hash(sha256_file(args.model))  # last: evaluate and plot find only complete runs
    if ckpt:
        ckpt.remove()  # the outputs are complete: nothing left to resume


if __name__ == "__main__":
    sys.exit(run(main, "train"))
