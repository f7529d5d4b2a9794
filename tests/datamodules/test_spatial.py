import h5py
import numpy as np
import pytest
import torch

from core.tasks.synthetic_tissue_files import write_synthetic_dataset
from datamodules.spatial import SpatialTranscriptomicsDataModule, dihedral
from datamodules.spatial_io import Slide, SpatialDataError, read_hest_slide, select_gene_panel

GEN = dict(n_slides=3, n_genes=40, height=80, width=80, spacing=16, patch_size=16, seed=0)


@pytest.fixture(scope="module")
def hest_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hest")
    write_synthetic_dataset(root, **GEN)
    return root


@pytest.fixture(scope="module")
def visium_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("visium")
    write_synthetic_dataset(root, layout="visium", **GEN)
    return root


def _dm(root, **kw):
    args = dict(
        data_dir=str(root), n_genes=20, n_hvg_per_slide=30, n_top_genes=30, patch_size=16, batch_size=8
    )
    args.update(kw)
    dm = SpatialTranscriptomicsDataModule(**args)
    dm.setup()
    return dm


def test_hest_loader_reads_generator_files(hest_dir):
    import anndata

    dm = _dm(hest_dir)
    slides = dm.split_slides
    assert sorted(slides["train"] + slides["val"] + slides["test"]) == ["SYN000", "SYN001", "SYN002"]
    assert len(set(slides["train"]) & set(slides["test"])) == 0
    panel = dm.gene_panel
    assert len(panel) == 20 and not any(g.startswith(("MT-", "RPL", "RPS")) for g in panel)
    test_id = slides["test"][0]
    adata = anndata.read_h5ad(hest_dir / "st" / f"{test_id}.h5ad")
    expected = np.log2(adata[:, panel].X + 1)
    tensors = dm.split_tensors("test")
    np.testing.assert_allclose(tensors["target"].numpy(), expected, rtol=1e-6)
    with h5py.File(hest_dir / "patches" / f"{test_id}.h5") as f:
        assert torch.equal(tensors["image"], torch.from_numpy(f["img"][:]).permute(0, 3, 1, 2))
    np.testing.assert_allclose(tensors["coords"].numpy(), adata.obsm["spatial"])
    assert dm.tissue_model.gene_names == panel and tensors["composition"].shape[1] == 4
    batch = next(iter(dm.train_dataloader()))
    assert batch["target"].shape == (8, 20) and batch["image"].shape == (8, 3, 16, 16)
    assert batch["index"].dtype == torch.long


def test_visium_crops_equal_hest_patches(hest_dir, visium_dir):
    hest = read_hest_slide(hest_dir, "SYN001")
    dm = _dm(visium_dir, layout="visium", val_slides=["SYN000"], test_slides=["SYN001"])
    torch.testing.assert_close(
        dm.split_tensors("test")["image"], torch.from_numpy(hest.patches).permute(0, 3, 1, 2)
    )


def test_given_panel_and_split(hest_dir):
    dm = _dm(hest_dir, genes=["GENE0003", "GENE0001"], val_slides=["SYN001"], test_slides=["SYN002"])
    assert dm.gene_panel == ["GENE0003", "GENE0001"] and dm.split_slides["train"] == ["SYN000"]
    with pytest.raises(SpatialDataError, match=r"SYN000\.h5ad: var_names lack 1 panel genes.*NOTAGENE"):
        _dm(hest_dir, genes=["GENE0003", "NOTAGENE"])
    with pytest.raises(SpatialDataError, match="not among slides"):
        _dm(hest_dir, test_slides=["SYN999"])


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_spatial_names_file_and_field(hest_dir, tmp_path):
    import anndata

    root = _copy(hest_dir, tmp_path / "bad")
    path = root / "st" / "SYN001.h5ad"
    adata = anndata.read_h5ad(path)
    del adata.obsm["spatial"]
    adata.write_h5ad(path)
    with pytest.raises(SpatialDataError, match=r"SYN001\.h5ad: obsm\['spatial'\] missing"):
        _dm(root)


def test_patches_without_coords_name_file_and_field(hest_dir, tmp_path):
    root = _copy(hest_dir, tmp_path / "bad")
    path = root / "patches" / "SYN002.h5"
    with h5py.File(path, "a") as f:
        del f["coords"]
    with pytest.raises(SpatialDataError, match=r"SYN002\.h5: dataset 'coords' missing"):
        _dm(root)


