"""Speed and memory benchmark of the scalable parts: gradient pass, greedy selection, projections.

    python -m src.bench.speed              # make bench-speed; ~10 min on 2 loaded CPU cores

A script, not a test: every figure it prints is measured in this run (extrapolations are
labelled as such). Parts (``--parts a b c d``):

(a) Gradient-pass overhead. Embedded MiniLM classifier (22.7M parameters, 4-class head), a
    seeded sample of ``--n-seed`` WordNet seed glosses, P checkpoints, d; batch size, shard size
    and max_length from the default config. Ratio = time of ``stages.gradients`` (plan, one Lightning predict loop
    over the (checkpoint, shard) items: weight swap, tokenisation, forward, closed-form head
    gradient, JL projection, checksummed shard writes; then streaming the [P, N, d] matrix back)
    divided by P × the time of a bare forward pass (same length-sorted mini-batches, same
    tokenisation, logits only, plain torch loop under ``inference_mode``, no Lightning). The bare
    forward is timed before and after the pass and averaged, since the box is shared. θf is θ0
    plus seeded noise and the autolabels are random: the cost of a pass depends on neither.
(b) Selection (``src.bench.selection``): the time of one plain float16 matrix–vector product over the
    stored matrix (the memory-bandwidth limit) beside top-k and one exact greedy step; exact
    greedy with k=1000 at |D|=10^5 (extrapolated from timed steps at 10^6); batched and stochastic
    greedy's time, objective fraction and pick overlap; and the same |D|=10^5 selected out of core from a
    memory-mapped store with its peak RSS growth. P=1, d=4096, each |D| in a fresh subprocess.
(c) Peak RSS growth of the gradient pass alone (``gradient_pass(load=False)``) at two corpus
    sizes, each in a fresh subprocess: VmHWM after ``clear_refs`` minus RSS before the pass.
    Shard size ``--rss-shard`` for both, so the pass holds one shard's rows at a time whatever |D|.
(d) Projection throughput for an LM-head-sized gradient (V=8000, H=256, d=1024), reusing
    ``src.bench.lm_head`` (factored fast path end to end; dense autograd gradients +
    dense projector, with the dense projection's own time) plus the factored projector applied
    to the same dense [V, H] gradients (``project_matrix``), so both projectors are timed on
    identical input.

Threads: ``--threads`` (default 1) in every process; on a shared, oversubscribed box OpenMP
spin-waiting makes 2 threads slower than 1. The load average is printed with the results.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from src.bench.common import MIB, PeakRSS, load_average, offline_env, run_child


def _quiet():
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "src"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


# -- the MiniLM setup shared by (a) and (c) -----------------------------------------------------
def _minilm(n_seed: int, cache_dir: Path, overrides=()):
    from src.config import compose_config, run_options
    from src.models import ModelPair
    from src.stages import load_task_data

    cfg = run_options(compose_config(["logger=none", "trainer.progress_bar=false", f"seed.max_examples={n_seed}",
                                      f"cache_dir={cache_dir}", *overrides]))
    data, task = load_task_data(cfg)
    model, tok = task.build_base(data.task)
    state0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    statef = {k: (v + 0.01 * v.float().std().nan_to_num() * torch.randn(v.shape, generator=gen)).to(v.dtype)
              if v.is_floating_point() else v.clone() for k, v in state0.items()}
    pair = ModelPair(model=model.eval(), tokenizer=tok, state0=state0, statef=statef, head_name=cfg.task.model.head,
                     key=f"bench-{n_seed}")
    labels = {"labels": torch.randint(0, len(data.task.classes), (len(data.seed),), generator=gen),
              "key": f"bench-{n_seed}"}
    return cfg, task, data, pair, labels


def _forward_only(cfg, task, data, pair, labels) -> float:
    """Bare forward over the seed corpus: same items, collate, batches and device loop as the pass."""
    from src.gradients.runner import compute_rows
    from src.training import logits_fn

    collate = task.gradient_spec(pair, data.seed, labels, [1.0], cfg.gradient).collate
    items = task.gradient_items(data.seed, labels, range(len(data.seed)))
    t0 = time.perf_counter()
    with torch.inference_mode():  # as fast as a plain loop gets (Lightning's predict loop uses it too)
        compute_rows(pair.model, items, collate, logits_fn, cfg.gradient.batch_size, torch.device("cpu"))
    return time.perf_counter() - t0


def part_a(args) -> dict:
    from src.stages import gradients

    _quiet()
    with tempfile.TemporaryDirectory() as tmp:
        cfg, task, data, pair, labels = _minilm(args.n_seed, Path(tmp), [f"P={args.P}", f"d={args.d}"])
        from src.gradients.runner import compute_rows
        from src.training import logits_fn

        pair.load(0.5)
        warm = task.gradient_items(data.seed, labels, range(min(64, len(data.seed))))  # thread pools, allocator
        collate = task.gradient_spec(pair, data.seed, labels, [1.0], cfg.gradient).collate
        compute_rows(pair.model, warm, collate, logits_fn, 32, torch.device("cpu"))
        f1 = _forward_only(cfg, task, data, pair, labels)
        t0 = time.perf_counter()
        G, t = gradients(cfg, pair, data, labels, task)
        t_pass = time.perf_counter() - t0
        f2 = _forward_only(cfg, task, data, pair, labels)
        # The same pass again on the finished store: what planning + loading alone cost.
        t0 = time.perf_counter()
        gradients(cfg, pair, data, labels, task)
        t_cached = time.perf_counter() - t0
    fwd = (f1 + f2) / 2
    return {"n": len(data.seed), "P": args.P, "d": args.d, "batch_size": int(cfg.gradient.batch_size),
            "shard_size": int(cfg.gradient.shard_size), "max_length": int(cfg.task.model.max_length),
            "forward_s": [f1, f2], "pass_s": t_pass, "cached_pass_s": t_cached,
            "ratio": t_pass / (args.P * fwd), "shape": list(G.shape), "threads": torch.get_num_threads()}


def part_c(args) -> dict:
    from src.gradients.runner import gradient_pass
    from src.models import checkpoint_alphas
    from src.store import ShardStore

    _quiet()
    with tempfile.TemporaryDirectory() as tmp:
        cfg, task, data, pair, labels = _minilm(args.n_seed, Path(tmp), [f"P={args.P}", f"d={args.d}",
                                                                         f"gradient.shard_size={args.rss_shard}"])
        alphas = checkpoint_alphas(cfg.gradient.P)
        spec = task.gradient_spec(pair, data.seed, labels, alphas, cfg.gradient)

        def store(name):
            return ShardStore(Path(tmp) / name, {"bench": name}, n_rows=len(data.seed),
                              shard_size=cfg.gradient.shard_size)

        kw = dict(trainer=cfg.task.trainer, batch_size=cfg.gradient.batch_size, load=False)
        # Warm-up on a store over the first shard's rows only: imports, Lightning, thread pools, caches.
        warm = ShardStore(Path(tmp) / "warm", {"bench": "warm"}, n_rows=min(len(data.seed), cfg.gradient.shard_size),
                          shard_size=cfg.gradient.shard_size)
        gradient_pass(pair, alphas, warm, spec, data.seed, labels, **kw)
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            n = gradient_pass(pair, alphas, store("main"), spec, data.seed, labels, **kw)
            secs = time.perf_counter() - t0
    return {"n": len(data.seed), "shards_computed": n, "seconds": secs, "rss_before": mem.before,
            "peak_growth": mem.growth, "peak_rss": mem.peak, "method":
            "VmHWM after clear_refs" if mem.exact else "unavailable", "shard_size": int(cfg.gradient.shard_size)}


def part_d_factored_projection(V: int, H: int, d: int, n: int, seed: int = 0) -> dict:
    """The factored projector on n dense [V, H] gradients (the same input the dense projector gets)."""
    from src.gradients.projectors import FactoredProjector

    fac = FactoredProjector(V, H, d=d, seed=seed)
    G = torch.randn(n, V, H, generator=torch.Generator().manual_seed(seed))
    fac.project_matrix(G[:2])  # warm-up: A, B generated and cached
    t0 = time.perf_counter()
    reps = 0
    while reps < 3 or time.perf_counter() - t0 < 2.0:
        fac.project_matrix(G)
        reps += 1
    return {"rows_per_s": n * reps / (time.perf_counter() - t0), "n": n, "reps": reps}


# -- driver ---------------------------------------------------------------------------------------
def _child(name: str, **kw) -> dict:
    return run_child("src.bench.speed", ["--child", name, "--child-args", json.dumps(kw)])


def _run_child(name: str, kw: dict) -> dict:
    ns = argparse.Namespace(**kw)
    return {"a": part_a, "c": part_c}[name](ns)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", default=["a", "b", "c", "d"], choices=["a", "b", "c", "d"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-seed", type=int, default=2000, help="(a) seed texts")
    ap.add_argument("--P", type=int, default=2, help="(a, c) checkpoints")
    ap.add_argument("--d", type=int, default=1024, help="(a, c) projection dim")
    ap.add_argument("--greedy-sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="(b) |D|")
    ap.add_argument("--greedy-k", type=int, default=1000)
    ap.add_argument("--greedy-full-max", type=int, default=100_000, help="(b) exact greedy in full up to this |D|")
    ap.add_argument("--rss-sizes", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--rss-shard", type=int, default=500)
    ap.add_argument("--rss-P", type=int, default=1, help="(c) checkpoints (memory does not depend on P)")
    ap.add_argument("--lm-n", type=int, default=200, help="(d) factored examples")
    ap.add_argument("--lm-n-dense", type=int, default=16, help="(d) dense examples (one batch)")
    ap.add_argument("--child", choices=["a", "c"])
    ap.add_argument("--child-args")
    args = ap.parse_args(argv)
    offline_env()
    torch.set_num_threads(args.threads)
    if args.child:
        kw = json.loads(args.child_args)
        torch.set_num_threads(kw.pop("threads", 1))
        print(json.dumps(_run_child(args.child, kw)))
        return

    t_start = time.perf_counter()
    print(f"bench-speed: CPU, {os.cpu_count()} cores, {args.threads} torch thread(s) per process; "
          f"load average at start {load_average()} (1/5/15 min)", flush=True)
    res = {}
    if "a" in args.parts:
        a = res["a"] = _child("a", threads=args.threads, n_seed=args.n_seed, P=args.P, d=args.d)
        fwd = sum(a["forward_s"]) / 2
        print(f"\n(a) gradient pass, MiniLM classifier, {a['n']} seed texts, P={a['P']}, d={a['d']}, batch "
              f"{a['batch_size']}, max_length {a['max_length']}, shard {a['shard_size']}, {a['threads']} thread(s)")
        print(f"    bare forward over the corpus: {a['forward_s'][0]:.2f} s before, {a['forward_s'][1]:.2f} s after "
              f"the pass (mean {fwd:.2f} s)")
        print(f"    gradient pass (plan + predict loop + writes + load [P,N,d]): {a['pass_s']:.2f} s "
              f"= {a['ratio']:.3f} x P x forward   (goal <= 1.2)")
        print(f"    same call on the finished store (checksums + load only): {a['cached_pass_s']:.2f} s   "
              f"[load {load_average()}]", flush=True)
    if "b" in args.parts:
        from src.bench import selection

        res["b"] = selection.main(["--sizes", *map(str, args.greedy_sizes), "--k", str(args.greedy_k),
                                      "--full-max", str(args.greedy_full_max), "--threads", str(args.threads)])
        print(f"    [load {load_average()}]", flush=True)
    if "c" in args.parts:
        rows = res["c"] = [_child("c", threads=args.threads, n_seed=n, P=args.rss_P, d=args.d,
                                  rss_shard=args.rss_shard)
                           for n in args.rss_sizes]
        print(f"\n(c) gradient pass peak RSS (fresh process each; shard {args.rss_shard}, P={args.rss_P}, d={args.d}; "
              f"{rows[0]['method']})")
        for c in rows:
            print(f"    |D|={c['n']:>6,}: {c['shards_computed']:>3} shards in {c['seconds']:.1f} s, RSS before "
                  f"{c['rss_before'] / MIB:.0f} MiB, peak growth during the pass {c['peak_growth'] / MIB:.1f} MiB, "
                  f"peak RSS {c['peak_rss'] / MIB:.0f} MiB")
        print(f"    [load {load_average()}]", flush=True)
    if "d" in args.parts:
        from src.bench import lm_head

        lm_args = argparse.Namespace(n=args.lm_n, n_dense=args.lm_n_dense, batch_size=16, d=1024, seed=0,
                                     threads=args.threads)
        fac, den = lm_head.child("factored", lm_args), lm_head.child("dense", lm_args)
        V, H = lm_head.VOCAB, lm_head.HIDDEN
        fp = part_d_factored_projection(V, H, 1024, 16)
        res["d"] = {"factored": fac, "dense": den, "factored_projection": fp}
        print(f"\n(d) LM-head-sized gradient V={V}, H={H} ({V * H / 1e6:.2f}M), d=1024 "
              f"(factored {fac['d_V']}x{fac['d_H']}), {args.threads} thread(s)")
        print(f"    projector alone on dense [V,H] gradients: factored {fp['rows_per_s']:.0f} rows/s, dense "
              f"{den['n'] / den['project_s']:.2f} rows/s (dense map regenerated per batch of 16: too big to cache)")
        print(f"    whole per-example path (forward + gradient + projection): factored fast path "
              f"{fac['n'] / fac['seconds']:.1f} rows/s, dense autograd + dense map {den['n'] / den['seconds']:.3f} "
              f"rows/s ({(fac['n'] / fac['seconds']) / (den['n'] / den['seconds']):.0f}x)")
        print(f"    peak RSS growth per batch of 16: factored {fac['peak_bytes'] / MIB:.0f} MiB, dense "
              f"{den['peak_bytes'] / MIB:.0f} MiB   [load {load_average()}]", flush=True)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; load average at end {load_average()}")
    print(json.dumps(res, default=str))


if __name__ == "__main__":
    main()
