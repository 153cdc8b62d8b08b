"""Stage preprocess: parse the IDX files strictly, scale to [0,1], normalize, save train/test arrays."""

import argparse
import sys
from pathlib import Path

from mnist_softmax.cli import run
from mnist_softmax.core.datasets import DATASETS
from mnist_softmax.core.params import load_params
from mnist_softmax.core.prepared import TEST_FILE, TRAIN_FILE, save_info, save_split
from mnist_softmax.core.preprocess import load_raw, normalization, normalize, to_unit
from mnist_softmax.fileio import atomic_dir, sha256_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="params.yaml")
    parser.add_argument("--raw", required=True, help="folder of raw IDX files (download's output)")
    parser.add_argument("--out", required=True, help="folder for the prepared arrays (replaced whole)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    spec = DATASETS[params.data.dataset]

    train_images, train_labels, test_images, test_labels = load_raw(spec, Path(args.raw))
    train_x, test_x = to_unit(train_images), to_unit(test_images)
    norm = params.data.normalize
    mean, std = normalization(norm.mean, norm.std, train_x)
    print(
        f"preprocess: {spec.name}: {len(train_labels)} train / {len(test_labels)} test images,"
        f" normalized with mean {mean:.6f} std {std:.6f}"
    )

    with atomic_dir(args.out) as staging:
        save_split(staging / TRAIN_FILE, normalize(train_x, mean, std), train_labels)
        save_split(staging / TEST_FILE, normalize(test_x, mean, std), test_labels)
        save_info(
            staging,
            {
                "dataset": spec.name,
                "classes": list(spec.classes),
                "image_shape": list(spec.image_shape),
                "train_size": len(train_labels),
                "test_size": len(test_labels),
                "raw_sha256": {name: sha256_file(Path(args.raw) / name) for name in spec.sha256},
                "normalize": {
                    "mean": mean,
                    "std": std,
                    "mean_from": "auto" if norm.mean == "auto" else "params",
                    "std_from": "auto" if norm.std == "auto" else "params",
                },
            },
        )


if __name__ == "__main__":
    sys.exit(run(main, "preprocess"))
