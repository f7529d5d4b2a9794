"""IVON against the reference package ivon-opt, step by step, and its variational-GD limit."""

import copy
import math

import pytest
import torch

from core.optim.ivon import IVON


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


def _data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 5, generator=g), torch.randn(32, 3, generator=g)


def _loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


def _groups(model, wd_second):
    first, second = list(model[0].parameters()), list(model[2].parameters())
    return [{"params": first}, {"params": second, "weight_decay": wd_second}]


@pytest.mark.parametrize("hp", [
    dict(beta1=0.9, beta2=0.99, mc_samples=2, weight_decay=1e-3, hess_init=0.5, clip_radius=1e-2),
    dict(beta1=0.0, beta2=1.0, mc_samples=3, weight_decay=0.0, hess_init=2.0),
])
def test_matches_reference_step_by_step(hp):
    ivon_ref = pytest.importorskip("ivon")
    x, y = _data()
    m_ref, m_our = _model(), _model()
    kw = dict(lr=0.05, ess=50.0, **hp)
    ref = ivon_ref.IVON(_groups(m_ref, 2e-3), **kw)
    ours = IVON(_groups(m_our, 2e-3), **kw)
    for step in range(6):
        torch.manual_seed(100 + step)
        for _ in range(hp["mc_samples"]):
            with ref.sampled_params(train=True):
                ref.zero_grad()
                _loss(m_ref, x, y).backward()
        ref.step()

        def closure():
            ours.zero_grad()
            loss = _loss(m_our, x, y)
            loss.backward()
            return loss

        torch.manual_seed(100 + step)
        ours.step(closure)
        for pr, po in zip(m_ref.parameters(), m_our.parameters()):
            torch.testing.assert_close(po, pr, rtol=1e-5, atol=1e-6)
        h_ref = torch.cat([g["hess"] for g in ref.param_groups])
        h_our = torch.cat([ours.state[p]["hess"].flatten() for p in m_our.parameters()])
        torch.testing.assert_close(h_our, h_ref, rtol=1e-5, atol=1e-7)
    if hp["beta2"] == 1.0:  # frozen Hessian: h stays at h0
        assert torch.all(h_our == hp["hess_init"])
    else:
        assert not torch.allclose(h_our, torch.full_like(h_our, hp["hess_init"]))


def test_variational_gd_is_gd_on_sample_averaged_gradient():
    """b1 = 0, b2 = 1, delta = 0: m' = m - lr mean_s grad L(m + eps_s), eps_s ~ N(0, 1/(ess h0))."""
    x, y = _data()
    model = _model()
    lr, ess, h0, s = 0.1, 20.0, 4.0, 3
    opt = IVON(model.parameters(), lr=lr, ess=ess, hess_init=h0, beta1=0.0, beta2=1.0,
               weight_decay=0.0, mc_samples=s, seed=7)
    m0 = [p.detach().clone() for p in model.parameters()]
    sigma = 1.0 / math.sqrt(ess * h0)
    # the noise the optimizer will draw: keyed generator, one flat draw per sample
    from core.optim.ivon import keyed_seed
    n = sum(p.numel() for p in model.parameters())
    grads = [torch.zeros_like(p) for p in m0]
    for i in range(s):
        z = torch.randn(n, generator=torch.Generator().manual_seed(keyed_seed(7, 0, i, 0))) * sigma
        off = 0
        params = []
        for p in m0:
            params.append((p + z[off:off + p.numel()].view_as(p)).requires_grad_())
            off += p.numel()
        out = torch.func.functional_call(model, dict(zip([k for k, _ in model.named_parameters()], params)), (x,))
        gs = torch.autograd.grad(((out - y) ** 2).mean(), params)
        grads = [a + b / s for a, b in zip(grads, gs)]

    def closure():
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        return loss

    opt.step(closure)
    for p, p0, g in zip(model.parameters(), m0, grads):
        torch.testing.assert_close(p, p0 - lr * g, rtol=1e-5, atol=1e-6)


