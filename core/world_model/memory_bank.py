"""Pose-keyed memory of past views with overlap retrieval (WorldMem-style; docs/methods/world_model_memory.md).

Each entry is (time, pose (2,), view tokens (v*v,)). To predict the view at time ``now`` and pose
``target``, :meth:`MemoryBank.retrieve` returns up to ``k`` entries whose windows overlap the target
window, ranked by overlap area (v - |d_row|)(v - |d_col|) and then by recency, among entries with
time < ``now - skip_recent`` (the most recent ones are already in the model's context window).
Nothing at or after ``now`` is ever returned, so the view being predicted cannot leak.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MemoryEntry:
    time: int
    pose: torch.Tensor  # (2,) long
    view: torch.Tensor  # (v*v,) long


def overlap_area(pose_a: torch.Tensor, pose_b: torch.Tensor, view: int) -> torch.Tensor:
    """Tiles shared by the v x v windows at poses (..., 2) a and b: (v-|dr|)_+ (v-|dc|)_+."""
    d = (pose_a - pose_b).abs()
    return ((view - d[..., 0]).clamp_min(0) * (view - d[..., 1]).clamp_min(0)).long()


class MemoryBank:
    """Past views keyed by pose and time."""

    def __init__(self, view: int) -> None:
        self.view = view
        self.entries: list[MemoryEntry] = []

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, time: int, pose: torch.Tensor, view_tokens: torch.Tensor) -> None:
        if self.entries and time <= self.entries[-1].time:
            raise ValueError(f"memory entries must be added in time order; got {time} after {self.entries[-1].time}")
        if view_tokens.numel() != self.view * self.view:
            raise ValueError(f"view has {view_tokens.numel()} tokens, expected {self.view ** 2}")
        self.entries.append(MemoryEntry(int(time), pose.clone(), view_tokens.clone()))

    def retrieve(self, target: torch.Tensor, now: int, k: int, skip_recent: int = 0) -> list[MemoryEntry]:
        """Up to ``k`` entries with time < now - skip_recent overlapping the window at ``target`` (2,),
        best overlap first, ties to the most recent."""
        cands = [e for e in self.entries if e.time < now - skip_recent]
        scored = [(int(overlap_area(e.pose, target, self.view)), e.time, e) for e in cands]
        scored = [s for s in scored if s[0] > 0]
        scored.sort(key=lambda s: (-s[0], -s[1]))
        return [s[2] for s in scored[:k]]


def retrieval_indices(poses: torch.Tensor, view: int, k: int, skip_recent: int) -> torch.Tensor:
    """For every step t of a trajectory with poses (T+1, 2): the times of the entries that a bank
    holding steps < t would return for target pose poses[t], as (T+1, k) long, -1 where fewer exist.

    Retrieval depends on poses only (known from the actions), so it is the same whether the bank
    holds true views (teacher forcing) or the model's own generations (rollouts)."""
    T1 = len(poses)
    out = torch.full((T1, k), -1, dtype=torch.long)
    area = overlap_area(poses[:, None], poses[None, :], view)  # (T+1, T+1): target x source
    times = torch.arange(T1)
    for t in range(T1):
        ok = (times < t - skip_recent) & (area[t] > 0)
        idx = ok.nonzero().flatten()
        if len(idx) == 0:
            continue
        # best overlap first, then most recent: sort by area * T1 + time, descending
        key = area[t, idx] * T1 + idx
        best = idx[key.argsort(descending=True)[:k]]
        out[t, : len(best)] = best
    return out
