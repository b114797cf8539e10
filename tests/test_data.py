"""Task data and seed corpora from local files, the hub (offline) and the packaged WordNet asset."""
import csv
import gzip
import json
import os
from pathlib import Path

import datasets
import pytest
from omegaconf import OmegaConf

from src.config import run_options
from src.data.loading import load_seed, load_table, load_task
from src.errors import UserError
from src.options import SourceOptions
from tests.conftest import CONF, compose_cfg

TOPICS = ["markets", "football", "elections"]
HEADLINES = [f"{TOPICS[i % 3]} headline number {i}" for i in range(30)]
LABELS = [i % 3 for i in range(30)]


def task_cfg(path, **over):
    """Mirrors conf/dataset/local.yaml."""
    base = {"path": str(path), "name": None, "train_split": "train", "test_split": None, "test_size": 0.2,
            "text_field": "text", "label_field": "label", "id_field": None, "classes": None,
            "n_train": None, "n_test": None}
    return SourceOptions(**{**base, **over})


def seed_cfg(path, **over):
    """Mirrors conf/seed/local.yaml."""
    base = {"path": str(path), "name": None, "split": "train", "text_field": "text", "id_field": None,
            "include": None, "exclude_true": False, "max_examples": None}
    return SourceOptions(**{**base, **over})


def write_headlines_csv(path: Path, delimiter=","):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(["headline", "label"])
        w.writerows(zip(HEADLINES, LABELS))
    return path


def write_jsonl(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def news_csv(tmp_path):
    return write_headlines_csv(tmp_path / "news.csv")


def news_cfg(path, **over):
    return task_cfg(path, **{"text_field": "headline", "label_field": "label", "test_split": None,
                             "test_size": 0.25, **over})


# -- local task files ----------------------------------------------------------------------------------

def test_user_csv_loads_with_seeded_split(news_csv):
    data = load_task(news_cfg(news_csv), 0)
    train, test = data.train, data.test
    assert set(train.column_names) == {"text", "label", "id"}
    assert set(test.column_names) == {"text", "label", "id"}
    assert len(train) + len(test) == 30
    assert len(test) == 8  # ceil(0.25 * 30)
    assert set(train["id"]).isdisjoint(test["id"])
    assert set(train["id"]) | set(test["id"]) == {f"dataset:{i}" for i in range(30)}
    # every row keeps its own text and integer label
    for split in (train, test):
        for row in split:
            i = int(row["id"].split(":")[1])
            assert row["text"] == HEADLINES[i]
            assert type(row["label"]) is int and row["label"] == LABELS[i]
    assert data.classes == ["0", "1", "2"]


def test_user_csv_split_is_seeded(news_csv):
    a, b, c = (load_task(news_cfg(news_csv), rng) for rng in (0, 0, 1))
    assert a.test["id"] == b.test["id"] and a.train["id"] == b.train["id"]
    assert set(a.test["id"]) != set(c.test["id"])


def test_n_train_n_test_subsample(news_csv):
    data = load_task(news_cfg(news_csv, n_train=5, n_test=3), 0)
    assert (len(data.train), len(data.test)) == (5, 3)
    full = load_task(news_cfg(news_csv), 0)
    assert set(data.train["id"]) <= set(full.train["id"])
    assert set(data.test["id"]) <= set(full.test["id"])
    assert load_task(news_cfg(news_csv, n_train=5, n_test=3), 0).train["id"] == data.train["id"]


def test_jsonl_string_labels_mapped_and_unknown_dropped(tmp_path):
    labels = ["sports", "business", "weather"]
    rows = [{"body": f"story {i}", "topic": labels[i % 3], "uid": f"u{i}"} for i in range(24)]
    path = write_jsonl(tmp_path / "news.jsonl", rows)
    cfg = task_cfg(path, text_field="body", label_field="topic", id_field="uid",
                   classes=["business", "sports"], test_size=0.25)
    data = load_task(cfg, 0)
    assert data.classes == ["business", "sports"]
    by_id = {r["uid"]: r for r in rows}
    seen = set()
    for split in (data.train, data.test):
        for row in split:
            src = by_id[row["id"]]
            assert src["topic"] != "weather"
            assert row["label"] == ["business", "sports"].index(src["topic"])
            assert row["text"] == src["body"]
            seen.add(row["id"])
    assert seen == {r["uid"] for r in rows if r["topic"] != "weather"}  # 16 rows kept
    assert len(seen) == 16


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_file_formats_give_the_same_task(tmp_path, news_csv, fmt):
    if fmt == "csv":
        path = news_csv
    elif fmt == "tsv":
        path = write_headlines_csv(tmp_path / "news.tsv", delimiter="\t")
    elif fmt == "jsonl":
        path = write_jsonl(tmp_path / "news.jsonl", [{"headline": h, "label": y} for h, y in zip(HEADLINES, LABELS)])
    else:
        path = tmp_path / "news.parquet"
        datasets.Dataset.from_dict({"headline": HEADLINES, "label": LABELS}).to_parquet(str(path))
    got, ref = load_task(news_cfg(path), 3), load_task(news_cfg(news_csv), 3)
    assert got.classes == ref.classes == ["0", "1", "2"]
    for split in ("train", "test"):
        g, r = getattr(got, split), getattr(ref, split)
        assert g["id"] == r["id"] and g["text"] == r["text"] and g["label"] == r["label"]


def test_explicit_test_split_from_hub_style_table(tmp_path, monkeypatch):
    """A table with its own test split is used as is (no seeded split)."""
    table = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 0]}),
        "test": datasets.Dataset.from_dict({"text": ["d", "e"], "label": [1, 1]}),
    })
    monkeypatch.setattr("src.data.loading.load_table", lambda cfg, what: table)
    data = load_task(task_cfg("some/hub-id", test_split="test"), 0)
    assert data.train["text"] == ["a", "b", "c"] and data.test["text"] == ["d", "e"]
    assert data.classes == ["0", "1"]


