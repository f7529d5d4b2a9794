"""CheckableTaskDataModule: problem rows of the right shape, test problems never seen in training, errors."""

import pytest
import torch

from datamodules.checkable_tasks import CheckableTaskDataModule


@pytest.mark.parametrize("task", [{"name": "arith", "op": "mul", "a_digits": 2, "b_digits": 1},
                                  {"name": "sudoku", "n_blanks": 6}])
def test_splits_shapes_and_disjointness(task):
    dm = CheckableTaskDataModule(task, n_train=5000, n_val=20, n_test=40, batch_size=16)
    dm.setup()
    train, test = dm.train_set.x, dm.test_set.x
    assert train.shape == (5000, 2) and dm.val_set.x.shape == (20, 2) and test.shape == (40, 2)
    seen = {tuple(r) for r in train.tolist()} | {tuple(r) for r in dm.val_set.x.tolist()}
    assert not seen & {tuple(r) for r in test.tolist()}
    assert len({tuple(r) for r in test.tolist()}) == 40  # held-out problems are distinct
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (16, 2) and batch["index"].shape == (16,)
    again = CheckableTaskDataModule(task, n_train=5000, n_val=20, n_test=40)
    again.setup()
    assert torch.equal(again.test_set.x, test)  # the seed fixes the data


def test_errors_name_the_key():
    with pytest.raises(ValueError, match="data.task.name"):
        CheckableTaskDataModule({"name": "nim"})
    with pytest.raises(ValueError, match="data.n_test"):
        CheckableTaskDataModule({"name": "sudoku"}, n_test=0)
