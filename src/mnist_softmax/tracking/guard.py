"""The guard a stage starts beside itself (lifecycle.py): it waits until its stdin closes, which happens when
the stage's process ends, however it ends. The stage's last word says whether it recorded its outcome
("done"), or which outcome it could not write; with no word the guard records the attempt FAILED. MLflow is
imported only when there is something to record.

    MLFLOW_TRACKING_URI=... python -m mnist_softmax.tracking.guard RUN_ID STAGE PID REUSED_AS
"""

import sys

from mnist_softmax.tracking import last_word


def main(argv: list[str]) -> None:
    run_id, stage, pid, reused_as = argv
    word = last_word.decode(sys.stdin.buffer.read())
    if word == last_word.DONE:
        return
    from mlflow.tracking import MlflowClient

    from mnist_softmax.tracking.lifecycle import end_abandoned_stage

    end_abandoned_stage(MlflowClient(), run_id, stage, pid, reused_as, word)  # the store: MLFLOW_TRACKING_URI


if __name__ == "__main__":
    main(sys.argv[1:])
