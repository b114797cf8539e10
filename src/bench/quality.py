"""Quality benchmark: the embedded task over several random seeds, mean ± std per selector.

    python -m src.bench.quality --seeds 0 1 2 [--out DIR] [--] [hydra overrides ...]

Each seed is a full run (θf, seed-corpus sample, projections, retraining all re-seeded);
upstream stages are cached, so a repeated benchmark only redoes selection and retraining.
Also prints the autolabel class balance of each selector's picks, so a selector that
collapses onto one class shows it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from src.bench.common import offline_env


def aggregate(results: list[dict]) -> list[dict]:
    """Rows of runs (one results.json each) → one row per selector with mean and std of its metrics."""
    metric = results[0].get("metric", "accuracy")
    by_sel: dict[str, list[dict]] = {}
    for res in results:
        for r in res["results"]:
            by_sel.setdefault(r["selector"], []).append(r)
    rows = []
    for name, rs in by_sel.items():
        row = {"selector": name, "n": len(rs)}
        for m in (metric, "ot_distance"):
            vals = [r[m] for r in rs]
            row[m] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
        # Class balance of the training labels (classification) or the picks' source groups (SFT).
        key = "class_balance" if rs[0]["class_balance"] else "groups"
        shares = [r.get(key) or {} for r in rs]
        names = sorted({c for sh in shares for c in sh})
        row["composition"] = {c: statistics.mean(sh.get(c, 0.0) for sh in shares) for c in names}
        rows.append(row)
    return rows


def gap_closed(value: float, random: float, thetaf: float) -> float | None:
    """Share of the random → θf gap a selector closes: (m − m_random) / (m_θf − m_random).

    The same formula serves accuracy and perplexity (both differences change sign together)."""
    return None if thetaf == random else (value - random) / (thetaf - random)


def format_table(rows: list[dict], reference: dict | None = None, metric: str = "accuracy") -> str:
    thetaf = (reference or {}).get(f"thetaf_{metric}")
    rand = next((r[metric][0] for r in rows if r["selector"] == "random"), None)
    lines = [f"{'selector':<22} {metric:>17} {'OT distance':>17} {'gap closed':>10}  composition of picks (mean share)"]
    for r in rows:
        (am, asd), (om, osd) = r[metric], r["ot_distance"]
        top = sorted(r["composition"].items(), key=lambda kv: -kv[1])[:5]
        comp = " ".join(f"{c.split('.')[-1]}:{v:.2f}" for c, v in top)
        gap = gap_closed(am, rand, thetaf[0]) if thetaf is not None and rand is not None else None
        name = "expert (k true rows)" if r["selector"] == "expert" else r["selector"]
        lines.append(f"{name:<22} {am:>9.4f} ± {asd:.4f} {om:>9.4f} ± {osd:.4f} "
                     f"{'' if gap is None else f'{gap:>10.2f}':>10}  {comp}")
    for key, label in ((f"thetaf_{metric}", "θf (the finetuned model)"), (f"theta0_{metric}", "θ0 (the base model)")):
        if reference and key in reference:
            lines.append(f"{label:<22} {reference[key][0]:>9.4f} ± {reference[key][1]:.4f}")
    lines.append("gap closed = (selector − random) / (θf − random); 'expert' retrains θ0 on k true rows, "
                 "θf is the finetuned model itself (the paper's expert row)")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="outputs/bench")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. k=200 d=512")
    args = ap.parse_args(argv)
    offline_env()

    from src.config import compose_config
    from src.pipeline import run

    out = Path(args.out) / time.strftime("%Y-%m-%d_%H-%M-%S")
    results = []
    for s in args.seeds:
        cfg = compose_config(["logger=none", f"rng={s}", *args.overrides])
        t0 = time.perf_counter()
        res = run(cfg, out / f"rng{s}")
        res["wall_s"] = time.perf_counter() - t0
        (out / f"rng{s}" / "results.json").write_text(json.dumps(res, indent=2))
        results.append(res)
        print(f"rng={s}: done in {res['wall_s']:.0f}s", flush=True)
    rows = aggregate(results)
    ref = {k: (statistics.mean(r["reference"][k] for r in results),
               statistics.stdev(r["reference"][k] for r in results) if len(results) > 1 else 0.0)
           for k in results[0]["reference"]}
    table = format_table(rows, ref, results[0].get("metric", "accuracy"))
    (out / "summary.json").write_text(json.dumps({"rows": rows, "reference": ref, "seeds": args.seeds}, indent=2))
    (out / "summary.txt").write_text(table + "\n")
    print(f"\n{len(args.seeds)} seeds, overrides {args.overrides or 'none'}; written to {out}\n{table}")


if __name__ == "__main__":
    main()
