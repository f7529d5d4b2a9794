"""``python run.py --report``: rebuilds the README's experiments table from runs/**/results.json
(the newest result of each experiment), listing every experiment of configs/experiment."""

from __future__ import annotations

import json
from pathlib import Path

from suite.config import list_experiments

START, END = "<!-- experiments:start -->", "<!-- experiments:end -->"


def latest_results(runs: Path) -> dict[str, dict]:
    found: dict[str, tuple[float, dict]] = {}
    for path in runs.glob("**/results.json"):
        if "_artifacts" in path.parts:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        name = data.get("experiment")
        if data.get("debug") or "failure" in data:
            continue  # the table reports complete runs at a real scale
        if name and (name not in found or path.stat().st_mtime > found[name][0]):
            data["_path"] = str(path)
            found[name] = (path.stat().st_mtime, data)
    return {k: v for k, (_, v) in found.items()}


def run_seconds(res: dict) -> float:
    """Wall seconds of a run; for a study resumed over several invocations (finished variants are
    skipped, so the last invocation's wall time can be ~0), at least the sum of its variants' fit times."""
    fits = sum(v for k, v in res.get("metrics", {}).items() if k.split(":")[-1] == "time/fit_s")
    return max(float(res.get("wall_s", 0.0)), float(fits))


def table(runs: Path = Path("runs")) -> str:
    results = latest_results(runs)
    rows = ["| experiment | what it shows | claims (latest run) | scale, wall time |", "|---|---|---|---|"]
    for name, desc in list_experiments().items():
        res = results.get(name)
        if res is None:
            claims, wall = "not run yet", ""
        else:
            cl = res.get("claims", {})
            claims = ", ".join(f"{k} {'✓' if c['holds'] else '✗'}" for k, c in cl.items()) or "no claims"
            wall = f"{res.get('scale', 'small')}, {run_seconds(res):.0f} s"
        rows.append(f"| `{name}` | {desc} | {claims} | {wall} |")
    return "\n".join(rows)


def update_readme(readme: Path, runs: Path = Path("runs")) -> str:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: no {START} ... {END} markers to replace")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = table(runs)
    readme.write_text(f"{head}{START}\n{new}\n{END}{tail}")
    return new
