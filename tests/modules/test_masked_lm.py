"""MaskedDiffusionLM: shapes, errors, the verdict read at the [MASK] slot, and a few training steps."""

import pytest
import torch

from core.arith_task import MASK_ID, VOCAB, YES_ID, ArithTask
from modules.masked_lm import MaskedDiffusionLM, train_masked_lm, verification_loss


def test_shapes_and_errors():
    task = ArithTask("mul", 2, 1)
    m = MaskedDiffusionLM(task.verify_len, 16, 1, 2)
    x = task.prompts(*task.sample_problems(5, "train", torch.Generator().manual_seed(0)))
    assert m(x, torch.rand(5)).shape == (5, task.gen_len, len(VOCAB))
    with pytest.raises(ValueError, match="max_len"):
        m(torch.zeros(1, task.verify_len + 1, dtype=torch.long), torch.zeros(1))
    with pytest.raises(ValueError, match="divisible"):
        MaskedDiffusionLM(8, 10, 1, 3)


def test_verification_loss_is_two_way_cross_entropy_at_the_slot():
    class Fixed(torch.nn.Module):
        def forward(self, x, t):
            out = torch.zeros(*x.shape, len(VOCAB))
            out[:, -1, YES_ID] = 2.0  # p(yes) = sigmoid(2) at the slot
            return out

    q = torch.full((2, 4), MASK_ID)
    loss = verification_loss(Fixed(), q, torch.tensor([YES_ID, YES_ID]))
    assert torch.isclose(loss, -torch.nn.functional.logsigmoid(torch.tensor(2.0)))


@pytest.mark.slow  # the first torch.optim construction imports torch._dynamo (~10 s on this machine)
def test_a_few_training_steps_run_with_the_second_round():
    task = ArithTask("mul", 2, 1)
    model, stats = train_masked_lm(task, steps=4, batch_size=16, d_model=16, n_layers=1, n_heads=2,
                                   own_from=0.5, own_pool=8)
    assert not model.training and "train/own_sample_acc" in stats and stats["train/loss_gen"] > 0
