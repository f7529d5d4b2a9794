"""The design space of RL fine-tuning of the Shapes flow (modules/diffusion_rl.py) and what a run starts
from: the allowed (objective, likelihood, sampler, old policy, ELBO weighting) combinations, the base
text-to-image checkpoint, and the pool of training prompts (docs/methods/rl_elbo.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.tasks.shapes import load_eval_prompts, sample_training_metadata
from modules.renamed import upgrade_hparams
from modules.t2i import DEFAULT_TEXT_ENCODER, DEFAULT_UNET, TextToImage

OBJECTIVES = ("epg", "ppo_clip", "nft")
LIKELIHOODS = ("per_step", "elbo", "none")
SAMPLERS = ("sde", "ode")
T_RANGE = (0.02, 0.98)  # ELBO time draws, away from the singular ends


def check_design(objective: str, likelihood: str, sampler: str, old_policy: str, elbo_weighting: str) -> None:
    """Reject impossible combinations of the design space before anything is built."""
    for key, value, options in (
        ("module.objective", objective, OBJECTIVES),
        ("module.likelihood", likelihood, LIKELIHOODS),
        ("module.sampler", sampler, SAMPLERS),
        ("module.old_policy", old_policy, ("copy", "ema")),
        ("module.elbo_weighting", elbo_weighting, ("uniform", "elbo")),
    ):
        if value not in options:
            raise ValueError(f"{key}: {value!r} is not one of {', '.join(options)}")
    if objective == "nft" and likelihood != "none":
        raise ValueError(
            f"module.objective=nft has no likelihood ratio: set module.likelihood=none (got {likelihood!r})"
        )
    if objective != "nft" and likelihood == "none":
        raise ValueError(f"module.objective={objective} needs module.likelihood=per_step or elbo (got none)")
    if likelihood == "per_step" and sampler != "sde":
        raise ValueError(
            "module.likelihood=per_step needs module.sampler=sde (a deterministic ODE step has no "
            f"transition density); got module.sampler={sampler!r}. The elbo likelihood accepts either sampler."
        )


def load_base(path: str) -> TextToImage:
    """A t2i_shapes checkpoint (Lightning, weights-only readable) as a TextToImage."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"module.base_ckpt: {p} not found; expected a t2i_shapes checkpoint "
            "(${artifacts.base}/checkpoints/last.ckpt)"
        )
    ckpt = torch.load(p, map_location="cpu", weights_only=True)
    if "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"module.base_ckpt: {p} has no hyper_parameters/state_dict; is it a t2i_shapes checkpoint?")
    # a base trained before the networks became config nodes: its flat keys read through the table
    nodes = {"unet": DEFAULT_UNET, "text_encoder": DEFAULT_TEXT_ENCODER}
    base = TextToImage(**upgrade_hparams("modules.t2i.TextToImage", ckpt["hyper_parameters"], nodes))
    base.load_state_dict(ckpt["state_dict"])
    return base


def training_prompt_pool(n: int, seed: int = 0) -> list[dict]:
    """``n`` training captions (core.tasks.shapes' training distribution, no held-out combinations) whose
    prompt strings are not in the evaluation set eval_prompts.jsonl, so RL never sees an eval prompt."""
    eval_captions = {p["prompt"] for p in load_eval_prompts()}
    rng = np.random.default_rng([seed, 11])
    pool = []
    for _ in range(200 * n):
        meta = sample_training_metadata(rng)
        if meta["prompt"] not in eval_captions:
            pool.append(meta)
            if len(pool) == n:
                return pool
    raise RuntimeError(f"training_prompt_pool: found only {len(pool)} of {n} prompts outside the eval set")
