"""Loggers: W&B (offline without an API key, online with one; never prompts), CSV, or none."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from suite.errors import ConfigError


def wandb_mode(cfg: DictConfig) -> str:
    """``logger.mode=auto`` means: WANDB_MODE if set, else online with WANDB_API_KEY, else offline."""
    if cfg.logger.mode != "auto":
        return cfg.logger.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def build_logger(cfg: DictConfig, run_name: str, save_dir: Path, run_id: str | None = None,
                 resumed: bool = False):
    """The Lightning logger for one variant (False for ``logger=none``)."""
    kind = cfg.logger.type
    if kind == "none":
        return False
    if kind == "csv":
        from suite.csv_log import ResumableCSVLogger

        return ResumableCSVLogger(str(save_dir))
    from lightning.pytorch.loggers import WandbLogger

    mode = wandb_mode(cfg)
    if mode == "online" and not has_wandb_credentials():
        # W&B would otherwise ask for a key on a terminal (and hang a batch job)
        raise ConfigError("logger.mode=online: no W&B credentials (set WANDB_API_KEY or run `wandb login`), "
                          "or use logger.mode=offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    # the same id on resume: online, W&B continues the run; offline, `wandb sync` merges both parts
    notes = f"resumed from a checkpoint; continues W&B run {run_id}" if resumed else None
    return WandbLogger(
        project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group, name=run_name,
        save_dir=str(save_dir), mode=mode, tags=list(cfg.logger.tags), id=run_id, resume="allow",
        log_model=cfg.logger.log_model, notes=notes,
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
