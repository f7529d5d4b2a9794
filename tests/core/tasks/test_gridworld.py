"""Gridworld: views match the map, poses follow the actions, revisits are where the trajectory says,
revealed-tile masks and the map-statistics guesser."""

import torch

from core.tasks.gridworld import (
    EAST,
    NORTH,
    SOUTH,
    STAY,
    WEST,
    egocentric_view,
    make_trajectory,
    map_statistics_guess,
    random_map,
    revealed_mask,
    tile_ages,
)


def test_view_is_the_window_around_the_pose():
    world = torch.arange(64).reshape(8, 8)
    v = egocentric_view(world, torch.tensor([3, 4]), 3)
    assert v.tolist() == [19, 20, 21, 27, 28, 29, 35, 36, 37]  # centre 3*8+4 = 28


def test_view_outside_the_map_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="outside"):
        egocentric_view(torch.zeros(8, 8, dtype=torch.long), torch.tensor([0, 4]), 3)


def test_trajectory_views_match_the_map_and_return_home():
    gen = torch.Generator().manual_seed(0)
    world = random_map(12, 12, 8, gen)
    tr = make_trajectory(world, 6, 5, gen)
    T1 = len(tr["views"])
    assert T1 == 13 and torch.equal(tr["poses"][0], tr["poses"][-1])
    for t in range(T1):
        r, c = tr["poses"][t].tolist()
        assert torch.equal(tr["views"][t].reshape(5, 5), world[r - 2 : r + 3, c - 2 : c + 3])
    # the way back is the way out reversed: view T - s equals view s
    for s in range(T1):
        assert torch.equal(tr["views"][s], tr["views"][T1 - 1 - s])


def test_revealed_tiles_are_the_leading_edge_and_truly_new_to_the_window():
    for a, rows_cols in ((NORTH, "row0"), (SOUTH, "row4"), (EAST, "col4"), (WEST, "col0")):
        m = revealed_mask(a, 5).reshape(5, 5)
        assert m.sum() == 5
        assert {"row0": m[0], "row4": m[4], "col4": m[:, 4], "col0": m[:, 0]}[rows_cols].all()
    assert revealed_mask(STAY, 5).sum() == 0
    gen = torch.Generator().manual_seed(1)
    world = random_map(14, 14, 8, gen)
    tr = make_trajectory(world, 5, 5, gen)
    for t in range(1, len(tr["views"])):
        # non-revealed tiles of view t were all in view t-1: shifted copies
        assert (tr["ages"][t][~tr["revealed"][t]] == 1).all()


def test_ages_brute_force():
    gen = torch.Generator().manual_seed(2)
    world = random_map(14, 14, 8, gen)
    tr = make_trajectory(world, 7, 5, gen)
    poses, ages = tr["poses"], tr["ages"]
    for t in range(len(poses)):
        for i in range(25):
            cell = poses[t] - 2 + torch.tensor([i // 5, i % 5])
            seen = [s for s in range(t) if ((cell - poses[s]).abs() <= 2).all()]
            assert ages[t, i] == (t - max(seen) if seen else -1)
    # the way back revisits: the final steps' revealed tiles were all seen before
    last = tr["revealed"][-1]
    assert (ages[-1][last] > 0).all()


def test_out_and_back_revisits_beyond_a_short_context():
    gen = torch.Generator().manual_seed(3)
    far = 0
    for _ in range(5):
        tr = make_trajectory(random_map(16, 16, 8, gen), 10, 5, gen)
        far += int((tr["revealed"] & (tr["ages"] > 2)).sum())
    assert far > 50


def test_map_statistics_guesser_is_the_running_mode():
    views = torch.tensor([[[1, 1, 2], [2, 2, 0], [0, 0, 0]]])
    assert map_statistics_guess(views, 3).tolist() == [[0, 1, 2]]
    gen = torch.Generator().manual_seed(4)
    world = random_map(16, 16, 8, gen)
    tr = make_trajectory(world, 10, 5, gen)
    assert tile_ages(tr["poses"], 5, 16, 16).equal(tr["ages"])
