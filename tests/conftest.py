import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _in_tmp_cwd(tmp_path, monkeypatch):
    """Every test runs in its own folder, so runs/ and artifacts never leak between tests."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GENLAB_OUTPUT_DIR", raising=False)
    yield
