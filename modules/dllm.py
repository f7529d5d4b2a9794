"""Real diffusion LLMs (LLaDA, Dream) behind the suite's search interface, through ``transformers``.

``HFMaskedLM`` turns a Hugging Face masked LM into ``model_fn(tokens (B, L) long, t (B,)) -> logits
(B, L, V)`` on CPU tensors, the interface of core.diffusion.masked's decoders and core.search.prism (Prism,
best-of-N, self-verification). LLaDA predicts the token at every [MASK] position; Dream was initialised
from an autoregressive LM and predicts position i from position i - 1's output, so its logits are shifted
right by one (``shift=True``, as Dream's own sampler does). Neither model reads t: the mask ratio is dropped.

``TextSearchTask`` is the piece of a task the search needs for free text: prompts with ``gen_length``
masked slots, self-verification queries (answer + question tokens + a [MASK] verdict slot whose yes/no
logits are read) and answer keys for voting. Scoring answers (e.g. GSM8K's final number) stays with the user.

Weights come only from a local path (``from_path(..., local_files_only=True)``): nothing is downloaded.
LLaDA and Dream ship their modelling code with their weights, hence ``trust_remote_code``. The tests use a
tiny randomly initialised BERT masked LM (a bidirectional masked LM, like LLaDA) saved to a temporary folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class HFMaskedLM:
    def __init__(self, model, shift: bool = False, device: str | torch.device | None = None) -> None:
        self.model = model.eval()
        self.shift = shift
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)

    @classmethod
    def from_path(cls, path: str, kind: str = "llada", device: str | None = None, dtype: torch.dtype | None = None,
                  trust_remote_code: bool = True) -> HFMaskedLM:
        """Load local weights. ``kind``: ``llada`` (logits as they are), ``dream`` (shifted by one) or
        ``masked_lm`` (any AutoModelForMaskedLM, e.g. BERT, for tests)."""
        from pathlib import Path

        import transformers

        if kind not in ("llada", "dream", "masked_lm"):
            raise ValueError(f"kind {kind!r}: expected llada, dream or masked_lm")
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{path}: expected a folder with config.json and the weights "
                                    "(nothing is downloaded)")
        auto = transformers.AutoModelForMaskedLM if kind == "masked_lm" else transformers.AutoModel
        model = auto.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code,
                                     torch_dtype=dtype)
        return cls(model, shift=kind == "dream", device=device)

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.model(input_ids=tokens.to(self.device)).logits
        if self.shift:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], 1)
        return logits.float().cpu()


@dataclass
class TextSearchTask:
    """Token-level pieces of a free-text task for core.search.prism (ids from the model's tokenizer)."""

    mask_id: int
    yes_id: int
    no_id: int
    question_ids: list[int]  # e.g. the tokens of " Is this answer correct? Answer yes or no:"
    gen_length: int = 64

    def prompts(self, prompt_ids: list[list[int]], pad_id: int | None = None) -> torch.Tensor:
        """Prompts (left-padded with ``pad_id`` to one length) followed by ``gen_length`` [MASK] slots."""
        width = max(len(p) for p in prompt_ids)
        if pad_id is None and any(len(p) != width for p in prompt_ids):
            raise ValueError("prompts of different lengths need a pad_id")
        rows = [[pad_id] * (width - len(p)) + list(p) + [self.mask_id] * self.gen_length for p in prompt_ids]
        return torch.tensor(rows, dtype=torch.long)

    def verify_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Completed sequences (B, L) -> (B, L + len(question) + 1): x, the question, a [MASK] verdict slot."""
        tail = torch.tensor(self.question_ids + [self.mask_id], dtype=torch.long).expand(x.shape[0], -1)
        return torch.cat([x, tail.to(x.device)], 1)

    def answer_key(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B,) long: a polynomial hash of the generated tokens (equal answers, equal keys)."""
        gen = x[:, -self.gen_length :].long()
        powers = torch.full((self.gen_length,), 1_000_003, dtype=torch.long).cumprod(0) % (2**31 - 1)
        return (gen * powers).sum(1) % (2**61 - 1)
