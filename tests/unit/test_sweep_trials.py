"""Which trials a sweep worker fails as stale, on a real Optuna SQLite storage with a 1 s heartbeat: a trial
whose worker died before its first heartbeat (Optuna's own rule never sees it) after the grace period, a
trial whose heartbeat goes on never."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from mnist_softmax.team.sweep_study import StaleTrials, beating

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize"),
]


def test_a_trial_without_any_heartbeat_is_failed_after_the_grace_period(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    failed: list[int] = []
    storage = optuna.storages.RDBStorage(
        url,
        heartbeat_interval=1,
        grace_period=2,
        heartbeat_stale_trial_callback=lambda study, trial: failed.append(trial.number),
    )
    study = optuna.create_study(storage=storage, study_name="s")
    orphan = optuna.load_study(study_name="s", storage=url).ask()  # a storage without heartbeats: never beats
    alive = study.ask()
    said: list[str] = []
    stale = StaleTrials(storage, study, log=said.append)
    assert stale.grace_s == 4  # MISSED_BEATS heartbeats
    with beating(storage, alive._trial_id):
        stale()
        assert [t.state for t in study.get_trials()] == [TrialState.RUNNING] * 2  # not yet: it may be starting
        time.sleep(stale.grace_s + 0.5)
        stale()
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING]
    assert trials[orphan.number].user_attrs["fail_reason"].startswith("no heartbeat at all for 4 s")
    assert failed == [orphan.number]  # the storage's stale-trial callback: its MLflow run is ended too
    assert said == [f"sweep: trial {orphan.number} failed: {trials[0].user_attrs['fail_reason']}"]
