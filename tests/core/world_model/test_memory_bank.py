"""Pose-keyed memory: retrieval of an identical pose, overlap ranking, no future or current entries."""

import pytest
import torch

from core.world_model.memory_bank import MemoryBank, overlap_area, retrieval_indices


def test_overlap_area():
    a = torch.tensor([5, 5])
    assert overlap_area(a, a, 5) == 25
    assert overlap_area(a, torch.tensor([6, 7]), 5) == 4 * 3
    assert overlap_area(a, torch.tensor([10, 5]), 5) == 0


def test_identical_pose_returns_the_stored_entry():
    bank = MemoryBank(view=3)
    views = [torch.full((9,), i) for i in range(4)]
    poses = [torch.tensor(p) for p in ([4, 4], [4, 5], [5, 5], [9, 9])]
    for t, (p, v) in enumerate(zip(poses, views)):
        bank.add(t, p, v)
    got = bank.retrieve(torch.tensor([4, 5]), now=10, k=1)
    assert len(got) == 1 and got[0].time == 1 and torch.equal(got[0].view, views[1])
    got = bank.retrieve(torch.tensor([4, 5]), now=10, k=5)
    assert [e.time for e in got] == [1, 2, 0]  # overlap 9, then 6 (more recent first), non-overlapping left out


def test_never_returns_the_view_being_predicted_or_later():
    bank = MemoryBank(view=3)
    for t in range(6):
        bank.add(t, torch.tensor([4, 4]), torch.full((9,), t))
    got = bank.retrieve(torch.tensor([4, 4]), now=3, k=10)
    assert all(e.time < 3 for e in got) and len(got) == 3
    got = bank.retrieve(torch.tensor([4, 4]), now=3, k=10, skip_recent=2)
    assert [e.time for e in got] == [0]
    with pytest.raises(ValueError, match="time order"):
        bank.add(2, torch.tensor([0, 0]), torch.zeros(9, dtype=torch.long))


def test_precomputed_indices_agree_with_the_bank_and_exclude_the_target():
    gen = torch.Generator().manual_seed(0)
    poses = torch.randint(3, 8, (15, 2), generator=gen)
    idx = retrieval_indices(poses, 5, k=3, skip_recent=2)
    for t in range(len(poses)):
        bank = MemoryBank(5)
        for s in range(t):  # the bank holds only steps before t
            bank.add(s, poses[s], torch.zeros(25, dtype=torch.long))
        want = [e.time for e in bank.retrieve(poses[t], now=t, k=3, skip_recent=2)]
        got = [int(i) for i in idx[t] if i >= 0]
        assert got == want
        assert all(i < t - 2 for i in got)
