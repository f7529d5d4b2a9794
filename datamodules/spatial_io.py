"""Readers for spatial transcriptomics slides (HEST-1k and plain 10x Visium) and the gene panel.

Layouts (a folder ``data_dir``):

* **HEST-1k** (Jaume et al. 2024): ``st/<id>.h5ad`` (AnnData; raw counts in ``X``; spot centres in
  full-resolution pixels in ``obsm['spatial']``), ``patches/<id>.h5`` (``img`` (N, P, P, 3) uint8 crops
  centred on spots, ``coords`` (N, 2) their centres in the same pixels, optionally ``barcode`` (N, 1)
  bytes), and a metadata CSV with an ``id`` column (``HEST_v1_1_0.csv`` or ``metadata.csv``).
* **Visium**: one folder per slide ``<id>/`` holding one ``*.h5ad`` (``obsm['spatial']`` in
  full-resolution pixels, as scanpy's ``read_visium`` gives), the full-resolution image
  (``*.png|*.jpg|*.jpeg|*.tif|*.tiff``) and ``scalefactors_json.json`` with ``spot_diameter_fullres``;
  patches are cropped around the spots (white padding past the border).

Every malformed file raises an error naming the file and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
EXCLUDED_GENE_PREFIXES = ("MT-", "RPS", "RPL")


class SpatialDataError(DataError):
    """A spatial transcriptomics file is missing or malformed."""


@dataclass
class Slide:
    """One slide's spots: ``counts`` (N, G_all) float32 raw counts with ``genes`` (G_all names),
    ``barcodes`` (N), ``coords`` (N, 2) pixels, ``patches`` (N, P, P, 3) uint8, and the synthetic
    ground truth when the file has it: ``composition`` (N, K) and ``truth`` (``uns['synthetic_tissue']``)."""

    slide_id: str
    genes: list[str]
    barcodes: list[str]
    counts: np.ndarray
    coords: np.ndarray
    patches: np.ndarray
    composition: np.ndarray | None = None
    truth: dict | None = None


def _read_h5ad(path: Path):
    import anndata

    if not path.exists():
        raise SpatialDataError(f"{path}: file not found (expected an AnnData .h5ad of spot counts)")
    try:
        adata = anndata.read_h5ad(path)
    except Exception as err:  # anndata raises many types; the user needs the path
        raise SpatialDataError(f"{path}: not a readable AnnData .h5ad ({err})") from err
    if "spatial" not in adata.obsm:
        raise SpatialDataError(f"{path}: obsm['spatial'] missing; expected spot centres (N, 2) in pixels")
    spatial = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if spatial.ndim != 2 or spatial.shape[1] < 2 or spatial.shape[0] != adata.n_obs:
        raise SpatialDataError(
            f"{path}: obsm['spatial'] has shape {spatial.shape}; expected ({adata.n_obs}, 2)"
        )
    return adata, spatial[:, :2]


def _dense_counts(adata) -> np.ndarray:
    x = adata.X
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    return x.astype(np.float32)


def _truth_fields(adata) -> tuple[np.ndarray | None, dict | None]:
    comp = np.asarray(adata.obsm["composition"], np.float32) if "composition" in adata.obsm else None
    truth = dict(adata.uns["synthetic_tissue"]) if "synthetic_tissue" in adata.uns else None
    return comp, truth


def read_hest_slide(data_dir: Path, slide_id: str, max_unmatched_frac: float = 0.05) -> Slide:
    """Read ``st/<id>.h5ad`` and ``patches/<id>.h5``; spots are matched to patches by barcode when
    the patch file has ``barcode``, else by exact centre coordinates. Spots without a patch and patches
    without a spot are dropped and counted; above ``max_unmatched_frac`` of either it is an error."""
    import h5py

    st_path = data_dir / "st" / f"{slide_id}.h5ad"
    patch_path = data_dir / "patches" / f"{slide_id}.h5"
    adata, spatial = _read_h5ad(st_path)
    if not patch_path.exists():
        raise SpatialDataError(
            f"{patch_path}: file not found (expected HEST patches with 'img' and 'coords')"
        )
    with h5py.File(patch_path, "r") as f:
        for field in ("img", "coords"):
            if field not in f:
                raise SpatialDataError(
                    f"{patch_path}: dataset '{field}' missing; a HEST patch file has 'img' and 'coords'"
                )
        img, coords = f["img"][:], f["coords"][:]
        patch_barcodes = [_text(b) for b in f["barcode"][:].reshape(-1)] if "barcode" in f else None
    if img.ndim != 4 or img.shape[-1] != 3 or coords.shape != (img.shape[0], 2):
        raise SpatialDataError(
            f"{patch_path}: 'img' {img.shape} / 'coords' {coords.shape}; expected (N, P, P, 3) and (N, 2)"
        )
    if patch_barcodes is not None and len(patch_barcodes) != img.shape[0]:
        raise SpatialDataError(f"{patch_path}: {len(patch_barcodes)} entries in 'barcode' but {img.shape[0]} in "
                               f"'img'; expected one barcode per image")
    barcodes = list(map(str, adata.obs_names))
    if patch_barcodes is not None:
        where = {b: i for i, b in enumerate(patch_barcodes)}
        pairs = [(s, where[b]) for s, b in enumerate(barcodes) if b in where]
        how = "barcode"
    else:
        where = {(int(round(x)), int(round(y))): i for i, (x, y) in enumerate(coords)}
        pairs = [(s, where[k]) for s, k in enumerate(map(tuple, np.rint(spatial).astype(int))) if k in where]
        how = "coords"
    if not pairs:
        raise SpatialDataError(f"{patch_path}: no patch matches a spot of {st_path} by {how}")
    _check_matches(len(pairs), len(barcodes), img.shape[0], st_path, patch_path, how, max_unmatched_frac)
    spot_idx, patch_idx = map(np.asarray, zip(*pairs))
    comp, truth = _truth_fields(adata)
    return Slide(
        slide_id=slide_id,
        genes=list(map(str, adata.var_names)),
        barcodes=[barcodes[i] for i in spot_idx],
        counts=_dense_counts(adata)[spot_idx],
        coords=spatial[spot_idx],
        patches=img[patch_idx],
        composition=None if comp is None else comp[spot_idx],
        truth=truth,
    )


def crop_around(image: np.ndarray, centres: np.ndarray, size: int) -> np.ndarray:
    """(N, size, size, 3) crops of ``image`` (H, W, 3) centred on ``centres`` (N, 2) (x, y); white past
    the border (the slide background)."""
    half = size // 2
    padded = np.pad(image, ((half, size), (half, size), (0, 0)), constant_values=255)
    xy = np.rint(centres).astype(int)
    return np.stack([padded[y : y + size, x : x + size] for x, y in xy])


def read_visium_slide(folder: Path, patch_diameters: float = 2.0) -> Slide:
    """Read a Visium folder: crops of ``patch_diameters`` x ``spot_diameter_fullres`` pixels around spots."""
    from PIL import Image

    h5ads = sorted(folder.glob("*.h5ad"))
    images = (
        sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    )
    if len(h5ads) != 1:
        raise SpatialDataError(f"{folder}: expected exactly one *.h5ad, found {len(h5ads)}")
    if len(images) != 1:
        raise SpatialDataError(
            f"{folder}: expected exactly one full-resolution image {IMAGE_SUFFIXES}, found {len(images)}"
        )
    sf_path = folder / "scalefactors_json.json"
    if not sf_path.exists():
        raise SpatialDataError(f"{sf_path}: file not found (expected Visium scale factors)")
    scalefactors = json.loads(sf_path.read_text())
    if "spot_diameter_fullres" not in scalefactors:
        raise SpatialDataError(f"{sf_path}: key 'spot_diameter_fullres' missing")
    adata, spatial = _read_h5ad(h5ads[0])
    Image.MAX_IMAGE_PIXELS = None  # whole-slide images are legitimately huge
    image = np.asarray(Image.open(images[0]).convert("RGB"))
    size = int(round(patch_diameters * float(scalefactors["spot_diameter_fullres"])))
    comp, truth = _truth_fields(adata)
    return Slide(
        slide_id=folder.name,
        genes=list(map(str, adata.var_names)),
        barcodes=list(map(str, adata.obs_names)),
        counts=_dense_counts(adata),
        coords=spatial,
        patches=crop_around(image, spatial, size),
        composition=comp,
        truth=truth,
    )


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_matches(matched: int, n_spots: int, n_patches: int, st_path: Path, patch_path: Path, how: str,
                   max_frac: float) -> None:
    """Count spots without a patch and patches without a spot; too many of either is an error."""
    no_patch, no_spot = n_spots - matched, n_patches - matched
    if no_patch or no_spot:
        print(f"[genlab] {patch_path.stem}: {no_patch} of {n_spots} spots have no patch, {no_spot} of {n_patches} "
              f"patches match no spot (matched by {how}); both are left out")
    for count, total, what, path in ((no_patch, n_spots, "spots have no patch", st_path),
                                     (no_spot, n_patches, "patches match no spot", patch_path)):
        if count > max_frac * total:
            raise SpatialDataError(f"{path}: {count} of {total} {what} (matched by {how} with {patch_path.name}); "
                                   f"at most data.max_unmatched_frac={max_frac} may be unmatched")


def list_slide_ids(data_dir: Path, layout: str, metadata_csv: str = "") -> list[str]:
    """Slide ids: the metadata CSV's ``id`` column (HEST; each must have its files), else the files found."""
    import pandas as pd

    if not data_dir.exists():
        raise SpatialDataError(f"data.data_dir: {data_dir} does not exist")
    if not data_dir.is_dir():
        raise SpatialDataError(f"data.data_dir: {data_dir} is not a folder")
    if layout == "visium":
        ids = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and any(p.glob("*.h5ad")))
    elif layout == "hest":
        csv = Path(metadata_csv) if metadata_csv else None
        if csv is None:
            found = sorted(data_dir.glob("*.csv"))
            csv = found[0] if len(found) == 1 else None
        if csv is not None:
            table = pd.read_csv(csv)
            if "id" not in table.columns:
                raise SpatialDataError(f"{csv}: column 'id' missing; columns are {list(table.columns)}")
            ids = [str(i) for i in table["id"]]
            missing = [i for i in ids if not (data_dir / "st" / f"{i}.h5ad").exists()]
            if missing:
                raise SpatialDataError(f"{csv}: ids {missing[:5]} have no {data_dir / 'st'}/<id>.h5ad")
        else:
            ids = sorted(p.stem for p in (data_dir / "st").glob("*.h5ad"))
    else:
        raise SpatialDataError(f"layout must be 'hest' or 'visium', got {layout!r}")
    if not ids:
        expected = "st/<id>.h5ad + patches/<id>.h5" if layout == "hest" else "one folder per slide with a *.h5ad"
        raise SpatialDataError(f"{data_dir}: no slides found for layout {layout!r} (expected {expected})")
    return ids


