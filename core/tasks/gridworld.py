"""A gridworld of coloured tiles seen through an egocentric window (docs/methods/world_model_memory.md).

The suite's analogue of an interactive world (Genie / WorldMem, via Bai et al. 2025, "From masks to
worlds"): a static map ``(H, W)`` of tile colours in [0, C), i.i.d. uniform so that a tile that left
the view cannot be guessed from map statistics (best map-statistics guess: 1 / C); an agent at pose
(row, col) sees the ``v x v`` window centred on it; actions STAY, N, S, E, W move it by one tile.

Trajectories go out along a random walk and come back along the same path reversed, so the second
half revisits places seen long before (more steps ago than a model's context window). For every tile
of every view we record its *age*: steps since the map cell was last inside any earlier view (-1 if
never), and which tiles the move *newly reveals* (the edge row/column entering the window); only
those are scored, the others are shifted copies of the previous view.
"""

from __future__ import annotations

import torch

STAY, NORTH, SOUTH, EAST, WEST = range(5)
ACTION_NAMES = ("stay", "N", "S", "E", "W")
# (d_row, d_col) per action; north = row - 1.
ACTION_DELTAS = torch.tensor([[0, 0], [-1, 0], [1, 0], [0, 1], [0, -1]])
REVERSE = (STAY, SOUTH, NORTH, WEST, EAST)


def random_map(height: int, width: int, colours: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(H, W) long tile colours, i.i.d. uniform on [0, colours): log2(colours) bits per tile."""
    if colours < 2:
        raise ValueError(f"colours={colours}: need at least 2 tile colours")
    return torch.randint(0, colours, (height, width), generator=generator)


def egocentric_view(world: torch.Tensor, pose: torch.Tensor, view: int) -> torch.Tensor:
    """The ``view x view`` window of ``world`` (H, W) centred on ``pose`` (2,) = (row, col), flattened
    row-major to (view * view,). The pose must keep the window inside the map."""
    r = view // 2
    row, col = int(pose[0]), int(pose[1])
    H, W = world.shape
    if not (r <= row < H - r and r <= col < W - r):
        raise ValueError(f"pose ({row}, {col}) puts the {view}x{view} view outside the {H}x{W} map")
    return world[row - r : row + r + 1, col - r : col + r + 1].reshape(-1)


def revealed_mask(action: int, view: int) -> torch.Tensor:
    """(view * view,) bool: tiles that the move ``action`` newly brings into the window (the leading
    edge); none for STAY."""
    m = torch.zeros(view, view, dtype=torch.bool)
    if action == NORTH:
        m[0] = True
    elif action == SOUTH:
        m[-1] = True
    elif action == EAST:
        m[:, -1] = True
    elif action == WEST:
        m[:, 0] = True
    return m.reshape(-1)


def out_and_back_actions(
    steps_out: int, height: int, width: int, view: int, start: torch.Tensor,
    generator: torch.Generator | None = None, p_stay: float = 0.1,
) -> torch.Tensor:
    """Actions (2 * steps_out,) of a random walk out (no immediate reversal, keeping the window inside
    the map, STAY with probability ``p_stay``) followed by the same moves reversed back to ``start``."""
    r = view // 2
    pos = start.clone()
    out, last = [], STAY
    for _ in range(steps_out):
        if float(torch.rand((), generator=generator)) < p_stay:
            out.append(STAY)
            continue
        choices = []
        for a in (NORTH, SOUTH, EAST, WEST):
            nxt = pos + ACTION_DELTAS[a]
            if a != REVERSE[last] and r <= nxt[0] < height - r and r <= nxt[1] < width - r:
                choices.append(a)
        a = choices[int(torch.randint(len(choices), (), generator=generator))]
        pos, last = pos + ACTION_DELTAS[a], a
        out.append(a)
    back = [REVERSE[a] for a in reversed(out)]
    return torch.tensor(out + back, dtype=torch.long)


def rollout_poses(start: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Poses (T + 1, 2): start, then start + cumulative action deltas."""
    steps = ACTION_DELTAS[actions]
    return torch.cat([start[None], start[None] + steps.cumsum(0)])


def tile_ages(poses: torch.Tensor, view: int, height: int, width: int) -> torch.Tensor:
    """(T + 1, view * view) long: for tile i of view t, t - (last step s < t whose view contained the
    same map cell), or -1 when no earlier view did."""
    r = view // 2
    last_seen = torch.full((height, width), -1, dtype=torch.long)
    dr, dc = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    dr, dc = dr.reshape(-1), dc.reshape(-1)
    ages = torch.empty(len(poses), view * view, dtype=torch.long)
    for t, p in enumerate(poses):
        rows, cols = p[0] + dr, p[1] + dc
        seen = last_seen[rows, cols]
        ages[t] = torch.where(seen >= 0, t - seen, torch.full_like(seen, -1))
        last_seen[rows, cols] = t
    return ages


def make_trajectory(
    world: torch.Tensor, steps_out: int, view: int, generator: torch.Generator | None = None, p_stay: float = 0.1
) -> dict[str, torch.Tensor]:
    """One out-and-back trajectory on ``world`` (H, W), T = 2 * steps_out moves, T + 1 views.

    Returns views (T+1, v*v), poses (T+1, 2), actions (T+1,) (actions[t] leads from t-1 to t;
    actions[0] = STAY), revealed (T+1, v*v) bool, ages (T+1, v*v)."""
    H, W = world.shape
    r = view // 2
    start = torch.stack([torch.randint(r, H - r, (), generator=generator),
                         torch.randint(r, W - r, (), generator=generator)])
    acts = out_and_back_actions(steps_out, H, W, view, start, generator, p_stay)
    poses = rollout_poses(start, acts)
    views = torch.stack([egocentric_view(world, p, view) for p in poses])
    actions = torch.cat([torch.tensor([STAY]), acts])
    revealed = torch.stack([revealed_mask(int(a), view) for a in actions])
    revealed[0] = False  # the first view is given, not predicted
    return {"views": views, "poses": poses, "actions": actions, "revealed": revealed,
            "ages": tile_ages(poses, view, H, W)}


def map_statistics_guess(views: torch.Tensor, colours: int) -> torch.Tensor:
    """The map-statistics guesser: for each step t, the most frequent colour among all tiles of views
    0..t-1 (colour 0 for t = 0). views (..., T+1, L) -> guesses (..., T+1); it knows the colour
    histogram of what it saw but not where: on i.i.d. maps its accuracy is ~1 / colours."""
    counts = torch.nn.functional.one_hot(views, colours).sum(-2)  # (..., T+1, C)
    before = counts.cumsum(-2) - counts  # histogram of views < t
    return before.argmax(-1)


def colour_palette(colours: int) -> torch.Tensor:
    """(colours, 3) RGB in [-1, 1] for rendering strips: evenly spaced hues."""
    import colorsys

    rgb = [colorsys.hsv_to_rgb(i / colours, 0.75, 0.95) for i in range(colours)]
    return torch.tensor(rgb, dtype=torch.float32) * 2 - 1


def render_views(views: torch.Tensor, view: int, colours: int, scale: int = 4) -> torch.Tensor:
    """Tokens (N, v*v) -> images (N, 3, v*scale, v*scale) in [-1, 1]; an out-of-range token (the mask)
    renders grey."""
    pal = torch.cat([colour_palette(colours), torch.zeros(1, 3)])
    img = pal[views.clamp(0, colours)].reshape(-1, view, view, 3).permute(0, 3, 1, 2)
    return img.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
