"""Result tables, one way: results dicts → aggregated rows → the columns and cells every table prints.

    rows = aggregate([json.load(open(p)) for p in paths], group_by=["seed.include.pos"])
    columns, cells = table(rows, keys=["d", "P", "seed.include.pos"])
    print(format_text(rows, keys=["d", "P"]))

The run's own table (``src.main``), the benchmark summary (``src.bench.quality``), the sweep report's
text, HTML and CSV (``src.report``) and the W&B table (``src.tracking``) are all built here.

``aggregate`` reads results dicts as ``src.pipeline.run`` writes them (``results.json``: ``config``,
``metric``, ``reference`` with ``theta0_<metric>`` / ``thetaf_<metric>``, and ``results``, one row per
selector with the metric, ``ot_distance``, ``class_balance``, ``groups``, ``leaked_share`` and what the
selector adds, e.g. SELECT's ``objective_last``), and recover runs without true data (``mode: recover``,
no ``metric`` or ``reference``; each row has the ``objective`` after its last pick). It groups the rows
by (selector, d, P, *group_by) and averages every number over the runs of a group (random seeds):

- ``selector``, ``d``, ``P``, the ``group_by`` keys, ``n`` (runs), ``rngs``, ``metric`` (None for recover);
- ``<field>_mean`` / ``<field>_std`` (sample std, 0 for one run) of every numeric field of the rows:
  the metric, ``ot_distance``, ``leaked_share``, ``objective``, ``k``, ...;
- ``gap_closed`` = (selector − random) / (θf − random) on the means, when the group has random and θf;
- ``info``: text fields equal in every run (e.g. ``device``), ``composition``: the mean share of each
  class among the picks' training labels (classification), else of each source group;
- ``theta0_<metric>`` / ``thetaf_<metric>`` and their ``_std``: the reference models, when there are any.

``table`` gives the columns and the cells: the selector ("expert (k true rows)" for expert: k rows of the
true data, a selection), the key columns, n, the metric and OT distance (mean ± std), gap closed, each
``COLUMNS`` entry the rows carry, and the composition of the picks; then a θf and a θ0 row per group
(models, not selections; θf is what the paper's tables call "expert"). Empty columns are left out, so a
recover table shows the objective and no metric.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Column:
    field: str        # a numeric field of a results row (averaged as <field>_mean / <field>_std)
    header: str
    fmt: str = ".4f"


# Per-selector numbers shown as "mean ± std" whenever the rows carry them. A new one is one line here.
COLUMNS = (
    Column("planted_share", "planted found (precision@k)", ".3f"),
    Column("leaked_share", "of them trained", ".3f"),
    Column("unseen_share", "of them unseen", ".3f"),
    Column("objective", "objective after the last pick"),
)
LABELS = {"expert": "expert (k true rows)"}  # a selection of true rows, not θf
REFERENCES = (("thetaf", "θf (the finetuned model)"), ("theta0", "θ0 (the base model)"))
RECOVER = "none (recover without true data)"
_GROUPING = ("selector", "d", "P", "rng")  # never averaged: what rows are grouped by or averaged over


class ResultsError(ValueError):
    """Results that cannot share one table (e.g. runs of tasks with different metrics)."""


# ---------------------------------------------------------------------------------------------- config keys
def _value(v):
    if isinstance(v, list):
        return "[" + ",".join(str(_value(x)) for x in v) + "]"
    return v


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested config → {"a.b.c": value}, lists written as "[x,y]" so every value is hashable."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = _value(v) if not isinstance(v, dict) else "{}"
    return out


# ---------------------------------------------------------------------------------------------- aggregation
def metric_of(res: dict) -> str | None:
    """The task's metric of a results dict; None for a recover run without true data."""
    if res.get("metric"):
        return res["metric"]
    return None if res.get("mode") == "recover" and "reference" not in res else "accuracy"


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _mean_std(vals: list) -> tuple[float, float]:
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _composition(rows: list[dict]) -> dict[str, float]:
    """Mean share of each class of the picks' training labels, else of each source group; largest first."""
    key = "class_balance" if any(r.get("class_balance") for r in rows) else "groups"
    shares = [r.get(key) or {} for r in rows]
    names = sorted({c for sh in shares for c in sh})
    mean = {c: statistics.mean(sh.get(c, 0.0) for sh in shares) for c in names}
    return dict(sorted(mean.items(), key=lambda kv: -kv[1]))


