"""The embedded fortunes corpus (src/data/build_fortunes.py) and the configs that read it."""
from __future__ import annotations

import collections
import gzip
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from src.data.build_fortunes import MAX_CHARS, MIN_CHARS, parse_fortune_file

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "src" / "data" / "assets" / "fortunes.jsonl.gz"
DATASETS = ("fortunes_topics", "fortunes_documents")
SEEDS = {"fortunes_topics": "fortunes_other_topics", "fortunes_documents": "fortunes_documents_other_topics"}
UNUSED_PER_CLASS = 60  # rows of each true class left for planting unseen rows


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    with gzip.open(ASSET, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def counts(rows) -> collections.Counter:
    return collections.Counter(r["category"] for r in rows)


def _conf(group: str, name: str):
    return OmegaConf.load(ROOT / "conf" / group / f"{name}.yaml")


def _true_categories(cfg) -> list[str]:
    return list(cfg.get("classes") or cfg.include.category)


def test_parse_fortune_file_separators_whitespace_and_limits():
    text = ("Short.\n%\n"                                       # too short: dropped
            "A fortune  spread\tover\n    two lines.\n%\n"      # whitespace collapsed
            "%\n"                                               # empty entry
            "100% sure: a percent sign inside a line is no separator.\n%\n"
            " %\nnot a separator either, the line is not exactly a percent sign\n%\n"
            + "x" * (MAX_CHARS + 1) + "\n%\n"                   # too long: dropped
            + "y" * MAX_CHARS + "\n%\n"                         # exactly the limit: kept
            "A last entry with no closing separator.\n")
    assert parse_fortune_file(text) == [
        "A fortune spread over two lines.",
        "100% sure: a percent sign inside a line is no separator.",
        "% not a separator either, the line is not exactly a percent sign",
        "y" * MAX_CHARS,
        "A last entry with no closing separator.",
    ]
    assert parse_fortune_file("x" * (MIN_CHARS - 1) + "\n%\n" + "z" * MIN_CHARS + "\n%\n") == ["z" * MIN_CHARS]
    assert parse_fortune_file("") == []
    assert parse_fortune_file("overstruck_\bt_\be_\bx_\bt, twenty chars and more\n") == []  # control chars


def test_asset_rows(rows, counts):
    assert rows, "empty asset"
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    assert len({r["text"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r) == {"id", "category", "text", "chars"}
        assert r["id"].startswith(r["category"] + ":") and len(r["id"].rsplit(":", 1)[1]) == 4
        assert MIN_CHARS <= r["chars"] == len(r["text"]) <= MAX_CHARS
        assert r["text"] == " ".join(r["text"].split())
    assert all(n > 0 for n in counts.values()) and len(counts) >= 20


@pytest.mark.parametrize("dataset", DATASETS)
def test_configs_name_real_categories_and_seeds_exclude_the_true_ones(counts, dataset):
    cfg, seed = _conf("dataset", dataset), _conf("seed", SEEDS[dataset])
    true = _true_categories(cfg)
    named = set(true) | set(seed.exclude.category) | set((seed.get("include") or {}).get("category") or [])
    assert named <= set(counts), sorted(named - set(counts))
    kept = set(counts) - set(seed.exclude.category)
    assert not set(true) & kept and seed.exclude_true
    assert seed.leak_fraction == 0 and seed.unseen_rows == 0
    assert seed.max_examples <= sum(counts[c] for c in kept)


@pytest.mark.parametrize("dataset", DATASETS)
def test_true_classes_leave_rows_to_plant(counts, dataset):
    """The test split (test_size of every row) holds n_test; the rest holds n_train + n_val, and the
    rows left over hold at least UNUSED_PER_CLASS of each class, in expectation (the draws ignore classes)."""
    cfg = _conf("dataset", dataset)
    true = _true_categories(cfg)
    total = sum(counts[c] for c in true)
    assert cfg.n_test <= cfg.test_size * total
    left = (1 - cfg.test_size) * total - cfg.n_train - cfg.n_val
    for c in true:
        assert counts[c] / total * left >= UNUSED_PER_CLASS, (c, counts[c], left)


def test_label_words_one_per_class():
    cfg = _conf("dataset", "fortunes_topics")
    assert len(cfg.label_words) == len(cfg.classes) == 4
    assert all(w.startswith(" ") and len(w.split()) == 1 for w in cfg.label_words)
    assert len(set(cfg.label_words)) == len(cfg.label_words)


def test_load_data_fortunes_topics():
    """The whole config through load_data (about a second; alone, importing src.stages costs more)."""
    from src.config import compose_config, run_options
    from src.stages import load_data

    cfg = run_options(compose_config(["task=classify_lm", "model=wordnet_lm", "dataset=fortunes_topics",
                                      "seed=fortunes_other_topics", "logger=none"]))
    data = load_data(cfg)
    task = data.task
    assert task.classes == list(cfg.dataset.classes)
    assert (len(task.train), len(task.val), len(task.test)) == (cfg.dataset.n_train, cfg.dataset.n_val,
                                                                  cfg.dataset.n_test)
    assert len(data.seed) == cfg.seed.max_examples
    assert not set(data.seed["group"]) & set(cfg.dataset.classes)
    assert not set(data.seed["id"]) & (set(task.train["id"]) | set(task.test["id"]) | set(task.val["id"]))
