"""Constructor arguments that moved into a nested network node (the "Renamed config keys" table of
README.md). Plain data, no torch: suite.config and suite.targets read it to name the new key of an
old one given in a YAML or on the command line, and :func:`check_hparams` reads it when a module
meets a checkpoint whose hyperparameters still use the old flat keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TABLE = "'Renamed config keys' in README.md"

# class path -> {old flat argument: new dotted key under the module}
RENAMED: dict[str, dict[str, str]] = {
    "modules.latent_diffusion.LatentDiffusion": {
        "data_dim": "vae.in_dim",
        "latent_dim": "vae.latent_dim",
        "vae_hidden": "vae.hidden",
        "score_hidden": "score_net.hidden",
        "score_layers": "score_net.layers",
        "n_freq": "score_net.n_freq",
    },
}


def renamed_key(target: str, arg: str) -> str | None:
    """The new key (relative to the module node) of old argument ``arg`` of ``target``, if renamed."""
    return RENAMED.get(target, {}).get(arg)


def renamed_message(target: str, key: str, arg: str) -> str | None:
    """One-line config error for old argument ``arg`` at config key ``key`` (``module.vae_hidden``)."""
    new = renamed_key(target, arg)
    if new is None:
        return None
    parent = key.rpartition(".")[0]
    return f"{key}: renamed to {parent}.{new} (networks are nested config nodes now; see {TABLE})"


def check_hparams(target: str, hparams: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose hyperparameters use old flat keys of ``target`` unless, read through
    the table, every such value equals the one the module was built with (``current``: its hparams);
    then the networks have the same shapes and the checkpoint loads as it is."""
    for old, new in RENAMED.get(target, {}).items():
        if old not in hparams:
            continue
        node, _, leaf = new.partition(".")
        now = (current.get(node) or {}).get(leaf)
        then = hparams[old]
        if then is None:  # the old constructor's own default: not comparable, trust the shapes
            continue
        if isinstance(then, (list, tuple)) and isinstance(now, (list, tuple)):
            then, now = list(then), list(now)
        if then != now:
            raise ValueError(
                f"checkpoint trained with the old flat key module.{old}={hparams[old]!r}, which differs from "
                f"module.{new}={now!r}; set module.{new} to match (see {TABLE})"
            )
