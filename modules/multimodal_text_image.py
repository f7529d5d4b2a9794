"""Diffuse Everything (Rojas, Zhu, Zhu, Ye, Tao 2025) on image + caption pairs: one MMDiT, two time groups.

The state is (image (B, 3, S, S) in [-1, 1], caption tokens (B, L)); the image follows the suite's VP
process (the net predicts v, trained by v-MSE by default; the paper's eps-MSE is an option), the caption
absorbing mask diffusion (weighted cross-entropy; the padding token is an ordinary token, so the
caption's length is generated too), and the loss is L_img + lambda L_txt
(core.diffusion.multimodal). Training draws (t_img, t_txt) independently, with probability ``p_condition`` one of
them set to 0 (the conditionals) and with ``p_equal`` both equal (the joint path). One trained model then:

* samples pairs jointly (both groups generated, equal times);
* text -> image: the caption held clean at t_txt = 0; optional noisy guidance (eps = eps_c + w (eps_c -
  eps_u), eps_u from the same model with the caption noised to ``guidance_time``; 1 = all masked), only
  for t in ``guidance_window``;
* image -> text: the image held clean at t_img = 0.

Test-time evaluation (rank 0): text -> image by Shapes-GenEval on the fixed prompt set, with and without
noisy guidance; image -> text on held-out test scenes by exact match (the generated caption parses, is
true of the scene and names exactly the scene's objects); unconditional pairs by consistency (the
caption parses and the evaluator finds it true of the generated image, strict) against the same
captions shuffled across pairs.
"""

from __future__ import annotations

import time

import torch

from modules.media import log_images
from core.diffusion.masked import MaskedDiffusion, confidence_decode
from core.diffusion.multimodal import MultimodalProcess, Part
from core.diffusion.processes import VP
from core.diffusion.solvers import SampleResult
from core.tasks.shapes import geneval_score, load_eval_prompts
from core.tasks.shapes.grammar import Tokenizer
from modules.base import GenLabModule
from modules.caption_parsing import (
    binomial_se,
    captions_true,
    first_per_category,
    object_multiset,
    parse_tokens,
    shuffled_consistency,
)
from modules.sampling import PromptGeneration, choose, generation, multimodal_sample, sample_options
from modules.nets.mmdit import MMDiT

IMAGE, TEXT = 0, 1  # time groups


