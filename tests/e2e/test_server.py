"""`mlflow ui` started with no store flags in the project root serves the sweep's runs: params,
per-epoch metric histories and artifacts, read through the REST API."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

from tests import harness as P
from tests.e2e.conftest import SWEEP_LRS

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("sweep")]  # one queued sweep, also test_experiments.py's


def _get(base, endpoint, **query):
    with urllib.request.urlopen(f"{base}{endpoint}?{urllib.parse.urlencode(query)}", timeout=30) as r:
        return json.loads(r.read())


def _post(base, endpoint, body):
    request = urllib.request.Request(
        f"{base}{endpoint}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server(sweep, tmp_path_factory):
    """`mlflow ui --host 127.0.0.1 --port P`, cwd = the project root, no store flags: it opens ./mlflow.db."""
    with P.mlflow_ui(sweep.root, tmp_path_factory.mktemp("mlflow-ui") / "server.log") as base:
        yield base


def test_rest_api_serves_the_sweep(server, sweep):
    experiment = _get(server, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=P.EXPERIMENT)["experiment"]
    found = _post(
        server,
        "/api/2.0/mlflow/runs/search",
        {
            "experiment_ids": [experiment["experiment_id"]],
            "filter": "attributes.status = 'FINISHED'",
            "max_results": 100,
        },
    )["runs"]
    by_name = {r["info"]["run_name"]: r for r in found}
    for lr, name in sweep.names.items():
        run = by_name[name]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["train.lr"] == str(lr) and params["data.dataset"] == "tiny"
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert tags["dvc_exp_name"] == name
        run_id = run["info"]["run_id"]
        for key in ("train_loss", "test_loss", "test_accuracy"):
            history = _get(server, "/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key=key)
            assert sorted(m["step"] for m in history["metrics"]) == [1, 2, 3], (name, key)
        final = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert 0.0 <= final["final_test_accuracy"] <= 1.0
        listed = _get(server, "/api/2.0/mlflow/artifacts/list", run_id=run_id, path="plots")
        assert {f["path"] for f in listed["files"]} == {
            "plots/confusion_matrix.png",
            "plots/loss_accuracy.png",
            "plots/misclassified.png",
        }
    assert len(sweep.names) == len(SWEEP_LRS)
    failed = _post(
        server,
        "/api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment["experiment_id"]], "filter": "attributes.status = 'FAILED'"},
    )["runs"]
    assert [r["info"]["run_name"] for r in failed] == [sweep.failed]
