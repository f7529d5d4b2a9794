"""MaskedDiffusionLM: the network (shapes, errors, position groups), the verdict read at the [MASK] slot
(plain and class-balanced), own samples, per-example draws that do not depend on how a batch is split,
and the Lightning module's two training rounds with the pool of own samples (kept across a resume)."""

import lightning as L
import pytest
import torch

from core.tasks.arith import MASK_ID, NO_ID, VOCAB, YES_ID, ArithTask
from core.search.self_verification import own_samples, verification_loss
from core.tasks.sudoku import SudokuTask
from datamodules.checkable_tasks import CheckableTaskDataModule
from modules.masked_lm import MaskedDiffusionLM
from modules.nets.masked_transformer import MaskedTransformer

ARITH = {"name": "arith", "op": "mul", "a_digits": 2, "b_digits": 1}


def test_shapes_and_errors():
    task = ArithTask("mul", 2, 1)
    m = MaskedTransformer(len(VOCAB), task.verify_len, 16, 1, 2)
    x = task.prompts(task.sample_problems(5, "train", torch.Generator().manual_seed(0)))
    assert m(x, torch.rand(5)).shape == (5, task.gen_len, len(VOCAB))
    with pytest.raises(ValueError, match="max_len"):
        m(torch.zeros(1, task.verify_len + 1, dtype=torch.long), torch.zeros(1))
    with pytest.raises(ValueError, match="divisible"):
        MaskedTransformer(len(VOCAB), 8, 10, 1, 3)
    with pytest.raises(ValueError, match="position_groups"):
        MaskedTransformer(len(VOCAB), 8, 16, 1, 2, position_groups=[[0]] * 4)
    with pytest.raises(ValueError, match="module.task.name"):
        MaskedDiffusionLM({"name": "go"})
    with pytest.raises(ValueError, match="module.own_frac"):
        MaskedDiffusionLM(ARITH, own_frac=1.5)


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
    m = MaskedTransformer(len(task.vocab), task.verify_len, 16, 1, 2, task.position_groups)
    assert m.groups.shape == (task.verify_len, 3)
    x = task.prompts(task.sample_problems(3, "train", torch.Generator().manual_seed(0)))
    assert m(x, torch.rand(3)).shape == (3, 16, len(task.vocab))
    # group-embedding gradients reach exactly the groups that occur (12 Sudoku groups; 12 = "no cell" unused)
    m(x, torch.rand(3)).sum().backward()
    used = m.group_emb.weight.grad.abs().sum(1) > 0
    assert used[:12].all() and not used[12]


def test_model_fn_keeps_a_cpu_interface_and_gradients():
    module = MaskedDiffusionLM(ARITH, d_model=16, n_layers=1, n_heads=2)
    x = torch.full((2, 8), MASK_ID)
    out = module.model_fn(x, torch.ones(2))
    assert out.device.type == "cpu" and out.dtype == torch.float32 and torch.allclose(out, module(x, torch.ones(2)))
    out.sum().backward()
    assert module.net.head.weight.grad is not None


def test_own_samples_come_in_groups_of_one_problem():
    task = ArithTask("mul", 2, 1)
    m = MaskedTransformer(len(VOCAB), task.verify_len, 16, 1, 2).eval()
    q, v = own_samples(m, task, 12, torch.Generator().manual_seed(0), group=4)
    assert q.shape == (12, task.verify_len) and set(v.tolist()) <= {YES_ID, NO_ID}
    prompts = q[:, : task.prompt_len].reshape(3, 4, -1)
    assert (prompts == prompts[:, :1]).all()  # each group of 4 shares its problem


def test_generation_draws_are_keyed_by_example_so_a_split_batch_gives_the_same_loss():
    """What DDP relies on: the generation loss of a global batch = the mean of its halves' losses."""
    module = MaskedDiffusionLM(ARITH, d_model=16, n_layers=1, n_heads=2, verify_frac=0.0)
    p = ArithTask("mul", 2, 1).sample_problems(8, "train", torch.Generator().manual_seed(0))
    index = torch.arange(100, 108)
    g = torch.Generator()
    whole = module._losses(p, index, g.manual_seed(0), round2=False)["loss_gen"]
    halves = [module._losses(p[s], index[s], g.manual_seed(0), round2=False)["loss_gen"]
              for s in (slice(0, 4), slice(4, 8))]
    assert torch.allclose(whole, sum(halves) / 2, atol=1e-6)


def _fit(tmp_path, max_steps, ckpt=None):
    module = MaskedDiffusionLM(ARITH, d_model=16, n_layers=1, n_heads=2, own_from=0.5, own_pool=8, own_refresh=2,
                               own_group=2, verify_steps=2, search={"bon_sizes": [1, 2], "prism_n": [2]})
    data = CheckableTaskDataModule(ARITH, n_train=64, n_val=8, n_test=8, batch_size=16, eval_batch_size=8)
    trainer = L.Trainer(max_steps=max_steps, max_epochs=-1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                        val_check_interval=max_steps, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    return trainer, module, data


@pytest.mark.slow  # two short Lightning fits and a resume (~15 s here)
def test_two_rounds_pool_refresh_and_resume(tmp_path):
    # max_steps 8, verify_steps 2: round 1 = steps 0-5, own samples from step 3, redrawn at 3 and 5, then 7
    trainer, module, data = _fit(tmp_path, 8)
    assert module.round1_steps == 6 and int(module.pool_draws) == 3 and int(module.pool_step) == 7
    assert int(module.pool_size) == 8 and set(module.pool_verdicts.tolist()) <= {YES_ID, NO_ID}
    sched = trainer.lr_scheduler_configs[0].scheduler
    factor = sched.lr_lambdas[0]  # cosine over round 1 (6 steps, 1 warm-up step), then 0.3 x lr in round 2
    assert factor(3) == pytest.approx(0.5) and factor(6) == factor(7) == pytest.approx(0.3)
    assert "val/acc" in trainer.callback_metrics
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    # a resumed run continues with the checkpoint's pool (and redraws it only when due)
    _, resumed, _ = _fit(tmp_path, 8, ckpt=str(tmp_path / "mid.ckpt"))
    assert torch.equal(resumed.pool_queries, module.pool_queries) and int(resumed.pool_draws) == 3
    trainer.test(module, datamodule=data, verbose=False)
    m = trainer.callback_metrics
    assert float(m["test/n_problems"]) == 8 and float(m["test/single/nfe"]) == ArithTask("mul", 2, 1).n_steps
    assert {r[0] for r in module.search_rows} >= {"single", "bon_sv@2", "prism@2", "prism_no_sv@2"}
