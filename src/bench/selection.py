"""Selection speed against the memory-bandwidth limit, and stochastic vs exact greedy (``make bench-speed`` part b).

    python -m src.bench.selection                   # |D| = 10^5 and 10^6, d = 4096, k = 1000, ~8 min on 2 cores
    python -m src.bench.selection --sizes 100000 --store 100000

Each |D| runs in a fresh process on synthetic float16 gradients (P = 1, ``common.synthetic``): Gaussian
rows plus a random multiple of one shared direction, the target partly along it, so alignments vary
and redundancy matters. Their squared norms are computed once while generating them, as the gradient
pass stores them. Printed, all measured in this run:

- limit: one plain matrix–vector product over the stored matrix in its own dtype (``G @ t.half()``),
  the cost of reading every stored number once; best of 3;
- top-k (``alignment`` + ``top_indices``) and one exact greedy step, each as a multiple of the limit;
  a step is (T(s steps) − T(1 step)) / (s − 1), so the one-off pass of ``prepare`` is not in it;
- exact greedy with k in full for |D| ≤ ``--full-max``, else EXTRAPOLATED as T(1) + (k − 1)·step;
- stochastic greedy (ε = ``--epsilon``) for each of ``--seeds``, and batched greedy for each
  ``--batched`` (batch, pool): time (÷ top-k), and where exact ran in full the final objective as a
  fraction of exact's and the overlap of the picks;
- with ``--store N``: the same |D| written to a ShardStore and selected from it memory-mapped, with
  the peak RSS growth during selection (VmHWM after clear_refs), to show the matrix is never loaded.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from src.bench.common import GIB, MIB, PeakRSS, best_of, rss_status, run_child, synthetic, synthetic_matrix


def measure(args) -> dict:
    from src.selectors.base import top_indices
    from src.selectors.greedy import greedy
    from src.selectors.rows import TensorRows
    from src.selectors.topk import alignment

    N, d, k = args.n, args.dim, args.k
    t0 = time.perf_counter()
    G, sq, t = synthetic_matrix(N, d)
    out = {"n": N, "d": d, "k": k, "gib": G.numel() * 2 / GIB, "gen_s": time.perf_counter() - t0}
    rows = TensorRows(G, sq=sq)
    th = t.half()
    out["limit_s"], _ = best_of(lambda: G[0] @ th)
    out["topk_s"], _ = best_of(lambda: top_indices(alignment(rows, t), k), reps=2)
    t1, _ = best_of(lambda: greedy(rows, t, 1), reps=1)
    ts, _ = best_of(lambda: greedy(rows, t, args.steps), reps=1)
    out.update(t1_s=t1, steps=args.steps, step_s=(ts - t1) / (args.steps - 1))
    exact = None
    if N <= args.full_max:
        out["exact_s"], exact = best_of(lambda: greedy(rows, t, k), reps=1)
        out["exact_objective"] = float(exact[1][-1])
    else:
        out["exact_s"] = t1 + (k - 1) * out["step_s"]
    out["extrapolated"] = exact is None
    out["stochastic"] = []
    for seed in args.seeds:
        s_s, (idx, obj) = best_of(lambda: greedy(rows, t, k, method="stochastic", epsilon=args.epsilon, seed=seed),
                                reps=1)
        r = {"seed": seed, "seconds": s_s, "objective": float(obj[-1])}
        if exact is not None:
            r.update(fraction=float(obj[-1]) / out["exact_objective"],
                     overlap=len(set(idx.tolist()) & set(exact[0].tolist())) / k)
        out["stochastic"].append(r)
    out["batched"] = []
    for batch, pool in args.batched:
        b_s, (idx, obj) = best_of(lambda: greedy(rows, t, k, method="batched", batch=batch, pool=pool), reps=1)
        r = {"batch": batch, "pool": pool, "seconds": b_s, "objective": float(obj[-1])}
        if exact is not None:
            r.update(fraction=float(obj[-1]) / out["exact_objective"],
                     overlap=len(set(idx.tolist()) & set(exact[0].tolist())) / k)
        out["batched"].append(r)
    topk_idx = top_indices(alignment(rows, t), k)
    out["topk_objective"] = float(torch.nn.functional.cosine_similarity(G[0, topk_idx].float().sum(0), t, dim=0))
    out["peak_rss"] = rss_status()["VmHWM"]
    del G, rows
    if args.store:
        out["store"] = measure_store(N, d, k, args.steps)
    return out


def measure_store(N, d, k, steps) -> dict:
    """Write the same matrix to a ShardStore block by block, then select from it memory-mapped."""
    from src.selectors.base import top_indices
    from src.selectors.greedy import greedy
    from src.selectors.rows import StoreRows
    from src.selectors.topk import alignment
    from src.store import ShardStore

    with tempfile.TemporaryDirectory(dir=os.environ.get("W2D_BENCH_TMP")) as tmp:
        store = ShardStore(Path(tmp), {"bench": N}, n_rows=N, shard_size=16384)
        t0 = time.perf_counter()
        for lo, g, s in synthetic(N, d, block=16384):
            if lo is None:
                t = g
                break
            store.write("ckpt1", lo // 16384, {"g": g, "sq": s})
        write_s = time.perf_counter() - t0
        rows = StoreRows(store, ["ckpt1"])
        with PeakRSS() as mem:
            topk_s, _ = best_of(lambda: top_indices(alignment(rows, t), k), reps=2)
            t1, _ = best_of(lambda: greedy(rows, t, 1), reps=1)
            ts, _ = best_of(lambda: greedy(rows, t, steps), reps=1)
    return {"write_s": write_s, "topk_s": topk_s, "step_s": (ts - t1) / (steps - 1),
            "peak_growth": mem.growth, "gib": N * d * 2 / GIB}


def child(**kw) -> dict:
    return run_child("src.bench.selection", ["--child", json.dumps(kw)])


def report(rows: list[dict], threads: int) -> None:
    print(f"\n(b) selection, P=1, d={rows[0]['d']}, float16 synthetic gradients with stored norms, k={rows[0]['k']}, "
          f"{threads} thread(s), each |D| in a fresh process; times as multiples of the limit (one G @ t in float16)")
    print(f"    {'|D|':>9} {'GiB':>5} {'limit s':>8} {'top-k':>7} {'1 step':>7} {'exact greedy s':>15} "
          f"{'stochastic s (÷ top-k)':>24} {'obj. frac.':>10} {'overlap':>8} {'peak RSS GiB':>12}")
    for b in rows:
        lim = b["limit_s"]
        st = b["stochastic"]
        ss = sum(r["seconds"] for r in st) / len(st)
        frac = ", ".join(f"{r['fraction']:.4f}" for r in st) if "fraction" in st[0] else "n/a"
        ov = ", ".join(f"{r['overlap']:.2f}" for r in st) if "overlap" in st[0] else "n/a"
        mark = "*" if b["extrapolated"] else " "
        objs = ", ".join(f"{r['objective']:.4f}" for r in st)
        print(f"    {b['n']:>9,} {b['gib']:>5.2f} {lim:>8.3f} {b['topk_s'] / lim:>6.2f}x {b['step_s'] / lim:>6.2f}x "
              f"{b['exact_s']:>14.0f}{mark} {ss:>12.1f} ({ss / b['topk_s']:>5.1f}x top-k) {frac:>10} {ov:>8} "
              f"{b['peak_rss'] / GIB:>12.2f}")
        print(f"              top-k {b['topk_s']:.2f} s, 1 step {b['step_s']:.3f} s; final objective: exact "
              f"{b.get('exact_objective', float('nan')):.4f}, stochastic "
              f"{objs}, top-k's set {b['topk_objective']:.4f}")
        if b["extrapolated"]:
            print(f"              * EXTRAPOLATED: T(1)={b['t1_s']:.1f} s + (k-1) x {b['step_s']:.3f} s/step "
                  f"(from {b['steps']} timed steps)")
        for r in b["batched"]:
            q = f", objective {r['fraction']:.4f} of exact's, overlap {r['overlap']:.2f}" if "fraction" in r else ""
            print(f"              batched greedy (batch {r['batch']}, pool {r['pool']}): {r['seconds']:.1f} s "
                  f"= {r['seconds'] / b['topk_s']:.1f}x top-k, final objective {r['objective']:.4f}{q}")
        if "store" in b:
            s = b["store"]
            print(f"              from a ShardStore on disk (memory-mapped, {s['gib']:.2f} GiB, written in "
                  f"{s['write_s']:.0f} s): top-k {s['topk_s'] / lim:.2f}x, 1 step {s['step_s'] / lim:.2f}x the "
                  f"in-RAM limit; peak RSS growth while selecting {s['peak_growth'] / MIB:.0f} MiB")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=6, help="steps timed for the per-step figure")
    ap.add_argument("--full-max", type=int, default=100_000, help="run exact greedy in full up to this |D|")
    ap.add_argument("--epsilon", type=float, default=0.01)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="stochastic greedy seeds")
    ap.add_argument("--batched", type=json.loads, default=[[100, 1000], [250, 1000]],
                    help="batched greedy (batch, pool) pairs, as JSON")
    ap.add_argument("--store", type=int, nargs="*", default=[100_000], help="|D| also selected from a store")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child")
    args = ap.parse_args(argv)
    if args.child:
        kw = json.loads(args.child)
        torch.set_num_threads(kw.pop("threads"))
        print(json.dumps(measure(argparse.Namespace(**kw))))
        return
    rows = [child(threads=args.threads, n=n, dim=args.dim, k=args.k, steps=args.steps, full_max=args.full_max,
                  epsilon=args.epsilon, seeds=args.seeds, batched=args.batched, store=n in args.store) for n in args.sizes]
    report(rows, args.threads)
    return rows


if __name__ == "__main__":
    main()
