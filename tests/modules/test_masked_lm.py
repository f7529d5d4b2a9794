"""MaskedDiffusionLM: shapes, errors, the verdict read at the [MASK] slot (plain and class-balanced),
position-group embeddings, the CPU interface around another device, and a few training steps."""

import pytest
import torch

from core.arith_task import MASK_ID, NO_ID, VOCAB, YES_ID, ArithTask
from core.sudoku_task import SudokuTask
from modules.masked_lm import MaskedDiffusionLM, OnDevice, own_samples, train_masked_lm, verification_loss


def test_shapes_and_errors():
    task = ArithTask("mul", 2, 1)
    m = MaskedDiffusionLM(len(VOCAB), task.verify_len, 16, 1, 2)
    x = task.prompts(task.sample_problems(5, "train", torch.Generator().manual_seed(0)))
    assert m(x, torch.rand(5)).shape == (5, task.gen_len, len(VOCAB))
    with pytest.raises(ValueError, match="max_len"):
        m(torch.zeros(1, task.verify_len + 1, dtype=torch.long), torch.zeros(1))
    with pytest.raises(ValueError, match="divisible"):
        MaskedDiffusionLM(len(VOCAB), 8, 10, 1, 3)
    with pytest.raises(ValueError, match="position_groups"):
        MaskedDiffusionLM(len(VOCAB), 8, 16, 1, 2, position_groups=[[0]] * 4)


class Fixed(torch.nn.Module):
    def forward(self, x, t):
        out = torch.zeros(*x.shape, len(VOCAB))
        out[:, -1, YES_ID] = 2.0  # p(yes) = sigmoid(2) at the slot
        return out


def test_verification_loss_is_two_way_cross_entropy_at_the_slot():
    q = torch.full((2, 4), MASK_ID)
    loss = verification_loss(Fixed(), q, torch.tensor([YES_ID, YES_ID]), MASK_ID, YES_ID, NO_ID)
    assert torch.isclose(loss, -torch.nn.functional.logsigmoid(torch.tensor(2.0)))


def test_balanced_verification_loss_weighs_each_class_half():
    q = torch.full((4, 4), MASK_ID)
    v = torch.tensor([YES_ID, NO_ID, NO_ID, NO_ID])  # 1 yes, 3 no
    lp = torch.nn.functional.logsigmoid
    yes, no = -lp(torch.tensor(2.0)), -lp(torch.tensor(-2.0))
    bal = verification_loss(Fixed(), q, v, MASK_ID, YES_ID, NO_ID, balanced=True)
    plain = verification_loss(Fixed(), q, v, MASK_ID, YES_ID, NO_ID)
    assert torch.isclose(bal, (yes + no) / 2) and torch.isclose(plain, (yes + 3 * no) / 4)
    one_class = verification_loss(Fixed(), q, torch.full((4,), NO_ID), MASK_ID, YES_ID, NO_ID, balanced=True)
    assert torch.isclose(one_class, no)


def test_position_groups_make_cells_of_one_group_share_an_embedding():
    task = SudokuTask(8)
    m = MaskedDiffusionLM(len(task.vocab), task.verify_len, 16, 1, 2, task.position_groups)
    assert m.groups.shape == (task.verify_len, 3)
    x = task.prompts(task.sample_problems(3, "train", torch.Generator().manual_seed(0)))
    assert m(x, torch.rand(3)).shape == (3, 16, len(task.vocab))
    # group-embedding gradients reach exactly the groups that occur (12 Sudoku groups; 12 = "no cell" unused)
    m(x, torch.rand(3)).sum().backward()
    used = m.group_emb.weight.grad.abs().sum(1) > 0
    assert used[:12].all() and not used[12]


def test_on_device_wrapper_keeps_a_cpu_interface_and_gradients():
    net = MaskedDiffusionLM(len(VOCAB), 8, 16, 1, 2)
    wrapped = OnDevice(net, "cpu")
    x = torch.full((2, 8), MASK_ID)
    out = wrapped(x, torch.ones(2))
    assert out.device.type == "cpu" and torch.allclose(out, net(x, torch.ones(2)))
    out.sum().backward()
    assert net.head.weight.grad is not None


def test_own_samples_come_in_groups_of_one_problem():
    task = ArithTask("mul", 2, 1)
    m = MaskedDiffusionLM(len(VOCAB), task.verify_len, 16, 1, 2).eval()
    q, v = own_samples(m, task, 12, torch.Generator().manual_seed(0), group=4)
    assert q.shape == (12, task.verify_len) and set(v.tolist()) <= {YES_ID, NO_ID}
    prompts = q[:, : task.prompt_len].reshape(3, 4, -1)
    assert (prompts == prompts[:, :1]).all()  # each group of 4 shares its problem


@pytest.mark.slow  # the first torch.optim construction imports torch._dynamo (~10 s on this machine)
def test_a_few_training_steps_run_with_the_second_round():
    for task, structure in ((ArithTask("mul", 2, 1), False), (SudokuTask(6), True)):
        model, stats = train_masked_lm(task, steps=4, batch_size=16, d_model=16, n_layers=1, n_heads=2,
                                       own_from=0.5, own_pool=8, own_refresh=1, own_group=2, structure=structure)
        assert not model.training and stats["train/own_pool_draws"] == 2 and stats["train/loss_gen"] > 0
    # a verification-only second round: 2 more steps, the pool redrawn at each (own_refresh=1)
    _, stats = train_masked_lm(ArithTask("mul", 2, 1), steps=4, verify_steps=2, batch_size=16, d_model=16,
                               n_layers=1, n_heads=2, own_from=0.5, own_pool=8, own_refresh=1)
    assert stats["train/own_pool_draws"] == 4
