"""Benchmark: factored projected LM-head gradients vs the dense reference.

    python -m src.bench.lm_head [--n 1000] [--n-dense 32] [--batch-size 16] [--d 1024]

A randomly initialised GPT-2 of the embedded base LM's shape (n_embd 192, 4 layers, vocab 4096, untied head) on synthetic SFT examples
of 40–56 tokens (first half prompt, second half response, right-padded):

- factored: body forward (no logits), then ``projected_lm_head_grads`` with a
  ``FactoredProjector`` (d = d_V·d_H) — no V×H matrix per example, on all ``--n`` examples;
- dense: ``naive_lm_head_grads`` (autograd, dense [V, H] per example) then a dense
  ``GaussianProjector`` with the same d on the flattened gradient, on ``--n-dense`` examples
  (the dense path is ~two orders slower), time scaled linearly to 1,000 examples.

Both use the same batch size, so peak memory is per batch and comparable as measured.

Threads: ``--threads`` (default 1) for both paths; timings are wall-clock and include everything
between the first and last batch (forward, softmax, projection; for the dense path, generating
the dense map's wide blocks, which are too big to cache: 2M×1024 floats).

Memory method (``common.PeakRSS``): each path runs in its own subprocess. After setup (model, data, a
warm-up batch) the process resets its kernel peak-RSS counter (``echo 5 > /proc/self/clear_refs``, Linux ≥ 4.0),
notes VmRSS, runs the pass, and reads VmHWM: peak = VmHWM − VmRSS-before, i.e. the largest
resident growth during the pass, counting everything torch, the allocator and Python touched
(not just tensors). Where clear_refs is unavailable it falls back to ru_maxrss − RSS-before,
which can only over-count if setup peaked higher than the pass. tracemalloc is not used: it
does not see torch's tensor allocations.

After the measurement the dense subprocess also reports how well each map preserves the
exact Gram matrix of the dense gradients (unit-normalised): the factored map's JL error is
O(√(1/d_V + 1/d_H)), not O(1/√d) — see ``FactoredProjector``.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from src.bench.common import PeakRSS, run_child

# The embedded base LM's architecture (conf/base_lm/default.yaml); weights are random: cost does not depend on them.
VOCAB, HIDDEN, LAYERS, HEADS = 4096, 192, 4, 4


def _model():
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB, n_positions=64, tie_word_embeddings=False,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def _data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(40, 57, (n,), generator=g)
    prompt = lengths // 2
    T = int(lengths.max())
    ids = torch.zeros(n, T, dtype=torch.long)
    am = torch.zeros(n, T, dtype=torch.long)
    for i, L in enumerate(lengths.tolist()):
        ids[i, :L] = torch.randint(1, VOCAB, (L,), generator=g)
        am[i, :L] = 1
    return ids, am, prompt


def _batches(n, bs):
    return [(lo, min(lo + bs, n)) for lo in range(0, n, bs)]


def run_path(path: str, n: int, bs: int, d: int, seed: int) -> dict:
    from src.gradients.last_layer import projected_grads, response_mask, response_positions
    from src.gradients.projectors import FactoredProjector, GaussianProjector
    from src.reference import naive_lm_head_grads

    model = _model()
    W = model.lm_head.weight.detach()
    ids, am, prompt = _data(n)
    fac = FactoredProjector(VOCAB, HIDDEN, d=d, seed=seed)
    dense_proj = GaussianProjector(VOCAB * HIDDEN, d, seed=seed)

    def factored(lo, hi):
        batch = {"input_ids": ids[lo:hi], "attention_mask": am[lo:hi], "prompt_lengths": prompt[lo:hi]}
        return projected_grads(response_positions(model, batch, "lm_head"), W, None, fac)

    timings = {"grad_s": 0.0, "project_s": 0.0}

    def dense(lo, hi):
        t0 = time.perf_counter()
        G = naive_lm_head_grads(model, ids[lo:hi], am[lo:hi], prompt[lo:hi], dtype=torch.float32)  # [b, V, H] dense
        t1 = time.perf_counter()
        out = dense_proj.project(G.reshape(G.shape[0], -1))
        timings["grad_s"] += t1 - t0
        timings["project_s"] += time.perf_counter() - t1
        return out

    fn = factored if path == "factored" else dense
    with torch.no_grad():
        factored(0, 2)  # warm-up: thread pools, A/B generation and caching (both paths pay it once)
    timings = {"grad_s": 0.0, "project_s": 0.0}
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        outs = [fn(lo, hi) for lo, hi in _batches(n, bs)]
        elapsed = time.perf_counter() - t0
    peak = mem.growth if mem.exact else mem.upper_bound
    res = {"path": path, "n": n, "batch_size": bs, "seconds": elapsed, "peak_bytes": max(peak, 0),
           "peak_method": mem.method,
           "n_response_tokens": int(response_mask(ids, prompt, am).sum()), "d": d, "d_V": fac.d_V, "d_H": fac.d_H,
           "threads": torch.get_num_threads(), **timings}
    if path == "dense":
        # Accuracy of both maps on the first batch's dense gradients (recomputed, not timed).
        G32 = naive_lm_head_grads(model, ids[:bs], am[:bs], prompt[:bs], dtype=torch.float32)
        G = G32.double()
        Gu = G / G.flatten(1).norm(dim=1)[:, None, None]
        exact = Gu.flatten(1) @ Gu.flatten(1).T
        pd = dense_proj.project(Gu.reshape(G.shape[0], -1).float()).double()
        pf = fac.project_matrix(Gu.float()).double()
        off = ~torch.eye(len(G), dtype=torch.bool)
        for name, p in (("dense", pd), ("factored", pf)):
            e = p @ p.T - exact
            res[f"gram_err_{name}_offdiag_rms"] = e[off].pow(2).mean().sqrt().item()
            res[f"gram_err_{name}_diag_rms"] = e.diagonal().pow(2).mean().sqrt().item()
        res["exact_offdiag_cos_rms"] = exact[off].pow(2).mean().sqrt().item()
        res["theory_dense_std"] = math.sqrt(2 / d)
        res["theory_factored_worst_std"] = fac.worst_case_std()
        # The fast path agrees with the factored map applied to the dense gradients.
        fast = factored(0, G.shape[0]).double()
        ref = fac.project_matrix(G32).double()
        res["fast_vs_dense_factored_max_rel"] = ((fast - ref).abs().max() / ref.abs().max()).item()
    else:
        res["out_shape"] = list(torch.cat(outs).shape)
    return res


def child(path, args) -> dict:
    """One path (``factored`` or ``dense``) measured in a fresh process (its own peak RSS)."""
    return run_child("src.bench.lm_head", ["--child", path, "--n", str(args.n), "--n-dense", str(args.n_dense),
                                           "--batch-size", str(args.batch_size), "--d", str(args.d),
                                           "--seed", str(args.seed), "--threads", str(args.threads)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="examples for the factored path")
    ap.add_argument("--n-dense", type=int, default=32, help="examples for the dense path (scaled to 1000)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per path (1: on a shared/oversubscribed box OpenMP spin-waiting "
                         "made 2 threads ~50x slower per small forward than 1)")
    ap.add_argument("--child", choices=["factored", "dense"])
    args = ap.parse_args(argv)
    if args.child:
        torch.set_num_threads(args.threads)
        n = args.n if args.child == "factored" else args.n_dense
        print(json.dumps(run_path(args.child, n, args.batch_size, args.d, args.seed)))
        return
    fac, den = child("factored", args), child("dense", args)
    per_k = lambda r: r["seconds"] * 1000 / r["n"]  # noqa: E731
    mib = lambda b: b / 2**20  # noqa: E731
    print(f"GPT-2 n_embd={HIDDEN} n_layer={LAYERS} vocab={VOCAB}; examples 40-56 tokens (half prompt); "
          f"d={fac['d']} (factored {fac['d_V']}x{fac['d_H']}); batch {args.batch_size}; "
          f"{fac['threads']} torch threads; peak memory = {fac['peak_method']} (RSS growth during the pass)")
    print(f"{'path':<10}{'n run':>7}{'s (run)':>10}{'s / 1000 ex':>13}{'peak MiB':>10}")
    for r in (fac, den):
        print(f"{r['path']:<10}{r['n']:>7}{r['seconds']:>10.2f}{per_k(r):>13.1f}{mib(r['peak_bytes']):>10.1f}")
    print(f"dense breakdown per 1000 ex: autograd grads {den['grad_s'] * 1000 / den['n']:.1f} s, "
          f"dense projection {den['project_s'] * 1000 / den['n']:.1f} s")
    print(f"ratio dense/factored: time per example {per_k(den) / per_k(fac):.1f}x, "
          f"peak memory per batch {den['peak_bytes'] / max(fac['peak_bytes'], 1):.1f}x")
    print(f"fast factored pass vs factored map of dense autograd grads: max rel diff "
          f"{den['fast_vs_dense_factored_max_rel']:.1e}")
    print(f"Gram error on {args.batch_size} unit-normalised dense grads (exact off-diag cosine rms "
          f"{den['exact_offdiag_cos_rms']:.3f}): dense map off-diag rms {den['gram_err_dense_offdiag_rms']:.3f}, "
          f"diag rms {den['gram_err_dense_diag_rms']:.3f} (theory ~{den['theory_dense_std']:.3f}); factored off-diag rms "
          f"{den['gram_err_factored_offdiag_rms']:.3f}, diag rms {den['gram_err_factored_diag_rms']:.3f} "
          f"(theory worst case {den['theory_factored_worst_std']:.3f})")
    print(json.dumps({"factored": fac, "dense": den}))


if __name__ == "__main__":
    main()
