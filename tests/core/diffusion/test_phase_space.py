"""Phase-space kernels against closed forms and long Euler-Maruyama simulation of the same SDE."""

import math

import pytest
import torch

from core.diffusion.phase_space import (
    PhaseSpaceProcess,
    Stiffness,
    make_phase_space_process,
    variational_objective,
)
from core.diffusion.processes import VP


def _set_stiffness(proc: PhaseSpaceProcess, lam, angle: float) -> None:
    with torch.no_grad():
        proc.stiffness.log_lam.copy_(torch.log(torch.tensor(lam)))
        proc.stiffness.skew.zero_()
        proc.stiffness.skew[0, 1] = angle / 2  # expm(S - S^T) = rotation by `angle`
    proc.refresh()


def _simulate(proc: PhaseSpaceProcess, x0: torch.Tensor, t_end: float, steps: int, n: int, seed: int = 0):
    """Euler-Maruyama on du = beta(t) F0 u dt + sqrt(beta(t)) G0 dW in the original basis."""
    d = x0.shape[0]
    F0, G0 = proc.sde_matrices(d)
    g = torch.Generator().manual_seed(seed)
    u = torch.zeros(n, proc.order * d, dtype=torch.float64)
    u[:, :d] = x0
    if proc.order == 2:
        u[:, d:] = math.sqrt(proc.gamma * proc.mass) * torch.randn(n, d, generator=g, dtype=torch.float64)
    dt = t_end / steps
    for i in range(steps):
        b = float(proc.beta(i * dt + 0.5 * dt))
        z = torch.randn(n, proc.order * d, generator=g, dtype=torch.float64)
        u = u + b * u @ F0.T * dt + math.sqrt(b * dt) * z @ G0.T
    return u


def test_vp_kernel_matches_scalar_vp():
    proc = make_phase_space_process("vp", 3, beta_min=0.1, beta_max=20.0)
    ref = VP(0.1, 20.0)
    t = torch.tensor([0.01, 0.3, 0.9])
    k = proc.kernel(t)
    torch.testing.assert_close(k.phi[:, 0, 0, 0].float(), ref.alpha(t))
    torch.testing.assert_close(k.chol[:, 0, 0, 0].float(), ref.sigma(t))


def test_cld_mean_matches_dockhorn_closed_form():
    """CLD (M = 1/4, Gamma = 1, constant beta): expm(B F) = e^{-2B} [[1 + 2B, 4B], [-B, 1 - 2B]]."""
    proc = make_phase_space_process("cld", 2, beta_min=4.0, beta_max=4.0)
    t = torch.tensor([0.05, 0.25, 1.0])
    x0 = torch.tensor([[1.5, -2.0]] * 3, dtype=torch.float64)
    mx, mv = proc.kernel(t).mean(x0)
    B = (4.0 * t).double().unsqueeze(1)
    torch.testing.assert_close(mx, (1 + 2 * B) * torch.exp(-2 * B) * x0)
    torch.testing.assert_close(mv, -B * torch.exp(-2 * B) * x0)
    cov_T = proc.kernel(1.0).cov[0]  # near equilibrium N(0, diag(1, M))
    torch.testing.assert_close(cov_T, torch.diag(torch.tensor([1.0, 0.25], dtype=torch.float64)), atol=3e-3, rtol=0)


