"""genlab entry point.

    python run.py [experiment=NAME] [trainer=cpu|gpu|ddp|ddp_sim|fsdp] [logger=wandb|csv|none]
                  [scale=small|paper] [debug=fast|overfit|profile] [dotted.key=value ...]
    python run.py --list       every experiment with a one-line description
    python run.py --report     rebuild the README's experiments table from runs/
    python run.py --help

Exit codes: 0 done; 2 a user error (config, data, busy or unwritable output folder, unreadable
checkpoint), printed in one line without a traceback (config errors before torch is imported);
3 stopped by the NaN guard; 143 stopped by SIGTERM after writing a checkpoint (continue it with
ckpt_path=last); 1 a crash, with its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

from datamodules.errors import DataError
from suite.errors import ConfigError


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    if "--list" in argv:
        from suite.config import list_experiments

        experiments = list_experiments()
        width = max(map(len, experiments))
        for name, desc in experiments.items():
            print(f"{name:<{width}}  {desc}")
        return 0
    if "--report" in argv:
        from suite.report import update_readme

        print(update_readme(Path(__file__).resolve().parent / "README.md"))
        return 0
    flags = [a for a in argv if a.startswith("-")]
    if flags:
        print(f"error: unknown flag {flags[0]}; use --list, --report or --help", file=sys.stderr)
        return 2
    try:
        from suite.config import compose, split_argv
        from suite.targets import check_all

        groups, dotlist = split_argv(argv)
        cfg = compose(groups, dotlist)
        check_all(cfg)
        from suite.runner import run

        run(cfg, groups)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SystemExit as err:
        if type(err).__name__ != "SIGTERMException":
            raise
        print("error: stopped by SIGTERM; a checkpoint was written: continue with ckpt_path=last "
              "(and the same output_dir)", file=sys.stderr)
        return 143
    except Exception as err:
        if type(err).__name__ != "NonFiniteError":
            raise
        print(f"error: {err}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
