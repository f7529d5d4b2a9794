"""Networks given to a module as nested ``_target_`` nodes: checked before anything runs, passed to
the module as plain dicts, and old flat keys answered with the new key (modules/renamed.py)."""

import pytest
from omegaconf import open_dict

import run
from suite.config import compose, split_argv
from suite.errors import ConfigError
from suite.targets import check_all, instantiate


def cfg_of(*argv):
    return compose(*split_argv(list(argv)))


def test_nested_nodes_are_checked_against_their_own_constructor():
    cfg = cfg_of("experiment=ridge_mnist_latent", "debug=fast")
    check_all(cfg)  # score_net's dim and process are supplied by the module: not "missing"
    check_all(cfg_of("experiment=t2i_shapes", "scale=paper", "debug=fast"))
    check_all(cfg_of("experiment=rl_geneval", "debug=fast"))
    check_all(cfg_of("experiment=stem_hest", "scale=paper"))
    assert list(cfg.module.vae.hidden) == [64, 32] and cfg.module.vae.in_dim == 784  # debug merges into the node
    with open_dict(cfg):
        cfg.module.vae.hiden = [8]
    with pytest.raises(ConfigError, match=r"module\.vae\.hiden: modules\.nets\.vae\.VAE has no argument 'hiden' "
                                          r"\(did you mean 'hidden'\?\)"):
        check_all(cfg)
    cfg = cfg_of("experiment=ridge_mnist_latent", "module.score_net.layers=many")
    with pytest.raises(ConfigError, match=r"module\.score_net\.layers: expected int, got str 'many'"):
        check_all(cfg)
    cfg = cfg_of("experiment=ridge_mnist_latent", "module.score_net._target_=core.ridge.score_models.Nope")
    with pytest.raises(ConfigError, match=r"module\.score_net\._target_: core\.ridge\.score_models defines no 'Nope'"):
        check_all(cfg)


def test_instantiate_hands_the_module_plain_dicts(monkeypatch):
    seen = {}
    monkeypatch.setattr("suite.targets.locate", lambda target: lambda **kw: seen.update(kw))
    instantiate(cfg_of("experiment=ridge_mnist_latent").module)
    assert seen["vae"] == {"_target_": "modules.nets.vae.VAE", "in_dim": 784, "hidden": [400, 200], "latent_dim": 32}
    assert type(seen["score_net"]) is dict and seen["score_net"]["hidden"] == 512


@pytest.mark.parametrize("experiment,old,new", [
    ("ridge_mnist_latent", "module.vae_hidden=[64]", "module.vae_hidden: renamed to module.vae.hidden"),
    ("ridge_mnist_latent", "module.latent_dim=8", "module.latent_dim: renamed to module.vae.latent_dim"),
    ("ridge_mnist_latent", "module.score_hidden=8", "module.score_hidden: renamed to module.score_net.hidden"),
    ("ridge_mnist_latent", "module.n_freq=4", "module.n_freq: renamed to module.score_net.n_freq"),
    ("t2i_shapes", "module.text_dim=8", "module.text_dim: renamed to module.text_encoder.dim"),
    ("t2i_shapes", "module.base_channels=8", "module.base_channels: renamed to module.unet.base"),
    ("t2i_shapes", "module.text_heads=2",
     "module.text_heads: renamed to module.text_encoder.heads and module.unet.heads"),
    ("stem_synthetic", "module.cond_dim=8", "module.cond_dim: renamed to module.patch_encoder.out_dim"),
    ("stem_hest", "module.encoder=embedding", "module.encoder: renamed to module.patch_encoder.kind"),
])
def test_old_flat_keys_on_the_command_line_name_the_new_key(experiment, old, new, capsys):
    assert run.main([f"experiment={experiment}", old]) == 2
    err = capsys.readouterr().err
    assert new in err and "'Renamed config keys' in README.md" in err, err
    assert err.count("\n") == 1


def test_old_flat_keys_in_a_yaml_name_the_new_key():
    cfg = cfg_of("experiment=ridge_mnist_latent")
    with open_dict(cfg):
        cfg.module.data_dim = 784
    with pytest.raises(ConfigError, match=r"module\.data_dim: renamed to module\.vae\.in_dim"):
        check_all(cfg)
