"""Upload every offline W&B run under an output folder (a single run, a study, a folder of studies):

    python -m suite.sync OUTPUT_DIR [--dry-run] [-- extra `wandb sync` options]

It finds each ``wandb/offline-run-*`` folder under OUTPUT_DIR (a study's variants, its summary run,
job experiments) and hands them all to one ``wandb sync``. A run resumed offline by its id has one
folder per part (``offline-run-<time>-<id>`` with the same id); given together, ``wandb sync`` uploads
the parts of one run one after the other in the order they started, so the W&B run holds the whole
history. ``--dry-run`` lists the folders, grouped by run id, and contacts nobody."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path


def offline_runs(root: Path) -> list[Path]:
    """The offline run folders under ``root``, in the order they started (their names begin with the time)."""
    found = [p for p in root.rglob("offline-run-*") if p.is_dir() and p.parent.name == "wandb"]
    return sorted(found, key=lambda p: (p.name.split("-", 3)[2], str(p)))


def run_id(folder: Path) -> str:
    return folder.name.rsplit("-", 1)[-1]


def describe(folders: list[Path], root: Path) -> str:
    parts: dict[str, list[Path]] = defaultdict(list)
    for folder in folders:
        parts[run_id(folder)].append(folder)
    lines = []
    for rid, group in parts.items():
        note = f" ({len(group)} parts, uploaded in this order as one run)" if len(group) > 1 else ""
        lines.append(f"run {rid}{note}:")
        lines += [f"  {p.relative_to(root)}" for p in group]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m suite.sync", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="list the offline runs, upload nothing")
    args = parser.parse_args(argv)
    if not args.output_dir.is_dir():
        print(f"suite.sync: output_dir {args.output_dir} is not a folder", file=sys.stderr)
        return 2
    folders = offline_runs(args.output_dir)
    if not folders:
        print(f"suite.sync: no offline W&B runs (wandb/offline-run-*) under {args.output_dir}")
        return 0
    print(describe(folders, args.output_dir))
    if args.dry_run:
        print(f"{len(folders)} offline run folder(s); --dry-run: nothing uploaded")
        return 0
    wandb = shutil.which("wandb")
    command = [wandb] if wandb else [sys.executable, "-m", "wandb"]
    return subprocess.run([*command, "sync", *extra, *map(str, folders)]).returncode


if __name__ == "__main__":
    sys.exit(main())
