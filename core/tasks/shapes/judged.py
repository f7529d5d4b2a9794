"""The images GenEval judged, kept so that a figure can be recomputed from the run folder.

``GenEvalCallback`` writes, at test, one ``<run>/geneval/<key>.npz`` per guidance (``key`` like
``test_geneval_w3``): ``images`` (B, 3, H, W) uint8 -- exactly what was judged (the callback rounds
its generations to 8 bits before judging, as an image file would hold them) --, ``prompts`` (B,)
JSON of each prompt's metadata, ``passed`` (B,) bool and ``reward`` (B,) float32 (the per-image
verdicts), ``metrics`` (JSON of the logged ``<prefix>/...`` figures) and ``reader`` (the shape
reader that judged them).

    python -m core.tasks.shapes.judged RUN_DIR [--reader centroid]

recomputes every saved figure (with the saved or the given reader) and prints it next to the logged one.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from core.tasks.shapes.evaluator import evaluate, geneval_score


def quantize(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> the same rounded to 8 bits (what an image file holds)."""
    return (images.detach().float().cpu().clamp(0, 1) * 255).round() / 255


def summarise(key: str, images: torch.Tensor, meta: list[dict], reader: str = "net") -> dict[str, float]:
    """GenEval per category with standard errors, held-out / seen split and mean reward, as
    ``{f"{key}/<name>": value}``."""
    out = {f"{key}/{name}": v for name, v in geneval_score(images, meta, reader=reader).items()}
    ev = evaluate(images, meta, strict=False, reader=reader)
    out[f"{key}/reward"] = float(ev.reward.mean())
    held = torch.tensor([bool(m.get("heldout")) for m in meta])
    for name, sel in (("heldout", held), ("seen", ~held)):
        if sel.any():
            p = float(ev.passed[sel].float().mean())
            out[f"{key}/{name}"], out[f"{key}/{name}_se"] = p, math.sqrt(p * (1 - p) / int(sel.sum()))
    return out


def judge_and_save(path: str | Path | None, key: str, images: torch.Tensor, meta: list[dict], reader: str = "net") -> dict[str, float]:
    """Judge the 8-bit rounding of ``images`` against ``meta`` (:func:`summarise`) and, when ``path``
    is given, write the file described in the module docstring there. Returns the figures."""
    images = quantize(images)
    metrics = summarise(key, images, meta, reader)
    if path is not None:
        ev = evaluate(images, meta, strict=False, reader=reader)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path,
            images=(images * 255).round().to(torch.uint8).numpy(),
            prompts=np.array([json.dumps(m) for m in meta]),
            passed=ev.passed.numpy(),
            reward=ev.reward.numpy().astype(np.float32),
            metrics=np.array(json.dumps(metrics)),
            key=np.array(key),
            reader=np.array(reader),
        )
    return metrics


def load_judged(path: str | Path) -> dict:
    """The saved file as {"images" (B, 3, H, W) float in [0, 1], "meta", "passed", "reward",
    "metrics", "key", "reader"}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judged-images file {path} not found (GenEvalCallback writes <run>/geneval/*.npz)")
    with np.load(path, allow_pickle=False) as f:
        missing = {"images", "prompts", "passed", "reward", "metrics", "key", "reader"} - set(f.files)
        if missing:
            raise ValueError(f"{path}: missing arrays {sorted(missing)}")
        return {
            "images": torch.from_numpy(f["images"]).float() / 255,
            "meta": [json.loads(s) for s in f["prompts"].tolist()],
            "passed": torch.from_numpy(f["passed"]),
            "reward": torch.from_numpy(f["reward"]),
            "metrics": json.loads(str(f["metrics"])),
            "key": str(f["key"]),
            "reader": str(f["reader"]),
        }


def recompute(path: str | Path, reader: str | None = None) -> dict[str, float]:
    """The figures of a saved file, recomputed from its images and prompts (with its reader, or ``reader``)."""
    saved = load_judged(path)
    return summarise(saved["key"], saved["images"], saved["meta"], reader or saved["reader"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Recompute GenEval figures from a run folder's geneval/*.npz")
    parser.add_argument("run_dir")
    parser.add_argument("--reader", default=None, help="shape reader: net or centroid (default: the saved one)")
    args = parser.parse_args(argv)
    files = sorted(Path(args.run_dir).glob("**/geneval/*.npz"))
    if not files:
        raise SystemExit(f"no geneval/*.npz under {args.run_dir}")
    for f in files:
        logged, new = load_judged(f)["metrics"], recompute(f, args.reader)
        print(f"{f}:")
        for name, v in new.items():
            print(f"  {name:40s} logged {logged.get(name, float('nan')):.4f}  recomputed {v:.4f}")


if __name__ == "__main__":
    main()
