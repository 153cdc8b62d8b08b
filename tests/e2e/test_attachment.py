"""evaluate and plot log into the right run, with real `dvc` on the tiny dataset. Identical params give
identical model bytes, so the model's hash alone cannot tell runs apart: a workspace run after an experiment
with the same params, a `--force` re-run, and a second clone sharing one store each keep their results in
their own run; when several runs made the model and none in this working copy, a new run says so."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests import harness as P

pytestmark = pytest.mark.e2e

LR = 0.07  # not the template's lr: the first experiment really trains


FROM_TRAIN = P.STAGES[P.STAGES.index("train") :]  # train and the stages after it


def model_hash(root) -> str:
    return hashlib.sha256((root / "models" / "model.pt").read_bytes()).hexdigest()


def artifacts(client, run_id, path=None) -> set[str]:
    """Every artifact file of a run, recursively."""
    out: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


@pytest.fixture(scope="module")
def shared(template, e2e_dir):
    return P.clone_project(template, e2e_dir / "attachment")


def test_runs_keep_their_own_results(shared, template, e2e_dir):
    root = shared
    client = P.mlflow_client(root)

    # An experiment trains: its run E holds its evaluation and plots.
    out = P.dvc(root, "exp", "run", "-S", f"train.lr={LR}").stdout
    assert P.ran_stages(out)[-len(FROM_TRAIN) :] == FROM_TRAIN, out
    [exp_run] = P.runs(root)
    exp_files = artifacts(client, exp_run.info.run_id)
    exp_eval = client.download_artifacts(exp_run.info.run_id, "evaluation/eval.json", str(e2e_dir / "e-eval"))
    exp_eval_bytes = Path(exp_eval).read_bytes()

    # The workspace, back at its baseline, then given the same training params and another plot.dpi: DVC
    # restores train and evaluate from its run-cache, plot runs and logs under dvc_exp_reused/workspace/ of E,
    # leaving E's own files and status alone.
    P.restore_baseline(root)
    P.set_params(root, **{"train.lr": LR, "plot.dpi": 45})
    out = P.dvc(root, "repro").stdout
    assert P.ran_stages(out) == ["plot"], out
    assert len(P.runs(root)) == 1
    run = client.get_run(exp_run.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["dvc_exp_names_reused"] == "workspace"
    assert artifacts(client, run.info.run_id) - exp_files == {
        f"dvc_exp_reused/workspace/plots/{n}.png" for n in ("confusion_matrix", "loss_accuracy", "misclassified")
    }
    assert run.data.tags["dvc_exp_reused.workspace.plot"] == "FINISHED"

    # `dvc repro -f`: the workspace trains again, same bytes, its own run W; evaluate and plot log there.
    out = P.dvc(root, "repro", "-f").stdout
    assert P.ran_stages(out) == P.STAGES, out
    exp_run2, workspace_run = P.runs(root)
    assert exp_run2.info.run_id == exp_run.info.run_id
    assert workspace_run.data.tags["model_sha256"] == exp_run.data.tags["model_sha256"] == model_hash(root)
    assert {"evaluation/eval.json", "plots/loss_accuracy.png"} <= artifacts(client, workspace_run.info.run_id)
    assert workspace_run.info.status == "FINISHED"
    again = client.download_artifacts(exp_run.info.run_id, "evaluation/eval.json", str(e2e_dir / "e-eval2"))
    assert Path(again).read_bytes() == exp_eval_bytes

    # A second clone on the same store trains the same bytes in its own run B: its results go there.
    other = P.clone_project(template, e2e_dir / "attachment-b")
    P.set_params(other, **{"train.lr": LR})
    env = P.env(MLFLOW_TRACKING_URI=P.store_uri(root))
    out = P.dvc(other, "repro", env_=env).stdout
    assert P.ran_stages(out)[-len(FROM_TRAIN) :] == FROM_TRAIN, out
    b_run = P.runs(root)[-1]
    assert b_run.info.run_id not in (exp_run.info.run_id, workspace_run.info.run_id)
    assert b_run.data.tags["model_sha256"] == model_hash(other) == model_hash(root)
    assert {"evaluation/eval.json", "plots/loss_accuracy.png"} <= artifacts(client, b_run.info.run_id)
    assert artifacts(client, workspace_run.info.run_id) == artifacts(client, P.runs(root)[1].info.run_id)

    # The workspace forgets its run (its run file is gone) and only plot re-runs: three runs made this model,
    # none here. plot says so, and logs into a new run that names them.
    (root / ".mlflow-run.json").unlink()
    P.set_params(root, **{"plot.dpi": 50})
    before = {r.info.run_id: artifacts(client, r.info.run_id) for r in P.runs(root)}
    out = P.dvc(root, "repro").stdout
    assert P.ran_stages(out) == ["plot"], out
    assert "3 runs produced model" in out and "results go to a new run" in out
    *old, new = P.runs(root)
    assert {r.info.run_id: artifacts(client, r.info.run_id) for r in old} == before
    assert set(new.data.tags["pipeline.model_runs"].split(", ")) == set(before)
    assert new.data.tags["model_sha256_evaluated"] == model_hash(root) and "model_sha256" not in new.data.tags
    assert artifacts(client, new.info.run_id) == {
        f"plots/{n}.png" for n in ("confusion_matrix", "loss_accuracy", "misclassified")
    }
    assert new.info.status == "FINISHED"