def test_patches_match_by_coords_without_barcodes(hest_dir, tmp_path):
    root = _copy(hest_dir, tmp_path / "nobarcode")
    path = root / "patches" / "SYN000.h5"
    with h5py.File(path, "a") as f:
        img, coords = f["img"][:], f["coords"][:]
        del f["barcode"], f["img"], f["coords"]
        order = np.arange(len(img))[::-1]  # patches stored in another order than the spots
        f["img"], f["coords"] = img[order], coords[order]
    slide = read_hest_slide(root, "SYN000")
    np.testing.assert_array_equal(slide.patches, img)


def test_metadata_must_name_existing_slides(hest_dir, tmp_path):
    root = _copy(hest_dir, tmp_path / "meta")
    (root / "metadata.csv").write_text("id,organ\nSYN000,x\nSYN404,x\n")
    with pytest.raises(SpatialDataError, match=r"metadata\.csv: ids \['SYN404'\]"):
        _dm(root)


def test_dihedral_group_has_eight_distinct_views():
    x = torch.arange(9.0).reshape(1, 3, 3)
    views = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(views) == 8 and torch.equal(dihedral(x, 0), x)


def test_precomputed_embeddings_are_matched_by_barcode(hest_dir, tmp_path):
    root = _copy(hest_dir, tmp_path / "emb")
    (root / "embeddings").mkdir()
    for sid in ("SYN000", "SYN001", "SYN002"):
        slide = read_hest_slide(root, sid)
        n = len(slide.barcodes)
        emb = np.stack([np.full((3, 5), i, np.float32) for i in range(n)])  # row i is spot i, 3 views
        rev = np.arange(n)[::-1]
        with h5py.File(root / "embeddings" / f"{sid}.h5", "w") as f:
            f["embeddings"] = emb[rev]
            f["barcode"] = np.array(slide.barcodes, dtype="S")[rev][:, None]
    dm = _dm(root, encoder="precomputed")
    test = dm.split_tensors("test")["embedding"]
    assert test.shape[1:] == (3, 5) and torch.equal(
        test[:, 0, 0], torch.arange(len(test), dtype=torch.float32)
    )
    assert dm.embedding_dim == 5
    assert next(iter(dm.test_dataloader()))["embedding"].shape[-1] == 5
    with h5py.File(root / "embeddings" / "SYN001.h5", "a") as f:
        del f["barcode"]
    with pytest.raises(SpatialDataError, match=r"SYN001\.h5: dataset 'barcode' missing"):
        _dm(root, encoder="precomputed")


@pytest.mark.slow
def test_torchvision_embeddings_are_cached_per_slide(hest_dir, tmp_path):
    import torchvision

    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    cache = tmp_path / "cache"
    dm = _dm(hest_dir, encoder="torchvision", encoder_weights=str(weights), cache_dir=str(cache))
    files = sorted(cache.glob("*.pt"))
    assert len(files) == 3 and dm.embedding_dim == 512
    assert dm.split_tensors("train")["embedding"].shape[1:] == (8, 512)
    stamp = [f.stat().st_mtime_ns for f in files]
    dm2 = _dm(hest_dir, encoder="torchvision", encoder_weights=str(weights), cache_dir=str(cache))
    assert [f.stat().st_mtime_ns for f in files] == stamp  # read back, not recomputed
    torch.testing.assert_close(dm2.split_tensors("test")["embedding"], dm.split_tensors("test")["embedding"])


def _slide(counts, genes):
    n = len(counts)
    return Slide(
        "s",
        genes,
        [str(i) for i in range(n)],
        counts.astype(np.float32),
        np.zeros((n, 2)),
        np.zeros((n, 2, 2, 3), np.uint8),
    )


def test_gene_panel_drops_mito_ribo_and_flat_genes():
    rng = np.random.default_rng(0)
    n = 200
    varied = rng.negative_binomial(2, 0.2, size=(n, 3))  # mean 8, highly variable
    mito = rng.negative_binomial(2, 0.05, size=(n, 2))  # high and variable, but MT-/RPL
    flat = np.full((n, 2), 5)  # expressed, no variation
    counts = np.concatenate([varied, mito, flat], axis=1)
    genes = ["A", "B", "C", "MT-X", "RPL9", "F1", "F2"]
    panel = select_gene_panel([_slide(counts, genes)], n_genes=3, n_hvg_per_slide=5, n_top=5)
    assert sorted(panel) == ["A", "B", "C"]
    with pytest.raises(SpatialDataError, match="candidate genes"):
        select_gene_panel([_slide(counts, genes)], n_genes=6, n_hvg_per_slide=7, n_top=7)