def log_expression(counts: np.ndarray) -> np.ndarray:
    """Targets y = log2(count + 1)."""
    return np.log2(counts + 1.0).astype(np.float32)


def highly_variable_genes(counts: np.ndarray, genes: list[str], n_top: int) -> list[str]:
    """Top ``n_top`` genes of one slide by dispersion var/mean of log1p(counts normalised to 1e4 per spot)."""
    totals = counts.sum(1, keepdims=True)
    x = np.log1p(1e4 * counts / np.maximum(totals, 1.0))
    mean = x.mean(0)
    dispersion = np.where(mean > 0, x.var(0) / np.maximum(mean, 1e-12), -np.inf)
    return [genes[i] for i in np.argsort(-dispersion, kind="stable")[:n_top]]


def select_gene_panel(slides: list[Slide], n_genes: int, n_hvg_per_slide: int, n_top: int) -> list[str]:
    """The paper's panel from training slides: the union of per-slide HVGs, minus MT-/RPS/RPL genes,
    intersected with the top ``n_top`` genes by mean and by std of log2(count+1) over all training
    spots, ordered by std. If that leaves fewer than ``n_genes``, the remaining HVGs follow by std."""
    common = set(slides[0].genes).intersection(*(s.genes for s in slides[1:]))
    genes = [g for g in slides[0].genes if g in common]
    pos = {g: i for i, g in enumerate(genes)}
    pooled = np.concatenate([log_expression(s.counts[:, [s.genes.index(g) for g in genes]]) for s in slides])
    mean, std = pooled.mean(0), pooled.std(0)
    hvg: set[str] = set()
    for s in slides:
        cols = [s.genes.index(g) for g in genes]
        hvg.update(highly_variable_genes(s.counts[:, cols], genes, n_hvg_per_slide))
    hvg = {g for g in hvg if not g.upper().startswith(EXCLUDED_GENE_PREFIXES)}
    top_mean = {genes[i] for i in np.argsort(-mean, kind="stable")[:n_top]}
    top_std = {genes[i] for i in np.argsort(-std, kind="stable")[:n_top]}
    by_std = sorted(hvg, key=lambda g: -std[pos[g]])
    core = [g for g in by_std if g in top_mean and g in top_std]
    panel = core + [g for g in by_std if g not in top_mean or g not in top_std]
    if len(panel) < n_genes:
        raise SpatialDataError(
            f"only {len(panel)} candidate genes (HVG union minus MT/RPS/RPL) for a panel of {n_genes}; "
            "raise n_hvg_per_slide or lower n_genes"
        )
    return panel[:n_genes]


def panel_columns(slide: Slide, panel: list[str], source: str) -> list[int]:
    """Column of each panel gene in ``slide``; an error names the file and the genes it lacks."""
    where = {g: i for i, g in enumerate(slide.genes)}
    missing = [g for g in panel if g not in where]
    if missing:
        raise SpatialDataError(f"{source}: var_names lack {len(missing)} panel genes, e.g. {missing[:5]}")
    return [where[g] for g in panel]


def resize_patches(patches: np.ndarray, size: int) -> torch.Tensor:
    """(N, P, P, 3) uint8 -> (N, 3, size, size) uint8, antialiased when shrinking."""
    x = torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2)
    if x.shape[-1] == size and x.shape[-2] == size:
        return x.contiguous()
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)
