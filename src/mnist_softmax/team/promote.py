"""Promote an experiment's model: register the model its MLflow run logged under the project's model name and
move an alias (default `champion`) to that version, on whatever store MLFLOW_TRACKING_URI names (the SQLite
default or the team's server). Then `mlflow models serve -m models:/<name>@<alias>` serves it.

    python -m mnist_softmax.team.promote EXPERIMENT [--alias champion] [--name mnist-softmax]
"""

import argparse
import sys

from mnist_softmax.cli import run
from mnist_softmax.core.params import load_params


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", help="the DVC experiment's name (its MLflow run's name)")
    ap.add_argument("--alias", default="champion")
    ap.add_argument("--name", default=None, help="registered model name (default: tracking.experiment)")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    experiment = load_params(args.params).tracking.experiment
    from mnist_softmax.tracking.registry import promote

    name = args.name or experiment
    version, run_id = promote(experiment, args.experiment, name, args.alias)
    print(f"promote: {args.experiment} (run {run_id}) is version {version} of {name}; {args.alias} -> {version}")
    print(f"serve it: mlflow models serve -m models:/{name}@{args.alias} --env-manager local")


if __name__ == "__main__":
    sys.exit(run(main, "promote"))
