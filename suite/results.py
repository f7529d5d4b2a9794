"""results.json: metrics, claims and variants of one run (schema in docs/architecture.md)."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Claim:
    """A directional claim of the paper checked on this run. ``detail`` says how it was measured:
    which variants, which window, how many samples, the uncertainty."""

    holds: bool
    value: Any = None
    reference: Any = None
    detail: str = ""

    @classmethod
    def uncomputable(cls, detail: str, reference: Any = None) -> Claim:
        """A claim the run cannot decide (e.g. one seed where a spread is needed)."""
        return cls(holds=False, value=None, reference=reference, detail=detail)

    def to_json(self) -> dict:
        return {"holds": bool(self.holds), "value": clean(self.value), "reference": clean(self.reference),
                "detail": self.detail}


@dataclass
class VariantResult:
    """One trained (or evaluated) variant of a study; a single run is the variant ``main``."""

    name: str
    metrics: dict[str, float]
    dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    max_steps: int | None = None  # the training horizon it reached (None for a job)

    @property
    def history(self) -> Path | None:
        path = self.dir / "history.csv"
        return path if path.exists() else None

    def to_json(self, root: Path) -> dict:
        rel = str(self.dir.relative_to(root)) if self.dir.is_relative_to(root) else str(self.dir)
        return {"metrics": clean(self.metrics), "dir": rel, "overrides": clean(self.overrides), "seed": self.seed}

    @classmethod
    def load(cls, path: Path) -> VariantResult:
        data = json.loads(path.read_text())
        return cls(data["name"], data["metrics"], path.parent, data.get("overrides", {}), data.get("seed", 0),
                   data.get("max_steps"))

    def save(self) -> None:
        payload = {"name": self.name, "metrics": clean(self.metrics), "overrides": clean(self.overrides),
                   "seed": self.seed, "max_steps": self.max_steps}
        write_atomic(self.dir / "variant.json", json.dumps(payload, indent=2))


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, and rename it over ``path``: a
    crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, tensors and numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if hasattr(value, "tolist"):
        return clean(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def versions() -> dict[str, str | None]:
    import lightning
    import torch

    return {"git": git_sha(), "python": platform.python_version(), "torch": torch.__version__,
            "lightning": lightning.__version__}


def primary_metrics(variants: dict[str, VariantResult]) -> dict[str, float]:
    """Top-level metrics: the single variant's, or each variant's prefixed by its name."""
    if list(variants) == ["main"]:
        return dict(variants["main"].metrics)
    return {f"{name}:{k}": v for name, var in variants.items() for k, v in var.metrics.items()}


def write_results(output_dir: Path, experiment: str, variants: dict[str, VariantResult],
                  claims: dict[str, Claim], seed: int, wall_s: float, failure: dict | None = None,
                  scale: str = "small", debug: str | None = None) -> Path:
    payload = {
        "experiment": experiment,
        "scale": scale,
        "debug": debug,
        "metrics": clean(primary_metrics(variants)),
        "claims": {k: c.to_json() for k, c in claims.items()},
        "variants": {name: v.to_json(output_dir) for name, v in variants.items()},
        "seed": seed,
        "wall_s": round(wall_s, 2),
        "versions": versions(),
    }
    if failure is not None:
        payload["failure"] = failure
    path = output_dir / "results.json"
    write_atomic(path, json.dumps(payload, indent=2))
    return path


def format_table(variants: dict[str, VariantResult], claims: dict[str, Claim], max_metrics: int = 40) -> str:
    lines = []
    for name, var in variants.items():
        lines.append(f"variant {name}")
        keys = sorted(var.metrics)[:max_metrics]
        width = max((len(k) for k in keys), default=0)
        lines += [f"  {k:<{width}}  {_fmt(var.metrics[k])}" for k in keys]
    if claims:
        lines.append("claims")
        width = max(len(k) for k in claims)
        for k, c in claims.items():
            mark = "HOLDS " if c.holds else "FAILS "
            lines.append(f"  {k:<{width}}  {mark} value={_fmt(c.value)} reference={_fmt(c.reference)}")
            if c.detail:
                lines.append(f"  {'':<{width}}  {c.detail}")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.5g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)
