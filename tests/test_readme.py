"""The README and docs/ say only what exists: the README stays short and links every docs/ page, the
make targets, experiments, config options, files, modules and links they name exist, and the README's
recover example runs as written (on a shrunk embedded LM, so it takes seconds)."""
import re
import unicodedata

import datasets
import pytest

import src.api
from tests.conftest import ROOT
from tests.test_sft import TINY_SFT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_CHARS = 12_000


def page_id(path):
    return str(path.relative_to(ROOT))


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Recover the data behind your own model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
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
    runs = list((tmp_path / "outputs" / "recover").glob("*/selections/select_layers/selection.parquet"))
    assert len(runs) == 1
    assert datasets.load_dataset("parquet", data_files=str(runs[0]), split="train")["row"] == picks["row"]
    assert (runs[0].parents[2] / "scores.parquet").is_file() and (runs[0].parents[2] / "results.json").is_file()
    out = capsys.readouterr().out
    assert "objective" in out and re.search(r"corpus: \d+% animal definitions", out)
    for name in ("select_layers", "select", "likelihood_ratio", "length", "novelty", "random"):  # give-away baselines too
        assert re.search(rf"{name}: \d+% of its 50 picks", out), name



# ---- shape of the README ----

def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8"))  # characters, as `wc -m` counts them
    assert n < README_MAX_CHARS, f"README.md has {n} characters; move detail to docs/ (limit {README_MAX_CHARS})"


def test_readme_sections_in_order():
    text = README.read_text()
    assert text.startswith("# weights2data\n\n```bash\nmake install && make run ")
    assert "make install && make test " in text.split("```", 2)[1]
    headings = re.findall(r"(?m)^## (.+)$", text)
    wanted = ["Recover the data behind your own model", "Results", "Documentation", "Development"]
    assert [h for h in headings if h in wanted] == wanted, headings


def test_readme_links_every_docs_page_and_only_existing_ones():
    text = README.read_text()
    linked = set(re.findall(r"\]\((docs/[^)#\s]+\.md)(?:#[^)]*)?\)", text))
    assert linked, "README.md links no docs/ page"
    for rel in sorted(linked):
        assert (ROOT / rel).is_file(), f"README.md links {rel}, which does not exist"
    assert {page_id(p) for p in DOCS} <= linked, "a docs/ page the README does not link"
    docs_section = text.split("## Documentation", 1)[1].split("\n## ", 1)[0]
    for p in DOCS:
        assert f"]({page_id(p)})" in docs_section, f"{page_id(p)} missing from the Documentation section"


# ---- links and anchors in the README and docs/ ----

def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (word characters, '-' and
    spaces kept), spaces to '-'."""
    h = heading.strip().lower()
    h = "".join(c for c in h if c in " -_" or unicodedata.category(c)[0] in "LN")
    return h.replace(" ", "-")


def anchors(path):
    return {slug(h) for h in re.findall(r"(?m)^#{1,6} (.+)$", path.read_text())}


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        assert dest.exists(), f"{page_id(page)}: link to {target}, which does not exist"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page_id(page)}: no heading for #{anchor} in {dest.name}"


# ---- what the pages name exists ----

GROUPS = sorted(p.name for p in (ROOT / "conf").iterdir() if p.is_dir())


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_named_make_targets_exist(page):
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"(?m)^([\w-]+):", makefile))
    for name in set(re.findall(r"(?m)(?:^|`|&& )make ([a-z][\w-]*)", page.read_text())):
        assert name in targets, f"{page_id(page)} names `make {name}`, which the Makefile lacks"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_named_config_options_exist(page):
    """`group=option` on a command line, and experiment names in tables, are files in conf/<group>/."""
    text = page.read_text()
    named = set(re.findall(rf"(?<![\w.+/])({'|'.join(GROUPS)})=([A-Za-z][\w.-]*\w)", text))
    named = {(g, o) for g, o in named if o != "None"}  # a Python keyword default (recover's), not an option
    named |= {("experiment", n) for n in re.findall(r"(?m)^\| `((?:paper|ablation|sweep)_?\w*|baselines|seed_domain)` \|", text)}
    for group, option in sorted(named):
        assert (ROOT / "conf" / group / f"{option}.yaml").is_file(), f"{page_id(page)} names {group}={option}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_named_files_and_modules_exist(page):
    text = page.read_text()
    for path in set(re.findall(r"`((?:src|conf|experiments|tests)/[^`\s]*)`", text)):
        if any(c in path for c in "<*{"):
            continue  # a pattern, not a path
        assert (ROOT / path).exists(), f"{page_id(page)} names {path}, which does not exist"
    for module in set(re.findall(r"python -m (src(?:\.\w+)*)", text)):
        rel = ROOT / module.replace(".", "/")
        assert rel.with_suffix(".py").is_file() or (rel / "__main__.py").is_file() \
            or (rel / "__init__.py").is_file(), f"{page_id(page)} runs `python -m {module}`, which does not exist"
