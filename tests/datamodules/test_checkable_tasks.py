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


def test_test_chunks_are_split_across_ranks_without_overlap():
    from types import SimpleNamespace

    dm = CheckableTaskDataModule({"name": "arith", "op": "mul", "a_digits": 2, "b_digits": 1}, n_train=64,
                                 n_test=50, eval_batch_size=12)
    dm.setup()
    seen = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        seen.append([b["index"].tolist() for b in dm.test_dataloader()])
    assert [len(c) for c in seen[0]] == [12, 12, 2] and [len(c) for c in seen[1]] == [12, 12]
    flat = sorted(i for part in seen for chunk in part for i in chunk)
    assert flat == list(range(50))  # chunks 0, 2, 4 on rank 0 and 1, 3 on rank 1: a partition
    assert seen[1][0][0] == 12
