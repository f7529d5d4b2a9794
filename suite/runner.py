"""Runs a composed config: output folder, artifacts, every variant of the study, claims,
results.json, and the final table."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, open_dict

from datamodules.errors import DataError
from suite.artifacts import resolve_artifacts
from suite.errors import ConfigError
from suite.loggers import finish_wandb, log_checkpoint, log_claims
from suite.outdir import FolderLock, check_rerun, check_writable
from suite.results import Claim, VariantResult, format_table, write_results
from suite.study import apply_overrides, expand
from suite.targets import locate_claims


def global_rank() -> int:
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var):
            return int(os.environ[var])
    return 0


def resolve_output_dir(cfg: DictConfig) -> Path:
    """``output_dir`` or runs/<experiment>/<timestamp>; DDP ranks launched by Lightning inherit
    GENLAB_OUTPUT_DIR from rank 0, so all ranks agree on one folder."""
    if cfg.output_dir:
        path = Path(cfg.output_dir)
    elif cfg.ckpt_path == "last" and _latest_run(cfg.experiment) is not None:
        path = _latest_run(cfg.experiment)
        print(f"[genlab] ckpt_path=last: continuing the latest run of {cfg.experiment} in {path}")
    elif os.environ.get("GENLAB_OUTPUT_DIR"):
        path = Path(os.environ["GENLAB_OUTPUT_DIR"])
    else:
        path = Path("runs") / cfg.experiment / datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]
    os.environ["GENLAB_OUTPUT_DIR"] = str(path)
    return path


def _latest_run(experiment: str) -> Path | None:
    """The newest runs/<experiment>/<timestamp> folder that holds a checkpoint."""
    folders = [p for p in (Path("runs") / experiment).glob("*") if any(p.glob("**/last.ckpt"))]
    return max(folders, key=lambda p: p.name) if folders else None


def run(cfg: DictConfig, groups: dict, quiet: bool = False) -> Path:
    """Run every variant (skipping finished ones), compute claims, write results.json. Global rank 0
    checks that the output folder is writable (before torch is imported) and holds its lock."""
    t0 = time.time()
    saved_env = os.environ.get("GENLAB_OUTPUT_DIR")
    output_dir = resolve_output_dir(cfg)
    lock = FolderLock(output_dir, force=cfg.force_unlock) if global_rank() == 0 else None
    try:
        write_config = "first"
        if lock is not None:
            check_writable(output_dir)
            lock.acquire()
            # a rerun leaves config.yaml as it is, an extended run rewrites it once it has trained:
            # a failed resume changes nothing
            if (output_dir / "config.yaml").exists():
                write_config = "last" if check_rerun(cfg, output_dir) else None
        return _run_variants(cfg, groups, quiet, t0, output_dir, write_config)
    finally:
        if lock is not None:
            lock.release()
        if saved_env is None:
            os.environ.pop("GENLAB_OUTPUT_DIR", None)
        else:
            os.environ["GENLAB_OUTPUT_DIR"] = saved_env


def _run_variants(cfg: DictConfig, groups: dict, quiet: bool, t0: float, output_dir: Path,
                  write_config: str | None) -> Path:
    from suite.train import dump_config

    rank0 = global_rank() == 0
    resolve_artifacts(cfg, groups, lambda sub, g: _run_nested(sub, g))
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
        if cfg.logger.group is None:  # one W&B group per output folder, also for a single run
            cfg.logger.group = f"{cfg.experiment}-{output_dir.name}"
    if rank0:
        output_dir.mkdir(parents=True, exist_ok=True)
        if write_config == "first":
            dump_config(cfg, output_dir / "config.yaml")
    try:
        return _run_plan(cfg, quiet, t0, output_dir, write_config)
    finally:
        finish_wandb()  # a run left open for claims that were never written (a failure)


def _run_plan(cfg: DictConfig, quiet: bool, t0: float, output_dir: Path, write_config: str | None) -> Path:
    from suite.train import dump_config, load_variant, run_variant

    rank0 = global_rank() == 0
    variants: dict[str, VariantResult] = {}
    plan = expand(cfg)
    for i, variant in enumerate(plan):
        vdir = output_dir if cfg.study is None else output_dir / variant.name
        vcfg = apply_overrides(cfg, variant.overrides)
        if variant.seed is not None:
            vcfg.seed = variant.seed
        if (vdir / "variant.json").exists() and not _extends(vcfg, vdir):
            print(f"[genlab] variant {variant.name}: finished earlier, reusing {vdir}")
            found = load_variant(vdir)
        else:
            if len(plan) > 1:
                print(f"[genlab] variant {i + 1}/{len(plan)}: {variant.name}", flush=True)
            started = time.time()
            try:
                found = run_variant(vcfg, vdir, variant.name, variant.overrides)
            except BaseException as err:
                if rank0 and not isinstance(err, (ConfigError, DataError)):  # a user error is no run failure
                    path = write_results(output_dir, cfg.experiment, variants, {}, int(cfg.seed), time.time() - t0,
                                         failure={"variant": variant.name, "error": f"{type(err).__name__}: {err}"},
                                         scale=cfg.scale, debug=cfg.debug)
                    print(f"[genlab] variant {variant.name} failed; partial results in {path}")
                raise
            if len(plan) > 1:  # progress of a study (a job prints nothing else while it runs)
                print(f"[genlab] variant {i + 1}/{len(plan)}: {variant.name} done in {time.time() - started:.1f} s",
                      flush=True)
            log_checkpoint(vcfg, vdir)  # logger.log_model=true: last.ckpt as an artifact of the variant's run
            if cfg.study is not None:
                finish_wandb()  # each variant's own run; the study's claims go to a summary run
        variants.update({r.name: r for r in found})
    if rank0 and write_config == "last":
        dump_config(cfg, output_dir / "config.yaml")
    claims: dict[str, Claim] = {}
    if cfg.claims is not None:
        claims = locate_claims(cfg.claims)(variants, cfg)
    if not rank0:
        return output_dir / "results.json"
    path = write_results(output_dir, cfg.experiment, variants, claims, int(cfg.seed), time.time() - t0,
                         scale=cfg.scale, debug=cfg.debug)
    log_claims(cfg, claims, output_dir, study=cfg.study is not None, results=path)
    if not quiet:
        print("\n" + format_table(variants, claims))
        print(f"\n[genlab] results: {path}")
    return path


def _extends(vcfg: DictConfig, vdir: Path) -> bool:
    """A finished variant trained on with ``ckpt_path=last`` and a larger ``trainer.max_steps``."""
    if vcfg.ckpt_path != "last" or vcfg.job is not None:
        return False
    trained = VariantResult.load(vdir / "variant.json").max_steps
    return trained is not None and vcfg.trainer.max_steps > trained


def _run_nested(cfg: DictConfig, groups: dict) -> Path:
    """Produce an artifact in-process, with its own output folder."""
    saved = os.environ.pop("GENLAB_OUTPUT_DIR", None)
    try:
        return run(cfg, groups, quiet=True)
    finally:
        if saved is not None:
            os.environ["GENLAB_OUTPUT_DIR"] = saved
