"""The recovery benchmark's tables: mean ± std per world and seed split, and the give-away check."""
from __future__ import annotations

import math
import statistics

# Give-away detectors: rankings that know nothing of θf. They must sit at random in an honest world.
DETECTORS = ("length", "novelty")
HELDOUT = (3, 4, 5)  # never used to choose a default; reported beside the development seeds 0-2
# Seeds 6-8 are kept apart from 3-5: options first seen on the held-out seeds (a selector whose form was settled
# after looking at them) are confirmed or dropped on seeds nothing has looked at.
FRESH = (6, 7, 8)
SPLITS = ("held-out", "fresh", "dev")


def split_of(rng: int) -> str:
    return "held-out" if rng in HELDOUT else "fresh" if rng in FRESH else "dev"


WORLD = ("lm", "text", "task", "split")


def summarise(rows: list[dict]) -> list[dict]:
    """Mean ± std over the seeds per (lm, text, task, seed split, variant, selector, share)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["lm"], r.get("text", "wordnet"), r["task"], split_of(r["rng"]), r["variant"], r["selector"], r["share"])
        groups.setdefault(key, []).append(r)
    out = []
    for (lm, text, task, split, variant, sel, share), rs in groups.items():
        vals = [r["precision"] for r in rs]
        out.append({"lm": lm, "text": text, "task": task, "split": split, "variant": variant, "selector": sel,
                    "share": share, "n_seeds": len(rs), "seeds": [r["rng"] for r in rs], "k": rs[0]["k"],
                    "precision_mean": statistics.mean(vals),
                    "precision_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                    "trained_mean": statistics.mean(r["trained"] for r in rs),
                    "unseen_mean": statistics.mean(r["unseen"] for r in rs)})
    return out


def confounds(summary: list[dict]) -> list[str]:
    """A line per (world, share, detector) where a give-away detector differs from random by more than one
    standard deviation: the larger of random's std over the seeds and the binomial sd of random's
    precision@k, sqrt(s (1 − s) / k) (three seeds can show a std near zero by chance)."""
    lines = []
    for r in summary:
        if r["selector"] not in DETECTORS:
            continue
        rand = next((x for x in summary if x["selector"] == "random" and x["share"] == r["share"]
                     and x["variant"] == r["variant"] and all(x[w] == r[w] for w in WORLD)), None)
        if rand is None:
            continue
        sd = max(rand["precision_std"], math.sqrt(r["share"] * (1 - r["share"]) / max(1, r["k"])))
        if abs(r["precision_mean"] - rand["precision_mean"]) > sd:
            lines.append(f"CONFOUNDED {r['lm']}, {r['text']}, task={r['task']} ({r['split']} seeds): {r['selector']} "
                         f"{r['precision_mean']:.3f} vs random {rand['precision_mean']:.3f} at {r['share']:.0%} planted "
                         f"(one sd = {sd:.3f})")
    return lines


def format_tables(summary: list[dict], shares) -> str:
    lines = []
    for world in dict.fromkeys(tuple(r.get(w, "wordnet" if w == "text" else None) for w in WORLD) for r in summary):
        lm, text, task, split = world
        rows = [r for r in summary if tuple(r.get(w) for w in WORLD) == world]
        seeds = ",".join(map(str, sorted({s for r in rows for s in r.get("seeds", [])})))
        lines.append(f"\n{lm}, {text}, task={task}, {split} seeds ({seeds}): precision@k of planted rows "
                     "(k = number planted), mean ± std over seeds")
        lines.append(f"{'gradients':<16} {'selector':<18}" + "".join(f"{f'{s:.0%} planted':>17}" for s in shares)
                     + "   (7%: trained / unseen)")
        for variant, sel in dict.fromkeys((r["variant"], r["selector"]) for r in rows):
            cells, mid = [], None
            for s in shares:
                r = next((x for x in rows if x["variant"] == variant and x["selector"] == sel and x["share"] == s), None)
                cells.append(f"{r['precision_mean']:>9.3f} ± {r['precision_std']:.3f}" if r else f"{'-':>17}")
                if r and abs(s - 0.07) < 1e-9:
                    mid = r
            tail = f"   {mid['trained_mean']:.3f} / {mid['unseen_mean']:.3f}" if mid else ""
            lines.append(f"{variant:<16} {sel:<18}" + "".join(cells) + tail)
    flags = confounds(summary)
    lines.append("\n" + ("\n".join(flags) if flags else "No world confounded: every give-away detector "
                                                       f"({', '.join(DETECTORS)}) is within one sd of random."))
    return "\n".join(lines)


def markdown(summary: list[dict], share: float = 0.07, split: str = "held-out", selectors=None) -> str:
    """One markdown table: a row per selector, a column per (lm, text, task) world, precision@k at ``share``
    planted on the ``split`` seeds as mean ± std; the best cell of each column in bold."""
    rows = [r for r in summary if r["split"] == split and abs(r["share"] - share) < 1e-9]
    worlds = list(dict.fromkeys((r["lm"], r.get("text", "wordnet"), r["task"]) for r in rows))
    names = list(selectors or dict.fromkeys(r["selector"] for r in rows))
    cell = {(r["lm"], r.get("text", "wordnet"), r["task"], r["selector"]): r for r in rows}
    best = {w: max((cell[(*w, n)]["precision_mean"] for n in names if (*w, n) in cell), default=None) for w in worlds}
    out = ["| selector | " + " | ".join(f"{lm}, {text}, {task}" for lm, text, task in worlds) + " |",
           "|---|" + "---|" * len(worlds)]
    for n in names:
        cells = []
        for w in worlds:
            r = cell.get((*w, n))
            txt = "–" if r is None else f"{r['precision_mean']:.3f} ± {r['precision_std']:.3f}"
            cells.append(f"**{txt}**" if r is not None and r["precision_mean"] == best[w] else txt)
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> None:
    """``python -m src.bench.recovery_report <recovery.json> [--share 0.07] [--split held-out]``: the markdown table."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("json", nargs="+")
    ap.add_argument("--share", type=float, default=0.07)
    ap.add_argument("--split", default="held-out", choices=list(SPLITS))
    ap.add_argument("--selectors", nargs="*")
    args = ap.parse_args(argv)
    rows = [r for path in args.json for r in json.load(open(path))["rows"]]
    summary = summarise(rows)
    print(markdown(summary, args.share, args.split, args.selectors))
    flags = [f for f in confounds(summary) if f"({args.split} seeds)" in f]  # the table's seeds only
    print("\n" + "\n".join(flags) if flags else f"\nNo world confounded on the {args.split} seeds.")


if __name__ == "__main__":
    main()
