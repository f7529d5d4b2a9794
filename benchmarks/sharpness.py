"""Cost of one sharpness estimate: warm-started Lanczos vs power iteration at equal accuracy.

Trains the EoS MLP (784-100-100-10 tanh, MSE, 500 centred MNIST digits, full-batch GD, lr 0.4) and every
``--every`` steps estimates lambda_max(H) by
  * Lanczos (core.optim.hessian.lanczos_top_eigen, its own stopping rule at rtol), warm-started from the
    previous top eigenvector, and cold (random start);
  * power iteration warm-started from the same vector, stopped by an oracle at the first iterate within
    rtol of the reference (generous to power iteration);
against a reference from a tight Lanczos solve. Costs are printed in Hessian-vector products and in
gradient-evaluation units (HVP wall time / gradient wall time, measured here).

    python benchmarks/sharpness.py [--steps 300] [--every 20] [--rtol 1e-3]
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


def power_until(matvec, v0: torch.Tensor, target: float, rtol: float, max_iter: int = 2000) -> int:
    """Products until the Rayleigh quotient is within rtol of target (oracle stopping)."""
    v = v0.double() / v0.double().norm()
    for n in range(1, max_iter + 1):
        w = matvec(v).double()
        if abs(float(v @ w) - target) <= rtol * abs(target):
            return n
        v = w / w.norm()
    return max_iter


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--rtol", type=float, default=1e-3)
    args = ap.parse_args()

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
    v_prev = None
    rows = []
    t_grad, t_hvp = [], []
    for step in range(args.steps + 1):
        if step % args.every == 0 and step > 0:
            t0 = time.perf_counter()
            torch.autograd.grad(loss_fn(), params)
            t_grad.append(time.perf_counter() - t0)
            op = HessianOperator(loss_fn, params)
            ref = lanczos_top_eigen(op.matvec, op.dim, rtol=1e-12, max_iter=150,
                                    generator=torch.Generator().manual_seed(1))
            lam = float(ref.eigenvalues[0])
            t0 = time.perf_counter()
            op.matvec(ref.eigenvectors[:, 0])
            t_hvp.append(time.perf_counter() - t0)
            cold = lanczos_top_eigen(op.matvec, op.dim, rtol=args.rtol, generator=torch.Generator().manual_seed(2))
            if v_prev is not None:
                warm = lanczos_top_eigen(op.matvec, op.dim, v0=v_prev, rtol=args.rtol)
                n_power = power_until(op.matvec, v_prev, lam, args.rtol)
                rows.append({"step": step, "lambda": lam, "warm": warm.n_matvec, "cold": cold.n_matvec,
                             "power": n_power, "err_warm": abs(float(warm.eigenvalues[0]) - lam) / lam,
                             "err_cold": abs(float(cold.eigenvalues[0]) - lam) / lam})
            v_prev = ref.eigenvectors[:, 0]
        opt.zero_grad()
        loss_fn().backward()
        opt.step()

    ratio = statistics.median(t_hvp) / statistics.median(t_grad)
    print(f"{'step':>5} {'lambda':>8} {'lanczos warm':>12} {'lanczos cold':>12} {'power warm':>10} "
          f"{'err warm':>9} {'err cold':>9}")
    for r in rows:
        print(f"{r['step']:>5} {r['lambda']:>8.4f} {r['warm']:>12} {r['cold']:>12} {r['power']:>10} "
              f"{r['err_warm']:>9.1e} {r['err_cold']:>9.1e}")
    mean = lambda k: statistics.mean(r[k] for r in rows)  # noqa: E731
    print(f"\none HVP = {ratio:.2f} gradient evaluations (median wall times, cached gradient graph)")
    print(f"mean cost to rtol={args.rtol:g}: "
          f"Lanczos warm {mean('warm'):.1f} HVP = {mean('warm') * ratio:.1f} grad evals; "
          f"Lanczos cold {mean('cold'):.1f} HVP = {mean('cold') * ratio:.1f}; "
          f"power warm (oracle stop) {mean('power'):.1f} HVP = {mean('power') * ratio:.1f}")
    print(f"max relative error: Lanczos warm {max(r['err_warm'] for r in rows):.1e}, "
          f"cold {max(r['err_cold'] for r in rows):.1e}")
    print(f"power / Lanczos-warm cost ratio: {mean('power') / mean('warm'):.1f}x")


if __name__ == "__main__":
    main()
