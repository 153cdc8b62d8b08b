"""Stage evaluate: final test metrics, confusion matrix and per-sample predictions of the trained model.

No MLflow here (its import and store cost ~3 s a process): the plot stage, which runs next, logs the metrics
and the confusion matrix (not the predictions CSV) with the plots into the training's run.
"""
import argparse
import csv
import io
import sys
from pathlib import Path

import torch

from src.cli import run
from src.evaluate import confusion_matrix, evaluation_summary
from src.fileio import write_bytes_atomic, write_json_atomic
from src.model import load_model
from src.params import load_params
from src.prepared import TEST_FILE, load_info
from src.prepared_torch import load_split
from src.train import predict


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="params.yaml")
    parser.add_argument("--data", required=True, help="prepared folder (preprocess's output)")
    parser.add_argument("--model", required=True, help="model file (train's output)")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write")
    parser.add_argument("--confusion", required=True, help="confusion-matrix JSON to write")
    parser.add_argument("--predictions", required=True, help="per-sample predictions CSV to write")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    torch.set_num_threads(params.train.threads)

    model, _ = load_model(args.model)  # weights_only=True: a tampered file is refused before anything runs
    info = load_info(Path(args.data))
    classes = info["classes"]
    test = load_split(Path(args.data) / TEST_FILE)
    loss, accuracy, predicted, _ = predict(model, test.images, test.labels, batch_size=params.train.eval_batch_size)
    confusion = confusion_matrix(test.labels, predicted, len(classes))
    write_json_atomic(args.metrics, evaluation_summary(loss, accuracy, confusion, classes))
    write_json_atomic(args.confusion, {"classes": classes, "counts": confusion.tolist()})
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows((classes[t], classes[p]) for t, p in zip(test.labels.tolist(), predicted.tolist()))
    write_bytes_atomic(args.predictions, table.getvalue().encode())
    print(f"evaluate: test accuracy {100 * accuracy:.2f}%  test loss {loss:.4f}")


if __name__ == "__main__":
    sys.exit(run(main, "evaluate"))
