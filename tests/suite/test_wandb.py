"""W&B tells the truth about a run: a tiny diffusion_2d run logged offline is read back from its
``.wandb`` file (tests/suite/wandb_records.py), and its config, job type, tags, group, history and
summary (claims included) are compared with what the run did (its config, history.csv,
results.json); a job experiment's run and a study's summary run are read back too. A run with
another logger never imports wandb. Each experiment runs in a fresh interpreter (``sys.modules`` is
the evidence; the test configs' study of plain jobs runs in-process), offline, with W&B's server address pointing at a closed local port, no API key and no
terminal to prompt on."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.suite.test_outputs import SMALL

ROOT = Path(__file__).resolve().parents[2]
TINY = [a for a in SMALL if not a.startswith("logger=")]

DRIVER = """
import json, sys
import run
code = run.main(json.loads(sys.argv[1]))
print("WANDB_IMPORTED=" + str("wandb" in sys.modules))
sys.exit(code)
"""


def run_tiny(out: Path, *extra: str) -> str:
    """``run.main`` on the tiny diffusion_2d config in a fresh interpreter; its stdout and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_BASE_URL="http://127.0.0.1:9", WANDB_SILENT="true",
               WANDB_CONFIG_DIR=str(out / "wandb-config"), WANDB_CACHE_DIR=str(out / "wandb-cache"),
               WANDB_DATA_DIR=str(out / "wandb-data"))
    argv = [*TINY, f"output_dir={out / 'run'}", *extra]
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(argv)], cwd=ROOT, env=env, text=True,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    return log


@pytest.mark.parametrize("logger", ["csv", "none"])
def test_other_loggers_never_import_wandb(tmp_path, logger):
    log = run_tiny(tmp_path, f"logger={logger}")
    assert "WANDB_IMPORTED=False" in log, log[-3000:]
    assert not (tmp_path / "run" / "wandb").exists()


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """One offline W&B run with a user tag; its folder, output and parsed records."""
    wr = pytest.importorskip("tests.suite.wandb_records")
    out = tmp_path_factory.mktemp("wandb")
    log = run_tiny(out, "logger=wandb", "logger.mode=offline", "logger.tags=[mine]", "seed=7")
    files = wr.offline_runs(out / "run")
    assert len(files) == 1, files
    return out / "run", log, wr.records(files[0]), files[0]


def test_offline_run_carries_the_whole_config(offline_run):
    from tests.suite.wandb_records import config, run_record

    folder, log, recs, _ = offline_run
    assert "WANDB_IMPORTED=True" in log
    run = run_record(recs)
    assert run.job_type == "main"
    assert list(run.tags) == ["diffusion_2d", "small", "mine"]
    assert run.run_group == f"diffusion_2d-{folder.name}"
    assert run.display_name == "diffusion_2d/main"
    cfg = config(recs)
    assert cfg["seed"] == 7 and cfg["experiment"] == "diffusion_2d" and cfg["scale"] == "small"
    assert cfg["trainer"]["max_steps"] == 14 and cfg["trainer"]["log_every_n_steps"] == 1
    assert cfg["data"]["n_train"] == 256 and cfg["data"]["batch_size"] == 64
    assert cfg["module"]["hidden"] == 16 and cfg["module"]["sample_steps"] == 5
    assert cfg["callbacks"]["samples"]["every_n_steps"] == 0
    assert cfg["variant"] == {"name": "main", "overrides": {}}
    assert cfg["versions"]["git"] and cfg["versions"]["torch"] and cfg["versions"]["lightning"]
    saved = json.loads((folder / "results.json").read_text())["versions"]
    assert cfg["versions"] == saved


