"""Task data and seed corpora, all through ``datasets.load_dataset``.

A data config names either a hub dataset (``path: ag_news``) or a local file
(``path: my.csv``; CSV, JSON/JSONL or Parquet, the builder inferred from the suffix),
plus the fields to read. Rows are normalised to columns ``text``, ``label`` (int) and
``id`` (str) so everything downstream is source-agnostic.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import datasets

from src.errors import UserError

log = logging.getLogger(__name__)

_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _builder_for(path: str) -> str | None:
    suffixes = [s for s in Path(path).suffixes if s != ".gz"]
    return _BUILDERS.get(suffixes[-1]) if suffixes else None


def load_table(cfg, what: str) -> datasets.DatasetDict:
    """Load every split a config names. ``what`` names the config in error messages."""
    path = str(cfg.path)
    kwargs = {}
    builder = _builder_for(path)
    if builder is not None:  # a local file
        if not Path(path).is_file():
            raise UserError(f"{what} file not found: {path}")
        kwargs = {"path": builder, "data_files": path}
        if builder == "csv" and path.endswith(".tsv"):
            kwargs["delimiter"] = "\t"
    else:
        kwargs = {"path": path, "name": cfg.get("name")}
    try:
        return datasets.load_dataset(**kwargs)
    except Exception as e:  # datasets raises many types for 'offline' / 'not found'
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(
            f"could not load {what} '{path}' via datasets.load_dataset ({type(e).__name__}: {first}). "
            "Hub datasets need network access or a local copy in the HF cache; local files need a path "
            "ending in .csv/.jsonl/.json/.parquet"
        ) from e


def _normalise(ds: datasets.Dataset, cfg, what: str, classes: list | None) -> datasets.Dataset:
    for field in [cfg.text_field] + ([cfg.label_field] if classes is not None else []):
        if field not in ds.column_names:
            raise UserError(f"{what} has no field '{field}'; fields are {ds.column_names}")
    for field, allowed in (cfg.get("include") or {}).items():
        allowed = set(allowed)
        ds = ds.filter(lambda v: v in allowed, input_columns=field)
    id_field = cfg.get("id_field")
    cols = {"text": [str(t) for t in ds[cfg.text_field]]}
    cols["id"] = [str(i) for i in ds[id_field]] if id_field else [f"{what}:{i}" for i in range(len(ds))]
    if classes is not None:
        raw = ds[cfg.label_field]
        if classes and isinstance(raw[0], str):  # string labels: keep rows whose label is a named class
            index = {c: i for i, c in enumerate(classes)}
            keep = [i for i, r in enumerate(raw) if r in index]
            cols = {k: [v[i] for i in keep] for k, v in cols.items()}
            cols["label"] = [index[raw[i]] for i in keep]
        else:
            cols["label"] = [int(r) for r in raw]
    return datasets.Dataset.from_dict(cols)


def _sample(ds: datasets.Dataset, n, seed: int) -> datasets.Dataset:
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(int(n)))


@dataclass
class TaskData:
    train: datasets.Dataset  # the hidden true data θf was finetuned on
    test: datasets.Dataset
    classes: list[str]


def load_task(cfg, rng: int) -> TaskData:
    """The hidden finetuning data and its held-out test split."""
    table = load_table(cfg, "dataset")
    classes = list(cfg.get("classes") or [])
    train = _normalise(table[cfg.get("train_split", "train")], cfg, "dataset", classes)
    test_split = cfg.get("test_split")
    if test_split:
        test = _normalise(table[test_split], cfg, "dataset", classes)
    else:  # one file, no test split: a seeded split
        parts = train.train_test_split(test_size=cfg.get("test_size", 0.2), seed=rng)
        train, test = parts["train"], parts["test"]
    if not classes:
        classes = [str(c) for c in sorted(set(train["label"]) | set(test["label"]))]
    train, test = _sample(train, cfg.get("n_train"), rng), _sample(test, cfg.get("n_test"), rng + 1)
    if len(train) == 0 or len(test) == 0:
        raise UserError(f"dataset '{cfg.path}' has an empty train or test split after filtering")
    return TaskData(train=train, test=test, classes=classes)


def load_seed(cfg, rng: int, exclude_ids: set[str] = frozenset()) -> datasets.Dataset:
    """The public seed corpus, with any row whose id is in the true data removed."""
    table = load_table(cfg, "seed corpus")
    ds = _normalise(table[cfg.get("split", "train")], cfg, "seed corpus", None)
    if exclude_ids:
        before = len(ds)
        ds = ds.filter(lambda i: i not in exclude_ids, input_columns="id")
        log.info("seed corpus: removed %d rows that are in the true data", before - len(ds))
    ds = _sample(ds, cfg.get("max_examples"), rng)
    if len(ds) == 0:
        raise UserError(f"seed corpus '{cfg.path}' is empty (after filtering)")
    return ds
