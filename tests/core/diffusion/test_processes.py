"""Process marginals against closed forms and against their own SDE coefficients."""

import math

import pytest
import torch

from core.diffusion.processes import OU, VE, VP, LinearPath

PROCESSES = [VP(), OU(T=5.0), VE(sigma_min=0.01, sigma_max=10.0), LinearPath(t_max=0.99)]


def test_vp_closed_form():
    vp = VP(beta_min=0.1, beta_max=20.0)
    t = torch.tensor([0.0, 0.3, 1.0])
    integral = 0.1 * t + 0.5 * (20.0 - 0.1) * t**2
    torch.testing.assert_close(vp.alpha(t), torch.exp(-0.5 * integral))
    torch.testing.assert_close(vp.sigma(t) ** 2, 1 - torch.exp(-integral))


def test_ou_closed_form():
    t = torch.tensor([0.1, 1.0, 3.0])
    torch.testing.assert_close(OU().alpha(t), torch.exp(-t))
    torch.testing.assert_close(OU().sigma(t) ** 2, 1 - torch.exp(-2 * t))
    torch.testing.assert_close(OU().diffusion_sq(t), torch.full_like(t, 2.0))  # dX = -X dt + sqrt(2) dW
    torch.testing.assert_close(OU().drift_coef(t), torch.full_like(t, -1.0))


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
def test_moment_odes_match_kernel(process):
    """For dx = f x dt + g dW: d mean/dt = f mean, d var/dt = 2 f var + g^2. Integrating these ODEs
    from the data (mean 1, var 0) must reproduce the kernel's a_t and sigma_t^2."""
    t_end = 0.9 * process.T
    n = 3000
    ts = torch.linspace(1e-6, t_end, n + 1, dtype=torch.float64)
    mean, var = torch.tensor(1.0, dtype=torch.float64), process.sigma(ts[0]).double() ** 2
    mean = mean * process.alpha(ts[0]).double()
    for i in range(n):
        t, dt = ts[i], ts[i + 1] - ts[i]
        f, g2 = process.drift_coef(t).double(), process.diffusion_sq(t).double()
        # midpoint rule for accuracy
        mean_mid = mean + 0.5 * dt * f * mean
        var_mid = var + 0.5 * dt * (2 * f * var + g2)
        tm = t + 0.5 * dt
        fm, g2m = process.drift_coef(tm).double(), process.diffusion_sq(tm).double()
        mean = mean + dt * fm * mean_mid
        var = var + dt * (2 * fm * var_mid + g2m)
    k = process.kernel(torch.tensor(t_end, dtype=torch.float64))
    assert math.isclose(float(mean), float(k.alpha), rel_tol=2e-3)
    assert math.isclose(float(var), float(k.cov), rel_tol=2e-3, abs_tol=1e-6)


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
def test_kernel_sample_moments(process):
    x0 = torch.full((200_000, 1), 2.0)
    t = torch.tensor(0.5 * process.T)
    xt, eps = process.kernel(t).sample(x0, generator=torch.Generator().manual_seed(0))
    k = process.kernel(t)
    assert abs(float(xt.mean()) - 2.0 * float(k.alpha)) < 0.01 * max(1.0, float(k.sigma))
    assert abs(float(xt.std()) - float(k.sigma)) < 0.01 * max(1.0, float(k.sigma))
    torch.testing.assert_close(xt, k.mean(x0) + k.sigma * eps)


def test_per_example_times_broadcast():
    x0 = torch.ones(3, 2, 4, 4)
    t = torch.tensor([0.1, 0.5, 0.9])
    xt, eps = VP().kernel(t).sample(x0, eps=torch.zeros_like(x0))
    torch.testing.assert_close(xt[:, 0, 0, 0], VP().alpha(t))
