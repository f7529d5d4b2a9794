"""Measure Prism settings side by side (how the default difficulty was picked): each named setting is the
experiment's job config plus overrides, run as its own process (``run_job``), all at once; prints one
summary line per setting and writes every metric to one JSON.

    python experiments/prism_sweep.py OUT.json name:experiment:key=value;key=value ...

e.g. ``mul22:prism_arith: sud10:prism_sudoku:n_blanks=10``. Values are parsed as YAML. Add
``device=cuda`` to train and search on an accelerator (same random draws: every generator is a CPU one).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _job(args):
    name, exp, over = args
    sys.path.insert(0, str(ROOT))
    from experiments.prism import run_job

    job = yaml.safe_load((ROOT / "configs" / "experiment" / f"{exp}.yaml").read_text())["job"]
    job.pop("_target_")
    job.update(over)
    t0 = time.time()
    m = run_job(Path(tempfile.mkdtemp(prefix=f"sweep_{name}_")), 0, **job)
    m["sweep/seconds"] = time.time() - t0
    return name, exp, over, m


def summary(name: str, m: dict) -> str:
    get = lambda k: m.get(f"test/{k}/acc", float("nan"))  # noqa: E731
    nfe = lambda k: m.get(f"test/{k}/nfe", float("nan"))  # noqa: E731
    return (f"{name:<14} single {get('single'):.3f} maj16 {get('majority@16'):.3f} bon16 {get('bon_sv@16'):.3f} "
            f"oracle16 {get('oracle@16'):.3f} prism16 {get('prism@16'):.3f} ({nfe('prism@16'):.0f} NFE) "
            f"noRM {get('prism_no_remask@16'):.3f} noSV {get('prism_no_sv@16'):.3f} "
            f"| auroc {m.get('test/sv_auroc', -1):.3f} "
            f"within {m.get('test/sv_auroc_within_problem', -1):.3f} | {m.get('sweep/seconds', 0):.0f}s")


def main(argv: list[str]) -> None:
    out, specs = Path(argv[0]), []
    for spec in argv[1:]:
        name, exp, rest = spec.split(":", 2)
        over = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in rest.split(";") if kv)}
        specs.append((name, exp, over))
    results = {}
    with mp.get_context("spawn").Pool(len(specs)) as pool:
        for name, exp, over, m in pool.imap_unordered(_job, specs):
            results[name] = {"experiment": exp, "overrides": over, "metrics": m}
            print(summary(name, m), flush=True)
            out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
