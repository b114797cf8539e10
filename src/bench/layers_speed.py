"""Cost of whole-model per-layer gradients against a forward pass of the same rows and model.

    python -m src.bench.layers_speed [--lms wordnet_lm smollm2] [--n 256] [--batch-size 32] [--layers all adafactor head]

For each LM, the same length-sorted mini-batches of ``--n`` seed documents (task=lm's items: BOS + text) go
through (a) a bare forward pass (no grad), and (b) ``per_layer_grads`` for each ``--layers`` choice: one
forward with hooks, one backward of the summed loss, each layer's block projected inside the loop. The ratio
(b)/(a) is measured in one run, forward timed before and after; each mode runs in its own child process,
which reports its peak RSS. Prints where the time goes: forward + backward vs projection.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from src.bench.common import offline_env


def _setup(lm: str, n: int):
    import torch

    from src.config import compose_config, run_options
    from src.stages import load_task_data

    cfg = run_options(compose_config(["task=lm", f"model={lm}", "logger=none", "trainer.progress_bar=false",
                                      f"seed.max_examples={n}"]))
    data, task = load_task_data(cfg)
    model, tok = task.build_base(data.task)
    items = task.gradient_items(data.seed, {}, range(len(data.seed)))
    order = sorted(range(len(items)), key=lambda i: len(items[i][1]))
    torch.set_num_threads(torch.get_num_threads())
    return cfg, task, model, tok, [items[i] for i in order]


def _child(lm: str, mode: str, n: int, batch_size: int, layer_d: int) -> dict:
    import torch

    from src.gradients.layers import (choose_layers, layer_factors, layer_projectors, layer_second_moments,
                                      per_layer_grads)
    from src.tasks.causal import per_example_nll

    cfg, task, model, tok, items = _setup(lm, n)
    collate = task.collate(tok)
    batches = [collate(items[lo:lo + batch_size]) for lo in range(0, len(items), batch_size)]
    out = {"lm": lm, "mode": mode, "n": len(items)}
    t0 = time.perf_counter()
    if mode == "forward":
        with torch.no_grad():
            for b in batches:
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    else:
        names = choose_layers(model, "all" if mode == "adafactor" else mode, cfg.task.model.head)
        projectors = layer_projectors(model, names, layer_d, seed=0)
        out.update(layers=len(names), dims=sum(p.d for p in projectors.values()), fit_s=0.0)
        factors = None
        if mode == "adafactor":  # the fit a run makes first (src/tasks/causal.py: _layer_factors)
            sums = [layer_second_moments(model, b, per_example_nll, names) for b in batches]
            total = {key: sum(s[key] for s in sums) for key in sums[0]}
            factors = layer_factors({key: v / total["m"].clamp_min(1) for key, v in total.items()}, names)
            out["fit_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
        proj_s = 0.0
        import src.gradients.layers as L

        orig = L.FactoredProjector.project_outer

        def timed(self, *a, **k):  # time spent projecting, inside the pass
            nonlocal proj_s
            t = time.perf_counter()
            r = orig(self, *a, **k)
            proj_s += time.perf_counter() - t
            return r

        L.FactoredProjector.project_outer = timed
        try:
            for b in batches:
                per_layer_grads(model, b, per_example_nll, names, projectors, factors=factors)
        finally:
            L.FactoredProjector.project_outer = orig
        out["projection_s"] = proj_s
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _run(lm, mode, args) -> dict:
    cmd = [sys.executable, "-m", "src.bench.layers_speed", "--child", lm, mode, str(args.n), str(args.batch_size),
           str(args.layer_d)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        offline_env()
        lm, mode, n, bs, d = sys.argv[2:7]
        print(json.dumps(_child(lm, mode, int(n), int(bs), int(d))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lms", nargs="+", default=["wordnet_lm", "smollm2"])
    ap.add_argument("--layers", nargs="+", default=["all", "adafactor", "head"], choices=["all", "head", "adafactor"])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--layer-d", type=int, default=256)
    args = ap.parse_args(argv)
    offline_env()
    for lm in args.lms:
        f1 = _run(lm, "forward", args)
        runs = [_run(lm, mode, args) for mode in args.layers]
        f2 = _run(lm, "forward", args)
        fwd = (f1["seconds"] + f2["seconds"]) / 2
        print(f"{lm}: {f1['n']} documents, batch {args.batch_size}; forward {f1['seconds']:.2f} s before, "
              f"{f2['seconds']:.2f} s after (peak RSS {f1['peak_rss_mib']:.0f} MiB)")
        for r in runs:
            print(f"  layers={r['mode']:<5} {r['layers']:>4} layers, {r['dims']:>6} dims: {r['seconds']:.2f} s = "
                  f"{r['seconds'] / fwd:.2f} x forward (projection {r['projection_s']:.2f} s, forward + backward "
                  f"{r['seconds'] - r['projection_s']:.2f} s); peak RSS {r['peak_rss_mib']:.0f} MiB")
            if r["fit_s"]:
                print(f"    its Adafactor fit over the same {r['n']} documents: {r['fit_s']:.2f} s = "
                      f"{r['fit_s'] / fwd:.2f} x forward")


if __name__ == "__main__":
    main()
