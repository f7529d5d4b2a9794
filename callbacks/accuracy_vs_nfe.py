"""Accuracy against compute of every test-time search method (Prism's headline figure).

After testing, reads ``pl_module.search_rows`` -- (method, NFE per problem, accuracy, 95% CI) for single
sample, self-verified best-of-n, majority vote, oracle best-of-n (dashed: an upper bound) and Prism with its
ablations at each budget -- and writes ``accuracy_vs_nfe.csv`` and ``accuracy_vs_nfe.png`` in the run folder,
prints the table, and logs the figure and table to W&B when a W&B logger is attached. Rank 0 only."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

Row = tuple[str, float, float, float]


def family(method: str) -> str:
    """``bon_sv@16`` -> ``bon_sv``; ``single`` is best-of-1 and joins the best-of-n curve."""
    return "bon_sv" if method == "single" else method.split("@")[0]


def sorted_rows(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (family(r[0]), r[1]))


def write_csv(path: Path, rows: list[Row]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "nfe_per_problem", "accuracy", "ci95"])
        w.writerows([(m, f"{n:.1f}", f"{a:.4f}", f"{c:.4f}") for m, n, a, c in sorted_rows(rows)])


def format_table(rows: list[Row]) -> str:
    lines = [f"{'method':<22}{'NFE':>8}{'acc':>8}{'+-95%':>8}"]
    lines += [f"{m:<22}{n:>8.1f}{a:>8.3f}{c:>8.3f}" for m, n, a, c in sorted_rows(rows)]
    return "\n".join(lines)


def figure(rows: list[Row]):
    """Accuracy (error bars: 95% CI) against NFE per problem on a log axis, one line per method family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    fams: dict[str, list[tuple[float, float, float]]] = {}
    for m, n, a, c in rows:
        fams.setdefault(family(m), []).append((n, a, c))
    for fam, pts in sorted(fams.items()):
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", label=fam,
                    capsize=2, linestyle="--" if fam == "oracle" else "-")
    ax.set_xscale("log")
    ax.set_xlabel("NFE per problem (verification passes included)")
    ax.set_ylabel("accuracy (held-out problems)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


class AccuracyVsNFE(L.Callback):
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = list(getattr(pl_module, "search_rows", []) or [])
        if not rows or not trainer.is_global_zero:
            return
        folder = Path(trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        write_csv(folder / "accuracy_vs_nfe.csv", rows)
        print(format_table(rows), flush=True)
        fig = figure(rows)
        fig.savefig(folder / "accuracy_vs_nfe.png", dpi=120)
        wandb_logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if wandb_logger is not None:
            import wandb

            table = wandb.Table(columns=["method", "nfe_per_problem", "accuracy", "ci95"],
                                data=[list(r) for r in sorted_rows(rows)])
            wandb_logger.experiment.log({"search/accuracy_vs_nfe": wandb.Image(fig), "search/table": table,
                                         "trainer/global_step": trainer.global_step})  # the step of its scalars
        import matplotlib.pyplot as plt

        plt.close(fig)