def test_parameters_hold_the_mean_and_noise_has_posterior_variance():
    p = torch.nn.Parameter(torch.zeros(20000))
    opt = IVON([p], lr=0.1, ess=10.0, hess_init=3.0, weight_decay=1e-2, seed=0)
    with opt.sampled_params():
        sample = p.detach().clone()
    assert torch.all(p == 0)
    assert abs(sample.var().item() * 10.0 * (3.0 + 1e-2) - 1.0) < 0.05


def test_accumulated_micro_batches_sum_their_samples():
    """Two micro-batches, each at its own sample (outside step) + closure, equal the explicit sum."""
    x, y = _data()
    model_a, model_b = _model(), _model()
    kw = dict(lr=0.1, ess=30.0, beta1=0.5, beta2=0.9, weight_decay=1e-3, seed=3)
    opt_a, opt_b = IVON(model_a.parameters(), **kw), IVON(model_b.parameters(), **kw)
    halves = [(x[:16], y[:16]), (x[16:], y[16:])]
    # a: Lightning-style: micro-batch 1 inside sampled_params, micro-batch 2 through step(closure)
    opt_a.zero_grad()
    with opt_a.sampled_params(train=True):
        (_loss(model_a, *halves[0]) / 2).backward()
    opt_a.step(lambda: (_loss(model_a, *halves[1]) / 2).backward())
    # b: manual reference loop: each half at its own sample, no zero_grad between, then step()
    opt_b.zero_grad()
    for xb, yb in halves:
        with opt_b.sampled_params(train=True):
            (_loss(model_b, xb, yb) / 2).backward()
    opt_b._update(divisor=1)  # micro-batches are summed, not averaged
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb)


def test_bad_hyperparameters_and_misuse_raise():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="hess_init"):
        IVON([p], lr=0.1, ess=1.0, hess_init=0.0)
    opt = IVON([p], lr=0.1, ess=1.0)
    with pytest.raises(RuntimeError, match="sampled_params"):
        opt.step()
    with pytest.raises(RuntimeError, match="nested"):
        with opt.sampled_params(), opt.sampled_params():
            pass


def test_state_dict_roundtrip_resumes_identically():
    x, y = _data()
    m1 = _model()
    o1 = IVON(m1.parameters(), lr=0.05, ess=40.0, beta2=0.9, seed=1)

    def closure(model, opt):
        def c():
            opt.zero_grad()
            loss = _loss(model, x, y)
            loss.backward()
            return loss
        return c

    o1.step(closure(m1, o1))
    m2 = _model()
    m2.load_state_dict(m1.state_dict())
    o2 = IVON(m2.parameters(), lr=0.05, ess=40.0, beta2=0.9, seed=1)
    o2.load_state_dict(copy.deepcopy(o1.state_dict()))  # as torch.save/load would
    o1.step(closure(m1, o1))
    o2.step(closure(m2, o2))
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b)


def test_zero_grad_through_a_shallow_copy_is_seen():
    """Lightning wraps optimizers by copying __dict__; zero_grad on the copy must reach the original."""
    x, y = _data()
    m1, m2 = _model(), _model()
    o1 = IVON(m1.parameters(), lr=0.1, ess=10.0, beta1=0.0, beta2=1.0, weight_decay=0.0, seed=0)
    o2 = IVON(m2.parameters(), lr=0.1, ess=10.0, beta1=0.0, beta2=1.0, weight_decay=0.0, seed=0)
    wrapper = object.__new__(IVON)  # what LightningOptimizer does: a new object sharing a __dict__ copy
    wrapper.__dict__ = dict(o1.__dict__)
    for _ in range(3):
        def c1():
            wrapper.zero_grad()
            _loss(m1, x, y).backward()

        def c2():
            o2.zero_grad()
            _loss(m2, x, y).backward()

        o1.step(c1)
        o2.step(c2)
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b)
