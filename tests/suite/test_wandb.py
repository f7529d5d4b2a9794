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
    return run_fresh(out, [*TINY, f"output_dir={out / 'run'}", *extra])


def run_fresh(out: Path, argv: list[str]) -> str:
    """``run.main(argv)`` in a fresh interpreter, W&B offline with its server at a closed port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_BASE_URL="http://127.0.0.1:9", WANDB_SILENT="true",
               WANDB_CONFIG_DIR=str(out / "wandb-config"), WANDB_CACHE_DIR=str(out / "wandb-cache"),
               WANDB_DATA_DIR=str(out / "wandb-data"))
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


def steps_of(rows: list[dict], key: str) -> list[int]:
    """The ``trainer/global_step`` of every W&B history row that holds ``key``, in logging order."""
    return [int(r["trainer/global_step"]) for r in rows if key in r]


def csv_steps(path: Path, key: str) -> list[int]:
    with open(path) as f:
        return [int(float(r["step"])) for r in csv.DictReader(f) if r.get(key)]


@pytest.fixture(scope="module")
def sharpness_run(tmp_path_factory):
    """vl_eos_mlp debug=fast, GD only (study=null), sharpness every 3 of 9 steps, log_model=true."""
    wr = pytest.importorskip("tests.suite.wandb_records")
    out = tmp_path_factory.mktemp("sharpness")
    run_fresh(out, ["experiment=vl_eos_mlp", "debug=fast", "study=null", "logger=wandb", "logger.mode=offline",
                    "logger.log_model=true", "callbacks.sharpness.every_n_steps=3", "trainer.max_steps=9",
                    "trainer.val_check_interval=9", f"output_dir={out / 'run'}"])
    (path,) = wr.offline_runs(out / "run")
    return out / "run", wr.records(path)


@pytest.mark.slow  # one vl_eos_mlp run (~30 s)
def test_a_measurement_is_logged_once_at_its_step(sharpness_run):
    """The steps of ``sharpness/lambda_max`` in W&B are the measurement steps of sharpness.csv, each
    once (Lightning's on-step logging re-sent it at every logging step, one step early), and history.csv
    holds it at the same steps; its train/ and val/ rows sit at W&B's steps too. Every family is plotted
    against trainer/global_step."""
    from tests.suite.wandb_records import config, history, step_metrics

    folder, recs = sharpness_run
    rows = history(recs)
    measured = csv_steps(folder / "sharpness.csv", "lambda_max")
    assert measured == [3, 6, 9]
    assert steps_of(rows, "sharpness/lambda_max") == measured
    assert csv_steps(folder / "history.csv", "sharpness/lambda_max") == measured
    for key in ("train/loss", "val/loss", "sharpness/late_lambda_max", "test/loss"):
        assert csv_steps(folder / "history.csv", key) == steps_of(rows, key) != [], key
    assert step_metrics(recs)["sharpness/*"] == "trainer/global_step"
    cfg = config(recs)
    assert cfg["seed"] == 0 and cfg["experiment"] == "vl_eos_mlp" and cfg["study"] is None
    assert cfg["data"]["n_train"] == 64 and cfg["trainer"]["max_steps"] == 9
    assert cfg["callbacks"]["sharpness"]["every_n_steps"] == 3


@pytest.mark.slow  # shares the vl_eos_mlp run
def test_log_model_logs_the_final_checkpoint_and_results(sharpness_run):
    from tests.suite.wandb_records import artifacts, run_record

    _, recs = sharpness_run
    run_id = run_record(recs).run_id
    found = {a["type"]: a for a in artifacts(recs)}
    assert found["model"]["name"] == f"model-{run_id}" and found["model"]["files"] == ["last.ckpt"]
    assert found["results"]["name"] == f"results-{run_id}" and found["results"]["files"] == ["results.json"]
    assert "final" in found["model"]["aliases"]


@pytest.mark.slow  # one momentum_shapes study run (~25 s)
def test_an_evaluation_sweep_keeps_one_value_per_swept_nfe(tmp_path):
    """momentum_shapes re-tests each trained model at every ``sample_nfe`` (debug=fast: 6 and 8): each
    re-test's metrics carry the swept value, each once, in W&B and in history.csv, beside the first
    test's plain ``test/`` keys, and a table of metric vs NFE with its line plots."""
    wr = pytest.importorskip("tests.suite.wandb_records")
    run_fresh(tmp_path, ["experiment=momentum_shapes", "debug=fast", "logger=wandb", "logger.mode=offline",
                         f"output_dir={tmp_path / 'run'}"])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    variants = [v for v in results["variants"] if "@" not in v]
    assert variants
    for name in variants:
        (path,) = wr.offline_runs(tmp_path / "run" / name)
        recs = wr.records(path)
        rows = wr.history(recs)
        for nfe in (6, 8):
            key = f"test/sliced_w2/sample_nfe_{nfe}"
            assert len(steps_of(rows, key)) == 1, key
            value = [r[key] for r in rows if key in r][0]
            assert value == pytest.approx(results["variants"][f"{name}@sample_nfe={nfe}"]["metrics"]["test/sliced_w2"])
            assert len(csv_steps(tmp_path / "run" / name / "history.csv", key)) == 1
        assert len(steps_of(rows, "test/sliced_w2")) == 1  # the first test, not overwritten
        table = [r["test/sweep/sample_nfe"] for r in rows if "test/sweep/sample_nfe" in r]
        assert len(table) == 1 and table[0]["_type"] == "table-file"
        assert any(k.startswith("test/sweep/sliced_w2_vs_sample_nfe") for r in rows for k in r)


@pytest.mark.slow  # one t2i_shapes run (~30 s)
def test_media_share_the_step_and_prefix_of_their_scalars(tmp_path):
    """t2i_shapes: GenEval's images and tables sit under the prefix of its scores (``geneval/`` during
    training, ``test/geneval_w<w>/`` at test) and at the same trainer/global_step."""
    wr = pytest.importorskip("tests.suite.wandb_records")
    run_fresh(tmp_path, ["experiment=t2i_shapes", "debug=fast", "logger=wandb", "logger.mode=offline",
                         f"output_dir={tmp_path / 'run'}"])
    (path,) = wr.offline_runs(tmp_path / "run")
    rows = wr.history(wr.records(path))
    media = {k: int(r["trainer/global_step"]) for r in rows for k, v in r.items() if "/" in k  # not `claims`
             and isinstance(v, dict) and v.get("_type") in ("image-file", "images/separated", "table-file")}
    scalars = {k: steps_of(rows, k) for r in rows for k, v in r.items() if isinstance(v, (int, float))}
    assert {"geneval/samples", "geneval/table", "test/geneval_w1/samples", "test/geneval_w3/table"} <= set(media)
    for key, step in media.items():
        prefix = key.rsplit("/", 1)[0] + "/"
        near = [k for k in scalars if k.startswith(prefix) and step in scalars[k]]
        assert near, f"media {key} at step {step}: no scalar under {prefix} at that step"


def test_sync_lists_every_offline_run_of_a_folder(tmp_path, capsys):
    """``python -m suite.sync DIR --dry-run`` finds every wandb/offline-run-* under DIR (variants, the
    study's summary run) and groups the parts of a run resumed offline under its id; it uploads nothing."""
    from suite import sync

    made = ["a/wandb/offline-run-20260101_000000-aaa", "a/wandb/offline-run-20260101_010000-aaa",
            "b/wandb/offline-run-20260101_000500-bbb", "wandb/offline-run-20260101_020000-ccc"]
    for rel in made:
        (tmp_path / rel).mkdir(parents=True)
    (tmp_path / "b" / "wandb" / "latest-run").mkdir()
    assert [p.relative_to(tmp_path).as_posix() for p in sync.offline_runs(tmp_path)] == [
        made[0], made[2], made[1], made[3]]
    assert sync.main([str(tmp_path), "--dry-run"]) == 0
    shown = capsys.readouterr().out
    assert "run aaa (2 parts, uploaded in this order as one run)" in shown and "4 offline run folder(s)" in shown
    assert sync.main([str(tmp_path / "missing"), "--dry-run"]) == 2
