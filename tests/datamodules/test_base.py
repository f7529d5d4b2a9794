"""The batched fetch path of IndexedTensorDataset gives exactly the batches of the per-row path."""

import torch
from torch.utils.data import DataLoader, default_collate

from datamodules.base import IndexedTensorDataset, RowBatch, collate_rows


def _dataset():
    return IndexedTensorDataset(torch.randn(11, 2, 3), y=torch.arange(11) * 3, w=torch.rand(11).double())


def test_batched_fetch_equals_row_by_row():
    ds = _dataset()
    rows = [ds[i] for i in (4, 0, 9)]
    fast = collate_rows(ds.__getitems__([4, 0, 9]))
    slow = default_collate(rows)
    assert fast.keys() == slow.keys()
    for k in slow:
        assert fast[k].dtype == slow[k].dtype and torch.equal(fast[k], slow[k])


def test_foreign_loaders_with_the_default_collate_still_work():
    ds = _dataset()
    for a, b in zip(DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=4, collate_fn=collate_rows)):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_row_batch_reads_as_rows():
    batch = _dataset().__getitems__([2, 5])
    assert isinstance(batch, RowBatch) and len(batch) == 2
    assert int(batch[1]["index"]) == 5 and int(batch[-1]["y"]) == 15
    assert [int(r["index"]) for r in batch[0:2]] == [2, 5]
