"""Loggers: W&B (offline without an API key, online with one; never prompts), CSV, or none."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig


def wandb_mode(cfg: DictConfig) -> str:
    """``logger.mode=auto`` means: WANDB_MODE if set, else online with WANDB_API_KEY, else offline."""
    if cfg.logger.mode != "auto":
        return cfg.logger.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def build_logger(cfg: DictConfig, run_name: str, save_dir: Path, run_id: str | None = None):
    """The Lightning logger for one variant (False for ``logger=none``)."""
    kind = cfg.logger.type
    if kind == "none":
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(str(save_dir), name="csv", version="")
    from lightning.pytorch.loggers import WandbLogger

    mode = wandb_mode(cfg)
    os.environ.setdefault("WANDB_SILENT", "true")
    # no TTY prompt ever: an unset key in online mode fails fast instead of asking
    os.environ.setdefault("WANDB_DISABLE_GIT", "false")
    return WandbLogger(
        project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group, name=run_name,
        save_dir=str(save_dir), mode=mode, tags=list(cfg.logger.tags), id=run_id, resume="allow",
        log_model=cfg.logger.log_model,
    )


def finish_wandb() -> None:
    """Close the current W&B run, if any (also after a failure)."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()


def offline_hint(save_dir: Path) -> str:
    runs = sorted(Path(save_dir).glob("wandb/offline-run-*"))
    if not runs:
        return ""
    return f"W&B ran offline: sync it with `wandb sync {runs[-1]}`"
