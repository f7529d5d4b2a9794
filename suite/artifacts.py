"""Artifacts: an experiment may require another experiment's output folder (a checkpoint, a
generated data folder). It is produced once, under ``runs/_artifacts/<experiment>-<hash>``, keyed
by the producing config's hash, and reused afterwards."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from suite.config import compose
from suite.errors import ConfigError

ARTIFACT_ROOT = Path("runs") / "_artifacts"
IGNORED = ("output_dir", "logger", "ckpt_path", "artifacts")


def config_hash(cfg: DictConfig) -> str:
    data = OmegaConf.to_container(cfg, resolve=False)
    for key in IGNORED:
        data.pop(key, None)
    for key in ("accelerator", "devices", "strategy", "num_nodes", "enable_progress_bar"):
        data["trainer"].pop(key, None)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(data)).encode()).hexdigest()[:12]


def producer_config(spec: DictConfig, groups: dict, key: str) -> DictConfig:
    if "experiment" not in spec:
        raise ConfigError(f"requires.{key}.experiment: missing; name the experiment that produces it")
    sub_groups = dict(groups, experiment=spec.experiment, logger="none")
    overrides = [f"{k}={v}" for k, v in (spec.get("overrides") or {}).items()]
    return compose(sub_groups, overrides)


def resolve_artifacts(cfg: DictConfig, groups: dict, produce: Callable[[DictConfig, dict], Path]) -> None:
    """Fill ``cfg.artifacts.<name>`` with the folder of each required artifact, producing it first
    when no cached copy exists. The producer inherits the requester's debug and scale. An artifact
    with ``unless: <key>`` is skipped (and ``artifacts.<name>`` left empty) when that key is set, e.g.
    the generated data folder when the user gives ``data.data_dir``."""
    for name, spec in (cfg.requires or {}).items():
        if spec.get("unless") and OmegaConf.select(cfg, spec.unless):
            print(f"[genlab] artifact {name!r} not needed: {spec.unless} is given")
            with open_dict(cfg):
                cfg.artifacts[name] = ""
            continue
        sub = producer_config(spec, groups, name)
        folder = ARTIFACT_ROOT / f"{spec.experiment}-{config_hash(sub)}"
        if not (folder / "results.json").exists():
            print(f"[genlab] producing artifact {name!r}: experiment {spec.experiment} -> {folder}")
            with open_dict(sub):
                sub.output_dir = str(folder)
            produce(sub, dict(groups, experiment=spec.experiment, logger="none"))
        else:
            print(f"[genlab] reusing artifact {name!r} from {folder}")
        with open_dict(cfg):
            cfg.artifacts[name] = str(folder.resolve())
