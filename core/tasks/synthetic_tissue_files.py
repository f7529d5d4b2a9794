"""Slides of the synthetic tissue (core.tasks.synthetic_tissue) drawn and written to disk in the
HEST-1k layout (``st/<id>.h5ad`` + ``patches/<id>.h5`` + ``metadata.csv``) or the plain Visium layout
(``<id>/<id>.h5ad`` + full-resolution ``image.png`` + ``scalefactors_json.json``), with the ground
truth (composition, hidden state, the model's parameters) kept in the AnnData."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.tasks.synthetic_tissue import (
    TissueModel,
    bayes_optimal_errors,
    crop_patches,
    render_slide,
    sample_counts,
    spot_composition,
    spot_grid,
)


@dataclass
class SlideDraw:
    """One generated slide: image (H, W, 3) uint8, centres (N, 2) (x, y) px, patches (N, P, P, 3) uint8,
    composition (N, K), state (N,), counts (N, G)."""

    image: torch.Tensor
    centres: torch.Tensor
    patches: torch.Tensor
    composition: torch.Tensor
    state: torch.Tensor
    counts: torch.Tensor


def generate_slide(
    model: TissueModel, height: int, width: int, spacing: int, patch_size: int, generator: torch.Generator
) -> SlideDraw:
    image, field = render_slide(height, width, generator)
    centres = spot_grid(height, width, spacing, patch_size)
    composition = spot_composition(field, centres, patch_size)
    counts, state = sample_counts(model, composition, generator)
    return SlideDraw(image, centres, crop_patches(image, centres, patch_size), composition, state, counts)


def _anndata(model: TissueModel, slide: SlideDraw, slide_id: str):
    import anndata  # imported here: only file writing needs it
    import numpy as np
    import pandas as pd

    barcodes = [f"{slide_id}_{i:05d}" for i in range(len(slide.centres))]
    obs = pd.DataFrame({"hidden_state": slide.state.numpy().astype(np.int64)}, index=barcodes)
    var = pd.DataFrame(index=list(model.gene_names))
    adata = anndata.AnnData(X=slide.counts.numpy().astype(np.float32), obs=obs, var=var)
    adata.obsm["spatial"] = slide.centres.numpy().astype(np.float64)
    adata.obsm["composition"] = slide.composition.numpy().astype(np.float32)
    adata.uns["synthetic_tissue"] = model.to_arrays()
    return adata


def write_hest_slide(root, slide_id: str, model: TissueModel, slide: SlideDraw) -> None:
    """HEST-1k files for one slide: ``st/<id>.h5ad`` (counts, ``obsm['spatial']`` spot centres in px,
    ground truth in ``obsm['composition']``, ``obs['hidden_state']``, ``uns['synthetic_tissue']``) and
    ``patches/<id>.h5`` (``img`` (N, P, P, 3) uint8, ``coords`` (N, 2) px, ``barcode`` (N, 1) bytes)."""
    from pathlib import Path

    import h5py
    import numpy as np

    root = Path(root)
    (root / "st").mkdir(parents=True, exist_ok=True)
    (root / "patches").mkdir(parents=True, exist_ok=True)
    adata = _anndata(model, slide, slide_id)
    adata.write_h5ad(root / "st" / f"{slide_id}.h5ad")
    with h5py.File(root / "patches" / f"{slide_id}.h5", "w") as f:
        f.create_dataset("img", data=slide.patches.numpy())
        f.create_dataset("coords", data=slide.centres.numpy().astype(np.int64))
        f.create_dataset("barcode", data=np.array(adata.obs_names, dtype="S")[:, None])


def write_visium_slide(root, slide_id: str, model: TissueModel, slide: SlideDraw, patch_size: int) -> None:
    """Plain Visium layout for one slide: ``<root>/<id>/<id>.h5ad``, ``<root>/<id>/image.png`` (full
    resolution) and ``<root>/<id>/scalefactors_json.json``; ``spot_diameter_fullres`` is half the patch
    size, so a crop of two spot diameters (the loader's default) is the HEST patch."""
    import json
    from pathlib import Path

    from PIL import Image

    folder = Path(root) / slide_id
    folder.mkdir(parents=True, exist_ok=True)
    _anndata(model, slide, slide_id).write_h5ad(folder / f"{slide_id}.h5ad")
    Image.fromarray(slide.image.numpy()).save(folder / "image.png")
    scalefactors = {"spot_diameter_fullres": patch_size / 2.0, "tissue_hires_scalef": 1.0}
    (folder / "scalefactors_json.json").write_text(json.dumps(scalefactors))


def write_synthetic_dataset(
    root,
    n_slides: int = 5,
    n_genes: int = 160,
    height: int = 384,
    width: int = 384,
    spacing: int = 16,
    patch_size: int = 32,
    seed: int = 0,
    layout: str = "hest",
    progress=None,
) -> dict[str, float]:
    """Write ``n_slides`` slides ``SYN000``... of one :class:`TissueModel` in the HEST layout (plus a
    ``metadata.csv`` with one row per slide) or the plain Visium layout; returns a summary with the
    spot count and the exact Bayes errors over all spots. ``progress(message)``, if given, is called
    after each slide."""
    from pathlib import Path

    import pandas as pd

    if layout not in ("hest", "visium"):
        raise ValueError(f"layout must be 'hest' or 'visium', got {layout!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    model = TissueModel.random(n_genes=n_genes, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    rows, compositions = [], []
    for i in range(n_slides):
        slide_id = f"SYN{i:03d}"
        slide = generate_slide(model, height, width, spacing, patch_size, generator)
        if layout == "hest":
            write_hest_slide(root, slide_id, model, slide)
        else:
            write_visium_slide(root, slide_id, model, slide, patch_size)
        compositions.append(slide.composition)
        if progress is not None:
            progress(f"slide {i + 1}/{n_slides} ({slide_id}, {len(slide.centres)} spots) written")
        rows.append(
            {
                "id": slide_id,
                "organ": "synthetic",
                "species": "Homo sapiens",
                "st_technology": "Visium",
                "spots_under_tissue": len(slide.centres),
            }
        )
    if layout == "hest":
        pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    summary = bayes_optimal_errors(model, torch.cat(compositions))
    summary["n_spots"] = float(sum(r["spots_under_tissue"] for r in rows))
    return summary
