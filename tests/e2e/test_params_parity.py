"""params.yaml means one thing: for values YAML 1.1 and 1.2 read differently, the train stage uses exactly
what `dvc params diff` reports (DVC's own parser), or refuses it naming that value."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests import harness as P

pytestmark = pytest.mark.e2e

# (key, as written in params.yaml, what DVC reports, what the stage does with it: None = refuses)
CASES = [
    ("epochs", "010", 10, 10),  # YAML 1.1: the octal 8
    ("lr", "1e-3", 0.001, 0.001),  # YAML 1.1: a string
    ("checkpoint", "yes", "yes", None),  # YAML 1.1: true
    ("epochs", "1:30", "1:30", None),  # YAML 1.1: the sexagesimal 90
]


@pytest.fixture(scope="module")
def parity_project(template, e2e_dir):
    return P.clone_project(template, e2e_dir / "parity")


def write_line(root, key, text):
    lines = (root / "params.yaml").read_text().splitlines()
    (i,) = [n for n, line in enumerate(lines) if line.startswith(f"  {key}:")]
    lines[i] = f"  {key}: {text}"
    (root / "params.yaml").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("key, text, dvc_value, used", CASES, ids=[f"{k}: {t}" for k, t, _, _ in CASES])
def test_the_stage_uses_what_dvc_reports(parity_project, key, text, dvc_value, used):
    root = parity_project
    try:
        write_line(root, key, text)
        diff = P.dvc_json(root, "params", "diff")["params.yaml"]
        assert diff[f"train.{key}"]["new"] == dvc_value
        done = P.dvc(root, "repro", "train", check=False)
        if used is None:
            assert done.returncode != 0
            assert f"train: error: params.yaml is invalid:\n  - train.{key} = {dvc_value!r}: " in done.stdout
            assert "Traceback" not in done.stdout
        else:
            assert done.returncode == 0, done.stdout
            digest = hashlib.sha256((root / "models" / "model.pt").read_bytes()).hexdigest()
            [run] = [r for r in P.runs(root) if r.data.tags.get("model_sha256") == digest]
            assert run.data.params[f"train.{key}"] == str(used)
            history = json.loads((root / "metrics" / "train_history.json").read_text())
            if key == "epochs":
                assert len(history) == used
    finally:
        P.restore_baseline(root)
