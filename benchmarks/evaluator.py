"""The Shapes-GenEval detector: robustness and throughput, the first (centroid) shape reader next to
the default (net) one.

1. Robustness: ground-truth renders of the 553 evaluation prompts (one satisfying scene per prompt,
   seed (0, i)) under each degradation at its worst setting -- PIL GaussianBlur radius 1, JPEG q75,
   a whole-image shift of (+-2, +-2) px, additive noise of std 0.05 --, clean, and a random mix of
   them (``degrade.random_degradation``: blur sigma ~ U(0, 1), JPEG q75-90, ...). Per reader: shape
   and colour accuracy of the drawn objects, GenEval strict pass, and how many renders the blur
   merges (left out; ``core.tasks.shapes.degrade``). Target (issue "Measurements you can trust"):
   strict pass >= 0.95 on each degradation, 1.000 clean. The prompts are only measured here; the
   reader is trained on renderer scenes (``core/tasks/shapes/shape_net.py``).
2. Throughput of ``evaluate`` on one thread (``torch.set_num_threads(1)``): those renders, blurred
   0.5 px and tiled to ``--n`` images; images/s by wall clock and by process CPU time (on a shared
   machine the wall clock includes other users' load). Target >= 1,000 images/s.

    python benchmarks/evaluator.py --n 2000 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from core.tasks.shapes import evaluate, load_eval_prompts, render_batch, sample_scene
from core.tasks.shapes.degrade import pil_blur
from core.tasks.shapes.robustness import WORST, robustness_row

READERS = ("centroid", "net")


def robustness_table(prompts: list[dict]) -> None:
    scenes = [sample_scene(p, np.random.default_rng([0, i])) for i, p in enumerate(prompts)]
    print(f"robustness on ground-truth renders of the {len(prompts)} evaluation prompts (old = centroid, new = net)")
    print(f"  {'degradation':40s} {'reader':9s} {'shape acc':>9s} {'colour acc':>10s} {'strict':>7s} {'merged':>6s} {'n':>4s}")
    for name, what in WORST.items():
        for reader in READERS:
            r = robustness_row(name, scenes, prompts, reader=reader)
            print(
                f"  {what:40s} {reader:9s} {r['shape_acc']:9.3f} {r['color_acc']:10.3f} "
                f"{r['strict_pass']:7.3f} {r['merged']:6d} {r['n']:4d}"
            )


def throughput(prompts: list[dict], n: int, repeats: int, size: int) -> None:
    scenes = [sample_scene(p, np.random.default_rng([0, i]), size) for i, p in enumerate(prompts)]
    base = pil_blur(render_batch(scenes), 0.5)
    reps = -(-n // len(prompts))
    images = base.repeat(reps, 1, 1, 1)[:n]
    meta = (prompts * reps)[:n]
    print(f"throughput: {n} images of {size}x{size}, {torch.get_num_threads()} thread(s)")
    for reader in READERS:
        evaluate(images[:64], meta[:64], reader=reader)  # warm-up (colour lookup table, weights)
        walls, cpus = [], []
        for _ in range(repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            ev = evaluate(images, meta, reader=reader)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        best_wall, best_cpu = min(walls), min(cpus)
        print(
            f"  {reader:9s} pass rate {float(ev.passed.float().mean()):.3f}; wall best {n / best_wall:,.0f} images/s "
            f"(median {n / sorted(walls)[len(walls) // 2]:,.0f}); cpu {n / best_cpu:,.0f} images/s; "
            f"target >= 1,000 images/s {'met' if n / best_cpu >= 1000 else 'NOT met'} (cpu time)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images per evaluate() call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--skip-robustness", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompts = load_eval_prompts()
    if not args.skip_robustness:
        robustness_table(prompts)
    throughput(prompts, args.n, args.repeats, args.size)


if __name__ == "__main__":
    main()
