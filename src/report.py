"""Compare the runs of a sweep: ``python -m src.report [outputs/multiruns/<sweep>] [--out DIR]``.

Gathers every ``results.json`` below the folder (default: the newest folder in outputs/multiruns),
groups the selector rows by (selector, d, P) plus any other config key that differs between the
runs (e.g. ``seed.include`` in experiment=seed_domain), and averages over random seeds (``rng``):
mean ± sample std and n, of the task's metric (``results.json``'s ``metric``: accuracy for classification,
perplexity for SFT) and the OT distance. Writes ``report.csv``, ``report.json``, PNG plots (metric vs d,
metric vs P, metric and OT distance per selector) and a self-contained ``report.html`` to ``--out``
(default ``<folder>/report``), and prints the table.
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


def _mean_std(vals: list[float]) -> tuple[float, float]:
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def aggregate(results: list[dict], extra: list[str] | None = None) -> list[dict]:
    """One row per (selector, d, P, *extra): mean and std of each metric over the runs' seeds.

    ``extra`` defaults to ``varying_keys(results)``. Each output row has selector, d, P, the extra keys,
    n (runs averaged), rngs, metric (its name), <metric>_mean/_std, ot_distance_mean/_std, and the mean θ0 / θf
    reference values theta0_<metric> / thetaf_<metric>. Raises ReportError when runs have different metrics.
    """
    names = sorted({res.get("metric", "accuracy") for res in results})
    if len(names) > 1:
        raise ReportError(f"the runs mix tasks with different metrics ({', '.join(names)}); report them separately")
    metric = names[0]
    extra = varying_keys(results) if extra is None else extra
    groups: dict[tuple, dict] = {}
    order: dict[str, int] = {}
    for res in results:
        cfg, flat = res.get("config", {}), flatten(res.get("config", {}))
        for r in res["results"]:
            order.setdefault(r["selector"], len(order))
            d, P = r.get("d", cfg.get("d")), r.get("P", cfg.get("P"))
            key = (r["selector"], d, P, *(flat.get(k) for k in extra))
            g = groups.setdefault(key, {"rows": [], "refs": []})
            g["rows"].append(r)
            g["refs"].append(res.get("reference", {}))
    out = []
    for key, g in groups.items():
        row = {"selector": key[0], "d": key[1], "P": key[2], **dict(zip(extra, key[3:])), "n": len(g["rows"]),
               "rngs": sorted({r.get("rng") for r in g["rows"]}, key=str), "metric": metric}
        for m in (metric, "ot_distance"):
            row[f"{m}_mean"], row[f"{m}_std"] = _mean_std([float(r[m]) for r in g["rows"]])
        for ref in (f"theta0_{metric}", f"thetaf_{metric}"):
            vals = [float(x[ref]) for x in g["refs"] if ref in x]
            row[ref] = statistics.mean(vals) if vals else None
        out.append(row)

    def sort_key(r):
        return ([str(r[k]) for k in extra], r["d"] or 0, r["P"] or 0, order[r["selector"]])
    return sorted(out, key=sort_key)


def _cell(v) -> str:
    return "-" if v is None else str(v)


def table_columns(extra: list[str], metric: str) -> list[str]:
    return ["selector", "d", "P", *extra, "n", metric, "OT distance", f"θf {metric} (the finetuned model)"]


def table_cells(row: dict, extra: list[str]) -> list[str]:
    m = row["metric"]
    ref = row.get(f"thetaf_{m}")
    name = "expert (k true rows)" if row["selector"] == "expert" else str(row["selector"])  # not θf: a selection
    return [name, str(row["d"]), str(row["P"]), *(_cell(row.get(k)) for k in extra), str(row["n"]),
            f"{row[f'{m}_mean']:.4f} ± {row[f'{m}_std']:.4f}",
            f"{row['ot_distance_mean']:.4f} ± {row['ot_distance_std']:.4f}", "-" if ref is None else f"{ref:.4f}"]


def format_table(rows: list[dict], extra: list[str]) -> str:
    cells = [table_columns(extra, rows[0]["metric"])] + [table_cells(r, extra) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells)


def write_csv(rows: list[dict], path: Path) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})


# ---------------------------------------------------------------------------------------------- plots
def _label(r: dict, keys: list[str]) -> str:
    """Short legend / tick label: last part of each key, long values cut."""
    def short(v):
        return v if len(v) <= 32 else v[:29] + "..."
    return " ".join(f"{k.split('.')[-1]}={short(_cell(r.get(k)))}" for k in keys)


def plot_vs(rows: list[dict], x: str, extra: list[str], path: Path) -> str | None:
    """The task metric vs ``x`` ("d" or "P"), one line per selector (and per value of the other keys that vary).
    Returns why it was skipped, or None when written."""
    xs = sorted({r[x] for r in rows if r[x] is not None})
    if len(xs) < 2:
        return f"{rows[0]['metric']} vs {x} skipped: the sweep has only one value of {x} ({', '.join(map(str, xs)) or 'none'})"
    import matplotlib.pyplot as plt

    m = rows[0]["metric"]
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
    ax.set(xlabel=x, ylabel=f"test {m} (mean ± std over seeds)",
           title=f"{m} vs {x}" + (" (lower is better)" if m in LOWER_IS_BETTER else ""))
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return None


def plot_bars(rows: list[dict], metric: str, extra: list[str], path: Path) -> None:
    """``metric`` per selector as bars with std error bars, grouped by configuration when there are several."""
    import matplotlib.pyplot as plt

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
    written, skipped, metric = [], [], rows[0]["metric"]
    for x in ("d", "P"):
        why = plot_vs(rows, x, extra, out / f"{metric}_vs_{x}.png")
        if why:
            skipped.append(why)
        else:
            written.append(out / f"{metric}_vs_{x}.png")
    for m in (metric, "ot_distance"):
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
    head = "".join(f"<th>{e(c)}</th>" for c in table_columns(extra, m))
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in table_cells(r, extra)) + "</tr>" for r in rows)
    figs = "".join(f'<figure><img alt="{e(p.stem)}" src="data:image/png;base64,'
                   f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{e(p.name)}</figcaption></figure>'
                   for p in plots)
    notes = "".join(f'<p class="skipped">{e(s)}</p>' for s in skipped)
    run_list = "".join(f"<li><code>{e(r)}</code></li>" for r in runs)
    by = ", ".join(["selector", "d", "P", *extra])
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title><style>{CSS}</style>'
            f"</head><body><h1>{e(title)}</h1><p>{len(runs)} runs, grouped by ({e(by)}); {e(m)} and OT"
            " distance are mean ± sample std over random seeds (n runs; std 0 when n = 1). θf: the finetuned"
            " model the selections try to reproduce.</p>"
            f'<table id="results"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
            f"<h2>Plots</h2>{notes}{figs}<h2>Runs</h2><ul>{run_list}</ul></body></html>")


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
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{root}: {len(runs)} runs\n{format_table(rows, extra)}\n"
          f"report written to {out}/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
