"""What a user sees, in headless Chromium: `dvc plots show` / `dvc plots diff` pages drawn with no network, and
`mlflow ui` opening a run and a comparison on the training curves, each run in its own colour."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests import harness as P

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.xdist_group("sweep"),  # the queued sweep's store and experiments, also test_server.py's
    pytest.mark.skipif(not (P.CHROMIUM and P.CHROMEDRIVER), reason="Debian's chromium and chromium-driver missing"),
]

CURVES = ["test_accuracy", "test_loss", "train_loss"]
MODEL_CHARTS = ["final_test_accuracy", "final_test_loss", *CURVES]  # the UI sorts a section's charts by name

# For each vega-embed element of the page, how much it drew: the painted pixels of its canvas (or its svg's marks).
DRAWN = """
return arguments[0].map(id => {
  const el = document.getElementById(id), canvas = el && el.querySelector('canvas');
  if (canvas) {
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let painted = 0;
    for (let i = 3; i < pixels.length; i += 4) painted += pixels[i] > 0;
    return [id, painted];
  }
  return [id, el && el.querySelector('svg') ? el.querySelector('svg').childElementCount : 0];
});
"""


def wait_until(probe, done, timeout: float = 90):
    """probe()'s first answer that is done(); fails after `timeout` with its last answer (pages render bit by bit)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        if done(answer):
            return answer
        assert time.monotonic() < deadline, f"not there after {timeout} s: {answer!r}"
        time.sleep(1)


def assert_drawn_offline(driver, page: Path) -> None:
    """Every Vega plot of a `dvc plots` page is drawn, every image loaded, and nothing but the page's own files
    was requested."""
    html = page.read_text()
    assert "cdn.jsdelivr.net" not in html, "DVC's default page: .dvc/config's plots.html_template not used"
    ids = re.findall(r"vegaEmbed\('#([^']+)'", html)
    assert ids, html[-2000:]
    P.requested_urls(driver)  # clears the log
    driver.get(page.as_uri())
    wait_until(lambda: driver.execute_script(DRAWN, ids), lambda drawn: all(n > 0 for _, n in drawn), 30)
    images = driver.execute_script("return [...document.images].map(i => [i.src, i.naturalWidth])")
    assert images and all(width > 0 for _, width in images), images
    outside = [u for u in P.requested_urls(driver) if not u.startswith(("file://", "data:", "blob:"))]
    assert outside == [], outside


def test_dvc_plots_show_and_diff_draw_with_no_network(sweep, tmp_path):
    """.dvc/config's page (Vega inlined) is what `dvc plots show` and `dvc plots diff <exp> <exp>` write: in a
    browser that can reach no host, each of dvc.yaml's plots is drawn and no request leaves the machine."""
    first, second = list(sweep.names.values())[:2]
    P.dvc(sweep.root, "plots", "show", "-o", tmp_path / "show")
    P.dvc(sweep.root, "plots", "diff", first, second, "-o", tmp_path / "diff")
    with P.chromium(tmp_path / "chrome") as driver:
        assert_drawn_offline(driver, tmp_path / "show" / "index.html")
        assert_drawn_offline(driver, tmp_path / "diff" / "index.html")
    diff = (tmp_path / "diff" / "index.html").read_text()
    assert first in diff and second in diff  # both experiments' curves in the diff


# An MLflow runs-charts view: its section headers; its charts' titles, the top of each card and the colours of the
# lines drawn in it (plotly); the run table's colour pills.
CHARTS = """
const q = s => [...document.querySelectorAll(`[data-testid=${s}]`)];
return {
  height: window.innerHeight,
  sections: q('experiment-view-compare-runs-section-header').map(e => e.innerText.split('\\n')[0].trim()),
  charts: q('experiment-view-compare-runs-card').map(e => ({
    title: (e.querySelector('h4') || e).innerText.trim(),
    top: e.getBoundingClientRect().top,
    lines: [...new Set([...e.querySelectorAll('path.js-line')]
      .filter(p => p.getAttribute('d')).map(p => p.style.stroke))],
  })),
  colours: q('experiment-view-table-run-color').map(e => e.innerText.trim()),
};
"""


def charts_view(driver, url: str, sections: list[str], lines: int) -> dict:
    """The view at `url` once it shows `sections` and each training curve's chart has drawn `lines` lines."""
    driver.get(url)

    def ready(view):
        drawn = {c["title"]: len(c["lines"]) for c in view["charts"]}
        return view["sections"] == sections and all(drawn.get(c) == lines for c in CURVES)

    return wait_until(lambda: driver.execute_script(CHARTS), ready)


def assert_curves_first(view: dict) -> None:
    titles = [c["title"] for c in view["charts"]]
    assert titles[: len(MODEL_CHARTS)] == MODEL_CHARTS, titles
    tops = {c["title"]: c["top"] for c in view["charts"]}
    assert all(tops[c] < view["height"] for c in CURVES), (tops, view["height"])  # each starts on the first screen


def rgb(colour: str) -> str:
    """'#4e79a7' as the browser writes a computed colour: 'rgb(78, 121, 167)'."""
    return "rgb({}, {}, {})".format(*(int(colour[i : i + 2], 16) for i in (1, 3, 5)))


def test_mlflow_ui_opens_on_the_training_curves_each_run_in_its_own_colour(sweep, tmp_path):
    """`mlflow ui` on the sweep's store: a run's charts and the experiment's comparison start with the model
    metrics section, the training curves on the first screen (per-epoch timing is in MLflow's system section,
    per-class accuracy in an artifact); each run has its own colour, from its tag mlflow.runColor."""
    runs = P.runs(sweep.root)
    colours = [r.data.tags.get("mlflow.runColor") for r in runs]
    assert None not in colours and len(set(colours)) == len(runs) == len(sweep.names) + 1, colours
    run = next(r for r in runs if r.info.run_name == sweep.names[min(sweep.names)])
    trained = [r for r in runs if "test_accuracy" in r.data.metrics]  # the diverging run has no epoch
    with P.mlflow_ui(sweep.root, tmp_path / "mlflow-ui.log") as base, P.chromium(tmp_path / "chrome") as driver:
        experiment = f"{base}/#/experiments/{run.info.experiment_id}"
        view = charts_view(driver, f"{experiment}/runs/{run.info.run_id}/model-metrics", ["Model metrics"], 1)
        assert_curves_first(view)
        driver.save_screenshot(str(tmp_path / "run.png"))

        sections = ["Model metrics", "System metrics"]
        view = charts_view(driver, f"{experiment}/runs?compareRunsMode=CHART", sections, len(trained))
        assert_curves_first(view)
        driver.save_screenshot(str(tmp_path / "compare.png"))
        assert sorted(view["colours"]) == sorted(colours), view["colours"]
        for chart in (c for c in view["charts"] if c["title"] in CURVES):  # each run's curve in its tag's colour
            assert sorted(chart["lines"]) == sorted(rgb(r.data.tags["mlflow.runColor"]) for r in trained), chart
        outside = [u for u in P.requested_urls(driver) if not u.startswith((base, "data:", "blob:"))]
        assert outside == [], outside