# -- seed corpora ----------------------------------------------------------------------------------------

def seed_rows(n=20):
    return [{"text": f"passage {i}", "pid": f"p{i}", "source": "wire" if i % 2 else "blog",
             "lang": "en" if i % 4 < 2 else "de"} for i in range(n)]


def test_include_filter_keeps_only_matching_rows(tmp_path):
    rows = seed_rows()
    path = write_jsonl(tmp_path / "corpus.jsonl", rows)
    ds = load_seed(seed_cfg(path, id_field="pid", include={"source": ["wire"]}), 0)
    assert sorted(ds["id"]) == sorted(r["pid"] for r in rows if r["source"] == "wire")
    both = load_seed(seed_cfg(path, id_field="pid", include={"source": ["wire"], "lang": ["en"]}), 0)
    assert sorted(both["id"]) == sorted(r["pid"] for r in rows if r["source"] == "wire" and r["lang"] == "en")
    assert len(both) == 5


def test_include_filter_in_task(news_csv):
    data = load_task(news_cfg(news_csv, include={"label": [0, 2]}), 0)
    # Two classes left, named by their values; labels are their indices (a loss indexes logits by label).
    assert data.classes == ["0", "2"]
    assert set(data.train["label"]) | set(data.test["label"]) == {0, 1}
    assert len(data.train) + len(data.test) == 20


def test_load_seed_exclude_ids(tmp_path):
    rows = seed_rows()
    path = write_jsonl(tmp_path / "corpus.jsonl", rows)
    exclude = {"p0", "p3", "p17", "not-there"}
    ds = load_seed(seed_cfg(path, id_field="pid"), 0, exclude_ids=exclude)
    assert set(ds.column_names) == {"text", "id"}
    assert set(ds["id"]) == {r["pid"] for r in rows} - exclude
    assert all(t == f"passage {i[1:]}" for t, i in zip(ds["text"], ds["id"]))


