"""Stage plot: PNGs of the loss/accuracy curves, the confusion matrix and misclassified test digits, also
logged into the MLflow run that trained the model."""

import argparse
import sys
from pathlib import Path

from mnist_softmax.cli import run
from mnist_softmax.core.history import read_history
from mnist_softmax.core.params import load_params
from mnist_softmax.core.plots import confusion_heatmap, loss_accuracy, misclassified_grid
from mnist_softmax.core.prepared import TEST_FILE, load_info, load_split
from mnist_softmax.core.results import read_confusion, read_predictions
from mnist_softmax.fileio import atomic_dir, sha256_file
from mnist_softmax.tracking import open_tracker


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="params.yaml")
    parser.add_argument("--data", required=True, help="prepared folder (for the test images)")
    parser.add_argument("--model", required=True, help="model file (only to find its MLflow run)")
    parser.add_argument("--history", required=True, help="train's per-epoch history JSON")
    parser.add_argument("--confusion", required=True, help="evaluate's confusion-matrix JSON")
    parser.add_argument("--predictions", required=True, help="evaluate's predictions CSV")
    parser.add_argument("--out", required=True, help="folder for the PNGs (replaced whole)")
    parser.add_argument("--run-file", help="where this working copy notes its MLflow run (git-ignored)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    tracker = open_tracker(params.tracking.enabled, params.tracking.experiment, args.run_file)

    with tracker.attached_run(sha256_file(args.model), "plot") as mlrun:
        info = load_info(Path(args.data))
        classes = info["classes"]
        true, predicted = read_predictions(args.predictions, classes)
        test_images, _ = load_split(Path(args.data) / TEST_FILE)
        norm = info["normalize"]
        images = (test_images * norm["std"] + norm["mean"]).reshape(-1, *info["image_shape"])  # back to [0,1]
        dpi = params.plot.dpi
        with atomic_dir(args.out) as out:
            loss_accuracy(read_history(args.history), out / "loss_accuracy.png", dpi)
            confusion_heatmap(read_confusion(args.confusion), classes, out / "confusion_matrix.png", dpi)
            misclassified_grid(
                images,
                true,
                predicted,
                classes,
                out / "misclassified.png",
                dpi,
                params.plot.misclassified,
            )
        pngs = sorted(Path(args.out).glob("*.png"))
        for png in pngs:
            mlrun.log_artifact(png, "plots")
        print(f"plot: wrote {', '.join(png.name for png in pngs)}")


if __name__ == "__main__":
    sys.exit(run(main, "plot"))
