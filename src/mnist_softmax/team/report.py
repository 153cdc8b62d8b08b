"""A report for a pull request: the params and metrics that differ and the plots, of the workspace against a
baseline revision (main by default), as one Markdown file that reads offline: its images sit beside it.
It is what DVC's example projects post on pull requests through CML, without the service
(docs/report-workflow.yml shows a CI job that would post it).

    python -m mnist_softmax.team.report [--baseline main] [--out report/report.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from mnist_softmax.cli import StageError, run
from mnist_softmax.fileio import write_bytes_atomic


def dvc_json(*args: str) -> dict:
    done = subprocess.run(["dvc", *args, "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        raise StageError(f"dvc {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return json.loads(done.stdout or "{}")


def show(value) -> str:
    return "–" if value is None else f"`{json.dumps(value) if isinstance(value, (list, dict)) else value}`"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def params_section(diff: dict, baseline: str) -> list[str]:
    rows = [
        [f"`{key}`", show(change.get("old")), show(change.get("new"))]
        for f in diff.values()
        for key, change in f.items()
    ]
    if not rows:
        return ["No param differs."]
    return markdown_table(["param", baseline, "workspace"], rows)


def metrics_section(diff: dict, baseline: str) -> list[str]:
    rows = []
    for file, metrics in diff.items():
        for key, change in metrics.items():
            delta = change.get("diff")
            rows.append([f"`{key}` ({file})", show(change.get("old")), show(change.get("new")), show(delta)])
    if not rows:
        return ["No metric differs."]
    return markdown_table(["metric", baseline, "workspace", "change"], rows)


def plots_section(plots: dict, folder: Path) -> list[str]:
    lines = []
    for name, items in plots.get("data", {}).items():
        images = [item for item in items if item.get("type") == "image"]
        if not images:
            continue  # DVC's interactive plots need a browser: `dvc plots diff` draws them
        lines.append(f"### {Path(name).stem.replace('_', ' ')}")
        for item in images:
            revision = ", ".join(item["revisions"])
            lines.append(f"![{name} ({revision})]({Path(item['url']).relative_to(folder).as_posix()})")
    return lines or ["No plot."]


def report(baseline: str, out: Path) -> str:
    folder = out.parent.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    plots = dvc_json("plots", "diff", baseline, "-o", str(folder / "plots"))
    lines = [
        f"# Workspace against `{baseline}`",
        "",
        "## Params",
        *params_section(dvc_json("params", "diff", baseline), baseline),
        "",
        "## Metrics",
        *metrics_section(dvc_json("metrics", "diff", "--all", baseline), baseline),  # unchanged ones too
        "",
        "## Plots",
        *plots_section(plots, folder),
        "",
    ]
    text = "\n".join(lines)
    write_bytes_atomic(out, text.encode())
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="main", help="the git revision to compare with (default: main)")
    ap.add_argument("--out", default="report/report.md", help="the Markdown file; its images go beside it")
    args = ap.parse_args(argv)
    report(args.baseline, Path(args.out))
    print(f"report: wrote {args.out} (the workspace against {args.baseline})")


if __name__ == "__main__":
    sys.exit(run(main, "report"))
