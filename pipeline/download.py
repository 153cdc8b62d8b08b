"""Stage download: the chosen dataset's four raw IDX files, verified against pinned SHA-256."""

import argparse
import sys

from mnist_softmax.cli import run
from mnist_softmax.core.datasets import DATASETS
from mnist_softmax.core.download import download
from mnist_softmax.core.params import load_params


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="params.yaml")
    parser.add_argument("--out", required=True, help="folder for the raw files (replaced whole)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    spec = DATASETS[params.data.dataset]
    return download(spec, list(params.data.sources[spec.name]), args.out)


if __name__ == "__main__":
    sys.exit(run(main, "download"))
