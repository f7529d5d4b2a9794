"""Hessian tools against exact answers: torch.func.hessian, dense eigh, the H_crit cubic, Monte Carlo."""

import math

import pytest
import torch

from core.optim.hessian import (
    HessianOperator,
    adam_preconditioner,
    critical_sharpness,
    hutchinson_trace,
    lanczos_top_eigen,
    power_iteration,
    preconditioned_matvec,
)


def _tiny_problem(dtype=torch.float64):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).to(dtype)
    x, y = torch.randn(16, 3, dtype=dtype), torch.randn(16, 2, dtype=dtype)
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]

    def loss_of_flat(flat):
        params, off = {}, 0
        for n, s in zip(names, shapes):
            params[n] = flat[off:off + math.prod(s)].view(s)
            off += math.prod(s)
        return ((torch.func.functional_call(net, params, (x,)) - y) ** 2).mean()

    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    exact = torch.func.hessian(loss_of_flat)(flat)
    op = HessianOperator(lambda: ((net(x) - y) ** 2).mean(), list(net.parameters()))
    return net, op, exact


def _spd(dim, top, seed=0):
    """A symmetric matrix with spectrum: top, 0.8 top, then uniform in (-0.2 top, 0.6 top)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    ev = torch.cat([torch.tensor([top, 0.8 * top], dtype=torch.float64),
                    (torch.rand(dim - 2, generator=g, dtype=torch.float64) * 0.8 - 0.2) * top])
    return (q * ev) @ q.T, ev


def test_hvp_equals_torch_func_hessian_and_leaves_grad_and_mode_alone():
    net, op, exact = _tiny_problem()
    net.train()
    dense = torch.stack([op.matvec(e) for e in torch.eye(op.dim, dtype=torch.float64)], 1)
    torch.testing.assert_close(dense, exact, rtol=1e-10, atol=1e-10)
    assert op.n_products == op.dim
    assert all(p.grad is None for p in net.parameters()) and net.training


def test_lanczos_and_power_iteration_match_dense_eigh():
    _, op, exact = _tiny_problem()
    ev = torch.linalg.eigvalsh(exact).flip(0)
    res = lanczos_top_eigen(op.matvec, op.dim, k=3, rtol=1e-14, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.eigenvalues, ev[:3], rtol=1e-6, atol=1e-9)
    # eigenvectors: H v = lambda v
    for i in range(3):
        v = res.eigenvectors[:, i]
        torch.testing.assert_close(exact @ v, res.eigenvalues[i] * v, rtol=1e-4, atol=1e-6)
    a, _ = _spd(60, 5.0)
    pw = power_iteration(lambda v: a @ v, 60, rtol=1e-9, max_iter=5000, generator=torch.Generator().manual_seed(1))
    assert abs(pw.eigenvalues.item() - 5.0) < 1e-6


def test_lanczos_reaches_rtol_and_warm_start_is_cheaper():
    a, _ = _spd(400, 10.0, seed=2)
    cold = lanczos_top_eigen(lambda v: a @ v, 400, rtol=1e-3, generator=torch.Generator().manual_seed(0))
    assert cold.converged and abs(cold.eigenvalues.item() - 10.0) <= 1e-3 * 10.0
    # after a small perturbation of the matrix (one training step), start from the old eigenvector
    b = a + 1e-3 * _spd(400, 1.0, seed=3)[0]
    exact_b = torch.linalg.eigvalsh(b)[-1].item()
    warm = lanczos_top_eigen(lambda v: b @ v, 400, v0=cold.eigenvectors[:, 0], rtol=1e-3)
    assert abs(warm.eigenvalues.item() - exact_b) <= 1e-3 * exact_b
    assert warm.n_matvec < cold.n_matvec


def test_hutchinson_trace_unbiased_within_its_error():
    a, ev = _spd(50, 3.0)
    est, se = hutchinson_trace(lambda v: a @ v, 50, n_probes=400, generator=torch.Generator().manual_seed(0))
    assert abs(est - ev.sum().item()) < 4 * se


def test_preconditioned_sharpness_is_top_eigenvalue_of_p_inverse_h():
    a, _ = _spd(30, 4.0)
    p = torch.rand(30, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 0.5
    res = lanczos_top_eigen(preconditioned_matvec(lambda v: a @ v, p), 30, rtol=1e-10)
    exact = torch.linalg.eigvals(a / p[:, None]).real.max()
    torch.testing.assert_close(res.eigenvalues[0], exact, rtol=1e-7, atol=1e-9)


def test_adam_preconditioner_formula():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = torch.optim.Adam([w], lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    assert adam_preconditioner(opt, [w]) is None
    (w ** 2).sum().backward()
    opt.step()
    g = torch.tensor([2.0, -4.0, 6.0])
    expected = (0.01 * g**2 / (1 - 0.99)).sqrt() + 1e-8
    torch.testing.assert_close(adam_preconditioner(opt, [w]), expected)


@pytest.mark.parametrize("lr,sigma_sq,n_s,g2", [(0.2, 1e-4, 1, 0.3), (0.05, 1e-2, 4, 1e-3), (1.0, 3.0, 2, 50.0)])
def test_critical_sharpness_solves_its_cubic(lr, sigma_sq, n_s, g2):
    h = critical_sharpness(lr, sigma_sq, n_s, g2)
    assert 0 < h < 2 / lr
    assert h * (1 + h**2 * sigma_sq / (n_s * g2)) == pytest.approx(2 / lr, rel=1e-10)


def test_critical_sharpness_limits():
    assert critical_sharpness(0.1, 0.0, 1, 1.0) == 20.0
    assert critical_sharpness(0.1, 1e-14, 1, 1.0) == pytest.approx(20.0, rel=1e-9)
    assert critical_sharpness(0.1, 1e-3, 10**9, 1.0) == pytest.approx(20.0, rel=1e-6)
    assert critical_sharpness(0.1, 1e-3, 1, 0.0) == 0.0
    assert critical_sharpness(0.1, 1e-3, 1, 0.01) > critical_sharpness(0.1, 1e-2, 1, 0.01)  # more variance
    assert critical_sharpness(0.1, 1e-3, 4, 0.01) > critical_sharpness(0.1, 1e-3, 1, 0.01)  # more samples


def test_critical_sharpness_is_the_one_step_threshold_on_a_quadratic():
    """f = H x^2 / 2, variational GD x' = x - lr mean_s H (x + eps_s): E f(x') <= f(x) iff H <= H_crit.

    |g| = H x enters H_crit, so we fix the ratio and look for the H at which the expected one-step change
    of f crosses zero by Monte Carlo (common random numbers on both sides of H_crit).
    """
    lr, sigma_sq, n_s, x = 0.1, 0.02, 2, 0.1
    # the threshold H* in terms of x: H* (1 + sigma^2 / (N_s x^2)) = 2 / lr
    h_star = 2 / lr / (1 + sigma_sq / (n_s * x**2))
    assert critical_sharpness(lr, sigma_sq, n_s, (h_star * x) ** 2) == pytest.approx(h_star, rel=1e-10)
    eps = torch.randn(200_000, n_s, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps_bar = eps.mean(1) * math.sqrt(sigma_sq)
    for factor, sign in [(0.95, -1), (1.05, 1)]:
        h = factor * h_star
        x_new = x - lr * h * (x + eps_bar)
        change = (h * x_new**2 / 2).mean() - h * x**2 / 2
        se = (h * x_new**2 / 2).std() / math.sqrt(len(x_new))
        assert sign * change > 3 * se
