"""Every generative module has the one ``sample`` signature (modules/sampling.py) and returns a
SampleResult with nfe > 0; the text-conditioned ones share one ``generate`` signature."""

from __future__ import annotations

import inspect

import pytest
import torch

from core.diffusion.solvers import SampleResult
from modules.diffusion import Diffusion
from modules.diffusion_rl import DiffusionRL
from modules.latent_diffusion import DEFAULT_SCORE_NET, LatentDiffusion
from modules.momentum_diffusion import MomentumDiffusion
from modules.multimodal_diffusion import MultimodalDiffusion
from modules.multimodal_text_image import MultimodalTextImage
from modules.relu_diffusion import ReLUDiffusion
from modules.stem import Stem
from modules.t2i import DEFAULT_TEXT_ENCODER, DEFAULT_UNET, TextToImage
from modules.world_model import MaskedWorldModel

MODULES = [Diffusion, Stem, ReLUDiffusion, LatentDiffusion, MultimodalDiffusion, MultimodalTextImage,
           MomentumDiffusion, TextToImage, DiffusionRL, MaskedWorldModel]
SIGNATURE = "(self, n, *, steps=None, solver=None, generator=None, cond=None, return_trajectory=False, **guidance)"
TEXT = [TextToImage, DiffusionRL, MultimodalTextImage]


def _bare(sig: inspect.Signature) -> str:
    """The signature without annotations: names, kinds and defaults only."""
    return str(sig.replace(parameters=[p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()],
                           return_annotation=inspect.Signature.empty))


@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_sample_has_the_one_signature(cls):
    assert _bare(inspect.signature(cls.sample)) == SIGNATURE


def test_text_modules_share_one_generate_signature():
    sigs = {_bare(inspect.signature(cls.generate)) for cls in TEXT}
    assert len(sigs) == 1
    params = inspect.signature(TEXT[0].generate).parameters
    assert list(params)[:6] == ["self", "prompts", "steps", "solver", "guidance", "generator"]


TINY_UNET = {**DEFAULT_UNET, "base": 8, "channel_mults": [1], "attn_levels": 0}
TINY_TEXT = {**DEFAULT_TEXT_ENCODER, "dim": 16, "depth": 1}


def _tiny():
    torch.manual_seed(0)
    mm = MultimodalDiffusion(hidden=8, depth=1, heads=2, sample_steps=3)
    mm.build({"numeric": ["a", "b"], "categorical": ["y", "c"], "cardinalities": [2, 3], "target": ["cat", 0]})
    return [
        (Diffusion(hidden=8, depth=1, time_dim=8, sample_steps=3), {}, 3),
        (ReLUDiffusion(dim=4, width=3, sample_steps=3), {}, 4),  # + the final denoising step
        (LatentDiffusion(vae={"_target_": "modules.nets.vae.VAE", "in_dim": 16, "hidden": [8], "latent_dim": 2},
                         score_net={**DEFAULT_SCORE_NET, "hidden": 8}, sample_steps=3), {}, 3),
        (mm, {}, 3),
        (MomentumDiffusion(hidden=8, depth=1, time_dim=8, sample_nfe=4, process="cld"), {}, 4),
        (MultimodalTextImage(hidden=16, depth=1, heads=2, sample_steps=3, text_steps=3), {}, 3),
        (MultimodalTextImage(hidden=16, depth=1, heads=2, sample_steps=3, text_steps=3),
         {"cond": ["a red circle", "two squares"], "guidance": 2.0}, 6),  # guided steps: 2 passes each
        (TextToImage(unet=TINY_UNET, text_encoder=TINY_TEXT,
                     sample_steps=3), {"guidance": 1.0}, 3),
        (TextToImage(unet=TINY_UNET, text_encoder=TINY_TEXT,
                     sample_steps=3), {"guidance": 3.0}, 6),  # classifier-free guidance: 2 per step
        (TextToImage(unet=TINY_UNET, text_encoder=TINY_TEXT,
                     sample_steps=2), {"guidance": 1.0, "solver": "heun"}, 3),  # Heun: last step to 0 is Euler
    ]


def test_sample_returns_a_sample_result_with_the_nfe_count():
    for module, kw, nfe in _tiny():
        if "cond" in kw:
            n = len(kw["cond"])
        else:
            n = 2
        res = module.sample(n, generator=torch.Generator().manual_seed(0), **kw)
        assert isinstance(res, SampleResult), type(module).__name__
        assert res.nfe == nfe, (type(module).__name__, kw, res.nfe)
        with pytest.raises(TypeError, match="unknown options"):
            module.sample(2, no_such_option=1)
