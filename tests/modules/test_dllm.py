"""The dLLM adapter on a tiny randomly initialised BERT masked LM saved to a temporary folder (nothing is
downloaded): logits pass through (LLaDA) or shift by one (Dream), decoding and Prism run on it with exact
NFE, and a missing path fails early."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from core.diffusion.masked import confidence_decode  # noqa: E402
from core.utils.nfe import EvalCounter  # noqa: E402
from core.search.prism import PrismConfig, SelfVerifier, expected_prism_nfe, prism  # noqa: E402
from modules.dllm import HFMaskedLM, TextSearchTask  # noqa: E402

MASK, YES, NO = 4, 5, 6


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("tiny_bert")
    transformers.BertForMaskedLM(cfg).save_pretrained(path)
    return str(path)


def test_logits_pass_through_or_shift_by_one(tiny_path):
    plain = HFMaskedLM.from_path(tiny_path, kind="masked_lm")
    x = torch.randint(7, 40, (2, 10))
    raw = plain.model(input_ids=x).logits
    assert torch.allclose(plain(x, torch.zeros(2)), raw)
    dream = HFMaskedLM(plain.model, shift=True)
    out = dream(x)
    assert torch.allclose(out[:, 1:], raw[:, :-1]) and torch.allclose(out[:, 0], raw[:, 0])


def test_decoding_and_prism_on_the_tiny_model_count_exactly(tiny_path):
    lm = HFMaskedLM.from_path(tiny_path, kind="masked_lm")
    task = TextSearchTask(MASK, YES, NO, question_ids=[20, 21, 22], gen_length=6)
    prompts = task.prompts([[10, 11, 12], [13, 14]], pad_id=0)
    assert prompts.shape == (2, 9) and (prompts[:, 3:] == MASK).all() and prompts[1, 0] == 0
    c = EvalCounter()
    out = confidence_decode(lm, prompts, 6, MASK, temperature=0.7, generator=torch.Generator().manual_seed(0),
                            counter=c).x
    assert not (out == MASK).any() and c.calls == 6 and torch.equal(out[:, :3], prompts[:, :3])
    verifier = SelfVerifier(lm, task.verify_inputs, MASK, YES, NO)
    cfg = PrismConfig(n_initial=4, min_width=2, window=(0.1, 0.6), shrink=2.0)
    cnt = EvalCounter()
    ans, info = prism(lm, prompts, 6, MASK, task.answer_key, cfg, verifier,
                      generator=torch.Generator().manual_seed(0), counter=cnt)
    assert ans.shape == prompts.shape and not (ans == MASK).any()
    assert cnt.items / 2 == expected_prism_nfe(cfg, 6)
    keys = task.answer_key(torch.cat([out, out]))
    assert keys[0] == keys[2] and keys.dtype == torch.long


def test_errors():
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        HFMaskedLM.from_path("/no/such/model")
    with pytest.raises(ValueError, match="kind"):
        HFMaskedLM.from_path("/tmp", kind="gpt")
    with pytest.raises(ValueError, match="pad_id"):
        TextSearchTask(MASK, YES, NO, [20]).prompts([[1, 2], [3]])
