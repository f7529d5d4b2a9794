"""Spatial transcriptomics datamodule: spot expression targets with their H&E patch (or its embedding).

Data (see :mod:`datamodules.spatial_io` for the file layouts): HEST-1k folders (``layout=hest``)
or plain 10x Visium folders (``layout=visium``). Targets are y = log2(count + 1) of a gene panel,
either given (``genes``) or selected on the training slides as in Stem (per-slide HVGs minus
MT/RPS/RPL, intersected with top genes by mean and by std). Whole slides are held out for
validation and test (``val_slides``/``test_slides`` or ``n_val_slides``/``n_test_slides`` drawn with
``split_seed``). Training patches get one of the 8 flips/rotations at random.

Image conditioning (``encoder``):

* ``image``: batches carry ``image`` (3, P, P) uint8 patches resized to ``patch_size``; the module
  trains its small CNN jointly.
* ``precomputed``: how a user brings UNI/CONCH features. One file per slide,
  ``<data_dir>/<embeddings_subdir>/<id>.h5`` with dataset ``embeddings`` of shape (N, D) or (N, A, D)
  float (A views: view 0 is the plain patch, views 1..A-1 augmented copies, as Stem precomputes 7
  flips/rotations) and ``barcode`` (N, 1) bytes naming the spots. Training draws a random view.
* ``torchvision``: a frozen torchvision backbone (``backbone``, e.g. ``resnet18``) with weights read
  from ``encoder_weights`` (a state_dict file; nothing is downloaded). Its embeddings of the 8
  dihedral views of every patch are computed once per slide and cached in ``cache_dir``
  (default ``<data_dir>/embedding_cache``) as ``<id>__<backbone>__<key>.pt``.

Batches are dicts: ``index`` (global spot index within the split), ``target`` (G,), ``image`` or
``embedding``, ``slide`` (int), ``coords`` (2,), and ``composition`` (K,) on synthetic tissue.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.tasks.synthetic_tissue import TissueModel
from datamodules.spatial_io import (
    Slide,
    SpatialDataError,
    list_slide_ids,
    log_expression,
    panel_columns,
    read_hest_slide,
    read_visium_slide,
    resize_patches,
    select_gene_panel,
)

ENCODERS = ("image", "precomputed", "torchvision")


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/rotations (k in 0..7; 0 is the identity) of images (..., H, W)."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


class SpotDataset(Dataset):
    """Spots of one split; ``tensors`` share their first dimension N."""

    def __init__(self, tensors: dict[str, torch.Tensor], augment: bool) -> None:
        self.tensors, self.augment = tensors, augment

    def __len__(self) -> int:
        return len(self.tensors["target"])

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.tensors.items()}
        item["index"] = torch.tensor(i, dtype=torch.long)
        if "image" in item and self.augment:
            item["image"] = dihedral(item["image"], random.randrange(8))
        if "embedding" in item and item["embedding"].ndim == 2:  # (A, D): one view per draw
            view = random.randrange(item["embedding"].shape[0]) if self.augment else 0
            item["embedding"] = item["embedding"][view]
        return item


class SpatialTranscriptomicsDataModule(L.LightningDataModule):
    def __init__(
        self,
        data_dir: str = "",
        fallback_dir: str = "",
        layout: str = "hest",
        metadata_csv: str = "",
        genes: list[str] | None = None,
        n_genes: int = 128,
        n_hvg_per_slide: int = 1000,
        n_top_genes: int = 1000,
        val_slides: list[str] | None = None,
        test_slides: list[str] | None = None,
        n_val_slides: int = 1,
        n_test_slides: int = 1,
        split_seed: int = 0,
        patch_size: int = 32,
        visium_patch_diameters: float = 2.0,
        max_unmatched_frac: float = 0.05,
        encoder: str = "image",
        embeddings_subdir: str = "embeddings",
        backbone: str = "resnet18",
        encoder_weights: str = "",
        cache_dir: str = "",
        augment: bool = True,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        data_dir = data_dir or fallback_dir  # fallback_dir: the generated folder used when no path is given
        if not 0.0 <= max_unmatched_frac <= 1.0:
            raise SpatialDataError(f"data.max_unmatched_frac: expected a fraction in [0, 1], got {max_unmatched_frac}")
        self.max_unmatched_frac = max_unmatched_frac
        if not data_dir:
            raise SpatialDataError(
                "data.data_dir: empty; give a HEST-1k or Visium folder (the experiments "
                "fall back to a synthetic one from hest_synthetic_data)"
            )
        if encoder not in ENCODERS:
            raise SpatialDataError(f"data.encoder: {encoder!r} unknown; choose one of {ENCODERS}")
        if encoder == "torchvision" and not encoder_weights:
            raise SpatialDataError(
                "data.encoder_weights: encoder=torchvision needs a state_dict file (no downloads)"
            )
        self.data_dir, self.layout, self.metadata_csv = Path(data_dir), layout, metadata_csv
        self.genes_given = list(genes) if genes else None
        self.n_genes = len(self.genes_given) if self.genes_given else n_genes
        self.n_hvg_per_slide, self.n_top_genes = n_hvg_per_slide, n_top_genes
        self.val_ids, self.test_ids = val_slides, test_slides
        self.n_val_slides, self.n_test_slides, self.split_seed = n_val_slides, n_test_slides, split_seed
        self.patch_size, self.visium_patch_diameters = patch_size, visium_patch_diameters
        self.encoder, self.embeddings_subdir = encoder, embeddings_subdir
        self.backbone, self.encoder_weights = backbone, encoder_weights
        self.cache_dir = Path(cache_dir) if cache_dir else self.data_dir / "embedding_cache"
        self.augment, self.batch_size, self.eval_batch_size = augment, batch_size, eval_batch_size
        self.seed, self.num_workers = seed, num_workers
        self.splits: dict[str, SpotDataset] = {}
        self.split_slides: dict[str, list[str]] = {}
        self.gene_panel: list[str] = []
        self.tissue_model: TissueModel | None = None
        self.target_mean = self.target_std = None

    # ------------------------------------------------------------------ loading

    def _read(self, slide_id: str) -> Slide:
        if self.layout == "visium":
            return read_visium_slide(self.data_dir / slide_id, self.visium_patch_diameters)
        return read_hest_slide(self.data_dir, slide_id, self.max_unmatched_frac)

    def _split_ids(self, ids: list[str]) -> dict[str, list[str]]:
        if self.val_ids is not None or self.test_ids is not None:
            val, test = list(self.val_ids or []), list(self.test_ids or [])
            unknown = [i for i in val + test if i not in ids]
            if unknown:
                raise SpatialDataError(f"data.val_slides/test_slides: {unknown} not among slides {ids}")
            train = [i for i in ids if i not in val and i not in test]
        else:
            order = [
                ids[i]
                for i in torch.randperm(len(ids), generator=torch.Generator().manual_seed(self.split_seed))
            ]
            n_test, n_val = self.n_test_slides, self.n_val_slides
            test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
        if not train or not val or not test:
            raise SpatialDataError(
                f"{self.data_dir}: {len(ids)} slides cannot give train/val/test slide sets "
                f"({len(train)}/{len(val)}/{len(test)}); a slide-level split needs at least 3 slides"
            )
        return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}

    def _source(self, slide_id: str) -> str:
        return str(
            self.data_dir / slide_id if self.layout == "visium" else self.data_dir / "st" / f"{slide_id}.h5ad"
        )

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        ids = list_slide_ids(self.data_dir, self.layout, self.metadata_csv)
        self.split_slides = self._split_ids(ids)
        slides = {i: self._read(i) for i in ids}
        train_slides = [slides[i] for i in self.split_slides["train"]]
        self.gene_panel = self.genes_given or select_gene_panel(
            train_slides, self.n_genes, self.n_hvg_per_slide, self.n_top_genes
        )
        truths = [s.truth for s in slides.values()]
        if all(t is not None for t in truths) and all(s.composition is not None for s in slides.values()):
            full = TissueModel.from_arrays(slides[ids[0]].genes, truths[0])
            self.tissue_model = _restrict(
                full, panel_columns(slides[ids[0]], self.gene_panel, self._source(ids[0]))
            )
        for name, members in self.split_slides.items():
            self.splits[name] = SpotDataset(
                self._tensors(name, [slides[i] for i in members]), augment=self.augment and name == "train"
            )
        train_y = self.splits["train"].tensors["target"]
        self.target_mean, self.target_std = train_y.mean(0), train_y.std(0).clamp_min(1e-3)

    def _tensors(self, split: str, slides: list[Slide]) -> dict[str, torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {"target": [], "slide": [], "coords": []}
        for s in slides:
            cols = panel_columns(s, self.gene_panel, self._source(s.slide_id))
            parts["target"].append(torch.from_numpy(log_expression(s.counts[:, cols])))
            parts["slide"].append(torch.full((len(s.counts),), self.split_slides[split].index(s.slide_id)))
            parts["coords"].append(torch.from_numpy(s.coords.astype(np.float32)))
            if s.composition is not None:
                parts.setdefault("composition", []).append(torch.from_numpy(s.composition))
            if self.encoder == "image":
                parts.setdefault("image", []).append(resize_patches(s.patches, self.patch_size))
            else:
                parts.setdefault("embedding", []).append(self._embeddings(s))
        return {k: torch.cat(v) for k, v in parts.items() if len(v) == len(slides)}

    # ------------------------------------------------------------------ embeddings

    def _embeddings(self, slide: Slide) -> torch.Tensor:
        if self.encoder == "precomputed":
            return read_precomputed_embeddings(
                self.data_dir / self.embeddings_subdir / f"{slide.slide_id}.h5", slide
            )
        weights = Path(self.encoder_weights)
        if not weights.exists():
            raise SpatialDataError(f"{weights}: data.encoder_weights file not found")
        stat = weights.stat()
        key = hashlib.sha1(
            f"{weights.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.patch_size}|"
            f"{len(slide.barcodes)}".encode()
        ).hexdigest()[:12]
        path = self.cache_dir / f"{slide.slide_id}__{self.backbone}__{key}.pt"
        if path.exists():
            return torch.load(path, weights_only=True)
        emb = torchvision_embeddings(resize_patches(slide.patches, self.patch_size), self.backbone, weights)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        torch.save(emb, path)
        return emb

    @property
    def embedding_dim(self) -> int:
        self.setup()
        return int(self.splits["train"].tensors["embedding"].shape[-1]) if self.encoder != "image" else 0

    # ------------------------------------------------------------------ loaders

    def train_tensor(self) -> torch.Tensor:
        """Training targets (N, G) of log2(count + 1)."""
        self.setup()
        return self.splits["train"].tensors["target"]

    def split_tensors(self, split: str) -> dict[str, torch.Tensor]:
        self.setup()
        return self.splits[split].tensors

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        ds = self.splits[split]
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            ds,
            batch_size=min(batch_size, len(ds)),
            shuffle=shuffle,
            generator=gen,
            drop_last=shuffle and len(ds) > batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)


def _restrict(model: TissueModel, cols: list[int]) -> TissueModel:
    """The ground-truth model on the panel genes only (genes are conditionally independent given
    (pi, z), so dropping genes leaves the others' conditional law unchanged)."""
    return TissueModel(
        [model.gene_names[c] for c in cols],
        model.base[cols],
        model.programme[:, cols],
        model.state_effect[cols],
        model.state_weight,
        model.state_bias,
        model.dispersion[cols],
    )


def read_precomputed_embeddings(path: Path, slide: Slide) -> torch.Tensor:
    """``embeddings`` (N, D) or (N, A, D) rows matched to the slide's spots by ``barcode``."""
    import h5py

    if not path.exists():
        raise SpatialDataError(
            f"{path}: file not found (encoder=precomputed expects 'embeddings' and 'barcode')"
        )
    with h5py.File(path, "r") as f:
        for field in ("embeddings", "barcode"):
            if field not in f:
                raise SpatialDataError(f"{path}: dataset '{field}' missing")
        emb = torch.as_tensor(f["embeddings"][:], dtype=torch.float32)
        barcodes = [b.decode() for b in f["barcode"][:].reshape(-1)]
    if emb.ndim not in (2, 3) or len(emb) != len(barcodes):
        raise SpatialDataError(
            f"{path}: 'embeddings' {tuple(emb.shape)} must be (N, D) or (N, A, D) with N = "
            f"{len(barcodes)} barcodes"
        )
    where = {b: i for i, b in enumerate(barcodes)}
    missing = [b for b in slide.barcodes if b not in where]
    if missing:
        raise SpatialDataError(
            f"{path}: 'barcode' lacks {len(missing)} spots of slide {slide.slide_id}, e.g. {missing[:3]}"
        )
    return emb[[where[b] for b in slide.barcodes]]


@torch.no_grad()
def torchvision_embeddings(
    patches: torch.Tensor, backbone: str, weights: Path, batch: int = 256
) -> torch.Tensor:
    """(N, 8, D) pooled features of a frozen torchvision ``backbone`` for the 8 dihedral views of
    ``patches`` (N, 3, P, P) uint8, with ImageNet normalisation; the classifier head is removed."""
    import torchvision

    if not hasattr(torchvision.models, backbone):
        raise SpatialDataError(f"data.backbone: torchvision.models has no {backbone!r}")
    net = getattr(torchvision.models, backbone)(weights=None)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    for head in ("fc", "classifier", "head", "heads"):
        if hasattr(net, head):
            setattr(net, head, torch.nn.Identity())
    net.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    views = []
    for k in range(8):
        feats = [
            net((dihedral(patches[i : i + batch].float() / 255, k) - mean) / std)
            for i in range(0, len(patches), batch)
        ]
        views.append(torch.cat(feats).flatten(1))
    return torch.stack(views, dim=1)
