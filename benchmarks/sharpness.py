"""Cost and honesty of one sharpness estimate: Lanczos' residual stopping rule vs the Ritz-change rule.

Three parts, all measured in this one run (Hessian-vector products, HVPs, per estimate):

1. Clustered spectra (dim 200, lambda_max = 1, lambda_2 = 1 - gap for gaps 40%, 5%, 1% and an exactly
   repeated top eigenvalue, bulk uniform in (-0.2, 0.5); the operators of
   tests/core/optim/test_lanczos_clustered.py): over ``--starts`` seeded random starts, the fraction that
   says converged=True with relative error > rtol and the mean HVPs, for stop="ritz_change" (the rule
   before issue 23) and stop="residual" (today's default, core.optim.hessian.lanczos_top_eigen).
2. A warm start at the second eigenvector (the top two swapped): unmixed (before) vs mixed with a
   random direction (warm_mix=1, today), in two dimensions.
3. A real network Hessian: the EoS MLP (784-100-100-10 tanh, MSE, 500 centred MNIST digits, full-batch
   GD, lr 0.4); every ``--every`` steps lambda_max by both rules, cold and warm-started from the
   previous top eigenvector, and power iteration warm-started and stopped by an oracle at the first
   iterate within rtol of a tight reference (generous to power iteration). Costs in HVPs and in
   gradient-evaluation units (HVP wall time / gradient wall time, measured here).

    python benchmarks/sharpness.py [--steps 300] [--every 20] [--rtol 1e-3] [--starts 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.optim.hessian import HessianOperator, lanczos_top_eigen  # noqa: E402
from datamodules.mnist import load_mnist  # noqa: E402

OLD = {"stop": "ritz_change", "warm_mix": 0.0}  # the rule and warm start before issue 23
NEW: dict = {}  # today's defaults: stop="residual", warm_mix=1, safety=0.01


def clustered_operator(dim: int, gap: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Q diag(1, 1 - gap, bulk ~ U(-0.2, 0.5)) Q^T with Q a random orthogonal basis; returns (A, Q)."""
    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    rest = (-0.2 + 0.7 * torch.rand(dim - 2, generator=gen, dtype=torch.float64)).sort(descending=True).values
    spectrum = torch.cat([torch.tensor([1.0, 1.0 - gap], dtype=torch.float64), rest])
    return (basis * spectrum) @ basis.T, basis


def start_study(a: torch.Tensor, rtol: float, starts: int, v0=None, **rule) -> tuple[float, float]:
    """(fraction of starts with converged=True and |theta_1 - 1| > rtol, mean HVPs) over seeds 0..starts-1."""
    wrong, hvps = 0, 0
    for seed in range(starts):
        res = lanczos_top_eigen(lambda v: a @ v, a.shape[0], v0=v0, rtol=rtol,
                                generator=torch.Generator().manual_seed(seed), **rule)
        wrong += res.converged and abs(res.eigenvalues[0].item() - 1.0) > rtol
        hvps += res.n_matvec
    return wrong / starts, hvps / starts


def clustered_part(rtol: float, starts: int) -> None:
    print(f"1. clustered spectra, dim 200, {starts} seeded random starts, rtol={rtol:g}")
    print(f"{'spectrum':>10} | {'wrong & converged':>17} {'HVPs':>6} (ritz_change) | "
          f"{'wrong & converged':>17} {'HVPs':>6} (residual) | HVP ratio")
    for name, gap in [("gap 40%", 0.4), ("gap 5%", 0.05), ("gap 1%", 0.01), ("repeated", 0.0)]:
        a, _ = clustered_operator(200, gap)
        w_old, h_old = start_study(a, rtol, starts, **OLD)
        w_new, h_new = start_study(a, rtol, starts, **NEW)
        print(f"{name:>10} | {w_old:>17.2f} {h_old:>6.2f}               | {w_new:>17.2f} {h_new:>6.2f}"
              f"            | {h_new / h_old:.2f}x")
    print(f"\n2. warm start v0 = v_2 exactly (top two swapped), gap 1%, {starts} seeds")
    for dim in (200, 1000):
        a, basis = clustered_operator(dim, 0.01)
        w_old, h_old = start_study(a, rtol, starts, v0=basis[:, 1], **OLD)
        w_new, h_new = start_study(a, rtol, starts, v0=basis[:, 1], **NEW)
        _, h_cold = start_study(a, rtol, starts, **NEW)
        print(f"  dim {dim:>4}: unmixed ritz_change wrong {w_old:.2f} ({h_old:.1f} HVPs); mixed residual "
              f"wrong {w_new:.2f} ({h_new:.1f} HVPs); cold residual {h_cold:.1f} HVPs")


