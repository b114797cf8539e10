"""Compare the runs of a sweep: ``python -m src.report [outputs/multiruns/<sweep>] [--out DIR]``.

Gathers every ``results.json`` below the folder (default: the newest folder in outputs/multiruns),
groups the selector rows by (selector, d, P) plus any other config key that differs between the
runs (e.g. ``seed.include`` in experiment=seed_domain), and averages over random seeds (``rng``):
mean ± sample std and n, of the task's metric (``results.json``'s ``metric``: accuracy for classification,
perplexity for SFT) and the OT distance, or for recover runs without true data, of the objective after
the last pick. Rows and table come from ``src.results`` (the table every run prints). Writes
``report.csv`` (the aggregated rows), ``report.json``, PNG plots (metric vs d, metric vs P, metric and OT
distance per selector) and a self-contained ``report.html`` to ``--out`` (default ``<folder>/report``),
and prints the table.
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import statistics
import sys
from pathlib import Path

from src.results import ResultsError, flatten, format_text, notes, table
from src.results import aggregate as aggregate_rows

LOWER_IS_BETTER = ("perplexity", "ot_distance")
# Never a grouping key: rng is what we average over; the rest do not change a selector's result.
IGNORED = ("rng", "d", "P", "cache_dir", "baselines", "selector._target_")
IGNORED_PREFIXES = ("logger.", "trainer.progress_bar")


class ReportError(Exception):
    """Nothing (consistent) to report: ends the CLI with one line and exit code 2."""


def find_results(root: Path) -> list[tuple[Path, dict]]:
    """Every readable ``results.json`` below ``root`` (recursively), as (path, dict); others are skipped."""
    out = []
    for p in sorted(root.rglob("results.json")):
        try:
            res = json.loads(p.read_text())
            if res.get("results"):
                out.append((p, res))
                continue
        except (OSError, json.JSONDecodeError):
            pass
        print(f"warning: skipping {p} (unreadable or without results)", file=sys.stderr)
    return out


def varying_keys(results: list[dict]) -> list[str]:
    """Config keys (flattened) that split the runs beyond (d, P): each kept key must separate runs that
    (d, P, the keys kept before it) do not, and must not be a mere function of ``rng`` (e.g. a seed
    derived from it), so derived keys (finetune.max_length = model.max_length) appear only once."""
    flats = [flatten(r.get("config", {})) for r in results]

    def n_groups(ks):
        return len({tuple(json.dumps(f.get(k), sort_keys=True) for k in ks) for f in flats})

    candidates = sorted({k for f in flats for k in f if k not in IGNORED and not k.startswith(IGNORED_PREFIXES)})
    kept = []
    for k in candidates:
        base = ["d", "P", *kept]
        if n_groups([*base, k]) > n_groups(base) and n_groups([*base, k, "rng"]) > n_groups([*base, "rng"]):
            kept.append(k)
    return kept


def aggregate(results: list[dict], extra: list[str] | None = None) -> list[dict]:
    """One row per (selector, d, P, *extra) averaged over the runs' seeds (``src.results.aggregate``).

    ``extra`` defaults to ``varying_keys(results)``. Raises ResultsError when runs have different metrics.
    """
    return aggregate_rows(results, varying_keys(results) if extra is None else extra)


def _cell(v) -> str:
    return "-" if v is None else str(v)


def value_name(rows: list[dict]) -> str:
    """What the rows score: the task's metric, or the objective for recover runs without true data."""
    return rows[0]["metric"] or "objective"


def write_csv(rows: list[dict], path: Path) -> None:
    """The aggregated rows, one column per field; nested fields (composition, info) as ``<field>/<name>``."""
    flat = [{f"{k}/{c}" if isinstance(v, dict) else k: x for k, v in r.items()
             for c, x in (v.items() if isinstance(v, dict) else [(None, v)])} for r in rows]
    cols = list(dict.fromkeys(k for r in flat for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in flat:
            w.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})


# ---------------------------------------------------------------------------------------------- plots
def _label(r: dict, keys: list[str]) -> str:
    """Short legend / tick label: last part of each key, long values cut."""
    def short(v):
        return v if len(v) <= 32 else v[:29] + "..."
    return " ".join(f"{k.split('.')[-1]}={short(_cell(r.get(k)))}" for k in keys)


