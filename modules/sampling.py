"""The one generation interface of the suite's generative modules.

Every generative LightningModule implements

    sample(self, n, *, steps=None, solver=None, generator=None, cond=None, return_trajectory=False,
           **guidance) -> core.diffusion.solvers.SampleResult

* ``steps``: solver steps (None: the module's configured default);
* ``solver``: the module's name for its integrator (None: the configured default);
* ``cond``: what the module conditions on (captions, a batch of spots, given columns, context), None
  for an unconditional draw where the module allows it;
* ``**guidance``: module-specific options (guidance weight, steering, which network, time grid);
* ``SampleResult.nfe``: network evaluations per sample, one per forward pass of a sample's row
  (classifier-free guidance spends 2 per step, Heun 2 per step).

Text-conditioned modules (:class:`PromptGeneration`) also offer ``generate(prompts, ...)``: images in
[0, 1] for captions or GenEval metadata, the call of callbacks/geneval.py and callbacks/rl_watch.py.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch

from core.tasks.shapes.grammar import caption


def generation(fn):
    """Decorator of ``sample``: no gradient, and the module in eval mode for the call only."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return fn(self, *args, **kwargs)
        finally:
            self.train(was_training)

    return wrapper


def choose(what: str, value, default, options: tuple):
    """``value`` (``default`` when None), checked against ``options``."""
    value = default if value is None else value
    if value not in options:
        raise ValueError(f"{what}: {value!r} is not one of {', '.join(map(str, options))}")
    return value


def sample_options(module, given: dict, **defaults) -> SimpleNamespace:
    """The module-specific options of a ``sample`` call (its ``**guidance``): ``defaults`` updated by
    ``given``; an option the module does not know is an error, not silently ignored."""
    unknown = set(given) - set(defaults)
    if unknown:
        raise TypeError(f"{type(module).__name__}.sample: unknown options {sorted(unknown)}; it takes {sorted(defaults)}")
    return SimpleNamespace(**(defaults | given))


def unconditional(module, cond) -> None:
    if cond is not None:
        raise ValueError(f"{type(module).__name__}.sample is unconditional: cond must be None")


def multimodal_sample(module, shapes: list[tuple], steps: int, *, given: tuple | None, generator, return_trajectory: bool,
                      **process_options):
    """``module.process.sample`` (core.diffusion.multimodal) with the module as the model: the given
    groups moved to the module's device, every evaluation charged to ``module.nfe``."""
    if given is not None:
        given = tuple(g.to(module.device) for g in given)
    return module.process.sample(module, shapes, steps, given=given, generator=generator, counter=module.nfe,
                                 device=module.device, return_trajectory=return_trajectory, **process_options)


class PromptGeneration:
    """``generate`` for modules whose ``sample`` takes captions as ``cond`` and returns images in [-1, 1]."""

    @torch.no_grad()
    def generate(
        self,
        prompts: list,
        *,
        steps: int | None = None,
        solver: str | None = None,
        guidance: float | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 256,
        **options,
    ) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] for ``prompts`` (captions, or GenEval metadata dicts), sampled
        in chunks of ``batch_size`` with one generator; ``guidance`` None: the module's default weight;
        ``options``: further options of the module's ``sample`` (e.g. ``net=`` of DiffusionRL)."""
        captions = [p if isinstance(p, str) else p.get("prompt") or caption(p) for p in prompts]
        if guidance is not None:
            options["guidance"] = guidance
        out = [
            self._images(self.sample(len(chunk), steps=steps, solver=solver, generator=generator, cond=chunk, **options))
            for chunk in (captions[i : i + batch_size] for i in range(0, len(captions), batch_size))
        ]
        return (torch.cat(out) + 1) / 2

    @staticmethod
    def _images(result) -> torch.Tensor:
        """The image part of a SampleResult's x (a tensor, or the first part of an (images, tokens) pair)."""
        return result.x[0] if isinstance(result.x, (tuple, list)) else result.x
