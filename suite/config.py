"""Config composition (the order of docs/architecture.md), without importing torch or Lightning.

1. Group choices (``experiment=``, ``trainer=``, ``logger=``, ``scale=``, ``debug=``) are pulled out
   of argv first: a dotlist would turn ``trainer=ddp`` into a string node.
2. base.yaml <- experiment/NAME.yaml (its ``base:`` files under it, see ``load_with_includes``)
   <- presets (trainer, logger) <- global debug defaults <- the experiment's own ``scale.<name>``
   overrides (then the global debug defaults once more, so that ``scale=paper debug=fast`` stays
   fast) <- the experiment's own ``debug.<name>`` overrides.
3. Struct mode is set, and only then the CLI dotlist is merged, so OmegaConf rejects unknown keys
   (except a new ``callbacks.NAME._target_`` and the arguments of any ``_target_``'s constructor).
4. Types and choices are validated (suite.schema); ``_target_`` arguments are checked against
   the constructors' signatures (suite.targets).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from suite.errors import ConfigError
from suite.schema import validate

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("experiment", "trainer", "logger", "scale", "debug")
DEFAULTS = {"experiment": "diffusion_2d", "trainer": "cpu", "logger": "wandb", "scale": "small", "debug": None}
INCLUDE_KEY = "base"  # an experiment's list of shared YAML files merged under it
HARDWARE_KEYS = ("accelerator", "devices", "strategy", "precision", "num_nodes")


def choices(group: str) -> list[str]:
    """The files of a group; ``_name.yaml`` files (and subfolders) are shared blocks, not choices."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml") if not p.name.startswith("_"))


def split_argv(argv: list[str]) -> tuple[dict[str, str | None], list[str]]:
    """Separate group choices from dotted overrides; reject anything that is not ``key=value``."""
    groups: dict[str, str | None] = dict(DEFAULTS)
    dotlist: list[str] = []
    for arg in argv:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r}: expected key=value (e.g. trainer.max_steps=100) or a group "
                              f"choice ({', '.join(g + '=...' for g in GROUPS)})")
        key, value = arg.split("=", 1)
        if key in GROUPS:
            valid = choices(key) if key != "scale" else ["small", "paper"]
            if key == "debug" and value in ("", "null", "none"):
                groups[key] = None
                continue
            if value not in valid:
                raise ConfigError(f"{key}={value}: unknown {key}{did_you_mean(value, valid)}; "
                                  f"valid choices: {', '.join(valid)}")
            groups[key] = value
        else:
            dotlist.append(arg)
    return groups, dotlist


def load_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from err
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return cfg


def load_with_includes(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """A YAML file with its ``base:`` includes under it: ``base: _file.yaml`` (or a list of names, each
    relative to the including file's folder, ``.yaml`` optional) merges those files first, in order,
    then the file's own keys over them. Included files may include others in turn."""
    cfg = load_yaml(path)
    names = cfg.pop(INCLUDE_KEY, None)
    if names is None:
        return cfg
    where = f"{_shown(path)}: {INCLUDE_KEY}"
    names = [names] if isinstance(names, str) else list(names) if isinstance(names, ListConfig) else [names]
    layers = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: expected a file name or a list of file names, got {name!r}")
        included = path.parent / (name if name.endswith(".yaml") else f"{name}.yaml")
        if not included.is_file():
            raise ConfigError(f"{where}: {name}: no such file {_shown(included)}")
        if included.resolve() in seen + (path.resolve(),):
            raise ConfigError(f"{where}: {name}: an include cycle ({_shown(included)} is already being read)")
        layers.append(load_with_includes(included, seen + (path.resolve(),)))
    try:
        return OmegaConf.merge(*layers, cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}: the included files and the file's own keys do not merge: {err}") from err


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(CONFIG_DIR.parent))
    except ValueError:
        return str(path)


def did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def experiment_yaml(name: str) -> DictConfig:
    path = CONFIG_DIR / "experiment" / f"{name}.yaml"
    if name.startswith("_") or not path.exists():
        valid = choices("experiment")
        raise ConfigError(f"experiment={name}: unknown experiment{did_you_mean(name, valid)}; "
                          f"valid choices: {', '.join(valid)}")
    return load_with_includes(path)


def list_experiments() -> dict[str, str]:
    return {name: str(experiment_yaml(name).get("description", "")) for name in choices("experiment")}