def test_offline_run_history_and_summary_match_the_run(offline_run):
    from tests.suite.wandb_records import history, summary

    folder, _, recs, _ = offline_run
    rows = history(recs)
    assert [r["_step"] for r in rows] == list(range(len(rows)))
    train = [r for r in rows if "train/loss" in r]
    # log_every_n_steps=1: one train/loss row at every optimizer step, in order
    assert [r["trainer/global_step"] for r in train] == list(range(14))
    with open(folder / "history.csv") as f:
        written = [float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]]
    assert [r["train/loss"] for r in train] == written
    final = summary(recs)
    metrics = json.loads((folder / "results.json").read_text())["metrics"]
    tested = {k: v for k, v in metrics.items() if k.startswith("test/")}
    assert tested and {k: final[k] for k in tested} == tested


def test_offline_run_is_announced_and_never_online(offline_run):
    folder, log, _, path = offline_run
    where = f"W&B run offline in {path.parent}: upload it with `wandb sync {path.parent}`"
    assert log.count(where) == 2, log[-3000:]  # at start and at the end
    logs = "".join(p.read_text(errors="ignore") for p in (folder / "wandb").rglob("*.log"))
    assert "127.0.0.1:9" not in logs and "api.wandb.ai" not in logs


def test_study_variants_share_a_group_and_name_their_job_type(tmp_path):
    wr = pytest.importorskip("tests.suite.wandb_records")
    study = "study={variants: {narrow: {module.hidden: 8}, wide: {module.hidden: 12}}}"
    run_tiny(tmp_path, "logger=wandb", "logger.mode=offline", study, "claims=null", "trainer.max_steps=4")
    seen = {}
    for name in ("narrow", "wide"):
        files = wr.offline_runs(tmp_path / "run" / name)
        assert len(files) == 1, files
        recs = wr.records(files[0])
        seen[name] = (wr.run_record(recs), wr.config(recs))
    assert {n: r.job_type for n, (r, _) in seen.items()} == {"narrow": "narrow", "wide": "wide"}
    assert {r.run_group for r, _ in seen.values()} == {"diffusion_2d-run"}
    assert {n: c["module"]["hidden"] for n, (_, c) in seen.items()} == {"narrow": 8, "wide": 12}
    assert seen["wide"][1]["variant"] == {"name": "wide", "overrides": {"module.hidden": 12}}


