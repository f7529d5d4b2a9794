"""Samplers on a Gaussian target with the exact score: every integrator must recover the data law."""

import pytest
import torch

from core.diffusion.phase_space_solvers import data_part, sample_phase_space, steps_for_nfe
from core.utils.nfe import EvalCounter
from core.diffusion.phase_space import make_phase_space_process

C = torch.tensor([[4.0, 1.2], [1.2, 0.6]], dtype=torch.float64)  # anisotropic, correlated data law


def _process(name):
    beta = (4.0, 4.0) if name in ("cld", "vsmd") else (0.1, 20.0)
    proc = make_phase_space_process(name, 2, beta_min=beta[0], beta_max=beta[1])
    if proc.stiffness is not None:
        with torch.no_grad():
            proc.stiffness.log_lam.copy_(torch.log(torch.tensor([2.5, 0.7])))
            proc.stiffness.skew[0, 1] = 0.4
        proc.refresh()
    return proc


def exact_score(proc):
    """Score of the noised component of the marginal when x0 ~ N(0, C)."""

    def score(u, t):
        k = proc.kernel(t[:1].double())
        lam, U = proc.eig()
        U = torch.eye(2, dtype=torch.float64) if U is None else U
        M = [U @ torch.diag(k.phi[0, :, i, 0].expand(2)) @ U.T for i in range(proc.order)]
        cov = k.cov[0]
        if cov.shape[0] != 2 * proc.order:
            cov = torch.kron(cov, torch.eye(2, dtype=torch.float64))
        cov = cov + torch.cat([torch.cat([Mi @ C @ Mj.T for Mj in M], 1) for Mi in M], 0)
        flat = torch.cat([p.double() for p in ((u,) if proc.order == 1 else u)], 1)
        s = -torch.linalg.solve(cov, flat.T).T
        return s[:, -2:].to(flat.dtype if False else torch.float32)

    return score


@pytest.mark.parametrize(
    "name,method,nfe",
    [("cld", "split", 60), ("vsmd", "split", 60), ("vsmd", "split_ode", 60), ("vsmd", "em", 300),
     ("vp", "em", 300), ("vp", "heun", 60), ("vsdm", "split", 100), ("cld", "heun", 100)],
)
def test_sampler_recovers_gaussian_target(name, method, nfe):
    proc = _process(name)
    counter = EvalCounter()
    g = torch.Generator().manual_seed(0)
    res = sample_phase_space(proc, exact_score(proc), 4000, 2, steps_for_nfe(method, nfe), method, generator=g, counter=counter)
    x = data_part(res.x).double()
    assert counter.calls == nfe == res.nfe
    torch.testing.assert_close(torch.cov(x.T), C, atol=0.15, rtol=0.06)
    assert x.mean(0).abs().max() < 0.1


def test_splitting_beats_euler_maruyama_at_low_nfe():
    """The exact linear flow makes the splitting integrator accurate where EM is not (NFE = 8)."""
    proc = _process("vsmd")
    err = {}
    for method in ("split", "em"):
        g = torch.Generator().manual_seed(1)
        x = data_part(sample_phase_space(proc, exact_score(proc), 4000, 2, steps_for_nfe(method, 8), method, generator=g).x).double()
        err[method] = (torch.cov(x.T) - C).norm().item()
    assert err["split"] < 0.5 * err["em"], err


def test_trajectory_is_returned_in_the_original_basis_and_bad_input_fails():
    proc = _process("vsmd")
    res = sample_phase_space(proc, exact_score(proc), 5, 2, 4, "split_ode", return_trajectory=True)
    assert len(res.trajectory) == 5
    torch.testing.assert_close(res.trajectory[-1][0], res.x[0])
    assert steps_for_nfe("heun", 8) == 4
    with pytest.raises(ValueError, match="even"):
        steps_for_nfe("heun", 7)
    with pytest.raises(ValueError, match="tuple"):
        from core.diffusion.phase_space_solvers import splitting_sampler

        splitting_sampler(torch.zeros(3, 2), torch.linspace(1, 0.1, 3), process=proc, score=exact_score(proc))
