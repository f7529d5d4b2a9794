"""LatentDiffusion's two networks as config nodes: same initialisation as building them in place,
plain hyperparameters, and old checkpoints with the flat keys (modules/renamed.py)."""

import io

import pytest
import torch

from core.diffusion.processes import OU
from core.ridge.score_models import PosteriorMeanMLP
from modules.latent_diffusion import DEFAULT_SCORE_NET, LatentDiffusion
from modules.nets.vae import VAE

VAE_NODE = {"_target_": "modules.nets.vae.VAE", "in_dim": 12, "hidden": [6], "latent_dim": 3}
SCORE_NODE = {**DEFAULT_SCORE_NET, "hidden": 5, "n_freq": 2}


def test_nodes_initialise_like_the_networks_built_in_place():
    torch.manual_seed(3)
    module = LatentDiffusion(vae=VAE_NODE, score_net=SCORE_NODE, T=2.0)
    torch.manual_seed(3)
    vae = VAE(12, (6,), 3)
    net = PosteriorMeanMLP(3, OU(T=2.0, t_min=1e-3), hidden=5, layers=2, n_freq=2)
    for built, direct in ((module.vae, vae), (module.net, net)):
        a, b = built.state_dict(), direct.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert module.latent_dim == 3 and module.latent_shift.shape == (3,)


def test_hyperparameters_stay_plain_values():
    module = LatentDiffusion(vae=VAE(12, (6,), 3), score_net=SCORE_NODE)
    assert module.hparams.vae == {"_target_": "modules.nets.vae.VAE", "built": True}
    assert module.hparams.score_net == SCORE_NODE
    buf = io.BytesIO()
    torch.save({"hyper_parameters": dict(module.hparams)}, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["hyper_parameters"]["score_net"]["hidden"] == 5
    with pytest.raises(TypeError, match="module.score_net.dim: set by the module itself"):
        LatentDiffusion(vae=VAE_NODE, score_net={**SCORE_NODE, "dim": 3})


def old_checkpoint(**flat):
    """A checkpoint as the flat-key LatentDiffusion saved it (hyper_parameters written by hand)."""
    hp = {"data_dim": 12, "latent_dim": 3, "vae_hidden": [6], "score_hidden": 5, "score_layers": 2, "n_freq": 2,
          "vae_steps": 2000, "lr": 1e-3}
    return {"hyper_parameters": {**hp, **flat}, "state_dict": {}}


def test_old_checkpoint_loads_when_its_flat_keys_agree():
    module = LatentDiffusion(vae=VAE_NODE, score_net=SCORE_NODE)
    module.on_load_checkpoint(old_checkpoint())
    module.on_load_checkpoint(old_checkpoint(vae_hidden=None))  # None: the old default, left to the shapes
    module.on_load_checkpoint({"hyper_parameters": dict(module.hparams)})  # a new checkpoint


@pytest.mark.parametrize("flat,message", [
    ({"vae_hidden": [400, 200]}, "module.vae_hidden=[400, 200], which differs from module.vae.hidden=[6]"),
    ({"score_hidden": 512}, "module.score_hidden=512, which differs from module.score_net.hidden=5"),
    ({"latent_dim": 32}, "module.latent_dim=32, which differs from module.vae.latent_dim=3"),
])
def test_old_checkpoint_that_disagrees_names_the_table(flat, message):
    module = LatentDiffusion(vae=VAE_NODE, score_net=SCORE_NODE)
    with pytest.raises(ValueError) as err:
        module.on_load_checkpoint(old_checkpoint(**flat))
    text = str(err.value)
    assert message in text and "'Renamed config keys' in README.md" in text and "\n" not in text