def test_reader_follows_records_across_blocks(tmp_path, monkeypatch):
    """800 rows make a file of ~10 blocks, with records split into FIRST/MIDDLE/LAST chunks."""
    wr = pytest.importorskip("tests.suite.wandb_records")
    wandb = pytest.importorskip("wandb")
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="reader", dir=str(tmp_path), mode="offline", config={"a": {"b": 1}})
    for i in range(800):
        run.log({"x": i, "text": f"{i:0300d}"})
    run.finish()
    wandb.teardown()  # stops the wandb-core service this test started
    (path,) = wr.offline_runs(tmp_path)
    data = path.read_bytes()
    assert len(data) > 4 * wr.BLOCK
    at_block_starts = {data[k * wr.BLOCK + 6] for k in range(1, len(data) // wr.BLOCK)}  # chunk types
    assert at_block_starts & {wr.MIDDLE, wr.LAST}, "no record crosses a block boundary"
    recs = wr.records(path)
    rows = wr.history(recs)
    assert [(r["_step"], r["x"], r["text"]) for r in rows] == [(i, i, f"{i:0300d}") for i in range(800)]
    assert wr.config(recs)["a"] == {"b": 1} and wr.summary(recs)["x"] == 799
    corrupt = bytearray(data)
    corrupt[2 * wr.BLOCK + wr.CHUNK_HEADER.size] ^= 0xFF  # the first data byte of block 2
    with pytest.raises(ValueError, match="checksum mismatch"):
        list(wr.payloads(bytes(corrupt)))


def test_offline_run_summary_holds_every_claim(offline_run):
    """The claims, computed after training, reach the variant's own run (one .wandb file) before it
    is finished: the summary's ``claims/<name>/holds`` equal results.json's, and a claims table."""
    from tests.suite.wandb_records import summary

    folder, _, recs, _ = offline_run
    claims = json.loads((folder / "results.json").read_text())["claims"]
    final = summary(recs)
    assert claims and {n: final[f"claims/{n}/holds"] for n in claims} == {n: c["holds"] for n, c in claims.items()}
    for name, claim in claims.items():
        if isinstance(claim["value"], (int, float, str)) and not isinstance(claim["value"], bool):
            assert final[f"claims/{name}/value"] == claim["value"]
    assert final["claims"]["_type"] == "table-file"


def test_job_experiment_gets_a_run_with_its_figures(tmp_path):
    """A ``job`` experiment (no Lightning) is a W&B run too: its config, its metrics in the summary and
    the PNG figures it wrote, logged as images."""
    wr = pytest.importorskip("tests.suite.wandb_records")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_BASE_URL="http://127.0.0.1:9", WANDB_SILENT="true", WANDB_CONFIG_DIR=str(tmp_path / "cfg"),
               WANDB_CACHE_DIR=str(tmp_path / "cache"), WANDB_DATA_DIR=str(tmp_path / "data"))
    argv = ["experiment=normconst_gmm", "debug=fast", "logger=wandb", "logger.mode=offline",
            f"output_dir={tmp_path / 'run'}"]
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(argv)], cwd=ROOT, env=env, text=True,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    files = wr.offline_runs(tmp_path / "run")
    assert len(files) == 1, files
    recs = wr.records(files[0])
    cfg = wr.config(recs)
    assert cfg["experiment"] == "normconst_gmm" and cfg["variant"]["name"] == "main"
    assert wr.run_record(recs).job_type == "main"
    final = wr.summary(recs)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["metrics"] and {k: final[k] for k in results["metrics"]} == results["metrics"]
    images = [k for row in [*wr.history(recs), final] for k, v in row.items()
              if isinstance(v, dict) and v.get("_type") == "image-file"]
    pngs = sorted(p.stem for p in (tmp_path / "run").glob("*.png"))
    assert pngs and sorted(set(images)) == [f"media/{s}" for s in pngs]
    copied = sorted(p.name.rsplit("_", 2)[0] for p in (files[0].parent / "files" / "media").rglob("*.png"))
    assert copied == pngs  # the figures themselves travel with the run
    assert {n: final[f"claims/{n}/holds"] for n in results["claims"]} == {
        n: c["holds"] for n, c in results["claims"].items()}


def test_study_claims_go_to_a_summary_run_of_the_group(config_dir, tmp_path, monkeypatch):
    """A study's claims compare variants, so they go to one more run of the group, ``job_type=study``,
    in the study's folder; each job variant has its own run (no claims there)."""
    wr = pytest.importorskip("tests.suite.wandb_records")
    pytest.importorskip("wandb")
    import run as genlab

    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "study"
    try:
        assert genlab.main(["experiment=studied", "debug=fast", "logger=wandb", "logger.mode=offline",
                            f"output_dir={out}"]) == 0
    finally:
        import wandb

        wandb.teardown()
    results = json.loads((out / "results.json").read_text())
    (summary_file,) = wr.offline_runs(out)
    recs = wr.records(summary_file)
    run = wr.run_record(recs)
    assert run.job_type == "study" and run.run_group == "studied-study" and run.display_name == "studied/study"
    final = wr.summary(recs)
    claim = results["claims"]["values_positive"]
    assert {k: final[f"claims/values_positive/{k}"] for k in ("holds", "value", "reference")} == {
        k: claim[k] for k in ("holds", "value", "reference")}
    for name in results["variants"]:
        (path,) = wr.offline_runs(out / name)
        vrecs = wr.records(path)
        assert wr.run_record(vrecs).job_type == name and wr.run_record(vrecs).run_group == "studied-study"
        assert wr.summary(vrecs)["value"] == results["variants"][name]["metrics"]["value"]
        assert not any(k.startswith("claims") for k in wr.summary(vrecs))
