"""Per-step overhead of training through the suite (Lightning + the suite's default callbacks and
logging) against a plain PyTorch loop on the same model, data, batch and optimizer.

    python benchmarks/overhead.py [--steps 400]

Prints, for the default diffusion_2d config and for a tiny step (batch 512, width 128, depth 1):
time per step of each, their ratio and the overhead in microseconds per step; then the wall time
of `python run.py --list` and of the default run end to end. Ratios are measured in one run on
this machine; they are not thresholds.
"""

from __future__ import annotations

import argparse
import os
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
    cfg = compose(*split_argv(argv + [f"trainer.max_steps={steps + warmup}", "trainer.val_check_interval=100000",
                                      ]))
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


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=dict(os.environ, WANDB_MODE="offline"))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--skip-default-run", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    folder = Path("runs") / "_bench"
    cases = {
        "diffusion_2d default": ["experiment=diffusion_2d", "callbacks.samples.every_n_steps=0"],
        "tiny step (batch 512, width 128, depth 1)": ["experiment=diffusion_2d", "module.hidden=128",
                                                      "module.depth=1", "data.batch_size=512",
                                                      "callbacks.samples.every_n_steps=0"],
    }
    print(f"{'case':<44} {'plain ms':>9} {'suite ms':>9} {'ratio':>6} {'overhead us':>12}")
    for name, argv in cases.items():
        plain = plain_step_time(argv, args.steps, args.warmup)
        suite = lightning_step_time(argv, args.steps, args.warmup, folder / name.split()[0])
        print(f"{name:<44} {plain * 1e3:>9.3f} {suite * 1e3:>9.3f} {suite / plain:>6.2f} "
              f"{(suite - plain) * 1e6:>12.0f}")
    print(f"python run.py --list: {wall([sys.executable, 'run.py', '--list']):.2f} s")
    if not args.skip_default_run:
        print(f"python run.py (default experiment, end to end): {wall([sys.executable, 'run.py']):.1f} s")


if __name__ == "__main__":
    main()
