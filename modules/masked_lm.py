"""``MaskedDiffusionLM``: a masked diffusion LM (MDLM-style) trained on an exactly checkable task to answer
and to verify its own answers, evaluated by test-time search (Prism, Bai et al., arXiv 2602.01842).

Training (``training_step``), per global batch of training problems:
* the MDLM generation loss on the answer slots (core.search.self_verification.generation_loss); per-example times
  and masks are keyed by (seed, step, example index), so 1 and N processes draw the same ones;
* ``verify_weight`` x the verification loss on ``verify_frac`` x batch labelled candidates: near-miss
  corruptions of the right answer and, from ``own_from`` x (round-1 steps) on, the model's *own*
  completions (a pool of ``own_pool`` redrawn every ``own_refresh`` steps, kept in the checkpoint);
* the last ``verify_steps`` steps of ``trainer.max_steps`` are the second round: whole batches of
  verification examples at ``verify_lr`` x lr, with the generation loss unless ``round2_gen`` is False.
Testing (``test_step``): every search method of core.search.evaluate on the held-out problems, NFE counted
with verification passes; ``on_test_epoch_end`` logs accuracies, NFE, CIs and self-verification AUROCs and
leaves the accuracy-vs-NFE rows in ``search_rows`` (callbacks.accuracy_vs_nfe plots them).
Search and tasks run on CPU tensors; ``model_fn`` moves tokens to the net's device and logits back. Under DDP
each rank evaluates its chunks of the test problems and the results are gathered before the metrics.
"""

from __future__ import annotations

import math
import time

import torch

from core.tasks.checkable import make_task
from core.diffusion.masked import MaskedDiffusion, confidence_decode
from core.eval.auroc import auroc
from core.search.prism import SelfVerifier
from core.search.evaluate import BatchResult, SearchConfig, evaluate_problems, summarize
from core.search.self_verification import generation_loss, own_samples, verification_loss
from modules.base import GenLabModule, lr_factor, per_step
from modules.nets.masked_transformer import MaskedTransformer