@pytest.mark.parametrize("kind", ["forward", "reverse_split", "reverse_ode"])
def test_stationary_covariance_solves_lyapunov(kind):
    for order in (1, 2):
        proc = PhaseSpaceProcess(order, 4.0, 4.0)
        lam = torch.tensor([0.3, 1.0, 7.0], dtype=torch.float64)
        F, Q0 = proc.blocks(lam, kind)
        S = proc.stationary_cov(lam)
        res = F @ S + S @ F.transpose(-1, -2) + Q0
        torch.testing.assert_close(res, torch.zeros_like(res), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name,beta", [("vsmd", (4.0, 4.0)), ("vsdm", (0.1, 10.0)), ("cld", (4.0, 4.0))])
def test_kernel_moments_match_long_euler_maruyama(name, beta):
    proc = make_phase_space_process(name, 2, beta_min=beta[0], beta_max=beta[1])
    if proc.stiffness is not None:
        _set_stiffness(proc, [3.0, 0.4], angle=0.6)  # D non-diagonal: couples the coordinates
    x0 = torch.tensor([2.0, -1.0], dtype=torch.float64)
    t_end = 0.3
    u = _simulate(proc, x0, t_end, steps=200, n=20000)
    k = proc.kernel(t_end)
    mean = k.mean(x0.unsqueeze(0))
    mean = torch.cat(list(mean), 1)[0] if proc.order == 2 else mean[0]
    cov = k.cov[0]
    if cov.shape[0] != u.shape[1]:  # D = I: per-coordinate blocks, expand to the full matrix
        cov = torch.kron(cov, torch.eye(2, dtype=torch.float64))
    emp_cov = torch.cov(u.T)
    se = (emp_cov.diagonal() / u.shape[0]).sqrt()
    assert ((u.mean(0) - mean).abs() < 5 * se + 1e-3).all(), (u.mean(0), mean)
    torch.testing.assert_close(emp_cov, cov, atol=0.03 * cov.diagonal().max().item(), rtol=0.05)


def test_score_from_eps_is_the_exact_conditional_score():
    proc = make_phase_space_process("vsmd", 2, beta_min=4.0, beta_max=4.0)
    _set_stiffness(proc, [2.0, 0.5], angle=1.1)
    k = proc.kernel(torch.tensor([0.2]))
    x0 = torch.tensor([[0.7, -1.3]], dtype=torch.float64)
    (xt, vt), eps = k.sample(x0, torch.Generator().manual_seed(1))
    mx, mv = k.mean(x0)
    r = torch.cat([xt - mx, vt - mv], 1)[0]
    full_score = -torch.linalg.solve(k.cov[0], r)
    torch.testing.assert_close(k.score_from_eps(eps[1].double())[0], full_score[2:])


def test_variational_objective_recovers_true_stiffness():
    """Trajectories drawn exactly from the forward process with D*: minimising the objective from
    D = I must move lam towards lam* (the IPF forward step is a maximum-likelihood fit)."""
    torch.manual_seed(0)
    true = make_phase_space_process("vsdm", 2, beta_min=1.0, beta_max=1.0)
    _set_stiffness(true, [4.0, 0.5], angle=0.0)
    times = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    states = [torch.randn(600, 2, generator=g, dtype=torch.float64) * torch.tensor([3.0, 0.5])]
    for i in range(10):
        dB = true.integrated_beta(times[i + 1]) - true.integrated_beta(times[i])
        Phi, Q = true.transition(dB, true.eig()[0])
        y = states[-1] * Phi[0, :, 0, 0] + Q[0, :, 0, 0].sqrt() * torch.randn(600, 2, generator=g, dtype=torch.float64)
        states.append(y)
    fit = make_phase_space_process("vsdm", 2, beta_min=1.0, beta_max=1.0)
    opt = torch.optim.Adam(fit.stiffness.parameters(), lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        variational_objective(fit, times, states).backward()
        opt.step()
    lam = torch.sort(fit.stiffness.eig()[0]).values
    torch.testing.assert_close(lam, torch.tensor([0.5, 4.0], dtype=torch.float64), rtol=0.15, atol=0)


def test_stiffness_starts_at_identity_and_rejects_bad_input():
    s = Stiffness(3)
    torch.testing.assert_close(s.D(), torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(s.A(), torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown process"):
        make_phase_space_process("ve", 2, beta_min=1.0, beta_max=1.0)
    with pytest.raises(ValueError, match="order"):
        PhaseSpaceProcess(3, 1.0, 1.0)


def test_kernel_select_matches_kernel_at_those_times():
    proc = make_phase_space_process("vsmd", 2, beta_min=4.0, beta_max=4.0)
    _set_stiffness(proc, [2.0, 0.5], angle=0.3)
    grid = torch.linspace(0.001, 1.0, 50)
    idx = torch.tensor([3, 3, 40])
    sub, direct = proc.kernel(grid).select(idx), proc.kernel(grid[idx])
    torch.testing.assert_close(sub.cov, direct.cov)
    x0 = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(sub.mean(x0)[1], direct.mean(x0)[1])
