"""The guard a stage starts beside itself (see mlflow_tracker.py): in its own session, so a kill of the
stage's process group spares it. It waits until its stdin closes, which happens when the stage's process
ends, however it ends. A stage that recorded its outcome first says "done"; otherwise the guard records the
stage as FAILED. MLflow is imported only then.

    python -m mnist_softmax.run_guard TRACKING_URI RUN_ID STAGE PID REUSED_AS
"""
import sys


def main(argv: list[str]) -> None:
    uri, run_id, stage, pid, reused_as = argv
    if sys.stdin.buffer.read().strip() == b"done":
        return
    from mnist_softmax.mlflow_tracker import end_abandoned_stage
    end_abandoned_stage(uri, run_id, stage, pid, reused_as)


if __name__ == "__main__":
    main(sys.argv[1:])
