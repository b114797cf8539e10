"""GPU smoke check, in one go: the whole pipeline and corpus-scale selection on a CUDA device.

    make gpu-smoke                       # python -m src.bench.gpu_smoke; a few minutes on one data-centre GPU
    python -m src.bench.gpu_smoke --small --device cpu   # the same steps, tiny, on the CPU (checks the script)

Offline by design (no hub): the model is a randomly initialised GPT-2 of gpt2-medium's shape
(24 layers, 1024 wide, 16 heads: ~355M parameters) with a classification head, MiniLM's packaged
tokenizer, the embedded WordNet task. Steps, each printed with its wall time:

1. ``pytest tests/test_selection_scale.py``: includes the GPU-vs-CPU pick equality test, skipped on CPU;
2. the pipeline (θf by finetuning, autolabel, gradient pass, select + topk + random, retrain, evaluate)
   with ``trainer=gpu``, float16 gradient store, ``selection.device=cuda``;
3. selection at |D| = ``--n`` (default 10^6), d = 4096, float16 synthetic gradients (``common.synthetic``),
   on the device: the limit (one G @ t), top-k, one exact greedy step, exact greedy k = 1000 in full,
   stochastic and batched greedy; and the picks of GPU vs CPU exact greedy at |D| = 10^5, k = 100 (must be equal).

A JSON summary goes to ``$OUT/gpu_smoke.json`` when ``OUT`` is set (else to stdout only).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from src.bench.common import ROOT, best_of, synthetic_matrix, timed


def step_tests(device) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", "tests/test_selection_scale.py"],
                       cwd=ROOT, capture_output=True, text=True)
    tail = r.stdout.strip().splitlines()[-3:]
    return {"rc": r.returncode, "seconds": time.perf_counter() - t0, "tail": tail}


def step_pipeline(device, small: bool) -> dict:
    shape = ["model.config.n_embd=64", "model.config.n_layer=2", "model.config.n_head=2"] if small else []
    sizes = (["seed.max_examples=300", "dataset.n_train=60", "dataset.n_test=40", "k=20", "d=256"] if small else
             ["seed.max_examples=6000", "dataset.n_train=1600", "dataset.n_test=800", "k=400", "d=4096"])
    trainer = "trainer=gpu" if torch.device(device).type == "cuda" else "trainer=cpu"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "src.main", trainer, "logger=none", "model=random_gpt2_medium", *shape, *sizes, "P=2", "gradient.store_dtype=float16", f"selection.device={device}",
               "baselines=[topk,random]", "finetune.epochs=1", "retrain.epochs=1", f"cache_dir={tmp}/cache",
               f"hydra.run.dir={tmp}/run"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
        out = {"rc": r.returncode, "seconds": time.perf_counter() - t0, "command": " ".join(cmd[2:])}
        res = Path(tmp) / "run" / "results.json"
        if res.exists():
            data = json.loads(res.read_text())
            out["timings"] = data.get("timings")
            out["results"] = {k: v for k, v in data.items() if k != "config"}
        else:
            out["stderr_tail"] = r.stderr[-3000:]
    return out


def step_selection(device, n: int, d: int, k: int) -> dict:
    from src.selectors.base import top_indices
    from src.selectors.greedy import greedy
    from src.selectors.rows import TensorRows
    from src.selectors.topk import alignment

    G, sq, t = synthetic_matrix(n, d, device=device)  # norms of the float16 rows, as stored
    rows = TensorRows(G, sq=sq, block_rows=n)
    th = t.half()
    out = {"n": n, "d": d, "k": k, "device": str(device), "gib": G.numel() * 2 / 2**30}
    out["limit_s"] = best_of(lambda: G[0] @ th, 3, device)[0]
    out["topk_s"] = best_of(lambda: top_indices(alignment(rows, t), k), 2, device)[0]
    t1 = timed(lambda: greedy(rows, t, 1), device)[0]
    t11 = timed(lambda: greedy(rows, t, 11), device)[0]
    out["step_s"] = (t11 - t1) / 10
    out["exact_s"], (idx, obj) = timed(lambda: greedy(rows, t, k), device)
    out["stochastic_s"], (sidx, sobj) = timed(lambda: greedy(rows, t, k, method="stochastic"), device)
    out["batched_s"], (bidx, bobj) = timed(lambda: greedy(rows, t, k, method="batched"), device)
    out.update(exact_objective=float(obj[-1]), stochastic_objective=float(sobj[-1]),
               batched_objective=float(bobj[-1]), overlap=len(set(idx.tolist()) & set(sidx.tolist())) / k,
               GB_per_s_limit=G.numel() * 2 / out["limit_s"] / 1e9)
    small = G[:, : min(n, 100_000)].cpu()
    dev_picks, _ = greedy(TensorRows(small.to(device)), t.cpu(), 100)
    cpu_picks, _ = greedy(TensorRows(small), t.cpu(), 100)
    out["device_equals_cpu_picks"] = dev_picks.tolist() == cpu_picks.tolist()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="tiny sizes (to check the script itself, e.g. on a CPU)")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--skip", nargs="*", default=[], choices=["tests", "pipeline", "selection"])
    args = ap.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_smoke: no CUDA device here (use --device cpu --small to check the script)")
    info = {"torch": torch.__version__, "device": args.device,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(json.dumps(info), flush=True)
    summary = {"info": info}
    steps = {"tests": lambda: step_tests(args.device), "pipeline": lambda: step_pipeline(args.device, args.small),
             "selection": lambda: step_selection(args.device, 20_000 if args.small else args.n,
                                                 256 if args.small else 4096, 50 if args.small else 1000)}
    for name, fn in steps.items():
        if name in args.skip:
            continue
        t0 = time.perf_counter()
        try:
            summary[name] = fn()
        except Exception as e:  # keep going: one broken step should not hide the others' results
            summary[name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"[{name}] {time.perf_counter() - t0:.1f} s: {json.dumps(summary[name], default=str)[:2000]}", flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_smoke.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


if __name__ == "__main__":
    main()