def aggregate(results: list[dict], group_by: Sequence[str] = ()) -> list[dict]:
    """One row per (selector, d, P, *group_by) over the runs in ``results`` (see the module docstring).

    Rows come sorted by the group_by values, d, P, then the selectors' order in the runs. Raises
    ResultsError when the runs have different metrics (or mix recover runs with scored ones)."""
    names = sorted({metric_of(res) or RECOVER for res in results})
    if len(names) > 1:
        raise ResultsError(f"the runs mix tasks with different metrics ({', '.join(names)}); report them separately")
    metric = metric_of(results[0])
    group_by = list(group_by)
    groups: dict[tuple, dict] = {}
    order: dict[str, int] = {}
    for res in results:
        cfg = res.get("config", {})
        flat = flatten(cfg)
        for r in res["results"]:
            order.setdefault(r["selector"], len(order))
            key = (r["selector"], r.get("d", cfg.get("d")), r.get("P", cfg.get("P")), *(flat.get(k) for k in group_by))
            g = groups.setdefault(key, {"rows": [], "refs": []})
            g["rows"].append(r)
            g["refs"].append(res.get("reference") or {})
    out = []
    for key, g in groups.items():
        rs = g["rows"]
        row = {"selector": key[0], "d": key[1], "P": key[2], **dict(zip(group_by, key[3:])), "n": len(rs),
               "rngs": sorted({r.get("rng") for r in rs}, key=str), "metric": metric}
        fields = list(dict.fromkeys(f for f in ([metric, "ot_distance"] if metric else []) if any(f in r for r in rs)))
        fields += [f for f in dict.fromkeys(f for r in rs for f, v in r.items() if _is_number(v))
                   if f not in fields and f not in _GROUPING]
        for f in fields:
            vals = [r[f] for r in rs if _is_number(r.get(f))]
            if vals:
                row[f"{f}_mean"], row[f"{f}_std"] = _mean_std(vals)
        if metric:
            row["gap_closed"] = None  # filled in below, once the group's random row is known
        texts = {f for r in rs for f, v in r.items() if isinstance(v, (str, bool)) and f not in _GROUPING}
        info = {f: rs[0][f] for f in sorted(texts) if all(r.get(f) == rs[0][f] for r in rs)}
        if info:
            row["info"] = info
        if metric:
            for ref, _ in REFERENCES:
                vals = [x[f"{ref}_{metric}"] for x in g["refs"] if _is_number(x.get(f"{ref}_{metric}"))]
                row[f"{ref}_{metric}"], row[f"{ref}_{metric}_std"] = _mean_std(vals) if vals else (None, None)
        composition = _composition(rs)
        if composition:
            row["composition"] = composition
        out.append(row)
    if metric:
        _gap_closed(out, metric, group_by)
    return sorted(out, key=lambda r: ([str(r[k]) for k in group_by], r["d"] or 0, r["P"] or 0, order[r["selector"]]))


def gap_closed(value: float, random: float, thetaf: float) -> float | None:
    """Share of the random → θf gap a selector closes: (m − m_random) / (m_θf − m_random).

    The same formula serves accuracy and perplexity (both differences change sign together)."""
    return None if thetaf == random else (value - random) / (thetaf - random) + 0.0  # + 0.0: no "-0.00"


def _gap_closed(rows: list[dict], metric: str, group_by: list[str]) -> None:
    def group(r):
        return json.dumps([r["d"], r["P"], *(r.get(k) for k in group_by)], default=str)

    random = {group(r): r.get(f"{metric}_mean") for r in rows if r["selector"] == "random"}
    for r in rows:
        rand, thetaf, value = random.get(group(r)), r.get(f"thetaf_{metric}"), r.get(f"{metric}_mean")
        if None not in (rand, thetaf, value):
            r["gap_closed"] = gap_closed(value, rand, thetaf)


# ---------------------------------------------------------------------------------------------- table
def _numeric_fields(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k[:-5] for r in rows for k in r if k.endswith("_mean") and r[k] is not None))


def _cell(row: dict, field: str, fmt: str, values: bool):
    mean = row.get(f"{field}_mean")
    if values or mean is None:
        return mean if values else ""
    std = row.get(f"{field}_std")
    return f"{mean:{fmt}}" + (f" ± {std:{fmt}}" if row["n"] > 1 and std is not None else "")


def _shares(composition: dict, top: int = 5) -> str:
    return " ".join(f"{c.split('.')[-1]}:{v:.2f}" for c, v in list(composition.items())[:top])


