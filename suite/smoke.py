"""Smoke-test every experiment on this machine's hardware: ``debug=fast`` end to end, in parallel.

    python -m suite.smoke trainer=gpu -j 4          # e.g. on a fresh GPU box
    python -m suite.smoke -k prism -j 1             # a subset, by substring

Each experiment runs as its own ``run.py`` process with the extra overrides given, in its own
working folder (so experiments that produce the same artifact do not race), and the script prints
one line per experiment (ok / FAILED with run.py's exit code and what it means, wall seconds, the
last error line) and exits 1 if any failed. This is what the test suite's ``test_run_all`` checks on CPU, for other trainer presets.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from suite.config import choices

ROOT = Path(__file__).resolve().parent.parent
EXIT_CODES = {1: "crash", 2: "config or data error", 3: "NaN guard", 143: "SIGTERM, checkpoint written"}


def smoke_one(name: str, overrides: list[str], workdir: Path, timeout: float) -> tuple[str, bool, float, str]:
    """Run one experiment under debug=fast; returns (name, ok, wall seconds, last stderr line)."""
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "run.py"), f"experiment={name}", "debug=fast", "logger=none",
           f"output_dir={folder / 'out'}", *overrides]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=timeout)
        ok, err = proc.returncode == 0, proc.stderr
        code = f"exit {proc.returncode} ({EXIT_CODES.get(proc.returncode, 'killed or unknown')}): "
    except subprocess.TimeoutExpired:
        ok, err, code = False, f"timed out after {timeout:.0f} s", ""
    (folder / "stderr.txt").write_text(err or "")
    lines = [ln for ln in (err or "").splitlines() if ln.strip()]
    return name, ok, time.perf_counter() - start, "" if ok else code + (lines[-1] if lines else "no stderr")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="extra run.py arguments, e.g. trainer=gpu")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="experiments run at once")
    parser.add_argument("-k", "--match", default="", help="only experiments whose name contains this")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per experiment")
    parser.add_argument("--workdir", default=None, help="where outputs and stderr logs go (default: a temp dir)")
    args = parser.parse_args(argv)
    names = [n for n in choices("experiment") if args.match in n]
    if not names:
        parser.error(f"no experiment name contains {args.match!r}")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="genlab-smoke-")).resolve()
    print(f"[smoke] {len(names)} experiments, {args.jobs} at a time, overrides {args.overrides}; logs in {workdir}")
    failed = 0
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(smoke_one, n, args.overrides, workdir, args.timeout) for n in names]
        for fut in futures:
            name, ok, wall, err = fut.result()
            failed += not ok
            print(f"  {name:<32} {'ok' if ok else 'FAILED':<7} {wall:7.1f} s  {err[:240]}", flush=True)
    print(f"[smoke] {len(names) - failed}/{len(names)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