class MaskedDiffusionLM(GenLabModule):
    def __init__(
        self,
        task: dict,
        d_model: int = 96,
        n_layers: int = 3,
        n_heads: int = 4,
        structure: bool = False,
        lr: float = 2e-3,
        weight_decay: float = 0.01,
        verify_weight: float = 1.0,
        verify_frac: float = 0.5,
        balanced: bool = True,
        own_from: float = 0.5,
        own_pool: int = 1024,
        own_refresh: int = 300,
        own_frac: float = 0.5,
        own_group: int = 1,
        verify_steps: int = 0,
        verify_lr: float = 0.3,
        round2_gen: bool = True,
        search: dict | None = None,
    ) -> None:
        """``task``: a core.tasks.checkable spec; ``structure``: the task's position groups (Sudoku's rows,
        columns, boxes) feed group embeddings; ``search``: core.search.evaluate.SearchConfig fields (its
        ``temperature`` is also the temperature of the model's own training samples)."""
        super().__init__()
        self.save_hyperparameters()
        for key, v in (("verify_frac", verify_frac), ("own_frac", own_frac), ("own_from", own_from)):
            if not 0 <= v <= 1:
                raise ValueError(f"module.{key} must be in [0, 1], got {v}")
        if verify_steps < 0 or own_pool < 0 or own_refresh < 0 or own_group < 1:
            raise ValueError("module.verify_steps, own_pool, own_refresh must be >= 0 and own_group >= 1")
        self.task = make_task(task, "module.task")
        self.search = SearchConfig.from_dict(dict(search or {}), "module.search")
        groups = getattr(self.task, "position_groups", None) if structure else None
        self.net = MaskedTransformer(len(self.task.vocab), self.task.verify_len, d_model, n_layers, n_heads, groups)
        self.proc = MaskedDiffusion(self.task.mask_id, "linear")
        # the pool of own samples is state: a resumed run continues with the same pool
        self.register_buffer("pool_queries", torch.zeros(own_pool, self.task.verify_len, dtype=torch.long))
        self.register_buffer("pool_verdicts", torch.zeros(own_pool, dtype=torch.long))
        self.register_buffer("pool_size", torch.tensor(0))
        self.register_buffer("pool_step", torch.tensor(-1))
        self.register_buffer("pool_draws", torch.tensor(0))
        self.search_rows: list[tuple[str, float, float, float]] = []
        self._test_results: list[tuple[int, BatchResult]] = []  # (first problem index, results)
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, tokens: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        return self.net(tokens, ratio)

    def model_fn(self, tokens: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """The CPU interface of core/ (tasks, decoders, search): tokens (B, L) and mask ratios (B,) go to
        the net's device, float32 logits (B, L, V) come back to the CPU (gradients flow through)."""
        ratio = torch.as_tensor(ratio, dtype=torch.float32)
        return self.net(tokens.to(self.device), ratio.to(self.device)).float().cpu()

    # ------------------------------------------------------------------ training
    @property
    def round1_steps(self) -> int:
        """Steps of the first round (generation + verification): max_steps - verify_steps."""
        return int(self.trainer.max_steps) - self.hparams.verify_steps

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        step = int(self.global_step)
        p, index = batch["x"].cpu(), batch["index"].cpu()
        g = torch.Generator().manual_seed(self.noise_seed * 1_000_003 + step * 7919 + int(index[0]))
        self._refresh_pool(step)
        losses = self._losses(p, index, g, round2=step >= self.round1_steps)
        for name, v in losses.items():
            self.log(f"train/{name}", v, prog_bar=name == "loss", batch_size=len(p))
        return losses["loss"]

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """The round-1 training loss with all randomness from ``generator`` (Hessian probes)."""
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        return self._losses(batch["x"].cpu(), batch["index"].cpu(), g, round2=False, keyed=False)["loss"]

    def _losses(self, p: torch.Tensor, index: torch.Tensor, g: torch.Generator, round2: bool,
                keyed: bool = True) -> dict[str, torch.Tensor]:
        hp, task, B = self.hparams, self.task, len(p)
        out = {}
        loss = torch.zeros(())
        if not round2 or hp.round2_gen:
            gen = None if keyed else g  # keyed: per-example draws by (seed, step, index), the same on any world size
            t = self.example_uniform(index, (1,), stream=0, generator=gen).cpu()[:, 0]
            u = self.example_uniform(index, (task.gen_len,), stream=1, generator=gen).cpu()
            out["loss_gen"] = generation_loss(self.model_fn, task, self.proc, p, t.clamp_min(1e-3), u)
            loss = loss + out["loss_gen"]
        nv = B if round2 else min(B, max(2, int(B * hp.verify_frac)))
        q, v = task.verification_examples(p[:nv], g)
        size = int(self.pool_size)
        n_own = min(nv, int(round(nv * hp.own_frac))) if size > 0 else 0
        if n_own > 0:
            pick = torch.randint(size, (n_own,), generator=g)
            q = torch.cat([q[: nv - n_own], self.pool_queries[:size].cpu()[pick]])
            v = torch.cat([v[: nv - n_own], self.pool_verdicts[:size].cpu()[pick]])
        out["loss_verify"] = verification_loss(self.model_fn, q, v, task.mask_id, task.yes_id, task.no_id,
                                               hp.balanced)
        out["loss"] = loss + hp.verify_weight * out["loss_verify"]
        return out

    def _refresh_pool(self, step: int) -> None:
        """Redraw the pool of own samples when due (the second round of verification training: the model's
        own mistakes as negatives). The draw is seeded by (seed, step): every rank holds the same pool."""
        hp = self.hparams
        if hp.own_pool == 0 or hp.own_frac == 0 or step < hp.own_from * self.round1_steps:
            return
        last = int(self.pool_step)
        if last >= 0 and (hp.own_refresh == 0 or step - last < hp.own_refresh):
            return
        g = torch.Generator().manual_seed(self.noise_seed * 1_000_003 + step * 7919 + 104729)
        self.net.eval()
        q, v = own_samples(self.model_fn, self.task, hp.own_pool, g, self.search.temperature, hp.own_group)
        self.net.train()
        n = len(q)
        self.pool_queries[:n], self.pool_verdicts[:n] = q.to(self.device), v.to(self.device)
        self.pool_size.fill_(n)
        self.pool_step.fill_(step)
        self.pool_draws += 1
        self.log("train/own_sample_acc", (v == self.task.yes_id).float().mean(), batch_size=n)

    # ------------------------------------------------------------------ validation: one sample per problem
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        p, task = batch["x"].cpu(), self.task
        g = torch.Generator().manual_seed(self.noise_seed * 1_000_003 + int(batch["index"][0]))
        x = confidence_decode(self.model_fn, task.prompts(p), task.n_steps, task.mask_id,
                              temperature=self.search.temperature, generator=g).x
        verifier = SelfVerifier(self.model_fn, task.verify_inputs, task.mask_id, task.yes_id, task.no_id)
        self._val.append((verifier(x), task.check(x, p)))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        s, r = (torch.cat(z) for z in zip(*self._val))
        self._val = []
        self.log("val/acc", r.float().mean())
        au = auroc(s, r)
        if au == au:  # both right and wrong samples
            self.log("val/sv_auroc", au)

    # ------------------------------------------------------------------ test: accuracy vs NFE of every method
    def on_test_epoch_start(self) -> None:
        self._test_results, self._test_t0 = [], time.time()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        p, first = batch["x"].cpu(), int(batch["index"][0])
        g = torch.Generator().manual_seed(self.noise_seed * 1_000_003 + 15485863 + first)
        by_step = max(0, min(self.search.by_step_problems - first, len(p)))
        self._test_results.append((first, evaluate_problems(self.model_fn, self.task, p, self.search, g, by_step)))

    def on_test_epoch_end(self) -> None:
        results = self._test_results
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            parts = [None] * self.trainer.world_size  # every rank evaluated its own chunks (CPU tensors)
            torch.distributed.all_gather_object(parts, results)
            results = [r for part in parts for r in part]
        if not results:
            return
        metrics, self.search_rows = summarize([r for _, r in sorted(results, key=lambda fr: fr[0])],
                                              self.task.n_steps)
        metrics["test/eval_seconds"] = time.time() - self._test_t0
        metrics["test/own_pool_draws"] = float(self.pool_draws)
        metrics["test/params"] = float(sum(q.numel() for q in self.net.parameters()))
        self.log_dict(metrics)
        self._test_results = []

    # ------------------------------------------------------------------ optimizer
    def configure_optimizers(self):
        hp = self.hparams
        r1 = self.round1_steps
        if r1 < 1:
            raise ValueError(f"module.verify_steps ({hp.verify_steps}) must be below trainer.max_steps "
                             f"({self.trainer.max_steps}): the first round needs steps")
        opt = torch.optim.AdamW(self.net.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        warm = max(1, r1 // 20)

        def factor(s: int) -> float:  # the warm-up ramps a cosine over round 1, then a constant verify_lr x lr
            return hp.verify_lr if s >= r1 else lr_factor(s, warm) * 0.5 * (1 + math.cos(math.pi * s / r1))

        return per_step(opt, factor)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, temperature: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Complete task prompts (B, L) by confidence decoding in the task's ``n_steps`` steps."""
        t = self.search.temperature if temperature is None else temperature
        return confidence_decode(self.model_fn, prompts.cpu(), self.task.n_steps, self.task.mask_id,
                                 temperature=t, generator=generator).x
