"""Bad spatial input is a DataError naming the file and the field, raised before training; through
run.py it is one line on stderr and exit code 2, and a user folder never builds the synthetic one."""

import shutil

import h5py
import pytest

import run
from core.tasks.synthetic_tissue_files import write_synthetic_dataset
from datamodules.errors import DataError
from datamodules.spatial import SpatialTranscriptomicsDataModule
from datamodules.spatial_io import read_hest_slide

GEN = dict(n_slides=3, n_genes=40, height=80, width=80, spacing=16, patch_size=16, seed=0)


@pytest.fixture(scope="module")
def hest_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hest")
    write_synthetic_dataset(root, **GEN)
    return root


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _setup(root, **kw):
    dm = SpatialTranscriptomicsDataModule(data_dir=str(root), n_genes=20, n_hvg_per_slide=30, n_top_genes=30,
                                          patch_size=16, batch_size=8, **kw)
    dm.setup()
    return dm


def _rewrite_patches(path, keep_img: slice = slice(None), keep_barcodes: slice = slice(None)):
    with h5py.File(path, "a") as f:
        img, coords, barcode = f["img"][:], f["coords"][:], f["barcode"][:]
        del f["img"], f["coords"], f["barcode"]
        f["img"], f["coords"], f["barcode"] = img[keep_img], coords[keep_img], barcode[keep_barcodes]
    return len(img)


def test_nonexistent_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match=r"data\.data_dir: .*nowhere does not exist"):
        _setup(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no slides found for layout 'hest' \(expected st/<id>\.h5ad"):
        _setup(tmp_path / "empty")


def test_unreadable_h5ad_names_the_file(hest_dir, tmp_path):
    root = _copy(hest_dir, tmp_path / "bad")
    (root / "st" / "SYN001.h5ad").write_text("not hdf5")
    with pytest.raises(DataError, match=r"SYN001\.h5ad: not a readable AnnData"):
        _setup(root)


def test_barcode_and_image_counts_must_agree(hest_dir, tmp_path):
    root = _copy(hest_dir, tmp_path / "fewer_barcodes")
    n = _rewrite_patches(root / "patches" / "SYN000.h5", keep_barcodes=slice(0, 11))
    with pytest.raises(DataError, match=rf"SYN000\.h5: 11 entries in 'barcode' but {n} in 'img'"):
        read_hest_slide(root, "SYN000")
    root = _copy(hest_dir, tmp_path / "fewer_images")
    _rewrite_patches(root / "patches" / "SYN000.h5", keep_img=slice(0, 11))
    with pytest.raises(DataError, match=rf"SYN000\.h5: {n} entries in 'barcode' but 11 in 'img'"):
        read_hest_slide(root, "SYN000")


def test_unmatched_spots_are_counted_and_capped(hest_dir, tmp_path, capsys):
    root = _copy(hest_dir, tmp_path / "unmatched")
    path = root / "patches" / "SYN000.h5"
    with h5py.File(path, "a") as f:
        barcode = f["barcode"][:]
        n = len(barcode)
        barcode.reshape(-1)[:2] = [b"nowhere-1", b"nowhere-2"]  # two patches whose spot is unknown
        del f["barcode"]
        f["barcode"] = barcode
    slide = read_hest_slide(root, "SYN000", max_unmatched_frac=0.5)
    assert len(slide.barcodes) == n - 2
    assert f"2 of {n} spots have no patch, 2 of {n} patches match no spot" in capsys.readouterr().out
    with pytest.raises(DataError, match=rf"SYN000\.h5ad: 2 of {n} spots have no patch.*max_unmatched_frac=0\.01"):
        read_hest_slide(root, "SYN000", max_unmatched_frac=0.01)


def test_run_py_names_the_folder_in_one_line_and_skips_the_artifact(tmp_path, capsys):
    argv = ["experiment=stem_hest", "debug=fast", "logger=none", f"output_dir={tmp_path / 'out'}",
            f"data.data_dir={tmp_path / 'missing'}"]
    assert run.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: data.data_dir: {tmp_path / 'missing'} does not exist\n"
    assert "artifact 'data' not needed: data.data_dir is given" in captured.out
    assert "producing artifact" not in captured.out

