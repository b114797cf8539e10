"""The README's recover example runs as written (on a shrunk embedded LM, so it takes seconds)."""
import re

import datasets
import pytest

import src.api
from tests.conftest import ROOT
from tests.test_sft import TINY_SFT

pytestmark = pytest.mark.slow


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Recover the data behind your own model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_recover_example_runs_as_written(tmp_path, monkeypatch, capsys):
    # The code runs unchanged from a folder that looks like the repository root (it reads the WordNet
    # asset by relative path); only the embedded LM's size is shrunk.
    (tmp_path / "src").symlink_to(ROOT / "src")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("W2D_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(src.api, "EXTRA_OVERRIDES",
                        [o for o in TINY_SFT if o.startswith("base_lm.")] + ["logger=none"])
    code = readme_example()
    assert "recover(" in code and "save_pretrained" in code
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)

    picks = scope["picks"]
    assert isinstance(picks, datasets.Dataset) and len(picks) == 50 and picks["rank"] == list(range(1, 51))
    assert {"text", "objective", "alignment", "group"} <= set(picks.column_names)
    runs = list((tmp_path / "outputs" / "recover").glob("*/selections/select/selection.parquet"))
    assert len(runs) == 1
    assert datasets.load_dataset("parquet", data_files=str(runs[0]), split="train")["row"] == picks["row"]
    assert (runs[0].parents[2] / "scores.parquet").is_file() and (runs[0].parents[2] / "results.json").is_file()
    out = capsys.readouterr().out
    assert "objective" in out and re.search(r"animal definitions: \d+% of the picks, \d+% of the corpus", out)
