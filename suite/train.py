"""Builds and runs one variant: a Lightning fit/test, or a plain ``job`` function."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig, OmegaConf

from callbacks.ema import EMA
from callbacks.history import HistoryCallback
from callbacks.nan_guard import NaNGuard
from suite.checkpoints import AtomicCheckpointIO, checkpoint_callbacks, resolve_ckpt
from suite.csv_log import CSVResume
from suite.errors import ConfigError
from suite.loggers import announce_wandb, build_logger, finish_wandb, log_job_outputs, run_id_of, start_wandb_run
from suite.results import VariantResult, clean, write_atomic
from suite.study import eval_sweep
from suite.sweep_log import log_sweep_table, sweep_point
from suite.targets import instantiate, locate

# Lightning warns about these on every max_steps-based run; they say nothing about ours.
warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def run_job(cfg: DictConfig, vdir: Path, name: str, overrides: dict | None = None) -> list[VariantResult]:
    """A plain ``job`` function; with ``logger=wandb`` it gets a W&B run like a Lightning variant's (its
    metrics in the summary, its PNG figures as images), left open for the claims (suite.runner)."""
    args = OmegaConf.to_container(cfg.job, resolve=True)
    fn = locate(args.pop("_target_"))
    run = start_wandb_run(cfg, f"{cfg.experiment}/{name}", vdir, {"name": name, "overrides": overrides or {}})
    try:
        L.seed_everything(cfg.seed, verbose=False)
        metrics = fn(output_dir=vdir, seed=cfg.seed, **args)
        if not isinstance(metrics, dict):
            raise TypeError(f"job {cfg.job._target_} returned {type(metrics).__name__}, expected a dict of metrics")
        if run is not None:
            log_job_outputs(run, clean(metrics), vdir)
    except BaseException:
        finish_wandb()
        raise
    return [VariantResult(name, clean(metrics), vdir, seed=cfg.seed)]


def build_trainer(cfg: DictConfig, vdir: Path, run_name: str, extra_callbacks: list,
                  variant: dict | None = None) -> L.Trainer:
    targs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if targs["max_epochs"] is None:
        targs["max_epochs"] = -1  # training length is max_steps
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    callbacks += checkpoint_callbacks(vdir / "checkpoints", cfg.checkpoint.every_n_steps, cfg.checkpoint.keep,
                                      cfg.checkpoint.every_minutes)
    callbacks += [HistoryCallback(str(vdir / "history.csv"), targs.get("log_every_n_steps", 50)),
                  CSVResume(), CheckpointOnSigterm(vdir / "checkpoints" / "last.ckpt")]
    if targs["enable_progress_bar"]:
        callbacks.append(TQDMProgressBar(refresh_rate=10))  # redrawing every step costs ms on small steps
    if cfg.nan_guard:
        callbacks.insert(0, NaNGuard())
    if cfg.ema.enabled:
        callbacks.insert(0, EMA(decay=cfg.ema.decay, warmup=cfg.ema.warmup))
    logger = build_logger(cfg, run_name, vdir, run_id=run_id_of(vdir), resumed=cfg.ckpt_path is not None,
                          variant=variant)
    # datamodules shard their own global batches (datamodules.base.GlobalBatchSampler)
    plugins = [] if "fsdp" in str(targs["strategy"]) else [AtomicCheckpointIO()]  # FSDP saves shards itself
    return L.Trainer(default_root_dir=str(vdir), logger=logger, callbacks=callbacks + extra_callbacks,
                     use_distributed_sampler=False, plugins=plugins, **targs)


class CheckpointOnSigterm(L.Callback):
    """SLURM preemption (SIGTERM): Lightning stops after the current batch on every rank; write
    ``last.ckpt`` first so that ``ckpt_path=last`` continues the run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.path, weights_only=False)
            if trainer.is_global_zero:
                print(f"[genlab] SIGTERM at step {trainer.global_step}: checkpoint written to {self.path}")


def run_lightning(cfg: DictConfig, vdir: Path, name: str, overrides: dict | None = None) -> list[VariantResult]:
    ckpt_path = resolve_ckpt(cfg.ckpt_path, vdir)  # an unreadable checkpoint is named before anything is built
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module)
    module.noise_seed = int(cfg.seed)
    if hasattr(datamodule, "shuffle_seed"):
        datamodule.shuffle_seed = int(cfg.seed)
    if cfg.compile:
        if not isinstance(getattr(module, "net", None), torch.nn.Module):
            raise ConfigError("compile=true: the module has no `net` attribute to compile")
        module.net = torch.compile(module.net)
    run_name = f"{cfg.experiment}/{name}"
    trainer = build_trainer(cfg, vdir, run_name, [], variant={"name": name, "overrides": overrides or {}})
    try:
        announce_wandb(trainer.logger)
        t0 = time.time()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if trainer.interrupted:
            raise RuntimeError(f"training was interrupted at step {trainer.global_step}; continue it with "
                               f"ckpt_path=last output_dir={cfg.output_dir}")
        # the final state, whatever the cadence; full (optimizer, loops, callbacks) so a longer run can resume it
        trainer.save_checkpoint(vdir / "checkpoints" / "last.ckpt", weights_only=False)
        metrics = scalars(trainer.callback_metrics)
        metrics["time/fit_s"] = time.time() - t0
        tested = is_overridden("test_step", module)
        if tested:
            trainer.test(module, datamodule=datamodule, verbose=False)
            metrics.update(scalars(trainer.callback_metrics))
        results = [VariantResult(name, metrics, vdir, seed=cfg.seed, max_steps=int(cfg.trainer.max_steps))]
        sweep = eval_sweep(cfg)
        if sweep is not None and tested:
            param, values = sweep
            if not hasattr(module, param):
                raise ConfigError(f"study.eval_sweep.param: the module has no attribute {param!r}")
            original = getattr(module, param)
            for value in values:
                setattr(module, param, value)
                with sweep_point(trainer, param, value):  # logged keys carry /<param>_<value>: all are kept
                    trainer.test(module, datamodule=datamodule, verbose=False)
                sdir = vdir / "sweep" / f"{param}={value}"
                sdir.mkdir(parents=True, exist_ok=True)
                results.append(VariantResult(f"{name}@{param}={value}", scalars(trainer.callback_metrics), sdir,
                                             {param: value}, cfg.seed))
            setattr(module, param, original)
            log_sweep_table(trainer, param, [(r.overrides[param], r.metrics) for r in results[1:]])
        return results  # the W&B run stays open for the claims (suite.runner finishes it)
    except BaseException:
        finish_wandb()
        raise


def run_variant(cfg: DictConfig, vdir: Path, name: str, overrides: dict | None = None) -> list[VariantResult]:
    """Run one variant; its results (and sweep points) carry the study's overrides for claims."""
    vdir.mkdir(parents=True, exist_ok=True)
    run = run_job if cfg.job is not None else run_lightning
    results = run(cfg, vdir, name, overrides)
    for r in results:
        r.overrides = {**(overrides or {}), **r.overrides}
        r.save()
    return results


def load_variant(vdir: Path) -> list[VariantResult]:
    """A finished variant and its sweep points, for skipping it on a rerun."""
    found = [VariantResult.load(vdir / "variant.json")]
    found += [VariantResult.load(p) for p in sorted(vdir.glob("sweep/*/variant.json"))]
    return found


def dump_config(cfg: DictConfig, path: Path) -> None:
    write_atomic(path, OmegaConf.to_yaml(cfg, resolve=True))
