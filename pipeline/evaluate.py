"""Stage evaluate: final test metrics, confusion matrix and per-sample predictions of the trained model,
also logged into the MLflow run that trained it."""

import argparse
import sys
from pathlib import Path

import torch

from mnist_softmax.cli import run
from mnist_softmax.core.evaluate import confusion_matrix, evaluation_summary, per_class_table, predict, summary_metrics
from mnist_softmax.core.model import load_model
from mnist_softmax.core.params import load_params
from mnist_softmax.core.prepared import TEST_FILE, load_info, load_split
from mnist_softmax.core.results import write_confusion, write_metrics, write_per_class, write_predictions
from mnist_softmax.fileio import sha256_file
from mnist_softmax.tracking import open_tracker


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="params.yaml")
    parser.add_argument("--data", required=True, help="prepared folder (preprocess's output)")
    parser.add_argument("--model", required=True, help="model file (train's output)")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write")
    parser.add_argument("--per-class", required=True, help="per-class accuracy JSON to write")
    parser.add_argument("--confusion", required=True, help="confusion-matrix JSON to write")
    parser.add_argument("--predictions", required=True, help="per-sample predictions CSV to write")
    parser.add_argument("--run-file", help="where this working copy notes its MLflow run (git-ignored)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    tracker = open_tracker(params.tracking.enabled, params.tracking.experiment, args.run_file)
    torch.set_num_threads(params.train.threads)

    model, _ = load_model(args.model)  # weights_only=True: a tampered file is refused before anything runs
    with tracker.attached_run(sha256_file(args.model), "evaluate") as mlrun:
        classes = load_info(Path(args.data))["classes"]
        images, labels = (torch.from_numpy(a) for a in load_split(Path(args.data) / TEST_FILE))
        result = predict(model, images, labels, batch_size=params.train.eval_batch_size)
        confusion = confusion_matrix(labels, result.predicted, len(classes))
        summary = evaluation_summary(result.loss, result.accuracy)
        per_class = per_class_table(confusion, classes)
        write_metrics(args.metrics, summary)
        write_per_class(args.per_class, per_class)
        write_confusion(args.confusion, classes, confusion.tolist())
        write_predictions(args.predictions, classes, labels.tolist(), result.predicted.tolist())
        mlrun.log_metrics(summary_metrics(summary))
        for path in (args.metrics, args.per_class, args.confusion, args.predictions):
            mlrun.log_artifact(path, "evaluation")
        print(f"evaluate: test accuracy {100 * result.accuracy:.2f}%  test loss {result.loss:.4f}")


if __name__ == "__main__":
    sys.exit(run(main, "evaluate"))