def power_until(matvec, v0: torch.Tensor, target: float, rtol: float, max_iter: int = 2000) -> int:
    """Products until the Rayleigh quotient is within rtol of target (oracle stopping)."""
    v = v0.double() / v0.double().norm()
    for n in range(1, max_iter + 1):
        w = matvec(v).double()
        if abs(float(v @ w) - target) <= rtol * abs(target):
            return n
        v = w / w.norm()
    return max_iter


def network_part(steps: int, every: int, rtol: float) -> None:
    xtr, ytr, _, _ = load_mnist()
    idx = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))[:500]
    x = (xtr[idx] - xtr[idx].mean(0)) * 0.5
    y = torch.nn.functional.one_hot(ytr[idx], 10).float()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(784, 100), torch.nn.Tanh(), torch.nn.Linear(100, 100),
                              torch.nn.Tanh(), torch.nn.Linear(100, 10))
    params = list(net.parameters())

    def loss_fn():
        return 0.5 * ((net(x) - y) ** 2).sum(1).mean()

    opt = torch.optim.SGD(params, lr=0.4)
    v_prev, rows, t_grad, t_hvp = None, [], [], []
    for step in range(steps + 1):
        if step % every == 0 and step > 0:
            t0 = time.perf_counter()
            torch.autograd.grad(loss_fn(), params)
            t_grad.append(time.perf_counter() - t0)
            op = HessianOperator(loss_fn, params)
            ref = lanczos_top_eigen(op.matvec, op.dim, k=2, rtol=1e-9, safety=1.0, max_iter=150,
                                    generator=torch.Generator().manual_seed(1))
            lam = float(ref.eigenvalues[0])
            t0 = time.perf_counter()
            op.matvec(ref.eigenvectors[:, 0])
            t_hvp.append(time.perf_counter() - t0)
            row = {"step": step, "lambda": lam, "gap": 1 - float(ref.eigenvalues[1]) / lam}
            runs = {"cold_old": dict(OLD), "cold_new": dict(NEW)}
            if v_prev is not None:
                runs.update(warm_old=dict(OLD, v0=v_prev), warm_new=dict(NEW, v0=v_prev))
                row["power"] = power_until(op.matvec, v_prev, lam, rtol)
            for key, rule in runs.items():
                res = lanczos_top_eigen(op.matvec, op.dim, rtol=rtol, generator=torch.Generator().manual_seed(2 + step),
                                        **rule)
                theta, r = float(res.eigenvalues[0]), float(res.residuals[0])
                row[key] = res.n_matvec
                row[f"err_{key}"] = abs(theta - lam) / lam
                row[f"in_{key}"] = theta <= lam * (1 + 1e-6) and lam <= (theta + r) * (1 + 1e-6)
            if v_prev is not None:
                rows.append(row)
            v_prev = ref.eigenvectors[:, 0]
        opt.zero_grad()
        loss_fn().backward()
        opt.step()

    ratio = statistics.median(t_hvp) / statistics.median(t_grad)
    keys = ["cold_old", "cold_new", "warm_old", "warm_new"]
    print(f"\n3. EoS MLP ({sum(p.numel() for p in params)} parameters), lambda_max every {every} steps, "
          f"rtol={rtol:g}; HVPs per estimate (old = ritz_change unmixed, new = residual mixed)")
    print(f"{'step':>5} {'lambda':>8} {'gap':>6} " + " ".join(f"{k:>9}" for k in keys)
          + f" {'power':>6} " + " ".join(f"{'err ' + k:>14}" for k in keys))
    for r in rows:
        print(f"{r['step']:>5} {r['lambda']:>8.4f} {r['gap']:>6.3f} " + " ".join(f"{r[k]:>9}" for k in keys)
              + f" {r['power']:>6} " + " ".join(f"{r['err_' + k]:>14.1e}" for k in keys))
    mean = {k: statistics.mean(r[k] for r in rows) for k in keys + ["power"]}
    print(f"\none HVP = {ratio:.2f} gradient evaluations (median wall times, cached gradient graph)")
    print("mean HVPs per estimate: " + ", ".join(f"{k} {mean[k]:.1f}" for k in keys)
          + f", power warm (oracle stop) {mean['power']:.1f}")
    print(f"ratios new/old: cold {mean['cold_new'] / mean['cold_old']:.2f}x, warm "
          f"{mean['warm_new'] / mean['warm_old']:.2f}x; power / warm new {mean['power'] / mean['warm_new']:.1f}x")
    print("max relative error: " + ", ".join(f"{k} {max(r['err_' + k] for r in rows):.1e}" for k in keys))
    print(f"reference in [theta_1, theta_1 + r_1] (new rule): cold {sum(r['in_cold_new'] for r in rows)}/{len(rows)}, "
          f"warm {sum(r['in_warm_new'] for r in rows)}/{len(rows)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--starts", type=int, default=100)
    args = ap.parse_args()
    clustered_part(args.rtol, args.starts)
    network_part(args.steps, args.every, args.rtol)


if __name__ == "__main__":
    main()
