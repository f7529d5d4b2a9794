"""``MaskedWorldModel``: action-conditioned MaskGIT next-view model in a gridworld (docs/methods/world_model_memory.md).

Predicts the tokens of view t (v*v tile colours) given the action a_t and

* ``context``: the last K views t-K..t-1;
* ``memory``: + up to M past views retrieved from a pose-keyed bank (core/world_model/memory_bank.py; older
  than the context, overlapping the target window; WorldMem-style attention over retrieved entries);
* ``recurrent``: + S state tokens updated from every view in turn (a learned recurrent memory).

Network: target tokens (masked view) attend to themselves and cross-attend to source tokens. Every
tile token carries its colour and its position *relative to the target window* (source pose - target
pose + tile offset; poses follow from the actions), so a revisited tile sits at the same coordinates
as the target tile it equals. Training: MaskGIT masking, ratio m(t) = sin(pi t / 2) (the suite's
``MaskedDiffusion`` cosine schedule), cross-entropy on masked tokens. Decoding: the suite's
``confidence_decode`` (cosine count schedule, greedy), every call charged to ``self.nfe``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.tasks.gridworld import map_statistics_guess, render_views
from core.diffusion.masked import MaskedDiffusion, confidence_decode
from core.diffusion.solvers import SampleResult
from modules.base import GenLabModule, lr_factor, per_step
from modules.sampling import choose, generation, sample_options

VARIANTS = ("context", "memory", "recurrent")


class _Block(nn.Module):
    """Pre-LN: self-attention over target tokens, cross-attention to sources, MLP."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.n1, self.n2, self.n3, self.ns = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.cross = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, src: torch.Tensor, src_pad: torch.Tensor | None) -> torch.Tensor:
        h = self.n1(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        s = self.ns(src)
        x = x + self.cross(self.n2(x), s, s, key_padding_mask=src_pad, need_weights=False)[0]
        return x + self.mlp(self.n3(x))


class MaskedWorldModel(GenLabModule):
    def __init__(self, variant: str = "memory", colours: int = 8, view: int = 5, context: int = 2,
                 memory_slots: int = 2, state_tokens: int = 8, map_size: int = 16, width: int = 64,
                 heads: int = 4, depth: int = 2, lr: float = 2e-3, weight_decay: float = 0.01,
                 warmup_steps: int = 50, decode_steps: int = 4, eval_rollouts: bool = True) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"module.variant={variant!r}; choose one of {VARIANTS}")
        self.save_hyperparameters()
        self.diffusion = MaskedDiffusion(mask_id=colours, schedule="cosine")
        v, d = view, width
        self.span = 3 * v  # relative coordinates in [-v, 2v): overlapping windows; the rest is "far"
        self.tok = nn.Embedding(colours + 1, d)
        self.row, self.col = nn.Embedding(self.span + 1, d), nn.Embedding(self.span + 1, d)
        self.kind = nn.Embedding(context + 3, d)  # context slots, memory, state, target
        self.act = nn.Embedding(5, d)
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, colours))
        off = torch.arange(v)
        self.register_buffer("tile_rc", torch.stack(torch.meshgrid(off, off, indexing="ij"), -1).reshape(-1, 2),
                             persistent=False)  # (L, 2) offsets of the tiles in a window
        if variant == "recurrent":
            self.state0 = nn.Parameter(0.02 * torch.randn(state_tokens, d))
            self.abs_row, self.abs_col = nn.Embedding(map_size, d), nn.Embedding(map_size, d)
            self.write = _Block(d, heads)
        self._acc: dict[str, float] = {}
        self._strip_logged = False

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        h = self.hparams
        for key in ("colours", "view", "context"):
            if getattr(dm, key) != h[key]:
                raise ValueError(f"module.{key}={h[key]} differs from data.{key}={getattr(dm, key)}")
        if max(dm.height, dm.width) > h.map_size:
            raise ValueError(f"module.map_size={h.map_size} is smaller than the {dm.height}x{dm.width} map")

    # -- embeddings -------------------------------------------------------------------------------
    def _rel(self, rc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = rc + self.hparams.view
        far = ((idx < 0) | (idx >= self.span)).any(-1, keepdim=True)
        idx = torch.where(far, torch.full_like(idx, self.span), idx)
        return self.row(idx[..., 0]), self.col(idx[..., 1])

    def _abs(self, rc: torch.Tensor) -> torch.Tensor:
        rc = rc.clamp(0, self.hparams.map_size - 1)
        return self.abs_row(rc[..., 0]) + self.abs_col(rc[..., 1])

    def source_tokens(self, views: torch.Tensor, poses: torch.Tensor, memory: torch.Tensor, t: torch.Tensor,
                      state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded sources for targets at steps t (B, n) of trajectories with views (B, T+1, L),
        poses (B, T+1, 2), memory indices (B, T+1, M). Only views at steps < t are read (context:
        t-K..t-1; memory: the precomputed retrieval, all < t-K). Returns (B*n, Ns, d) and the
        key-padding mask (B*n, Ns) True = empty slot; ``state`` (B*n, S, d) is appended."""
        B, n = t.shape
        K, L = self.hparams.context, views.shape[-1]
        src_t = [t - k for k in range(1, K + 1)]
        kinds = list(range(K))
        if self.hparams.variant == "memory":
            mem = memory.gather(1, t[..., None].expand(B, n, memory.shape[-1]))  # (B, n, M)
            src_t += list(mem.unbind(-1))
            kinds += [K] * mem.shape[-1]
        st = torch.stack(src_t, -1)  # (B, n, Ns_views)
        valid = st >= 0
        st = st.clamp_min(0)
        bi = torch.arange(B, device=t.device)[:, None, None]
        toks = views[bi, st]  # (B, n, Nv, L)
        rel = poses[bi, st] - poses[bi, t[..., None]]  # (B, n, Nv, 2)
        rc = rel[..., None, :] + self.tile_rc  # (B, n, Nv, L, 2)
        r, c = self._rel(rc)
        kind = self.kind(torch.tensor(kinds, device=t.device))[:, None]  # (Nv, 1, d)
        emb = self.tok(toks) + r + c + kind
        nv = st.shape[-1]
        emb = emb.reshape(B * n, nv * L, -1)
        pad = (~valid).reshape(B * n, nv, 1).expand(-1, -1, L).reshape(B * n, nv * L)
        if state is not None:
            emb = torch.cat([emb, state + self.kind.weight[K + 1]], 1)
            pad = torch.cat([pad, torch.zeros(B * n, state.shape[1], dtype=torch.bool, device=pad.device)], 1)
        return emb, pad

    def logits(self, x: torch.Tensor, actions: torch.Tensor, src: torch.Tensor, pad: torch.Tensor,
               target_pose: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, L) target tokens (mask id = colours), actions (N,) -> logits (N, L, colours)."""
        r, c = self._rel(self.tile_rc.expand(len(x), -1, -1))
        h = self.tok(x) + r + c + self.act(actions)[:, None] + self.kind.weight[-1]
        if target_pose is not None:  # recurrent: absolute pose, the frame the state is written in
            h = h + self._abs(target_pose[:, None] - self.hparams.view // 2 + self.tile_rc)
        for blk in self.blocks:
            h = blk(h, src, pad)
        return self.out(h)

    def states(self, views: torch.Tensor, poses: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Recurrent states (B, T+1, S, d): state[t] has read views 0..t-1 (in absolute map frame)."""
        B, T1, L = views.shape
        s = self.state0.expand(B, -1, -1)
        out = [s]
        for t in range(1, T1 if upto is None else upto + 1):
            p = poses[:, t - 1, None] - self.hparams.view // 2 + self.tile_rc  # (B, L, 2) map cells
            s = self.write(s, self.tok(views[:, t - 1]) + self._abs(p), None)
            out.append(s)
        return torch.stack(out, 1)

    # -- training ---------------------------------------------------------------------------------
    def _all_steps(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sources for every step t = 1..T of every trajectory (teacher forcing)."""
        views, poses = batch["x"], batch["poses"]
        B, T1, _ = views.shape
        t = torch.arange(1, T1, device=views.device).expand(B, -1)
        state = None
        if self.hparams.variant == "recurrent":
            state = self.states(views, poses)[:, 1:].reshape(B * (T1 - 1), *self.state0.shape)
        src, pad = self.source_tokens(views, poses, batch["memory"], t, state)
        tgt_pose = poses[:, 1:].reshape(-1, 2) if self.hparams.variant == "recurrent" else None
        return src, pad, t, tgt_pose

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        views, actions = batch["x"], batch["actions"]
        B, T1, L = views.shape
        src, pad, t, tgt_pose = self._all_steps(batch)
        x0 = views[:, 1:].reshape(-1, L)
        rows = (batch["index"][:, None] * T1 + t).reshape(-1)
        u = self.example_uniform(rows, (L + 1,), generator=generator)
        x_t = self.diffusion.kernel(u[:, 0]).sample(x0, u=u[:, 1:])
        masked = x_t == self.diffusion.mask_id
        logits = self.logits(x_t, actions[:, 1:].reshape(-1), src, pad, tgt_pose)
        nll = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
        return (nll * masked).sum() / masked.sum().clamp_min(1)  # MaskGIT: mean CE over masked tokens

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(1234 + batch_idx)
        self.log("val/loss", self.compute_loss(batch, generator=gen))

    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=h.lr, weight_decay=h.weight_decay)
        warm = max(h.warmup_steps, 1)
        return per_step(opt, lambda s: lr_factor(s, warm))

    # -- generation -------------------------------------------------------------------------------
    def decode(self, actions: torch.Tensor, src: torch.Tensor, pad: torch.Tensor,
               target_pose: torch.Tensor | None = None, generator: torch.Generator | None = None,
               steps: int | None = None) -> torch.Tensor:
        """Generate N views from all-masked tokens by confidence decoding (``steps``, default
        ``decode_steps``): (N, L) long."""
        L = self.hparams.view ** 2
        x = torch.full((len(actions), L), self.diffusion.mask_id, dtype=torch.long, device=src.device)
        fn = lambda tok, t: self.logits(tok, actions, src, pad, target_pose)  # noqa: E731
        return confidence_decode(fn, x, steps or self.hparams.decode_steps, self.diffusion.mask_id, schedule="cosine",
                                 temperature=0.0, generator=generator, counter=self.nfe).x

    @torch.no_grad()
    def teacher_forced(self, batch: dict) -> torch.Tensor:
        """Predicted views (B, T, L) for steps 1..T given the true past (context, memory, state)."""
        views = batch["x"]
        src, pad, _, tgt_pose = self._all_steps(batch)
        pred = self.decode(batch["actions"][:, 1:].reshape(-1), src, pad, tgt_pose)
        return pred.reshape(views.shape[0], views.shape[1] - 1, -1)

    @torch.no_grad()
    def rollout(self, batch: dict, steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Free-running rollout (B, T+1, L): view 0 given, every later view generated from the model's
        own earlier generations (context, memory bank entries and recurrent state alike)."""
        views, poses, actions = batch["x"], batch["poses"], batch["actions"]
        B, T1, _ = views.shape
        gen = views.clone()
        gen[:, 1:] = self.diffusion.mask_id  # nothing beyond view 0 is visible to the model
        for t in range(1, T1):
            tt = torch.full((B, 1), t, dtype=torch.long, device=views.device)
            state = self.states(gen, poses, upto=t)[:, t] if self.hparams.variant == "recurrent" else None
            src, pad = self.source_tokens(gen, poses, batch["memory"], tt, state)
            tgt_pose = poses[:, t] if self.hparams.variant == "recurrent" else None
            gen[:, t] = self.decode(actions[:, t], src, pad, tgt_pose, generator, steps)
        return gen

    @generation
    def sample(
        self,
        n: int,
        *,
        steps: int | None = None,
        solver: str | None = None,
        generator: torch.Generator | None = None,
        cond: dict | None = None,
        return_trajectory: bool = False,
        **guidance,
    ) -> SampleResult:
        """Free-running rollouts x (n, T+1, L) of the trajectories ``cond`` (a batch: views, poses,
        actions, memory; default the first ``n`` test trajectories), every view by ``steps`` of the
        ``confidence`` decoder (default ``decode_steps``); ``nfe``: decoder passes per rollout."""
        choose("MaskedWorldModel.sample: solver", solver, "confidence", ("confidence",))
        sample_options(self, guidance)
        if return_trajectory:
            raise ValueError("MaskedWorldModel.sample: the rollout is the result; return_trajectory is not available")
        if cond is None:
            dm = self.trainer.datamodule
            dm.setup()
            ds = dm.test_set
            cond = {"x": ds.x[:n], **{k: v[:n] for k, v in ds.extras.items()}}
        calls = self.nfe.calls
        x = self.rollout({k: v.to(self.device) for k, v in cond.items()}, steps, generator)
        return SampleResult(x=x, times=torch.arange(x.shape[1]), nfe=self.nfe.calls - calls)

    # -- evaluation -------------------------------------------------------------------------------
    def _add(self, key: str, hits: torch.Tensor, sel: torch.Tensor) -> None:
        self._acc[key + "_hits"] = self._acc.get(key + "_hits", 0.0) + float((hits & sel).sum())
        self._acc[key + "_n"] = self._acc.get(key + "_n", 0.0) + float(sel.sum())

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Accuracy on newly revealed tiles only, split by age (steps since the cell was last seen):
        new (never seen), near (age <= K, still in context), far (age > K) and far buckets; the
        map-statistics guesser on the same tiles; rollout self-consistency on far revisits."""
        K = self.hparams.context
        views, revealed, ages = batch["x"], batch["revealed"][:, 1:], batch["ages"][:, 1:]
        truth = views[:, 1:]
        hits = self.teacher_forced(batch) == truth
        guess = map_statistics_guess(views, self.hparams.colours)[:, 1:, None] == truth
        groups = {"new": ages < 0, "near": (ages >= 1) & (ages <= K), "far": ages > K,
                  f"age_{K + 1}_{2 * K}": (ages > K) & (ages <= 2 * K),
                  f"age_{2 * K + 1}_{4 * K}": (ages > 2 * K) & (ages <= 4 * K), f"age_gt_{4 * K}": ages > 4 * K}
        for name, g in groups.items():
            self._add(f"acc_{name}", hits, revealed & g)
            if name in ("new", "far"):
                self._add(f"guesser_acc_{name}", guess, revealed & g)
        if self.hparams.eval_rollouts:
            gen = self.rollout(batch)
            self._add("rollout_acc_far", gen[:, 1:] == truth, revealed & (ages > K))
            far = revealed & (ages > K)
            self._add("self_consistency", self._consistent(gen, batch["poses"]), far)
            # what independent draws from the rollout's own colour frequencies would match: a model
            # that paints one colour everywhere is trivially "consistent", this says how much
            freq = torch.bincount(gen[:, 1:][far], minlength=self.hparams.colours).float()
            freq = freq / freq.sum().clamp_min(1)
            self._acc["consistency_chance_sum"] = self._acc.get("consistency_chance_sum", 0.0) + float(
                (freq ** 2).sum() * far.sum())
            if not self._strip_logged:
                self._log_strip(views[0], gen[0], batch["actions"][0], ages[0], revealed[0])

    def _consistent(self, gen: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        """(B, T, L) bool: tile t,i equals the model's own most recent earlier generation of that map cell."""
        B, T1, L = gen.shape
        half = self.hparams.view // 2
        canvas = torch.full((B, self.hparams.map_size, self.hparams.map_size), -1, dtype=torch.long,
                            device=gen.device)
        bi = torch.arange(B, device=gen.device)[:, None]
        out = []
        for t in range(T1):
            cells = poses[:, t, None] - half + self.tile_rc  # (B, L, 2)
            if t > 0:
                out.append(canvas[bi, cells[..., 0], cells[..., 1]] == gen[:, t])
            canvas[bi, cells[..., 0], cells[..., 1]] = gen[:, t]
        return torch.stack(out, 1)

    def _log_strip(self, truth, gen, actions, ages, revealed) -> None:
        from modules.media import log_images
        from core.tasks.gridworld import ACTION_NAMES

        if self._trainer is None:  # called outside a Trainer (unit tests): nothing to log to
            return
        self._strip_logged = True
        v, C = self.hparams.view, self.hparams.colours
        imgs = render_views(torch.cat([truth, gen]).cpu(), v, C)
        far = (revealed & (ages > self.hparams.context)).any(-1).cpu()
        caps = [f"true t={t} {ACTION_NAMES[int(a)]}" for t, a in enumerate(actions)]
        caps += [f"{self.hparams.variant} t={t}" + (" far-revisit" if t > 0 and far[t - 1] else "")
                 for t in range(len(gen))]
        log_images(self.trainer, f"test/rollout_strip_{self.hparams.variant}", imgs, caps, nrow=len(truth))

    def on_test_epoch_start(self) -> None:
        self._acc, self._strip_logged = {}, False
        self.nfe.reset()

    def on_test_epoch_end(self) -> None:
        names = sorted({k[:-5] for k in self._acc if k.endswith("_hits")})
        for name in names:
            n = self._acc[name + "_n"]
            self.log(f"test/{name}_count", n, rank_zero_only=True)
            if n > 0:
                self.log(f"test/{name}", self._acc[name + "_hits"] / n, rank_zero_only=True)
        if self._acc.get("self_consistency_n", 0) > 0:
            self.log("test/self_consistency_chance",
                     self._acc["consistency_chance_sum"] / self._acc["self_consistency_n"], rank_zero_only=True)
        self.log("test/nfe_calls", float(self.nfe.calls), rank_zero_only=True)
