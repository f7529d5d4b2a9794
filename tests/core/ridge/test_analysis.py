"""The ridge analysis of sampling trajectories: ridge times, final-sample offsets, phase shares."""

import math

import torch

from core.diffusion.processes import OU
from core.diffusion.solvers import euler_maruyama, reverse_sde, time_grid
from core.ridge.analysis import (
    analyse_sampling,
    final_sample_metrics,
    ridge_time_by_eigengap,
    ridge_time_by_spacing,
)
from core.ridge.score_models import EmpiricalScore

THRESHOLDS = {"reach": 0.5, "align": 0.6, "slide": 0.6, "smooth": 3, "persist": 2}


def test_ridge_times_follow_their_rules():
    process = OU(T=10.0)
    pts = torch.tensor([[-3.0, 0.0], [3.0, 0.0]]).repeat(5, 1)
    t, gap = ridge_time_by_eigengap(pts, process, d_star=1, min_gap=1e-3)
    # at the modes the relative gap is a^2 Var / h with Var = 36 g1 g2 (two points 6 apart)
    a, h = math.exp(-t), 1 - math.exp(-2 * t)
    g2 = 1 / (1 + math.exp(18 * a / h))
    err = abs(gap - a * a * 36 * g2 * (1 - g2) / h)
    assert gap >= 1e-3 and err < 1e-9
    t_s = ridge_time_by_spacing(torch.tensor([[0.0, 0.0], [0.5, 0.0], [1.5, 0.0]]), process)
    assert math.isclose(
        math.sqrt(1 - math.exp(-2 * t_s)) / math.exp(-t_s), 0.5, rel_tol=1e-6
    )  # NN distances 0.5, 0.5, 1.0


def test_exact_score_samples_sit_on_the_two_point_ridge_and_slide_late():
    process = OU(T=10.0, t_min=1e-3)
    modes = torch.tensor([[-3.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    times = time_grid(10.0, 1e-3, 200, "geometric").double()
    drift, diffusion = reverse_sde(process, EmpiricalScore(modes, process))
    rec = []

    def recorded(x, t):
        d = drift(x, t)
        rec.append(d)
        return d

    gen = torch.Generator().manual_seed(0)
    x0 = process.prior_sample((200, 2), generator=gen).double()
    res = euler_maruyama(
        x0, times, drift=recorded, diffusion=diffusion, generator=gen, return_trajectory=True
    )
    traj = torch.stack(res.trajectory)
    disp = torch.stack(rec) * (times[1:] - times[:-1])[:, None, None]
    t_r, _ = ridge_time_by_eigengap(modes, process, 1, 1e-3)
    series, phases, summary = analyse_sampling(traj, times, modes, process, 1, t_r, 6.0, THRESHOLDS, 4, disp)
    fin = final_sample_metrics(res.x, modes, process, 1, t_r)
    # the ridge is the x-axis: the SCMS offset is |y| exactly
    torch.testing.assert_close(fin["normal_offset"], res.x[:, 1].abs(), rtol=1e-6, atol=1e-9)
    assert float(fin["normal_offset"].median()) < 0.05 * 6.0
    # the exact score memorises: samples end at the modes, whose pull is isotropic (no slide)
    assert abs(summary["last20_tangent_share"] - 0.5) < 0.15
    assert phases.reach is not None and len(series.times) == 50


def test_shares_of_synthetic_normal_then_tangent_motion():
    """Data-space paths that first drop onto the x-axis (normal motion), then slide along it."""
    process = OU(T=5.0)
    modes = torch.tensor([[-3.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    times = time_grid(5.0, 1e-2, 40, "geometric").double()
    k = torch.arange(41, dtype=torch.float64)
    y = torch.where(k < 20, 2.0 * (1 - k / 20), torch.zeros_like(k))
    xcoord = torch.where(k < 20, torch.full_like(k, 0.5), 0.5 + (k - 20) / 20 * 2.0)
    start = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)  # three paths, mirrored / scaled
    data_path = torch.stack([xcoord[:, None] * start, y[:, None] * start.abs()], dim=2)  # (41, 3, 2)
    a = torch.exp(-times)
    traj = data_path * a[:, None, None]
    series, phases, summary = analyse_sampling(traj, times, modes, process, 1, 1.0, 6.0, THRESHOLDS, 1)
    torch.testing.assert_close(series.normal_share[:19], torch.ones(19, dtype=torch.float64))
    torch.testing.assert_close(series.tangent_share[21:], torch.ones(19, dtype=torch.float64))
    assert phases.align == 0 and phases.align_end is not None and phases.slide is not None
    assert phases.align_end <= phases.slide and summary["last20_tangent_share"] == 1.0
