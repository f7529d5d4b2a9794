"""TextToImage's UNet and caption encoder as config nodes: same initialisation as the flat keys
built, and a t2i checkpoint saved with the old flat keys still loads as the RL base (modules/renamed.py)."""

import pytest
import torch

from modules.nets.cond_unet import CondUNet
from modules.nets.text_encoder import CaptionEncoder
from modules.rl_design import load_base
from modules.t2i import DEFAULT_TEXT_ENCODER, DEFAULT_UNET, TextToImage

UNET = {**DEFAULT_UNET, "base": 8, "channel_mults": [1, 2], "attn_levels": 1, "heads": 2}
TEXT = {**DEFAULT_TEXT_ENCODER, "dim": 16, "depth": 1, "heads": 2}
FLAT = {"base_channels": 8, "channel_mults": [1, 2], "attn_levels": 1, "patch": 2, "text_dim": 16, "text_depth": 1,
        "text_heads": 2}


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_nodes_initialise_like_the_flat_keys():
    torch.manual_seed(1)
    module = TextToImage(unet=UNET, text_encoder=TEXT, max_len=10)
    torch.manual_seed(1)
    unet = CondUNet(3, 8, (1, 2), 16, 1, 2, 2)  # the order the flat-key constructor built them in
    encoder = CaptionEncoder(len(module.tokenizer), 10, 16, 1, 2)
    assert same(module.model.unet, unet) and same(module.model.encoder, encoder)
    assert module.hparams.text_encoder == TEXT and "text_dim" not in module.hparams


def test_the_encoder_width_is_required_before_it_is_built():
    with pytest.raises(ValueError, match="module.text_encoder.dim: required"):
        TextToImage(unet=UNET, text_encoder={"_target_": TEXT["_target_"], "depth": 1})


def test_a_base_checkpoint_with_the_old_flat_keys_loads(tmp_path):
    torch.manual_seed(2)
    base = TextToImage(unet=UNET, text_encoder=TEXT)
    old_hp = {k: v for k, v in dict(base.hparams).items() if k not in ("unet", "text_encoder")} | FLAT
    path = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": old_hp, "state_dict": base.state_dict()}, path)
    loaded = load_base(str(path))
    assert same(loaded, base) and loaded.hparams.unet == UNET and loaded.hparams.text_encoder == TEXT


def test_a_resumed_checkpoint_with_other_flat_keys_names_the_table():
    module = TextToImage(unet=UNET, text_encoder=TEXT)
    module.on_load_checkpoint({"hyper_parameters": FLAT})  # agrees: loads
    with pytest.raises(ValueError, match=r"module.text_heads=4, which differs from module.text_encoder.heads=2; .*"
                                         r"'Renamed config keys' in README.md"):
        module.on_load_checkpoint({"hyper_parameters": FLAT | {"text_heads": 4}})
