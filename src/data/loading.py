"""Task data and seed corpora, all through ``datasets.load_dataset``.

A data config names either a hub dataset (``path: ag_news``) or a local file
(``path: my.csv``; CSV, JSON/JSONL or Parquet, the builder inferred from the suffix),
plus the fields to read. Rows are normalised to columns ``text``, ``label`` (int) and
``id`` (str) so everything downstream is source-agnostic.

What a task needs from its data is its *kind* (``Task.data_kind``):
- ``labelled``: text + integer label (classification),
- ``prompt_response``: prompt + response rendered by templates (SFT),
- ``documents``: plain text only (language modelling; blank documents are dropped).
``text`` is ``text_field``, or a ``text_template`` filled from each row (e.g. "{word}: {gloss}").
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import datasets

from src.errors import UserError
from src.options import SourceOptions

log = logging.getLogger(__name__)

_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _builder_for(path: str) -> str | None:
    suffixes = [s for s in Path(path).suffixes if s != ".gz"]
    return _BUILDERS.get(suffixes[-1]) if suffixes else None


def _has_no_rows(path: str) -> bool:
    """A local file with nothing but (at most) a header line: datasets fails on it with an obscure error."""
    import gzip

    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt") as f:
            lines = [line for _, line in zip(range(2), f) if line.strip()]
    except (OSError, UnicodeDecodeError):
        return False
    return len(lines) <= (1 if _builder_for(path) == "csv" else 0)


def _check_utf8(path: str, what: str) -> None:
    """Reject a text file with bytes that are not UTF-8, with a count: datasets would die mid-parse."""
    import gzip

    opener = gzip.open if path.endswith(".gz") else open
    bad, first = 0, None
    with opener(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                bad, first = bad + 1, first or n
    if bad:
        raise UserError(f"{what} file {path} has {bad} line(s) that are not valid UTF-8 (first: line {first}); "
                        "re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def load_table(cfg: SourceOptions, what: str) -> datasets.DatasetDict:
    """Load every split a config names. ``what`` names the config in error messages."""
    path = str(cfg.path)
    kwargs = {}
    builder = _builder_for(path)
    if builder is not None:  # a local file
        if not Path(path).is_file():
            raise UserError(f"{what} file not found: {path}")
        if builder != "parquet":
            _check_utf8(path, what)
        kwargs = {"path": builder, "data_files": path}
        if builder == "csv" and path.endswith(".tsv"):
            kwargs["delimiter"] = "\t"
    else:
        kwargs = {"path": path, "name": cfg.name}
    try:
        return datasets.load_dataset(**kwargs)
    except Exception as e:  # datasets raises many types for 'offline' / 'not found'
        if builder is not None and _has_no_rows(path):
            raise UserError(f"{what} file {path} is empty (no data rows)") from e
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(
            f"could not load {what} '{path}' via datasets.load_dataset ({type(e).__name__}: {first}). "
            "Hub datasets need network access or a local copy in the HF cache; local files need a path "
            "ending in .csv/.jsonl/.json/.parquet"
        ) from e


def _render(rows: list[dict], template: str, what: str) -> list[str]:
    """Fill a str.format template (e.g. "{words[0]} ({lexname}):") from each row."""
    try:
        return [template.format(**row) for row in rows]
    except (KeyError, IndexError) as e:
        raise UserError(f"{what}: template {template!r} needs field {e}; fields are {list(rows[0])}") from e


KINDS = ("labelled", "prompt_response", "documents")


def _normalise(ds: datasets.Dataset, cfg: SourceOptions, what: str, classes: list | None,
               kind: str = "labelled") -> datasets.Dataset:
    """Rows → columns text, id (+ label if labelled, + prompt/response for SFT, + group if configured)."""
    labelled = classes is not None and kind == "labelled"
    templated = cfg.prompt_template or cfg.text_template
    needed = [f for f in ([cfg.text_field] + ([cfg.label_field] if labelled else [])) if f and not templated]
    for field in needed:
        if field not in ds.column_names:
            raise UserError(f"{what} has no field '{field}'; fields are {ds.column_names}")
    # One conversion to Python rows: per-element access to a datasets column is slow.
    rows = ds.to_list()
    for field, allowed in (cfg.include or {}).items():
        allowed = set(allowed)
        rows = [r for r in rows if r[field] in allowed]
    for field, banned in (cfg.exclude or {}).items():
        banned = set(banned)
        rows = [r for r in rows if r[field] not in banned]
    if cfg.buckets:  # a stable hash-split of the ids (e.g. the half the embedded base LM never saw)
        from src.data.buckets import bucket_filter

        keep, id_field = bucket_filter(cfg.buckets), cfg.id_field
        if not id_field:
            raise UserError(f"{what}: `buckets` splits rows by their id, so it needs `id_field`")
        rows = [r for r in rows if keep(r[id_field])]
    rows = _clean_rows(rows, cfg, what)
    if cfg.prompt_template or cfg.text_template:
        texts = _render(rows, cfg.prompt_template or cfg.text_template, what)
    else:
        field = cfg.text_field
        texts = ["" if r[field] is None else str(r[field]) for r in rows]
    if kind == "documents":  # a blank document has no tokens to learn or score: drop it, but never all
        keep = [i for i, t in enumerate(texts) if t.strip()]
        if rows and not keep:
            raise UserError(f"{what}: every document is empty (text_field {cfg.text_field!r}, "
                            f"text_template {cfg.text_template!r})")
        if len(keep) < len(rows):
            log.warning("%s: dropped %d empty documents of %d", what, len(rows) - len(keep), len(rows))
            rows, texts = [rows[i] for i in keep], [texts[i] for i in keep]
    id_field = cfg.id_field
    cols = {"id": [str(r[id_field]) for r in rows] if id_field else [f"{what}:{i}" for i in range(len(rows))]}
    cols["text"] = texts
    if cfg.prompt_template:
        cols["prompt"] = texts
    if kind == "prompt_response" and cfg.response_template:
        cols["response"] = _render(rows, cfg.response_template, what)
        cols["text"] = [p + r for p, r in zip(cols["prompt"], cols["response"])]
    if cfg.group_field:
        group_field = cfg.group_field
        cols["group"] = [str(r[group_field]) for r in rows]
    if labelled:
        label_field = cfg.label_field
        raw = [r[label_field] for r in rows]
        if raw and isinstance(raw[0], str):
            if not classes:
                raise UserError(f"{what}: labels in '{cfg.label_field}' are strings (e.g. {raw[0]!r}); "
                                "list the classes to use in the config's `classes`")
            index = {c: i for i, c in enumerate(classes)}  # keep rows whose label is a named class
            keep = [i for i, r in enumerate(raw) if r in index]
            cols = {k: [v[i] for i in keep] for k, v in cols.items()}
            cols["label"] = [index[raw[i]] for i in keep]
        else:
            cols["label"] = [int(r) for r in raw]  # their range is checked over every split in load_task
    return datasets.Dataset.from_dict(cols)


_MEMO: dict[str, datasets.Dataset] = {}
_MEMO_SIZE = 8


def normalised_split(cfg: SourceOptions, split: str, what: str, classes: list | None, kind: str) -> datasets.Dataset:
    """``_normalise(load_table(cfg)[split])``, remembered in this process for the same file and settings.

    Loading and normalising the embedded WordNet file (114k rows) costs seconds, and a sweep, a benchmark
    or a test session loads it many times with the same settings; a changed local file (size or mtime)
    or any changed setting is a new entry. Datasets are immutable (every operation returns a new one),
    so sharing one between callers is safe.
    """
    from src.cache import stable_hash

    path = Path(str(cfg.path))
    stamp = (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None
    key = stable_hash(cfg, stamp, split, what, classes, kind)
    if key not in _MEMO:
        table = load_table(cfg, what)
        if split not in table:
            raise UserError(f"{what} '{cfg.path}' has no split '{split}'; it has {list(table)}")
        if len(_MEMO) >= _MEMO_SIZE:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = _normalise(table[split], cfg, what, classes, kind)
    return _MEMO[key]


def _clean_rows(rows: list[dict], cfg: SourceOptions, what: str) -> list[dict]:
    """Skip rows whose text is blank or not a string, and rows repeating an earlier id, saying how many."""
    field, id_field = cfg.text_field, cfg.id_field
    if field and not cfg.prompt_template:
        bad = [i for i, r in enumerate(rows) if not isinstance(r.get(field), str) or not r[field].strip()]
        if bad and len(bad) == len(rows):  # nothing left to learn from or select: say so, not a later symptom
            raise UserError(f"{what}: every row's '{field}' is blank or not text ({len(rows)} rows)")
        if bad:
            log.warning("%s: skipped %d of %d rows whose '%s' is blank or not text (e.g. row %d)",
                        what, len(bad), len(rows), field, bad[0])
            drop = set(bad)
            rows = [r for i, r in enumerate(rows) if i not in drop]
    if id_field:
        seen, keep = set(), []
        for r in rows:
            key = str(r.get(id_field))
            if key not in seen:
                seen.add(key)
                keep.append(r)
        if len(keep) < len(rows):
            log.warning("%s: skipped %d rows whose '%s' repeats an earlier row's (the first is kept)",
                        what, len(rows) - len(keep), id_field)
        rows = keep
    return rows


def _sample(ds: datasets.Dataset, n, seed: int) -> datasets.Dataset:
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(int(n)))


def _column(ds: datasets.Dataset, name: str) -> list:
    """One column as a Python list in one columnar read (``ds[name]`` reads row by row)."""
    return ds.select_columns([name]).to_dict()[name]


def _index_labels(train, test, classes: list):
    """Integer labels → class indices 0..C-1, the same map for both splits (losses index by label).

    Without ``classes`` the distinct values, sorted, are the classes (AG News's 1–4 become 0–3, named
    "1".."4"); with ``classes``, labels 1..C are read as 1-based. Either remap is logged.
    """
    if train.features["label"].dtype not in ("int64", "int32"):
        return train, test, classes
    values = sorted(set(_column(train, "label")) | set(_column(test, "label")))
    if not classes:
        classes = [str(v) for v in values]
        index = {v: i for i, v in enumerate(values)}
    elif values and 0 <= values[0] and values[-1] < len(classes):
        return train, test, classes
    elif values and 1 <= values[0] and values[-1] <= len(classes):
        index = {v: v - 1 for v in values}
    else:
        raise UserError(f"dataset: integer labels {values[:6]} do not fit the {len(classes)} classes {classes} "
                        f"(need 0..{len(classes) - 1} or 1..{len(classes)})")
    if any(v != i for v, i in index.items()):
        log.info("dataset: integer labels %s mapped to class indices %s (classes %s)", values[:10],
                 [index[v] for v in values[:10]], classes[:10])
        train, test = (ds.map(lambda y: {"label": index[y]}, input_columns="label") for ds in (train, test))
    return train, test, classes


@dataclass
class TaskData:
    train: datasets.Dataset | None  # the hidden true data θf was finetuned on (None: recover mode without it)
    test: datasets.Dataset | None
    classes: list[str]
    val: datasets.Dataset | None = None  # true rows θf never saw, for choosing retraining epochs
    unseen: datasets.Dataset | None = None  # more rows of the true distribution θf never saw (planted in the seed)


def load_task(cfg: SourceOptions, rng: int, kind: str = "labelled", n_unseen: int = 0) -> TaskData:
    """The hidden finetuning data and its held-out test split, shaped for a task of data ``kind``; with
    ``n_unseen``, also that many rows of the same pool that neither θf, validation nor test ever see."""
    if kind not in KINDS:
        raise ValueError(f"data kind must be one of {KINDS}, got {kind!r}")
    if kind == "prompt_response" and not (cfg.prompt_template and cfg.response_template):
        raise UserError("an SFT dataset config needs prompt_template and response_template")
    classes = list(cfg.classes or []) if kind == "labelled" else []
    train = normalised_split(cfg, cfg.train_split, "dataset", classes, kind)
    test_split = cfg.test_split
    if test_split:
        test = normalised_split(cfg, test_split, "dataset", classes, kind)
    else:  # one file, no test split: a seeded split
        parts = train.train_test_split(test_size=cfg.test_size, seed=rng)
        train, test = parts["train"], parts["test"]
    if kind == "labelled":
        train, test, classes = _index_labels(train, test, classes)
    if not classes and kind == "labelled":  # labels of another integer dtype: their sorted values
        classes = [str(c) for c in sorted(set(train["label"]) | set(test["label"]))]
    pool = train
    train, val = _carve_val(pool, cfg.n_train, cfg.n_val or 0, rng)
    unseen = _carve_unseen(pool, len(train) + (0 if val is None else len(val)), int(n_unseen), rng) if n_unseen else None
    test = _sample(test, cfg.n_test, rng + 1)
    if len(train) == 0 or len(test) == 0:
        raise UserError(f"dataset '{cfg.path}' has an empty train or test split after filtering")
    return TaskData(train=train, test=test, classes=classes, val=val, unseen=unseen)


def _carve_unseen(pool: datasets.Dataset, used: int, n: int, rng: int) -> datasets.Dataset:
    """``n`` rows after the first ``used`` of the pool's shuffle (train, then validation): the true
    distribution, never trained on, validated on or tested on."""
    if used + n > len(pool):
        raise UserError(f"seed.unseen_rows={n}: the true data's pool has {len(pool)} rows, {used} of them taken by "
                        f"train and validation; lower unseen_rows or dataset.n_train")
    return pool.shuffle(seed=rng).select(range(used, used + n))


def _carve_val(pool: datasets.Dataset, n_train, n_val: float, rng: int):
    """(train, val): train is exactly what ``_sample`` gives without a validation split (so θf's
    data does not change with n_val); val comes from the rows after it in the same shuffle, or,
    when the pool has no rows to spare, from train's end (train shrinks, and the log says so).
    ``n_val`` is a row count, or a fraction of the training rows when below 1 (small local files)."""
    train = _sample(pool, n_train, rng)
    n_val = max(1, round(n_val * len(train))) if 0 < n_val < 1 else int(n_val)
    if n_val <= 0:
        return train, None
    spare = pool.shuffle(seed=rng).select(range(len(train), len(pool))) if len(train) < len(pool) else None
    if spare is not None and len(spare) >= n_val:
        return train, spare.select(range(n_val))
    if n_val >= len(train):
        raise UserError(f"n_val={n_val} leaves no training rows (the train pool has {len(train)} rows)")
    log.warning("dataset: no spare rows for a %d-row validation split; taking it from the %d train rows",
                n_val, len(train))
    return train.select(range(len(train) - n_val)), train.select(range(len(train) - n_val, len(train)))


def load_seed(cfg: SourceOptions, rng: int, exclude_ids: set[str] = frozenset(),
              kind: str = "labelled") -> datasets.Dataset:
    """The public seed corpus, with any row whose id is in the true data removed."""
    ds = normalised_split(cfg, cfg.split, "seed corpus", None, kind)
    if exclude_ids:
        before = len(ds)
        ds = ds.filter(lambda i: i not in exclude_ids, input_columns="id")
        log.info("seed corpus: removed %d rows that are in the true data", before - len(ds))
    ds = _sample(ds, cfg.max_examples, rng)
    if len(ds) == 0:
        raise UserError(f"seed corpus '{cfg.path}' is empty (after filtering)")
    return ds


def mix_in_true(seed: datasets.Dataset, train: datasets.Dataset, fraction: float, rng: int,
                unseen: datasets.Dataset | None = None) -> datasets.Dataset:
    """The seed corpus plus round(fraction·|train|) true training rows (seeded), marked ``leaked``, and the
    ``unseen`` rows of the true distribution that θf never trained on, marked ``unseen``: to study selection
    when the true data leaked into the public corpus, and to measure recovery directly (planted rows found).

    A planted row carries only what a seed row carries (for SFT the prompt, not the response).
    """
    fraction = float(fraction)
    if fraction == 0 and unseen is None:
        return seed
    if not 0 <= fraction <= 1:
        raise UserError(f"seed.leak_fraction must be in [0, 1], got {fraction}")
    n = round(fraction * len(train))
    parts = [("leaked", train.shuffle(seed=rng + 2).select(range(n)).to_dict())]
    if unseen is not None:
        parts.append(("unseen", unseen.to_dict()))
    ids = set()
    for what, rows in parts:
        missing = [c for c in seed.column_names if c not in rows]
        if missing:
            raise UserError(f"seed.leak_fraction / unseen_rows: the true data has no column(s) {missing} that the "
                            "seed corpus has")
        if "prompt" in seed.column_names:  # seed rows of SFT hold the prompt as their text
            rows["text"] = rows["prompt"]
        ids |= set(rows["id"])
    seed = seed.filter(lambda i: i not in ids, input_columns="id")  # no row twice when exclude_true is off
    cols = {c: list(seed[c]) + [v for _, rows in parts for v in rows[c]] for c in seed.column_names}
    for flag in ("leaked", "unseen"):
        cols[flag] = [False] * len(seed) + [w == flag for w, rows in parts for _ in rows["id"]]
    log.info("seed corpus: mixed in %d true training rows (leak_fraction=%g) and %d unseen true-distribution rows",
             n, fraction, 0 if unseen is None else len(unseen))
    return datasets.Dataset.from_dict(cols).shuffle(seed=rng + 3).flatten_indices()