def table(rows: list[dict], keys: Sequence[str] = (), *, values: bool = False,
          details: bool = False) -> tuple[list[str], list[list]]:
    """(columns, cells) of the table of aggregated ``rows``; ``keys``: config keys shown as columns (e.g. d, P).

    Cells are strings ("0.8123 ± 0.0100"; "" where empty), or with ``values`` the numbers themselves
    (means; None where empty), for a table that sorts and plots (W&B). ``details`` appends every other
    number the rows carry (``k``, ``objective_last``, ...), their common text fields and one
    ``balance/<name>`` column per composition share."""
    if not rows:
        return [], []
    metric = rows[0]["metric"]
    numeric = _numeric_fields(rows)
    shown = [c for c in COLUMNS if c.field in numeric]
    show_n = bool(keys) or any(r["n"] > 1 for r in rows)
    has_gap = any(r.get("gap_closed") is not None for r in rows)
    has_comp = any(r.get("composition") for r in rows)
    standard = {metric, "ot_distance", *(c.field for c in shown)}
    extra_num = [f for f in numeric if f not in standard] if details else []
    extra_text = list(dict.fromkeys(f for r in rows for f in r.get("info", {}))) if details else []
    extra_comp = list(dict.fromkeys(c for r in rows for c in r.get("composition") or {})) if details else []
    empty = None if values else ""

    columns = ["selector", *keys, *(["n"] if show_n else [])]
    if metric:
        columns += [metric, "OT distance"] if "ot_distance" in numeric else [metric]
    columns += (["gap closed"] if has_gap else []) + [c.header for c in shown] + extra_num + extra_text
    columns += (["composition of picks"] if has_comp else []) + [f"balance/{c}" for c in extra_comp]

    def selector_row(r):
        cells = {"selector": LABELS.get(r["selector"], r["selector"]), "n": r["n"] if values else str(r["n"])}
        if metric:
            cells[metric] = _cell(r, metric, ".4f", values)
            cells["OT distance"] = _cell(r, "ot_distance", ".4f", values)
        gap = r.get("gap_closed")
        cells["gap closed"] = gap if values or gap is None else f"{gap:.2f}"
        cells.update({c.header: _cell(r, c.field, c.fmt, values) for c in shown})
        cells.update({f: _cell(r, f, ".4g", values) for f in extra_num})
        cells.update({f: r.get("info", {}).get(f, empty) for f in extra_text})
        cells["composition of picks"] = _shares(r.get("composition") or {})
        cells.update({f"balance/{c}": (r.get("composition") or {}).get(c, empty) for c in extra_comp})
        return cells

    def reference_rows(r):
        out = []
        for ref, label in REFERENCES:
            mean, std = r.get(f"{ref}_{metric}"), r.get(f"{ref}_{metric}_std")
            if mean is not None:
                cell = mean if values else f"{mean:.4f}" + (f" ± {std:.4f}" if r["n"] > 1 and std is not None else "")
                out.append({"selector": label, "n": r["n"] if values else str(r["n"]), metric: cell,
                            "composition of picks": "reference, not a selection"})
        return out

    def group(r):
        return json.dumps([r["d"], r["P"], *(r.get(k) for k in keys)], default=str)

    cells = []
    for i, r in enumerate(rows):
        lines = [selector_row(r)]
        if metric and (i + 1 == len(rows) or group(rows[i + 1]) != group(r)):  # after the group's last selector
            lines += reference_rows(r)
        for line in lines:
            line.update({k: r.get(k) if values else ("-" if r.get(k) is None else str(r.get(k))) for k in keys})
            cells.append([line.get(c, empty) for c in columns])
    return columns, cells


def notes(rows: list[dict]) -> list[str]:
    """What the table's labels mean, for the lines below it."""
    out = []
    if any(r["n"] > 1 for r in rows):
        out.append("mean ± sample std over the n runs of each row (random seeds)")
    if any(r.get("gap_closed") is not None for r in rows):
        out.append("gap closed = (selector − random) / (θf − random)")
    if any(r["selector"] == "expert" for r in rows):
        out.append("'expert (k true rows)' retrains θ0 on k rows of the true data: a selection, an upper bound at the same k")
    if any(r.get(f"thetaf_{r['metric']}") is not None for r in rows if r["metric"]):
        out.append("θf is the finetuned model itself (what the paper's tables call expert), θ0 the base model: "
                   "references, not selections")
    return out


def format_text(rows: list[dict], keys: Sequence[str] = ()) -> str:
    """The table as aligned plain text, with its notes below."""
    columns, cells = table(rows, keys)
    lines = [columns, *cells]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join(text + notes(rows))