def compose(groups: dict[str, str | None], dotlist: list[str]) -> DictConfig:
    """Compose the config of one run (see the module docstring for the order)."""
    name = groups["experiment"]
    exp = experiment_yaml(name)
    scale_overrides = exp.pop("scale", None) or {}
    debug_overrides = exp.pop("debug", None) or {}
    for key in HARDWARE_KEYS:
        if OmegaConf.select(exp, f"trainer.{key}") is not None:
            raise ConfigError(f"configs/experiment/{name}.yaml sets trainer.{key}: hardware keys belong to "
                              "the trainer presets (trainer=cpu|gpu|ddp|ddp_sim|fsdp)")
    layers = [load_yaml(CONFIG_DIR / "base.yaml"), exp,
              load_yaml(CONFIG_DIR / "trainer" / f"{groups['trainer']}.yaml"),
              load_yaml(CONFIG_DIR / "logger" / f"{groups['logger']}.yaml")]
    if groups["debug"]:
        layers.append(load_yaml(CONFIG_DIR / "debug" / f"{groups['debug']}.yaml"))
    scale = groups["scale"]
    if scale != "small":
        if scale not in scale_overrides:
            raise ConfigError(f"scale={scale}: experiment {name} defines no `scale.{scale}` overrides")
        layers.append(scale_overrides[scale])
        if groups["debug"]:  # again after the scale, so `scale=paper debug=fast` stays fast
            layers.append(load_yaml(CONFIG_DIR / "debug" / f"{groups['debug']}.yaml"))
    if groups["debug"] and groups["debug"] in debug_overrides:
        layers.append(debug_overrides[groups["debug"]])
    try:
        cfg = OmegaConf.merge(*layers)
    except OmegaConfBaseException as err:
        raise ConfigError(f"experiment {name}: its layers do not merge: {err}") from err
    cfg.experiment, cfg.scale, cfg.debug = name, scale, groups["debug"]
    OmegaConf.set_struct(cfg, True)
    merge_cli(cfg, dotlist)
    validate(cfg)
    return cfg


def merge_cli(cfg: DictConfig, dotlist: list[str]) -> None:
    """Merge ``key=value`` overrides one by one into a struct config, naming a bad key precisely."""
    for item in dotlist:
        key = item.split("=", 1)[0]
        try:
            override = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as err:
            raise ConfigError(f"{item}: cannot parse the value: {err}") from err
        try:
            cfg.merge_with(override)
        except OmegaConfBaseException as err:
            if not (_merge_new_callback(cfg, key, override) or _merge_constructor_argument(cfg, key, override)):
                raise ConfigError(unknown_key_message(cfg, key) or f"{key}: {err}") from err


def _merge_new_callback(cfg: DictConfig, key: str, override: DictConfig) -> bool:
    """Allow ``callbacks.NAME._target_=a.Callback``: a callback the experiment does not configure
    (e.g. callbacks.sharpness._target_=callbacks.sharpness.SharpnessCallback); its arguments follow
    as ``callbacks.NAME.arg=value``."""
    from omegaconf import open_dict

    parts = key.split(".")
    if len(parts) != 3 or parts[0] != "callbacks" or parts[2] != "_target_" or parts[1] in cfg.callbacks:
        return False
    with open_dict(cfg):
        cfg.merge_with(override)
    return True


def _merge_constructor_argument(cfg: DictConfig, key: str, override: DictConfig) -> bool:
    """Allow ``section.arg=value`` for any argument of the section's ``_target_``, also one the
    YAML leaves at its default (``module.weight_decay=0.1``)."""
    from omegaconf import open_dict

    from suite.targets import target_params

    parent_key, _, arg = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else None
    if not isinstance(parent, DictConfig) or "_target_" not in parent:
        return False
    if arg not in target_params(parent._target_, parent_key):
        return False
    with open_dict(cfg):
        cfg.merge_with(override)
    return True


def unknown_key_message(cfg: DictConfig, key: str) -> str | None:
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node:
            parent = ".".join(parts[:i]) or "<top level>"
            valid = list(node.keys()) if isinstance(node, DictConfig) else []
            if isinstance(node, DictConfig) and "_target_" in node:
                from modules.renamed import renamed_message
                from suite.targets import target_params

                moved = renamed_message(str(node._target_), ".".join(parts[: i + 1]), part)
                if moved:
                    return moved
                valid += [p for p in target_params(node._target_, parent) if p not in valid]
            close = difflib.get_close_matches(part, [str(v) for v in valid], n=1)
            hint = f" (did you mean {'.'.join(parts[:i] + [close[0]])}?)" if close else ""
            return f"{key}: unknown key{hint}; valid keys under {parent}: {', '.join(map(str, valid))}"
        node = node._get_node(part) if isinstance(node._get_node(part), DictConfig) else node[part]
    return None
