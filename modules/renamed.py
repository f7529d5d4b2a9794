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
    "modules.t2i.TextToImage": {
        "base_channels": "unet.base",
        "channel_mults": "unet.channel_mults",
        "attn_levels": "unet.attn_levels",
        "patch": "unet.patch",
        "text_dim": "text_encoder.dim",
        "text_depth": "text_encoder.depth",
        "text_heads": "text_encoder.heads, unet.heads",  # one old key fed both networks
    },
}
_SPATIAL = {
    "encoder": "patch_encoder.kind",
    "embedding_dim": "patch_encoder.embedding_dim",
    "cond_dim": "patch_encoder.out_dim",
    "cnn_width": "patch_encoder.cnn_width",
}
RENAMED["modules.stem.Stem"] = RENAMED["modules.st_regression.STRegression"] = _SPATIAL


def renamed_key(target: str, arg: str) -> str | None:
    """The new key(s) (relative to the module node, comma-separated) of old argument ``arg`` of
    ``target``, if renamed."""
    return RENAMED.get(target, {}).get(arg)


def _new_keys(new: str) -> list[tuple[str, str]]:
    return [tuple(k.strip().split(".", 1)) for k in new.split(",")]


def upgrade_hparams(target: str, hparams: Mapping[str, Any], defaults: Mapping[str, Mapping[str, Any]]) -> dict:
    """``hparams`` with the old flat keys of ``target`` moved into their nodes, each node starting
    from ``defaults[node]`` (the module's default config node) unless ``hparams`` has it already; a
    None old value (the old default) leaves the node's own value."""
    out = {k: v for k, v in hparams.items() if k not in RENAMED.get(target, {})}
    for old, new in RENAMED.get(target, {}).items():
        if old not in hparams or hparams[old] is None:
            continue
        for node, leaf in _new_keys(new):
            out[node] = {**(out.get(node) or defaults[node]), leaf: hparams[old]}
    return out


def renamed_message(target: str, key: str, arg: str) -> str | None:
    """One-line config error for old argument ``arg`` at config key ``key`` (``module.vae_hidden``)."""
    new = renamed_key(target, arg)
    if new is None:
        return None
    parent = key.rpartition(".")[0]
    where = " and ".join(f"{parent}.{node}.{leaf}" for node, leaf in _new_keys(new))
    return f"{key}: renamed to {where} (networks are nested config nodes now; see {TABLE})"


def check_hparams(target: str, hparams: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose hyperparameters use old flat keys of ``target`` unless, read through
    the table, every such value equals the one the module was built with (``current``: its hparams);
    then the networks have the same shapes and the checkpoint loads as it is."""
    for old, new in RENAMED.get(target, {}).items():
        if old not in hparams:
            continue
        then = hparams[old]
        if then is None:  # the old constructor's own default: not comparable, trust the shapes
            continue
        for node, leaf in _new_keys(new):
            now = (current.get(node) or {}).get(leaf)
            if isinstance(then, (list, tuple)) and isinstance(now, (list, tuple)):
                then, now = list(then), list(now)
            if then != now:
                raise ValueError(
                    f"checkpoint trained with the old flat key module.{old}={hparams[old]!r}, which differs from "
                    f"module.{node}.{leaf}={now!r}; set module.{node}.{leaf} to match (see {TABLE})"
                )
