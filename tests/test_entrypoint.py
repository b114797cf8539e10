"""`python -m src.main` as a user runs it: end to end on tiny overrides, and one-line errors."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TINY

pytestmark = pytest.mark.slow


def main(*args, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "W2D_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "src.main", *TINY, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_end_to_end_prints_table_and_writes_results(tmp_path):
    run_dir = tmp_path / "run"
    # Every baseline end to end, in-process: tests/test_pipeline.py; W&B through the CLI: tests/test_report.py.
    p = main(f"hydra.run.dir={run_dir}", "baselines=[random,expert]", tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((run_dir / "results.json").read_text())
    names = [r["selector"] for r in res["results"]]
    assert names == ["select", "random", "expert"]
    for name in names:
        assert name in p.stdout  # the printed comparison table
    assert "OT distance" in p.stdout

    # Bad input afterwards, into the same output folder: one line on stderr, exit 2, results untouched.
    before = (run_dir / "results.json").read_bytes()
    # (k larger than the corpus is checked once the corpus is loaded: tests/test_pipeline.py, in-process.)
    # (Every fixed-set option's message: tests/test_user_input.py, in-process.)
    for bad, msg in [("d=0", "d must be positive")]:
        q = main(f"hydra.run.dir={run_dir}", bad, tmp_path=tmp_path)
        assert q.returncode == 2, q.stderr[-2000:]
        errors = [line for line in q.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and msg in errors[0]
        assert "Traceback" not in q.stderr
    assert (run_dir / "results.json").read_bytes() == before


def test_unknown_selector_fails_clearly(tmp_path):
    p = main("selector=selcet", f"hydra.run.dir={tmp_path / 'a'}", tmp_path=tmp_path)
    assert p.returncode != 0
    assert "Could not find 'selector/selcet'" in p.stderr and "select" in p.stderr
    q = main("baselines=[topk,ranodm]", f"hydra.run.dir={tmp_path / 'b'}", tmp_path=tmp_path)
    errors = [line for line in q.stderr.splitlines() if line.startswith("error:")]
    assert q.returncode == 2 and len(errors) == 1, q.stderr[-2000:]
    assert errors[0].startswith("error: Unknown selector 'ranodm'. Did you mean: random?")


def test_the_readme_command_line_fails_offline_in_one_line(tiny_cfg, tmp_path):
    # `python -m src.main selector=select seed=nq d=4096` without the hub: one line naming the dataset.
    from src.errors import UserError
    from src.pipeline import run

    with pytest.raises(UserError) as e:
        run(tiny_cfg("selector=select", "seed=nq", "d=4096"), tmp_path / "run")
    assert "sentence-transformers/natural-questions" in str(e.value) and "\n" not in str(e.value)


def test_cfg_job_prints_composed_config(tmp_path):
    p = subprocess.run([sys.executable, "-m", "src.main", "--cfg", "job", "d=4096", "P=5", "k=1000"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0
    assert "d: 4096" in p.stdout and "P: 5" in p.stdout and "k: 1000" in p.stdout