def test_load_seed_default_ids_and_exclusion(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", seed_rows(6))
    ds = load_seed(seed_cfg(path), 0, exclude_ids={"seed corpus:1"})
    assert ds["id"] == ["seed corpus:0", "seed corpus:2", "seed corpus:3", "seed corpus:4", "seed corpus:5"]


def test_max_examples_is_deterministic(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", seed_rows(50))
    cfg = seed_cfg(path, id_field="pid", max_examples=10)
    a, b, c = load_seed(cfg, 7), load_seed(cfg, 7), load_seed(cfg, 8)
    assert len(a) == 10 and a["id"] == b["id"]
    assert set(a["id"]) != set(c["id"])
    assert len(set(a["id"])) == 10
    # larger than the corpus: everything, unchanged
    assert len(load_seed(seed_cfg(path, max_examples=1000), 7)) == 50


# -- errors ------------------------------------------------------------------------------------------

def test_missing_file_is_user_error(tmp_path):
    missing = tmp_path / "nope" / "corpus.jsonl"
    with pytest.raises(UserError, match="not found") as e:
        load_seed(seed_cfg(missing), 0)
    assert str(missing) in str(e.value)
    with pytest.raises(UserError) as e:
        load_task(task_cfg(tmp_path / "news.csv"), 0)
    assert str(tmp_path / "news.csv") in str(e.value)


def test_seed_all_rows_excluded_is_user_error(tmp_path):
    rows = seed_rows(4)
    path = write_jsonl(tmp_path / "corpus.jsonl", rows)
    with pytest.raises(UserError, match="empty"):
        load_seed(seed_cfg(path, id_field="pid"), 0, exclude_ids={r["pid"] for r in rows})
    with pytest.raises(UserError, match="empty"):
        load_seed(seed_cfg(path, include={"source": ["nowhere"]}), 0)


def test_header_only_seed_file_is_user_error(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("text,source\n")
    with pytest.raises(UserError) as e:
        load_seed(seed_cfg(path), 0)
    assert str(path) in str(e.value)


def test_header_only_seed_file_says_empty(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("text,source\n")
    with pytest.raises(UserError, match="empty"):
        load_seed(seed_cfg(path), 0)


def test_missing_text_field_lists_fields(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", seed_rows(3))
    with pytest.raises(UserError, match="no field 'body'") as e:
        load_seed(seed_cfg(path, text_field="body"), 0)
    for field in ("text", "pid", "source", "lang"):
        assert field in str(e.value)


def test_missing_label_field_is_user_error(news_csv):
    with pytest.raises(UserError, match="no field 'topic'.*headline"):
        load_task(news_cfg(news_csv, label_field="topic"), 0)


def test_empty_task_after_filtering_is_user_error(news_csv):
    with pytest.raises(UserError, match="empty"):
        load_task(news_cfg(news_csv, include={"label": [9]}), 0)


def test_string_labels_without_classes_is_user_error(tmp_path):
    path = write_jsonl(tmp_path / "news.jsonl", [{"text": f"t{i}", "label": "pos" if i % 2 else "neg"}
                                                for i in range(10)])
    with pytest.raises(UserError, match="strings.*classes"):
        load_task(task_cfg(path), 0)


def test_hub_dataset_offline_is_user_error_naming_the_dataset():
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        pytest.skip("needs HF_HUB_OFFLINE=1 (set by conftest unless overridden)")
    cfg = SourceOptions(**OmegaConf.to_container(OmegaConf.load(CONF / "seed" / "nq.yaml")))
    assert cfg.path == "sentence-transformers/natural-questions"
    with pytest.raises(UserError) as e:
        load_table(cfg, "seed corpus")
    assert "sentence-transformers/natural-questions" in str(e.value)
    assert "seed corpus" in str(e.value)
    assert "\n" not in str(e.value)  # one line for the entry point


# -- the packaged WordNet asset ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wordnet():
    from src.stages import load_data

    cfg = run_options(compose_cfg())
    task = load_task(cfg.dataset, 0)
    data = load_data(cfg)
    with gzip.open(cfg.dataset.path, "rt") as f:
        raw = {r["id"]: r for r in map(json.loads, f)}
    return cfg, task, data, raw


def test_wordnet_task_matches_config(wordnet):
    cfg, task, _, raw = wordnet
    assert Path(cfg.dataset.path).is_file()
    classes = list(cfg.dataset.classes)
    assert task.classes == classes == ["noun.animal", "noun.plant", "noun.food", "noun.artifact"]
    assert (len(task.train), len(task.test)) == (cfg.dataset.n_train, cfg.dataset.n_test) == (40, 24)
    assert set(task.train["label"]) == {0, 1, 2, 3}
    assert set(task.train["id"]).isdisjoint(task.test["id"])
    for split in (task.train, task.test):  # each row is the gloss of its synset, labelled by its lexname
        for row in split:
            src = raw[row["id"]]
            assert row["text"] == src["definition"]
            assert classes[row["label"]] == src["lexname"]


def test_wordnet_load_data_seed_disjoint_from_true_data(wordnet):
    cfg, task, data, raw = wordnet
    assert data.task.train["id"] == task.train["id"] and data.task.test["id"] == task.test["id"]
    true_ids = set(task.train["id"]) | set(task.test["id"])
    seed_ids = set(data.seed["id"])
    assert len(data.seed) == cfg.seed.max_examples == 60
    assert len(seed_ids) == 60
    assert seed_ids.isdisjoint(true_ids)
    assert {raw[i]["pos"] for i in seed_ids} <= {"n", "v", "a"}  # include: {pos: [n, v, a]}