def plot_vs(rows: list[dict], x: str, extra: list[str], path: Path) -> str | None:
    """The task metric (or a recover run's objective) vs ``x`` ("d" or "P"), one line per selector (and per
    value of the other keys that vary). Returns why it was skipped, or None when written."""
    m, test = value_name(rows), "test " if rows[0]["metric"] else ""
    rows = [r for r in rows if r.get(f"{m}_mean") is not None]  # a selector without an objective has no point
    xs = sorted({r[x] for r in rows if r[x] is not None})
    if len(xs) < 2:
        return f"{m} vs {x} skipped: the sweep has only one value of {x} ({', '.join(map(str, xs)) or 'none'})"
    import matplotlib.pyplot as plt

    other = [k for k in ["d", "P", *extra] if k != x and len({str(r.get(k)) for r in rows}) > 1]
    series: dict[tuple, list[dict]] = {}
    for r in rows:
        series.setdefault((r["selector"], *(str(r.get(k)) for k in other)), []).append(r)
    sels = list(dict.fromkeys(k[0] for k in series))
    styles = list(dict.fromkeys(k[1:] for k in series))  # one colour per selector, one line style per config
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, rs in series.items():
        rs = sorted(rs, key=lambda r: r[x])
        ax.errorbar([r[x] for r in rs], [r[f"{m}_mean"] for r in rs], yerr=[r[f"{m}_std"] for r in rs],
                    marker="os^vD"[styles.index(key[1:]) % 5], ls=["-", "--", ":", "-."][styles.index(key[1:]) % 4],
                    color=f"C{sels.index(key[0]) % 10}", capsize=3,
                    label=" ".join([key[0], _label(rs[0], other)]).strip())
    ref = [r[f"thetaf_{m}"] for r in rows if r.get(f"thetaf_{m}") is not None]
    if ref:
        ax.axhline(statistics.mean(ref), color="gray", ls="--", lw=1, label="θf (mean over runs)")
    if x == "d":
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(v) for v in xs])
    ax.set(xlabel=x, ylabel=f"{test}{m} (mean ± std over seeds)",
           title=f"{m} vs {x}" + (" (lower is better)" if m in LOWER_IS_BETTER else ""))
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return None


