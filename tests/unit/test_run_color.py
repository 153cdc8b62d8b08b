"""The colour a new training run gets (tracking/tracker.py run_color), against a stand-in store."""

from __future__ import annotations

from types import SimpleNamespace

from mnist_softmax.tracking.tracker import COLOR_TAG, COLOR_WINDOW, RUN_COLORS, run_color


class Store:
    """Runs oldest first, as (run id, colour or None); search_runs answers as MlflowClient does."""

    def __init__(self, runs):
        self.runs = runs

    def search_experiments(self):
        return [SimpleNamespace(experiment_id="1")]

    def search_runs(self, experiment_ids, order_by, max_results):
        assert experiment_ids == ["1"] and order_by == ["attributes.start_time DESC"]
        found = [
            SimpleNamespace(info=SimpleNamespace(run_id=i), data=SimpleNamespace(tags={COLOR_TAG: c} if c else {}))
            for i, c in reversed(self.runs)
        ]
        return found[:max_results]


def test_consecutive_runs_cycle_through_the_palette():
    store = Store([])
    for n in range(2 * len(RUN_COLORS)):
        store.runs.append((f"r{n}", None))
        store.runs[-1] = (f"r{n}", run_color(store, f"r{n}"))  # type: ignore[arg-type]
    assert [c for _, c in store.runs] == [*RUN_COLORS, *RUN_COLORS]


def test_runs_started_at_once_get_distinct_colours_whoever_asks_first():
    started = [(f"r{n}", RUN_COLORS[n]) for n in range(3)] + [("a", None), ("b", None)]
    b_first = Store(list(started))
    b_first.runs[-1] = ("b", run_color(b_first, "b"))  # type: ignore[arg-type]
    a_after = run_color(b_first, "a")  # type: ignore[arg-type]
    a_first = Store(list(started))
    a_first.runs[-2] = ("a", run_color(a_first, "a"))  # type: ignore[arg-type]
    b_after = run_color(a_first, "b")  # type: ignore[arg-type]
    assert (a_after, b_first.runs[-1][1]) == (a_first.runs[-2][1], b_after) == (RUN_COLORS[3], RUN_COLORS[4])


def test_after_runs_without_our_colours_neighbours_still_differ():
    store = Store([("picked", "#123456"), *((f"old{n}", None) for n in range(COLOR_WINDOW))])
    for n in range(len(RUN_COLORS)):
        store.runs.append((f"r{n}", None))
        store.runs[-1] = (f"r{n}", run_color(store, f"r{n}"))  # type: ignore[arg-type]
    new = [c for _, c in store.runs[-len(RUN_COLORS) :]]
    assert all(len(set(new[i : i + COLOR_WINDOW])) == COLOR_WINDOW for i in range(len(new) - COLOR_WINDOW + 1)), new
