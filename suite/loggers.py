"""Loggers: W&B (offline without an API key, online with one; never prompts), CSV, or none."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from suite.errors import ConfigError
from suite.results import clean, versions


# the metric families of the suite: each is plotted against trainer/global_step, the step at which a
# value was measured, which W&B takes from the logged row (never wandb's own `step=`: W&B drops a row
# whose step is below the run's, as after a resume or a fallback to an older checkpoint)
FAMILIES = ("train", "val", "test", "sharpness", "memorization", "representation", "geneval", "ridge", "watch",
            "search", "spatial", "samples", "steering", "media")
STEP_KEY = "trainer/global_step"


def define_steps(run: Any) -> None:
    """``define_metric(<family>/*, step_metric=trainer/global_step)`` for every family of the suite."""
    run.define_metric(STEP_KEY)
    for family in FAMILIES:
        run.define_metric(f"{family}/*", step_metric=STEP_KEY)


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


def wandb_active(cfg: DictConfig) -> bool:
    """Whether this run records anything in W&B (``logger=wandb`` and a mode other than disabled)."""
    return cfg.logger.type == "wandb" and wandb_mode(cfg) != "disabled"


def run_id_of(folder: Path) -> str:
    """The W&B run id stored in ``folder`` (made on first use), so a resumed run continues the same run."""
    path = folder / "wandb_id.txt"
    if path.exists():
        return path.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id)
    return run_id


def _run_args(cfg: DictConfig, run_name: str, run_id: str | None, resumed: str | None,
              variant: dict[str, Any] | None, job_type: str | None = None) -> dict[str, Any]:
    """The ``wandb.init`` arguments of every run of this suite: the whole config, ``job_type`` = the
    variant's name, the tags [experiment, scale, *logger.tags] and the group of the output folder."""
    mode = wandb_mode(cfg)
    if mode == "online" and not has_wandb_credentials():
        # W&B would otherwise ask for a key on a terminal (and hang a batch job)
        raise ConfigError("logger.mode=online: no W&B credentials (set WANDB_API_KEY or run `wandb login`), "
                          "or use logger.mode=offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    variant = variant or {"name": "main", "overrides": {}}
    tags = list(dict.fromkeys([str(cfg.experiment), str(cfg.scale), *cfg.logger.tags]))
    # the same id on resume: online, W&B continues the run; offline, `wandb sync` merges both parts
    notes = f"{resumed}; continues W&B run {run_id}" if resumed else None
    return dict(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group, name=run_name,
                mode=mode, tags=tags, id=run_id, resume="allow", notes=notes,
                job_type=job_type or variant["name"], config=wandb_config(cfg, variant))


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

    # log_model: the final checkpoint is logged by log_checkpoint (Lightning's would log a step=N.ckpt)
    return WandbLogger(save_dir=str(save_dir), log_model=False,
                       **_run_args(cfg, run_name, run_id, "resumed from a checkpoint" if resumed else None,
                                  variant))


def start_wandb_run(cfg: DictConfig, run_name: str, save_dir: Path, variant: dict[str, Any] | None = None,
                    job_type: str | None = None, resumed: str | None = None) -> Any:
    """A plain W&B run (a ``job`` experiment, or the claims of a finished run) with the same name, group,
    tags and config as a Lightning variant's, its id stored in ``save_dir``; None when nothing is
    recorded (wandb is then not imported)."""
    if not wandb_active(cfg):
        return None
    import wandb

    run = wandb.init(dir=str(save_dir), **_run_args(cfg, run_name, run_id_of(save_dir), resumed, variant,
                                                   job_type))
    define_steps(run)
    location = run_location(run)
    if location:
        print(f"[genlab] {location}", flush=True)
    return run


def log_job_outputs(run: Any, metrics: dict[str, Any], folder: Path) -> None:
    """A job's returned metrics into the run summary, the PNG figures it wrote into ``folder`` as images
    ``media/<file stem>``."""
    import wandb

    run.summary.update(clean(metrics))
    images = {f"media/{p.stem}": wandb.Image(str(p)) for p in sorted(folder.glob("*.png"))}
    if images:
        run.log(images)


def log_checkpoint(cfg: DictConfig, vdir: Path) -> None:
    """With ``logger.log_model=true``: the variant's final ``checkpoints/last.ckpt`` as a ``model``
    artifact ``model-<run id>`` (aliases latest, final) of its open W&B run. Offline, the record is in the
    .wandb file and the file is uploaded by ``wandb sync``."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None)
    ckpt = vdir / "checkpoints" / "last.ckpt"
    if not cfg.logger.log_model or run is None or not ckpt.exists():
        return
    _log_files(run, "model", {"last.ckpt": ckpt}, {"experiment": str(cfg.experiment), "dir": str(vdir)})


def _log_files(run: Any, kind: str, files: dict[str, Path], metadata: dict[str, Any]) -> None:
    import wandb

    artifact = wandb.Artifact(f"{kind}-{run.id}", type=kind, metadata=metadata)
    for name, path in files.items():
        artifact.add_file(str(path), name=name)
    run.log_artifact(artifact, aliases=["latest", "final"])


def log_claims(cfg: DictConfig, claims: dict[str, Any], output_dir: Path, study: bool,
               results: Path | None = None) -> None:
    """The claims of a finished run into W&B: ``claims/<name>/{holds,value,reference}`` in the summary
    (value and reference when numbers or strings, lists and dicts as JSON text) and a ``claims`` table;
    with ``logger.log_model=true`` also ``results`` (results.json) as a ``results`` artifact. A single run
    writes them into its variant's run (still open, or resumed by its id); a study into a summary run of
    its group (``job_type=study``) in the study's folder. The run is then finished."""
    publish = cfg.logger.log_model and results is not None and results.exists()
    if not (claims or publish) or not wandb_active(cfg):
        return
    import wandb

    run = wandb.run
    if run is None:
        name = "study" if study else "main"
        run = start_wandb_run(cfg, f"{cfg.experiment}/{name}", output_dir, {"name": name, "overrides": {}},
                              job_type=name, resumed=None if study else "claims of the finished run")
    rows, summary = [], {}
    for name, claim in claims.items():
        entry = claim.to_json()
        value, reference = _summary_value(entry["value"]), _summary_value(entry["reference"])
        rows.append([name, entry["holds"], _text(value), _text(reference), entry["detail"]])
        summary[f"claims/{name}/holds"] = entry["holds"]
        summary.update({f"claims/{name}/{key}": v for key, v in (("value", value), ("reference", reference))
                        if v is not None})
    run.summary.update(summary)
    if rows:
        # one type per table column: value and reference as text (a claim's value may be a number or a word)
        run.log({"claims": wandb.Table(columns=["name", "holds", "value", "reference", "detail"], data=rows)})
    if publish:
        _log_files(run, "results", {"results.json": results}, {"experiment": str(cfg.experiment)})
    finish_wandb()


def _summary_value(value: Any) -> Any:
    """Numbers, booleans and strings as they are; lists and dicts as JSON text; anything else None."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


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
        if isinstance(run, DummyExperiment):
            return
        define_steps(run)
        location = run_location(run)
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
