"""Networks given to a module as config nodes (docs/architecture.md).

A module that holds more than one network takes each as one constructor argument, written in the
experiment YAML as a nested node ``vae: {_target_: modules.nets.vae.VAE, hidden: [400, 200], ...}``.
The suite hands such a node to the module as a plain dict (so ``save_hyperparameters`` stores plain
values and checkpoints load with ``weights_only=True``); the module builds it with :func:`build_net`
at the point of its ``__init__`` where it always built that network, so parameter initialisation
draws from the global RNG in the same order as before. A module may also be given a built
``nn.Module``, which is used as it is.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from torch import nn


def build_net(spec: nn.Module | Mapping[str, Any], key: str, **supplied: Any) -> nn.Module:
    """The network of ``spec``: itself when already built, else ``_target_(**args, **supplied)``.

    ``supplied`` holds the arguments the module passes itself (sizes it owns, its noise process);
    ``key`` names the config node (``module.vae``) in errors.
    """
    if isinstance(spec, nn.Module):
        return spec
    if not isinstance(spec, Mapping) or not isinstance(spec.get("_target_"), str):
        raise TypeError(f"{key}: expected a network or a config node with _target_, got {spec!r}")
    args = dict(spec)
    module_name, _, attr = args.pop("_target_").rpartition(".")
    clash = sorted(set(args) & set(supplied))
    if clash:
        raise TypeError(f"{key}.{clash[0]}: set by the module itself; remove it from the config node")
    return getattr(importlib.import_module(module_name), attr)(**args, **supplied)


def net_hparam(spec: nn.Module | Mapping[str, Any]) -> Any:
    """What ``save_hyperparameters`` may keep of ``spec``: the config node as a plain dict (a built
    network is not a plain value: it is recorded by its class name only)."""
    if isinstance(spec, nn.Module):
        return {"_target_": f"{type(spec).__module__}.{type(spec).__qualname__}", "built": True}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(spec).items()}
