"""Types of the top-level config keys and of the trainer / logger sections (checked after the
command line is merged, before anything is built)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig

from suite.errors import ConfigError

NONE = type(None)
NUM = (int, float)

TOP = {
    "experiment": (str,), "description": (str,), "seed": (int,), "output_dir": (str, NONE),
    "ckpt_path": (str, NONE), "compile": (bool,), "scale": (str,), "debug": (str, NONE),
    "trainer": (DictConfig,), "logger": (DictConfig,), "checkpoint": (DictConfig,),
    "module": (DictConfig, NONE), "data": (DictConfig, NONE), "callbacks": (DictConfig,),
    "claims": (str, NONE), "study": (DictConfig, NONE), "job": (DictConfig, NONE),
    "requires": (DictConfig,), "artifacts": (DictConfig,), "ema": (DictConfig,),
    "nan_guard": (bool,), "force_unlock": (bool,),
}
TRAINER = {
    "max_steps": (int,), "max_epochs": (int, NONE), "max_time": (str, NONE), "accelerator": (str,),
    "devices": (int, str, ListConfig), "strategy": (str,), "precision": (str, int), "num_nodes": (int,),
    "log_every_n_steps": (int,), "val_check_interval": (int, float, NONE),
    "check_val_every_n_epoch": (int, NONE), "gradient_clip_val": (int, float, NONE),
    "accumulate_grad_batches": (int,), "limit_train_batches": (int, float, NONE),
    "limit_val_batches": (int, float, NONE), "limit_test_batches": (int, float, NONE),
    "overfit_batches": (int, float), "profiler": (str, NONE), "enable_progress_bar": (bool,),
    "num_sanity_val_steps": (int,), "deterministic": (bool, str), "benchmark": (bool, NONE),
}
LOGGER = {
    "type": (str,), "project": (str,), "entity": (str, NONE), "group": (str, NONE),
    "tags": (ListConfig,), "mode": (str,), "log_model": (bool,),
}
CHECKPOINT = {"every_n_steps": (int, NONE), "every_minutes": (int, float, NONE), "keep": (int,)}
STUDY = {"variants": (DictConfig, NONE), "grid": (DictConfig, NONE), "seeds": (ListConfig, NONE),
         "eval_sweep": (DictConfig, NONE)}
CHOICES = {"logger.type": ("wandb", "csv", "none"), "logger.mode": ("auto", "online", "offline", "disabled"),
           "scale": ("small", "paper")}
EMA = {"enabled": (bool,), "decay": (float,), "warmup": (bool,)}
SECTIONS = {"ema": EMA, "trainer": TRAINER, "logger": LOGGER, "checkpoint": CHECKPOINT, "study": STUDY}


def _type_names(types: tuple) -> str:
    names = {DictConfig: "mapping", ListConfig: "list", NONE: "null", str: "string", int: "int",
             float: "float", bool: "bool"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check(key: str, value: Any, types: tuple) -> None:
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(f"{key}: expected {_type_names(types)}, got bool {value!r}")
    if value is None and NONE not in types:
        raise ConfigError(f"{key}: expected {_type_names(types)}, got no value (null)")
    if not isinstance(value, types):
        raise ConfigError(f"{key}: expected {_type_names(types)}, got {type(value).__name__} {value!r}")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the full key when a value has the wrong type or choice."""
    for key, types in TOP.items():
        if key not in cfg:
            raise ConfigError(f"{key}: missing from the composed config (configs/base.yaml defines it)")
        _check(key, _raw(cfg, key), types)
    for section, schema in SECTIONS.items():
        node = cfg[section]
        if node is None:
            continue
        for key in node:
            if key in schema:
                _check(f"{section}.{key}", _raw(node, key), schema[key])
            elif section != "trainer":
                raise ConfigError(f"{section}.{key}: unknown key; valid keys: {', '.join(schema)}")
    for key, choices in CHOICES.items():
        value = cfg
        for part in key.split("."):
            value = value[part]
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    if (cfg.module is None) == (cfg.job is None):
        raise ConfigError(f"experiment {cfg.experiment}: set exactly one of `module` (a Lightning run) or `job`")
    if cfg.module is not None and cfg.data is None:
        raise ConfigError(f"data: experiment {cfg.experiment} has a module but no `data` section")


def _raw(node: DictConfig, key: str) -> Any:
    """A value without resolving interpolations (``${artifacts.x}`` is resolved at run time)."""
    child = node._get_node(key)
    if child is None:
        return None
    if isinstance(child, (DictConfig, ListConfig)):
        return child
    value = child._value()
    if isinstance(value, str) and value.startswith("${"):
        return node[key] if "artifacts" not in value else value
    return value