def plot_bars(rows: list[dict], metric: str, extra: list[str], path: Path) -> None:
    """``metric`` per selector as bars with std error bars, grouped by configuration when there are several."""
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get(f"{metric}_mean") is not None]
    keys = [k for k in ["d", "P", *extra] if len({str(r.get(k)) for r in rows}) > 1]
    configs = list(dict.fromkeys(_label(r, keys) for r in rows))
    sels = list(dict.fromkeys(r["selector"] for r in rows))
    width = 0.8 / len(sels)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(configs) * len(sels) ** 0.5 + 3), 4.5))
    for i, s in enumerate(sels):
        got = {_label(r, keys): r for r in rows if r["selector"] == s}
        xs = [j + (i - (len(sels) - 1) / 2) * width for j, c in enumerate(configs) if c in got]
        rs = [got[c] for c in configs if c in got]
        ax.bar(xs, [r[f"{metric}_mean"] for r in rs], width, yerr=[r[f"{metric}_std"] for r in rs], capsize=3,
               label=s)
    name = "OT distance" if metric == "ot_distance" else metric
    if keys:
        ax.set_xticks(range(len(configs)), configs, rotation=20 if len(configs) > 3 else 0, fontsize=8)
    else:  # one configuration: the bars are the selectors
        ax.set_xticks([(i - (len(sels) - 1) / 2) * width for i in range(len(sels))], sels)
    ax.set(ylabel=f"{name} (mean ± std over seeds)", title=f"{name} per selector"
           + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def make_plots(rows: list[dict], extra: list[str], out: Path) -> tuple[list[Path], list[str]]:
    """All plots into ``out``: (written PNGs, notes on the skipped ones)."""
    import matplotlib

    matplotlib.use("Agg")
    written, skipped, metric = [], [], value_name(rows)
    for x in ("d", "P"):
        why = plot_vs(rows, x, extra, out / f"{metric}_vs_{x}.png")
        if why:
            skipped.append(why)
        else:
            written.append(out / f"{metric}_vs_{x}.png")
    for m in (metric, "ot_distance"):
        if any(r.get(f"{m}_mean") is not None for r in rows):  # recover runs: no OT distance
            plot_bars(rows, m, extra, out / f"{m}.png")
            written.append(out / f"{m}.png")
    return written, skipped


# ---------------------------------------------------------------------------------------------- html
CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}.skipped{color:#a60}code{background:#f6f6f6}"""


def render_html(rows: list[dict], extra: list[str], title: str, runs: list[str], plots: list[Path],
                skipped: list[str]) -> str:
    e = html.escape
    m = rows[0]["metric"]
    columns, cells = table(rows, ["d", "P", *extra])
    head = "".join(f"<th>{e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in line) + "</tr>" for line in cells)
    legend = "".join(f"<p>{e(n)}</p>" for n in notes(rows))
    figs = "".join(f'<figure><img alt="{e(p.stem)}" src="data:image/png;base64,'
                   f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{e(p.name)}</figcaption></figure>'
                   for p in plots)
    skipped_notes = "".join(f'<p class="skipped">{e(s)}</p>' for s in skipped)
    run_list = "".join(f"<li><code>{e(r)}</code></li>" for r in runs)
    by = ", ".join(["selector", "d", "P", *extra])
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title><style>{CSS}</style>'
            f"</head><body><h1>{e(title)}</h1><p>{len(runs)} runs, grouped by ({e(by)}); "
            f"{e(f'{m} and OT distance are' if m else 'the objective after the last pick is')} mean ± sample std"
            " over random seeds (n runs; the std is left out when n = 1)."
            + (" θf: the finetuned model the selections try to reproduce." if m else "") + "</p>"
            f'<table id="results"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{legend}'
            f"<h2>Plots</h2>{skipped_notes}{figs}<h2>Runs</h2><ul>{run_list}</ul></body></html>")


# ---------------------------------------------------------------------------------------------- cli
def newest_sweep(base: Path = Path("outputs/multiruns")) -> Path | None:
    dirs = [p for p in base.iterdir() if p.is_dir()] if base.is_dir() else []
    return max(dirs, key=lambda p: p.stat().st_mtime) if dirs else None


def build_report(root: Path, out: Path) -> tuple[list[dict], list[str], list[str]]:
    """Read, aggregate and write everything; returns (rows, extra keys, runs). Raises ReportError."""
    found = find_results(root)
    if not found:
        raise ReportError(f"no results.json files under {root}")
    results = [res for _, res in found]
    extra = varying_keys(results)
    rows = aggregate(results, extra)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "report.csv")
    plots, skipped = make_plots(rows, extra, out)
    runs = [str(p.parent.relative_to(root)) if p.parent != root else "." for p, _ in found]
    (out / "report.json").write_text(json.dumps({"sweep": str(root), "group_by": ["selector", "d", "P", *extra],
                                                 "rows": rows, "runs": runs, "plots": [p.name for p in plots],
                                                 "skipped_plots": skipped}, indent=2))
    title = f"weights2data report: {root.resolve().name}"
    (out / "report.html").write_text(render_html(rows, extra, title, runs, plots, skipped))
    return rows, extra, runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", type=Path, help="a sweep folder (default: newest in outputs/multiruns)")
    ap.add_argument("--out", type=Path, help="where to write the report (default: <folder>/report)")
    args = ap.parse_args(argv)
    root = args.folder or newest_sweep()
    if root is None:
        print("error: no sweep folder given and none found in outputs/multiruns", file=sys.stderr)
        return 2
    if not root.is_dir():
        print(f"error: {root} is not a folder", file=sys.stderr)
        return 2
    out = args.out or root / "report"
    try:
        rows, extra, runs = build_report(root, out)
    except (ReportError, ResultsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{root}: {len(runs)} runs\n{format_text(rows, ['d', 'P', *extra])}\n"
          f"report written to {out}/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
