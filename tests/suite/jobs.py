"""Tiny job functions for the suite's own tests (no Lightning, milliseconds each)."""

from __future__ import annotations

from pathlib import Path

from suite.results import Claim


def affine(output_dir: Path, seed: int, a: float = 1.0, b: float = 0.0, source: str | None = None) -> dict:
    """Returns a * seed + b, and counts its calls in a file beside the run so tests can see reruns."""
    calls = Path("job_calls.txt")
    calls.write_text(calls.read_text() + f"{output_dir}\n" if calls.exists() else f"{output_dir}\n")
    (Path(output_dir) / "payload.txt").write_text(f"{a * seed + b}")
    metrics = {"value": a * seed + b}
    if source is not None:
        metrics["source_value"] = float((Path(source) / "payload.txt").read_text())
    return metrics


def value_claims(variants, cfg) -> dict:
    values = [v.metrics["value"] for v in variants.values()]
    return {"values_positive": Claim(all(v > 0 for v in values), min(values), 0.0,
                                     f"min over {len(values)} variants")}
