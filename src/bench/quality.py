"""Quality benchmark: the embedded task over several random seeds, mean ± std per selector.

    python -m src.bench.quality --seeds 0 1 2 [--out DIR] [--] [hydra overrides ...]

Each seed is a full run (θf, seed-corpus sample, projections, retraining all re-seeded);
upstream stages are cached, so a repeated benchmark only redoes selection and retraining.
The table (``src.results``: the one the entry point and the sweep report print) also shows
the share of the random → θf gap each selector closes and the composition of its picks (class
balance of the autolabels, or source groups), so a selector that collapses onto one class shows it.
Writes ``<out>/<time>/rng<seed>/results.json`` per seed, ``summary.json`` (the aggregated rows) and
``summary.txt`` (the table).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from src.bench.common import offline_env


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="outputs/bench")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. k=200 d=512")
    args = ap.parse_args(argv)
    offline_env()

    from src.config import compose_config
    from src.pipeline import run
    from src.results import aggregate, format_text

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
    table = format_text(rows)
    (out / "summary.json").write_text(json.dumps({"rows": rows, "seeds": args.seeds, "overrides": args.overrides},
                                                 indent=2))
    (out / "summary.txt").write_text(table + "\n")
    print(f"\n{len(args.seeds)} seeds, overrides {args.overrides or 'none'}; written to {out}\n{table}")


if __name__ == "__main__":
    main()
