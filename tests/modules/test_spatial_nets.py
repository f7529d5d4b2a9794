"""Stem's and STRegression's patch encoder as a config node: built first, as the flat keys built it,
and checkpoints saved with the flat keys checked through modules/renamed.py."""

import pytest
import torch

from modules.nets.gene_dit import GeneDiT
from modules.nets.patch_encoder import PatchEncoder
from modules.spatial_base import DEFAULT_PATCH_ENCODER
from modules.st_regression import STRegression
from modules.stem import Stem

ENCODER = {**DEFAULT_PATCH_ENCODER, "out_dim": 8, "cnn_width": 8}
STEM = {"width": 16, "depth": 1, "heads": 2}


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_node_initialises_like_the_flat_keys():
    torch.manual_seed(4)
    model = Stem(n_genes=6, patch_encoder=ENCODER, stem=STEM)
    torch.manual_seed(4)
    encoder = PatchEncoder("image", 0, 8, 8)  # the flat-key constructor's order: encoder, then the DiT
    net = GeneDiT(6, 8, 16, 1, 2, 4.0, False)
    assert same(model.encoder, encoder) and same(model.net, net)
    assert model.hparams.patch_encoder == ENCODER


def test_flat_key_checkpoints():
    model = STRegression(n_genes=6, patch_encoder=ENCODER, regression={"hidden": 8})
    flat = {"n_genes": 6, "encoder": "image", "embedding_dim": 0, "cond_dim": 8, "cnn_width": 8}
    model.on_load_checkpoint({"hyper_parameters": flat})
    model.on_load_checkpoint({"hyper_parameters": dict(model.hparams)})
    with pytest.raises(ValueError, match=r"module.cond_dim=128, which differs from module.patch_encoder.out_dim=8; "
                                         r"set module.patch_encoder.out_dim to match \(see 'Renamed config keys'"):
        model.on_load_checkpoint({"hyper_parameters": flat | {"cond_dim": 128}})
