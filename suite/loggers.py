"""Loggers: W&B (offline without an API key, online with one; never prompts), CSV, or none."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from suite.errors import ConfigError
from suite.results import clean, versions


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


def wandb_config(cfg: DictConfig, variant: dict[str, Any]) -> dict[str, Any]:
    """Everything that made this run: the resolved config (seed, module, data, trainer, callbacks, scale,
    debug, experiment, with the variant's overrides applied), the variant itself, and the code's git
    commit and package versions (those of results.json)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return {**resolved, "variant": clean(variant), "versions": versions()}


def build_logger(cfg: DictConfig, run_name: str, save_dir: Path, run_id: str | None = None,
                 resumed: bool = False, variant: dict[str, Any] | None = None):
    """The Lightning logger for one variant (False for ``logger=none``). A W&B run carries the whole
    config, ``job_type`` = the variant's name, the tags [experiment, scale, *logger.tags] and the group
    of its output folder (the runner sets ``logger.group``), so a study's variants sit together."""
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
    variant = variant or {"name": "main", "overrides": {}}
    tags = list(dict.fromkeys([str(cfg.experiment), str(cfg.scale), *cfg.logger.tags]))
    # the same id on resume: online, W&B continues the run; offline, `wandb sync` merges both parts
    notes = f"resumed from a checkpoint; continues W&B run {run_id}" if resumed else None
    return WandbLogger(
        project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group, name=run_name,
        save_dir=str(save_dir), mode=mode, tags=tags, id=run_id, resume="allow", log_model=cfg.logger.log_model,
        notes=notes, job_type=variant["name"], config=wandb_config(cfg, variant),
    )


def run_location(run: Any) -> str | None:
    """Where a W&B run can be seen: its URL online; offline, its folder and how to upload it; None
    when W&B is disabled (nothing is recorded)."""
    if run.settings.mode == "disabled":
        return None
    if run.offline or not run.url:
        return f"W&B run offline in {run.sync_dir}: upload it with `wandb sync {run.sync_dir}`"
    return f"W&B run: {run.url}"


def announce_wandb(logger: Any) -> None:
    """Print where the W&B run of ``logger`` lives (a no-op for other loggers and non-zero ranks)."""
    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.loggers.logger import DummyExperiment

    if isinstance(logger, WandbLogger):
        run = logger.experiment  # created here rather than at the start of fit
        location = None if isinstance(run, DummyExperiment) else run_location(run)
        if location:
            print(f"[genlab] {location}", flush=True)


def finish_wandb() -> None:
    """Close the current W&B run, if any (also after a failure), and say where it is. A run that never
    imported wandb (``logger=csv``/``none``) does not import it here either."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None)
    if run is None:
        return
    location = run_location(run)
    wandb.finish()
    if location:
        print(f"[genlab] {location}", flush=True)
