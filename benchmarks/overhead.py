"""Per-step overhead of training through the suite (Lightning + the suite's default callbacks and
logging) against a plain PyTorch loop on the same model, data, batch and optimizer.

    python benchmarks/overhead.py [--repeats 5] [--steps 300] [--run-repeats 3] [--skip-default-run]

Each case is measured ``--repeats`` times, plain and suite interleaved (plain, suite, plain, suite,
...), so that a change of load on a shared machine hits both alike; the table gives the median time
per step of each, the median of the per-repeat ratios suite / plain with their spread (min-max and
the interquartile range), and the median overhead in microseconds per step. Then the wall time of
`python run.py --list` and of the default run end to end (median and min-max of ``--run-repeats``),
with the CPU seconds (user + sys, the run and its children: the figure that survives a loaded
machine) and the load average before and after. Ratios describe this machine at this time; they are
not thresholds.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from suite.config import compose, split_argv  # noqa: E402
from suite.targets import instantiate  # noqa: E402
from suite.train import build_trainer  # noqa: E402


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1, self.steps = warmup, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # the last step's end, before end-of-training work (final sample plots) that is not per-step cost
        self.t1 = time.perf_counter()
        self.steps = trainer.global_step - self.warmup


def lightning_step_time(argv: list[str], steps: int, warmup: int, folder: Path) -> float:
    cfg = compose(*split_argv(argv + [f"trainer.max_steps={steps + warmup}", "trainer.val_check_interval=100000"]))
    torch.manual_seed(0)
    dm, module = instantiate(cfg.data), instantiate(cfg.module)
    timer = StepTimer(warmup)
    trainer = build_trainer(cfg, folder, "bench", [timer])
    trainer.fit(module, datamodule=dm)
    from suite.loggers import finish_wandb

    finish_wandb()
    return (timer.t1 - timer.t0) / timer.steps


def plain_step_time(argv: list[str], steps: int, warmup: int) -> float:
    cfg = compose(*split_argv(argv))
    torch.manual_seed(0)
    dm, module = instantiate(cfg.data), instantiate(cfg.module)
    dm.setup()
    loader = dm.train_dataloader()
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.module.lr)
    it, done, t0 = iter(loader), 0, None
    while done < steps + warmup:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        if done == warmup:
            t0 = time.perf_counter()
        loss = module.compute_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
    return (time.perf_counter() - t0) / steps


def quartiles(xs: list[float]) -> tuple[float, float]:
    """First and third quartiles (statistics.quantiles, inclusive method); the value itself for one point."""
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def child_run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + sys of the command and its children) of one subprocess."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=dict(os.environ, WANDB_MODE="offline"))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report_runs(label: str, cmd: list[str], repeats: int, fresh: Path | None = None) -> None:
    """Median and min-max of ``repeats`` runs of ``cmd``; ``fresh``: a folder removed before each run (an
    output folder, which a rerun would otherwise reuse)."""
    l0, runs = load(), []
    for _ in range(repeats):
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)
        runs.append(child_run(cmd))
    walls, cpus = [w for w, _ in runs], [c for _, c in runs]
    print(f"{label}: wall {statistics.median(walls):.1f} s (min-max {min(walls):.1f}-{max(walls):.1f}), "
          f"CPU user+sys {statistics.median(cpus):.1f} s (min-max {min(cpus):.1f}-{max(cpus):.1f}), "
          f"{repeats} runs; load average {l0} before, {load()} after")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved plain/suite pairs per case")
    parser.add_argument("--run-repeats", type=int, default=3, help="end-to-end runs of `python run.py`")
    parser.add_argument("--skip-default-run", action="store_true")
    args = parser.parse_args()
    if args.repeats < 1 or args.run_repeats < 1:
        parser.error("--repeats and --run-repeats must be >= 1")
    os.environ.setdefault("WANDB_MODE", "offline")
    folder = Path("runs") / "_bench"
    cases = {
        "diffusion_2d default": ["experiment=diffusion_2d", "callbacks.samples.every_n_steps=0"],
        "tiny step (batch 512, width 128, depth 1)": ["experiment=diffusion_2d", "module.hidden=128",
                                                      "module.depth=1", "data.batch_size=512",
                                                      "callbacks.samples.every_n_steps=0"],
    }
    print(f"{args.repeats} interleaved plain/suite repeats of {args.steps} timed steps each; load average {load()}")
    print(f"{'case':<44} {'plain ms':>9} {'suite ms':>9} {'ratio':>6} {'ratio min-max':>14} {'ratio IQR':>12} "
          f"{'overhead us':>12}")
    for name, argv in cases.items():
        plain, suite = [], []
        for _ in range(args.repeats):
            plain.append(plain_step_time(argv, args.steps, args.warmup))
            suite.append(lightning_step_time(argv, args.steps, args.warmup, folder / name.split()[0]))
        ratios = [s / p for s, p in zip(suite, plain)]
        q1, q3 = quartiles(ratios)
        p_med, s_med = statistics.median(plain), statistics.median(suite)
        overhead = statistics.median([s - p for s, p in zip(suite, plain)])
        print(f"{name:<44} {p_med * 1e3:>9.3f} {s_med * 1e3:>9.3f} {statistics.median(ratios):>6.2f} "
              f"{f'{min(ratios):.2f}-{max(ratios):.2f}':>14} {f'{q1:.2f}-{q3:.2f}':>12} {overhead * 1e6:>12.0f}")
    report_runs("python run.py --list", [sys.executable, "run.py", "--list"], args.run_repeats)
    if not args.skip_default_run:
        out = ROOT / folder / "default_run"
        report_runs("python run.py (default experiment, end to end, W&B offline)",
                    [sys.executable, "run.py", f"output_dir={out}"], args.run_repeats, fresh=out)


if __name__ == "__main__":
    main()
