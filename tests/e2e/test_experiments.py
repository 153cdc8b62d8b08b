"""DVC experiments and MLflow: a queued sweep from a fresh store, a diverging experiment, the
run-cache, params typos through `-S`, `dvc exp show` and `dvc plots diff`."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnist_softmax.core.params import RESTORE
from tests import harness as P
from tests.e2e.conftest import SWEEP_LRS

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("sweep")]  # one queued sweep, also test_server.py's

STORE_ERRORS = ("database is locked", "duplicate column", "already exists", "Traceback")


def _exp(sweep, name):
    for rev in P.experiments(sweep.exp_show):
        if rev["name"] == name:
            return rev
    raise AssertionError(f"{name} not in dvc exp show")


def _runs_named(root, name):
    return [r for r in P.runs(root) if r.info.run_name == name]


def test_every_sweep_experiment_finishes_and_shows_its_metrics(sweep):
    for lr, name in sweep.names.items():
        rev = _exp(sweep, name)
        assert rev["data"]["params"]["params.yaml"]["data"]["train"]["lr"] == lr
        metrics = rev["data"]["metrics"]["metrics/eval.json"]["data"]
        assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_loss"] >= 0.0
        # the headline numbers only: the table's first screen is for the params (per class: a plot)
        assert set(rev["data"]["metrics"]) == {"metrics/eval.json"} and set(metrics) == {"test_accuracy", "test_loss"}
        assert f"{name}" in sweep.queue_status and "Success" in sweep.queue_status
    table = P.dvc(
        sweep.root,
        "exp",
        "show",
        "--no-pager",
        "--drop",
        ".*",
        "--keep",
        "Experiment|State|test_accuracy|test_loss|train.lr",
    ).stdout
    for column in ("test_accuracy", "test_loss", "train.lr"):
        assert column in table
    for name in [*sweep.names.values(), sweep.failed]:
        assert name in table


def test_each_experiment_is_one_finished_mlflow_run_named_after_it(sweep):
    root = sweep.root
    client = P.mlflow_client(root)
    for lr, name in sweep.names.items():
        [run] = _runs_named(root, name)
        assert run.info.status == "FINISHED"
        assert run.data.tags["dvc_exp_name"] == name and run.data.params["train.lr"] == str(lr)
        for key in ("train_loss", "test_loss", "test_accuracy"):
            assert [s for s, _ in P.metric_steps(root, run.info.run_id, key)] == [1, 2, 3], (
                name,
                key,
            )
        shown = _exp(sweep, name)["data"]["metrics"]["metrics/eval.json"]["data"]
        assert run.data.metrics["final_test_accuracy"] == pytest.approx(shown["test_accuracy"], abs=1e-6)
        assert run.data.metrics["final_test_loss"] == pytest.approx(shown["test_loss"], abs=1e-6)
        # Artifacts in the project root's mlruns/, not in the queued run's temp copy.
        assert run.info.artifact_uri.startswith((root / "mlruns").as_uri() + "/")
        assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {
            "plots/confusion_matrix.png",
            "plots/loss_accuracy.png",
            "plots/misclassified.png",
        }
        assert (root / "mlruns" / run.info.run_id / "artifacts" / "evaluation" / "eval.json").is_file()
        assert run.data.tags["mlflow_model_uri"].startswith("models:/")
    assert len(P.runs(root)) == len(SWEEP_LRS) + 1  # + the diverged one: no duplicates


def test_fresh_store_created_by_parallel_queued_runs_without_errors(sweep):
    root = sweep.root
    for name, log in sweep.logs.items():
        for error in STORE_ERRORS:
            assert error not in log, f"{name}: {error!r} in its log:\n{log}"
    stray = [p for p in (root / ".dvc" / "tmp").rglob("*") if p.name in ("mlflow.db", "mlruns")]
    assert stray == []
    experiments = {e.name: e.artifact_location for e in P.mlflow_client(root).search_experiments()}
    assert experiments == {
        P.EXPERIMENT: (root / "mlruns").as_uri(),
        "Default": (root / "mlruns" / "0").as_uri(),
    }


def test_diverging_experiment_is_a_failed_mlflow_run_with_its_name(sweep):
    root = sweep.root
    assert _exp(sweep, sweep.failed)["error"]
    assert "Failed" in sweep.queue_status
    assert "the run diverged (try a lower train.lr)" in sweep.logs[sweep.failed]
    [run] = _runs_named(root, sweep.failed)
    assert run.info.status == "FAILED"
    assert run.data.tags["dvc_exp_name"] == sweep.failed
    assert run.data.tags["pipeline.end_reason"].startswith("NonFiniteLoss: epoch 1:")
    assert "model_sha256" not in run.data.tags  # the plot stage can never attach to it


def test_run_cache_restored_experiment_adds_no_mlflow_run(sweep):
    """DVC restores train (and evaluate, plot) from the run-cache: no stage runs, MLflow is untouched. When a
    later stage does run (plot.dpi changed too), it attaches to the run that trained the model, records the
    experiment's name in dvc_exp_names_reused and logs its files under dvc_exp_reused/<name>/."""
    root = sweep.root
    lr = SWEEP_LRS[0]
    [original] = _runs_named(root, sweep.names[lr])
    before = {r.info.run_id for r in P.runs(root)}
    client = P.mlflow_client(root)
    try:
        # 5e-3: DVC's -S parser reads it as a float and writes 0.005, exactly the sweep's value.
        out = P.dvc(root, "exp", "run", "-S", "train.lr=5e-3").stdout
        assert P.read_params(root)["train"]["lr"] == lr
        assert P.ran_stages(out) == [], out
        for stage in P.STAGES[P.STAGES.index("train") :]:
            assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in out
        assert {r.info.run_id for r in P.runs(root)} == before
        assert "dvc_exp_names_reused" not in client.get_run(original.info.run_id).data.tags

        out = P.dvc(root, "exp", "run", "-S", f"train.lr={lr}", "-S", "plot.dpi=50").stdout
        reused_by = out.split("Reproducing experiment '", 1)[1].split("'", 1)[0]
        assert P.ran_stages(out) == ["plot"], out
        assert {r.info.run_id for r in P.runs(root)} == before  # no new, half-empty run
        run = client.get_run(original.info.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["dvc_exp_names_reused"] == reused_by
        own = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert own == {
            "plots/confusion_matrix.png",
            "plots/loss_accuracy.png",
            "plots/misclassified.png",
        }
        theirs = {a.path for a in client.list_artifacts(run.info.run_id, f"dvc_exp_reused/{reused_by}/plots")}
        assert {Path(p).name for p in theirs} == {Path(p).name for p in own}
    finally:
        P.restore_baseline(root)


@pytest.mark.parametrize(
    "override, key, says",
    [
        (
            "+train.l_r=0.1",
            "train.l_r",
            "unknown key",
        ),  # `+` makes DVC add the key (plain train.l_r= it refuses)
        (
            "train.lr='1e-3'",
            "train.lr",
            "quoted string",
        ),  # quoted: a string in params.yaml (unquoted 1e-3 is a float)
    ],
)
def test_bad_param_through_exp_run_fails_naming_the_key_and_opens_no_run(sweep, override, key, says):
    root = sweep.root
    before = {r.info.run_id for r in P.runs(root)}
    try:
        done = P.dvc(root, "exp", "run", "-S", override, check=False)
        assert done.returncode != 0, done.stdout
        assert f"train: error: params.yaml is invalid:\n  - {key}" in done.stdout
        assert says in done.stdout
        assert {r.info.run_id for r in P.runs(root)} == before
        # DVC wrote the value into params.yaml and removed the outputs; the message's command puts them back
        [restore] = [line.split("to put it back: ")[1] for line in done.stdout.splitlines() if "put it back" in line]
        assert restore == RESTORE
        P.run(["bash", "-c", restore], root)
        assert P.git(root, "status", "--porcelain") == "" and P.dvc_json(root, "status") == {}
    finally:
        P.restore_baseline(root)


def test_dvc_refuses_an_unknown_key_without_plus(sweep):
    """DVC 3.67 refuses `-S train.l_r=0.1` itself (Hydra: key not in struct) before any stage runs."""
    done = P.dvc(sweep.root, "exp", "run", "-S", "train.l_r=0.1", check=False)
    assert done.returncode != 0 and "train.l_r" in done.stdout
    assert P.ran_stages(done.stdout) == []
    assert P.dvc_json(sweep.root, "status") == {}


def test_plots_diff_has_curves_and_confusion_of_both_experiments(sweep, tmp_path):
    first, second = sweep.names[SWEEP_LRS[0]], sweep.names[SWEEP_LRS[1]]
    data = P.dvc_json(sweep.root, "plots", "diff", first, second, "-o", str(tmp_path))["data"]
    for plot in ("loss", "test_accuracy", "confusion", "per_class_accuracy"):
        [spec] = data[plot]
        assert spec["revisions"] == [first, second]
        values = spec["content"]["data"]["values"]
        for name in (first, second):
            mine = [v for v in values if v["rev"] == name]
            if plot == "confusion":
                assert len(mine) == 100 and {"actual", "predicted"} <= set(mine[0])
            elif plot == "per_class_accuracy":
                assert [v["class"] for v in mine] == [str(k) for k in range(10)] and "accuracy" in mine[0]
            else:
                assert sorted({v["epoch"] for v in mine}) == [1, 2, 3]
                assert all(key in mine[0] for key in ("train_loss", "test_loss", "test_accuracy"))
    for png in ("loss_accuracy", "confusion_matrix", "misclassified"):
        assert [i["revisions"] for i in data[f"plots/{png}.png"]] == [[first], [second]]
    assert not (sweep.root / "dvc_plots").exists()


def test_plots_have_titles_whole_epochs_and_one_confusion_orientation(sweep):
    """Every plot has a title and named axes; epochs tick as whole numbers; the confusion matrix puts the
    actual class on rows (y) and the predicted one on columns (x), as the PNG does."""
    data = P.dvc_json(sweep.root, "plots", "show")["data"]
    for plot in ("loss", "test_accuracy"):
        content = data[plot][0]["content"]
        x, y = content["encoding"]["x"], content["encoding"]["y"]
        assert content["title"]["text"] and x["title"] == "epoch" and y["title"] not in ("", "y"), content
        assert x["axis"]["format"] == "d" and x["axis"]["tickMinStep"] == 1
    confusion = data["confusion"][0]["content"]
    encoding = confusion["spec"]["encoding"]
    assert confusion["title"]["text"]
    assert (encoding["x"]["field"], encoding["y"]["field"]) == ("predicted", "actual")
    assert (encoding["x"]["title"], encoding["y"]["title"]) == ("predicted", "actual")