# ----- the module -----------------------------------------------------------------------------------
class MultimodalTextImage(PromptGeneration, GenLabModule):
    """Image + caption diffusion with decoupled times on an MMDiT; see the module docstring.

    Args:
        image_size, patch, max_len: image side, patch side, caption length (must match the data).
        hidden, depth, heads: MMDiT size.
        p_condition, p_equal: training probabilities of one group at t = 0 / of equal times.
        lambda_disc: weight of the caption loss.
        beta_min, beta_max, mask_eps: the VP process and the log-linear mask schedule.
        lr, weight_decay, warmup_steps: AdamW with warm-up then cosine decay to 10%.
        sample_steps, text_steps: reverse steps for images / joint pairs, and for image -> text.
        text_decoder, text_temperature: image -> text by ``confidence`` (top-1 per step for text_steps =
            max_len; core.diffusion.masked.confidence_decode) or ``ancestral`` (core.diffusion.multimodal), and the
            token temperature of the confidence decoder (0 = greedy).
        continuous_step, clip_x0: the image part's reverse step (core.diffusion.multimodal) and x0 clipping.
        prediction: what the net's image head outputs, ``eps`` or ``v`` (see :meth:`forward`).
        image_loss: ``eps`` (the paper's eps-MSE) or ``v`` (||v_hat - v||^2 = eps-MSE / a_t^2, i.e. x0-MSE
            weighted 1 / sigma_t^2); see :meth:`compute_loss`.
        guidance, guidance_time, guidance_window: noisy guidance of text -> image at test.
        eval_prompts_per_category: GenEval prompts per category (0 = all 553).
        i2t_images, joint_pairs, shuffle_rounds, eval_batch: sizes of the other evaluations.
    """

    def __init__(
        self,
        image_size: int = 32,
        patch: int = 4,
        max_len: int = 12,
        hidden: int = 128,
        depth: int = 4,
        heads: int = 4,
        p_condition: float = 0.4,
        p_equal: float = 0.2,
        lambda_disc: float = 1.0,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        mask_eps: float = 1e-3,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        sample_steps: int = 30,
        text_steps: int = 12,
        text_decoder: str = "confidence",
        text_temperature: float = 0.0,
        continuous_step: str = "ancestral",
        clip_x0: float | None = 1.0,
        prediction: str = "v",
        image_loss: str = "v",
        guidance: float = 2.0,
        guidance_time: float = 1.0,
        guidance_window: list[float] | None = None,
        eval_prompts_per_category: int = 0,
        i2t_images: int = 512,
        joint_pairs: int = 256,
        shuffle_rounds: int = 5,
        eval_batch: int = 256,
    ) -> None:
        super().__init__()
        if prediction not in ("eps", "v"):
            raise ValueError(f"module.prediction must be eps or v, got {prediction!r}")
        if image_loss not in ("eps", "v"):
            raise ValueError(f"module.image_loss must be eps or v, got {image_loss!r}")
        if text_decoder not in ("confidence", "ancestral"):
            raise ValueError(f"module.text_decoder must be confidence or ancestral, got {text_decoder!r}")
        self.save_hyperparameters()
        self.tokenizer = Tokenizer(max_len)
        V = len(self.tokenizer)
        self.net = MMDiT(image_size, 3, patch, V, max_len, hidden, depth, heads)
        self.process = MultimodalProcess(
            [Part("continuous", IMAGE), Part("discrete", TEXT)],
            2,
            continuous=VP(beta_min, beta_max),
            discrete=MaskedDiffusion(self.net.mask_id, eps=mask_eps),
        )
        self.sample_steps = sample_steps
        self.guidance_window = tuple(guidance_window) if guidance_window is not None else (0.0, 1.0)

    def forward(self, state: tuple, t_groups: torch.Tensor) -> tuple:
        """(x_t, tokens_t), t (B, 2) -> (eps_hat (B, 3, S, S), logits (B, L, V)). With ``prediction="v"``
        the net's image output is read as v = a_t eps - sigma_t x0 and turned into eps_hat = sigma_t x_t
        + a_t v_hat (exact for VP, a^2 + sigma^2 = 1): the loss is still the eps-MSE of the process, but
        at high noise eps_hat ~ x_t comes for free and the net's errors reach x0_hat unamplified (with
        eps-prediction they are multiplied by sigma_t / a_t, 3.4 at t = 0.5)."""
        out, logits = self.net(state[0], state[1], t_groups)
        if self.hparams.prediction == "v":
            vp, t = self.process.continuous, t_groups[:, IMAGE].reshape(-1, 1, 1, 1)
            out = vp.sigma(t) * state[0] + vp.alpha(t) * out
        return out, logits

    # ----- training -----------------------------------------------------------------------------
    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """L_img + lambda L_txt; times and noise keyed by example index unless ``generator``."""
        x0 = (batch["x"], batch["tokens"])
        if x0[1].shape[1] != self.hparams.max_len:
            raise ValueError(f"captions have {x0[1].shape[1]} tokens but module.max_len={self.hparams.max_len}")
        shapes = [(4,), tuple(x0[0].shape[1:]), tuple(x0[1].shape[1:])]
        idx, g = batch["index"], generator
        u = self.example_uniform(idx, shapes[0], 0, g)
        eps = self.example_normal(idx, shapes[1], 1, g)
        um = self.example_uniform(idx, shapes[2], 2, g)
        h = self.hparams
        t = self.process.draw_times(u, h.p_condition, h.p_equal)
        noise = (eps, um)
        x_t = self.process.add_noise(x0, t, noise)
        l_img, l_txt = self.process.losses(self(x_t, t), x0, x_t, noise, t)
        if h.image_loss == "v":
            # eps_hat - eps = a_t (v_hat - v): the eps-MSE of a v head weights it by a_t^2 (1.6e-3 at t = 0.8,
            # 1e-4 at t = 0.95), so high noise -- where the layout and the caption decide the image -- got
            # almost no gradient (the 800-step eps-MSE run's x0 predictions were worse than the data mean
            # for t >= 0.65 and ignored the caption). Dividing by a_t^2 gives the v-MSE (Salimans & Ho 2022);
            # positions at t = 0 carry no loss and a_0 = 1.
            l_img = l_img / self.process.continuous.alpha(t[:, IMAGE]).pow(2)
        self._parts = (l_img.mean().detach(), l_txt.mean().detach())
        return l_img.mean() + h.lambda_disc * l_txt.mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/loss_img", self._parts[0])
        self.log("train/loss_txt", self._parts[1])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self.compute_loss(batch, torch.Generator().manual_seed(1234 + batch_idx)), sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.log("test/loss", self.compute_loss(batch, torch.Generator().manual_seed(4321 + batch_idx)), sync_dist=True)

    def configure_optimizers(self):
        return self.adamw_warmup_cosine()

    # ----- generation ---------------------------------------------------------------------------
    @generation
    def sample(
        self,
        n: int,
        *,
        steps: int | None = None,
        solver: str | None = None,
        generator: torch.Generator | None = None,
        cond: list[str] | torch.Tensor | None = None,
        return_trajectory: bool = False,
        **guidance,
    ) -> SampleResult:
        """``n`` pairs x = (images (n, 3, S, S) in [-1, 1], tokens (n, L)). ``cond``: captions (strings, or
        tokens (n, L) long): text -> image (caption clean at t = 0, optional noisy guidance); images
        (n, 3, S, S) float: image -> text (``text_decoder``); None: joint. ``solver``: the image part's
        step, ancestral | euler_maruyama (default ``continuous_step``). Options: ``guidance`` (noisy
        guidance weight, 0 = none), ``guidance_time``, ``guidance_window``."""
        h, S, L = self.hparams, self.hparams.image_size, self.hparams.max_len
        opts = sample_options(self, guidance, guidance=0.0, guidance_time=h.guidance_time,
                              guidance_window=self.guidance_window)
        if isinstance(cond, (list, tuple)):
            cond = self.tokenizer.encode(list(cond))
        shapes = [(n, 3, S, S), (n, L)]
        given, generate = None, None
        if cond is not None and not cond.is_floating_point():
            given, generate = (torch.zeros(shapes[0], device=self.device), cond.to(self.device)), [IMAGE]
        elif cond is not None:
            given = (cond.to(self.device), torch.zeros(shapes[1], dtype=torch.long, device=self.device))
            generate = [TEXT]
            if h.text_decoder == "confidence":
                return self._caption_by_confidence(given[0], steps or h.text_steps, generator, return_trajectory)
        return multimodal_sample(
            self, shapes, steps or self.sample_steps, given=given, generator=generator,
            return_trajectory=return_trajectory, generate=generate, guidance=opts.guidance,
            guidance_time=opts.guidance_time, guidance_window=tuple(opts.guidance_window),
            continuous_step=choose("MultimodalTextImage.sample: solver", solver, h.continuous_step,
                                   ("ancestral", "euler_maruyama")),
            clip_x0=h.clip_x0,
        )

    def _caption_by_confidence(self, images: torch.Tensor, steps: int, generator, return_trajectory: bool):
        """Image -> text with the suite's confidence decoder (core.diffusion.masked.confidence_decode:
        MaskGIT/LLaDA-style, the most confident masked tokens revealed first, greedy at temperature 0),
        the image held clean at t_img = 0; t_txt = the fraction of the caption still masked."""
        zeros = torch.zeros(len(images), device=self.device)

        def model_fn(tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.net(images, tokens, torch.stack([zeros, t.to(self.device)], 1))[1]

        start = torch.full((len(images), self.hparams.max_len), self.net.mask_id, dtype=torch.long, device=self.device)
        res = confidence_decode(
            model_fn,
            start,
            steps,
            self.net.mask_id,
            temperature=self.hparams.text_temperature,
            generator=generator,
            counter=self.nfe,
            return_trajectory=return_trajectory,
        )
        return SampleResult(x=(images, res.x), times=res.times, nfe=res.nfe, trajectory=res.trajectory)

    def _batched(self, n: int, seed: int, steps: int | None = None, guidance: float = 0.0, cond=None):
        """Sample in chunks of ``eval_batch`` (one generator: reproducible for a given chunking);
        ``cond``: images or tokens of n rows (see :meth:`sample`). Returns (images, tokens) on the CPU."""
        gen, bs, imgs, toks = torch.Generator().manual_seed(seed), self.hparams.eval_batch, [], []
        for lo in range(0, n, bs):
            chunk = None if cond is None else cond[lo : lo + bs]
            x = self.sample(min(bs, n - lo), steps=steps, generator=gen, cond=chunk, guidance=guidance).x
            imgs.append(x[0].cpu())
            toks.append(x[1].cpu())
        return torch.cat(imgs), torch.cat(toks)

    # ----- evaluation ---------------------------------------------------------------------------
    def on_test_epoch_end(self) -> None:
        if self.trainer.global_rank != 0:
            return
        for k, v in self.evaluate_all(self.trainer.datamodule).items():
            self.log(f"test/{k}", float(v), rank_zero_only=True)

    def evaluate_all(self, dm) -> dict[str, float]:
        h, out = self.hparams, {}
        start = time.time()
        # text -> image: GenEval with and without noisy guidance (same prompts, same seed)
        prompts = first_per_category(load_eval_prompts(), h.eval_prompts_per_category)
        tokens = self.tokenizer.encode([p["prompt"] for p in prompts])
        for name, w in (("t2i", 0.0), ("t2i_guided", h.guidance)):
            imgs, _ = self._batched(len(prompts), 11, cond=tokens, guidance=w)
            score = geneval_score((imgs + 1) / 2, prompts)
            out[f"{name}/geneval"], out[f"{name}/geneval_se"] = score["overall"], score["overall_se"]
            for tag in ("single_object", "two_object", "counting", "colors", "position", "color_attr"):
                if tag in score:
                    out[f"{name}/{tag}"] = score[tag]
        out["t2i/n_prompts"] = float(len(prompts))
        # image -> text on test scenes
        test_set, metas = dm.test_set, dm.metadata["test"]
        n = min(h.i2t_images, len(metas))
        real = test_set.x[:n]
        _, toks = self._batched(n, 12, steps=h.text_steps, cond=real)
        parsed = parse_tokens(toks, self.tokenizer)
        true = captions_true((real + 1) / 2, parsed)
        complete = torch.tensor(
            [p is not None and object_multiset(p) == object_multiset(m) for p, m in zip(parsed, metas[:n])]
        )
        exact = true & complete
        for k, v in (
            ("i2t/parse_rate", torch.tensor([p is not None for p in parsed])),
            ("i2t/true", true),
            ("i2t/exact", exact),
        ):
            out[k], out[k + "_se"] = float(v.float().mean()), binomial_se(float(v.float().mean()), n)
        out["i2t/caption_match"] = float(
            sum(p is not None and p["prompt"] == m["prompt"] for p, m in zip(parsed, metas[:n])) / n
        )
        out["i2t/n"] = float(n)
        # unconditional pairs: consistency vs shuffled captions
        imgs, toks = self._batched(h.joint_pairs, 13)
        parsed = parse_tokens(toks, self.tokenizer)
        cons = captions_true((imgs + 1) / 2, parsed)
        p = float(cons.float().mean())
        out["joint/consistency"], out["joint/consistency_se"] = p, binomial_se(p, len(parsed))
        shuf = shuffled_consistency((imgs + 1) / 2, parsed, h.shuffle_rounds)
        out["joint/shuffled"], out["joint/shuffled_se"] = shuf, binomial_se(shuf, len(parsed))
        out["joint/parse_rate"] = float(sum(m is not None for m in parsed) / len(parsed))
        out["joint/n"] = float(len(parsed))
        out["eval_seconds"] = time.time() - start
        k = min(32, len(parsed))
        caps = [
            f"{self.tokenizer.decode(toks[i : i + 1])[0]!r} -> {'consistent' if cons[i] else 'not'}" for i in range(k)
        ]
        log_images(self.trainer, "test/joint_pairs", imgs[:k].clamp(-1, 1), caps)
        return out
