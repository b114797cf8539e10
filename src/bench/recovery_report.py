"""The recovery benchmark's tables: mean ± std per world and seed split, and the give-away check."""
from __future__ import annotations

import math
import statistics

# Give-away detectors: rankings that know nothing of θf. They must sit at random in an honest world.
DETECTORS = ("length", "novelty")
HELDOUT = (3, 4, 5)  # never used to choose a default; reported beside the development seeds 0-2


def split_of(rng: int) -> str:
    return "held-out" if rng in HELDOUT else "dev"


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
