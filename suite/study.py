"""Expands a study (``variants``, ``grid``, ``seeds``) into named runs; ``debug=fast`` shrinks it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from suite.errors import ConfigError


@dataclass
class Variant:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None


def _short(key: str, keys: list[str]) -> str:
    last = key.rsplit(".", 1)[-1]
    if sum(k.rsplit(".", 1)[-1] == last for k in keys) > 1:
        return key
    return last


def expand(cfg: DictConfig) -> list[Variant]:
    """variants x grid x seeds; a config without a study is the single variant ``main``."""
    study = cfg.study
    if study is None:
        return [Variant("main")]
    study = OmegaConf.to_container(study, resolve=True)
    fast = cfg.debug == "fast"
    variants = study.get("variants") or {"": {}}
    if fast:
        variants = dict(list(variants.items())[:2])
    grid = study.get("grid") or {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"study.grid.{key}: expected a non-empty list of values")
    keys = list(grid)
    if fast and keys:
        grid = {k: (v[:2] if i == 0 else v[:1]) for i, (k, v) in enumerate(grid.items())}
    seeds = study.get("seeds") or [None]
    if fast:
        seeds = seeds[:1]
    runs = []
    for (vname, vover), combo, seed in itertools.product(variants.items(), itertools.product(*grid.values()),
                                                         seeds):
        if not isinstance(vover, dict):
            raise ConfigError(f"study.variants.{vname}: expected a mapping of dotted overrides")
        over = dict(vover or {})
        parts = [vname] if vname else []
        for key, value in zip(keys, combo):
            over[key] = value
            parts.append(f"{_short(key, keys)}={value}")
        if seed is not None:
            parts.append(f"seed={seed}")
        runs.append(Variant("__".join(parts) or "main", over, seed))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError("study: variant names collide; give variants distinct names")
    return runs


def eval_sweep(cfg: DictConfig) -> tuple[str, list[Any]] | None:
    """(module attribute, values) of an evaluation-only sweep that reuses each trained model."""
    if cfg.study is None or cfg.study.get("eval_sweep") is None:
        return None
    sweep = cfg.study.eval_sweep
    if "param" not in sweep or "values" not in sweep:
        raise ConfigError("study.eval_sweep: expected {param: <module attribute>, values: [...]}")
    values = list(sweep["values"])
    return str(sweep["param"]), values[:2] if cfg.debug == "fast" else values


def apply_overrides(cfg: DictConfig, overrides: dict[str, Any]) -> DictConfig:
    """A copy of cfg with dotted overrides; unknown keys are rejected (struct mode)."""
    from suite.config import merge_cli

    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.set_struct(out, True)
    merge_cli(out, [f"{k}={_yaml(v)}" for k, v in overrides.items()])
    return out


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return ".inf" if value > 0 else "-.inf"
    if isinstance(value, (list, dict)):
        import json

        return json.dumps(value)
    return str(value)
