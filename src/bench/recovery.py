"""Recovery benchmark: how many planted true rows each selector finds, measured directly, no retraining.

    python -m src.bench.recovery [--lms wordnet_lm smollm2] [--tasks classify_lm lm] [--seeds 0 1 2]
                                 [--shares 0.02 0.07 0.2] [--diagnostics] [--out DIR] [-- overrides]

A *world* is one (base LM, task, rng): θf is θ0 finetuned on the task's true rows; the seed corpus is
``--n-other`` rows of WordNet topics the task does not have (``seed=wordnet_other_topics`` /
``wordnet_documents_other_topics``) plus ``--n-plant`` true-distribution rows, half of them rows θf
trained on (``seed.leak_fraction``) and half rows it never saw (``seed.unseen_rows``). θf, the
autolabels and every gradient variant go through the pipeline's cached stages, so a rerun scores
every selector in seconds.

For each planted share s the candidates are the other-topic rows plus a seeded draw of planted rows
(half of each kind) making up s of them; each selector picks k = the number planted, and its
precision@k (= recall) is the share of its picks that are planted. Mean ± std over the seeds. With
``--diagnostics``, SELECT also runs on the gradient variants that separate the causes (gradients at
θ0 or along the path, raw or preconditioned, centred or not, a head-only θf).

Writes ``<out>/<time>/recovery.json`` (every number) and ``summary.txt`` (the tables).
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

from src.bench.common import offline_env

# Per base LM: the true rows θf is finetuned on (classify_lm, lm) and the finetuning recipe. SmolLM2 is
# a real pretrained LM: full finetuning at the small LM's 1e-3 would wreck it, so it uses the paper's 1e-4.
WORLDS = {
    "wordnet_lm": {"n_train": {"classify_lm": 1600, "lm": 1200}, "overrides": []},
    "smollm2": {"n_train": {"classify_lm": 800, "lm": 600},
                "overrides": ["finetune=paper", "finetune.epochs=2", "gradient.batch_size=32"]},
}
SPLITS = {"classify_lm": ["dataset.n_test=400", "dataset.n_val=200"], "lm": ["dataset.n_test=300", "dataset.n_val=100"]}
SEEDS = {"classify_lm": ("wordnet_topics", "wordnet_other_topics"), "lm": ("wordnet_documents",
                                                                          "wordnet_documents_other_topics")}
SELECTORS = ("random", "topk", "likelihood", "likelihood_ratio", "select_paper", "select_centered", "select",
             "select_balanced")
# Gradient variants for the diagnostics: (name, overrides). Each keys its own store; θf and autolabels are shared.
VARIANTS = {
    "θf, raw": ["checkpoints=theta_f", "P=1", "gradient.precondition=none"],
    "θf, Adafactor": ["checkpoints=theta_f", "P=1", "gradient.precondition=adafactor"],
    "θ0, raw": ["checkpoints=theta_0", "P=1", "gradient.precondition=none"],
    "θ0, Adafactor": ["checkpoints=theta_0", "P=1", "gradient.precondition=adafactor"],
    "path P=3, raw": ["checkpoints=theta_f", "P=3", "gradient.precondition=none"],
    "θf, raw, exact": ["checkpoints=theta_f", "P=1", "gradient.precondition=none", "gradient.projection=exact"],
}
EXACT_TASKS = ("classify_lm",)  # projection=exact needs one-position gradients
# The head-only diagnostic is a world of its own: θf trains the LM head alone (on frozen features), the case
# where per-example last-layer gradients model θf − θ0 exactly.
HEAD_ONLY = ["finetune.train=head", "finetune.lr=1e-3"]  # a head alone moves little at the body's 1e-4


def world_overrides(lm: str, task: str, rng: int, n_other: int, n_plant: int) -> list[str]:
    n_train = WORLDS[lm]["n_train"][task]
    dataset, seed = SEEDS[task]
    return [f"task={task}", f"model={lm}", f"dataset={dataset}", f"seed={seed}", "logger=none",
            "trainer.progress_bar=false", f"rng={rng}", f"dataset.n_train={n_train}", f"seed.max_examples={n_other}",
            f"seed.leak_fraction={n_plant // 2 / n_train}", f"seed.unseen_rows={n_plant - n_plant // 2}",
            *SPLITS[task], *WORLDS[lm]["overrides"]]


def candidates(leaked, unseen, share: float, rng: int):
    """Row indices (sorted) of the other-topic rows plus a seeded draw of planted rows, half of each kind,
    making up ``share`` of the candidates; and the number planted (= k)."""
    import torch

    g = torch.Generator().manual_seed(7919 + rng)
    other = (~leaked & ~unseen).nonzero().squeeze(1)
    n = round(share / (1 - share) * len(other))
    lk, un = leaked.nonzero().squeeze(1), unseen.nonzero().squeeze(1)
    if n - n // 2 > min(len(lk), len(un)):
        raise ValueError(f"share {share}: {n} planted rows needed, the corpus has {len(lk)} + {len(un)}")
    picked = [lk[torch.randperm(len(lk), generator=g)[: n // 2]], un[torch.randperm(len(un), generator=g)[: n - n // 2]]]
    return torch.cat([other, *picked]).sort().values, n


def score_world(cfg, selectors: dict, variants: dict, shares, log=print) -> list[dict]:
    """Every (variant, selector, share) of one world: precision@k and the planted kinds picked."""
    import torch

    from src.selectors.base import SelectionContext
    from src.selectors.rows import TensorRows
    from src.stages import autolabel, gradients, load_models, load_task_data
    from src.tasks import get_task

    data, task = load_task_data(cfg)
    pair = load_models(cfg, data, task)
    labels = autolabel(cfg, pair, data, task)
    leaked, unseen = torch.tensor(data.seed["leaked"]), torch.tensor(data.seed["unseen"])
    out = []
    for vname, (vcfg, names) in variants.items():
        # A task reads its gradient options from its config: one per variant.
        G, target = gradients(vcfg, pair, data, labels, get_task(vcfg, data.task.classes))
        for share in shares:
            idx, k = candidates(leaked, unseen, share, int(cfg.rng))
            ctx = SelectionContext(n_seed=len(idx), labels=None if labels.get("labels") is None else labels["labels"][idx],
                                   logp_f=labels["logp_f"][idx], logp_0=labels["logp_0"][idx],
                                   grads=TensorRows(G[:, idx]), target=target, rng=int(cfg.rng), progress=False)
            for name in names:
                picks = idx[selectors[name](ctx, k).indices]
                row = {"variant": vname, "selector": name, "share": share, "k": k, "n": len(idx),
                       "precision": float((leaked | unseen)[picks].float().mean()),
                       "trained": float(leaked[picks].float().mean()), "unseen": float(unseen[picks].float().mean())}
                out.append(row)
        log(f"  {vname}: " + ", ".join(f"{r['selector']} {r['precision']:.2f}" for r in out
                                       if r["variant"] == vname and r["share"] == shares[len(shares) // 2]))
    return out


def default_variants(cfg, selectors: dict) -> dict:
    """The run's own gradients ("default") and one variant per distinct ``gradients:`` set a selector
    config names (e.g. select_paper's raw gradients), as the pipeline's ``selection_contexts``."""
    from omegaconf import OmegaConf

    from src.selectors.registry import GRADIENT_OPTIONS, with_gradient_options

    groups: dict[str, list[str]] = {}
    for name, sel in selectors.items():
        # Options equal to the run's own name the run's gradients (e.g. select_paper's raw ones on a raw run).
        own = {k: v for k, v in (sel.gradients or {}).items() if OmegaConf.select(cfg, GRADIENT_OPTIONS[k]) != v}
        groups.setdefault(json.dumps(own, sort_keys=True) if sel.needs_gradients and own else "", []).append(name)
    out = {}
    for key, names in groups.items():
        opts = json.loads(key) if key else {}
        label = "default" if not key else ", ".join(f"{k}={v}" for k, v in opts.items())
        out[label] = (with_gradient_options(cfg, opts) if key else cfg, names)
    return out


def summarise(rows: list[dict]) -> list[dict]:
    """Mean ± std over the seeds per (lm, task, variant, selector, share)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["lm"], r["task"], r["variant"], r["selector"], r["share"]), []).append(r)
    out = []
    for (lm, task, variant, sel, share), rs in groups.items():
        vals = [r["precision"] for r in rs]
        out.append({"lm": lm, "task": task, "variant": variant, "selector": sel, "share": share, "n_seeds": len(rs),
                    "k": rs[0]["k"], "precision_mean": statistics.mean(vals),
                    "precision_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                    "trained_mean": statistics.mean(r["trained"] for r in rs),
                    "unseen_mean": statistics.mean(r["unseen"] for r in rs)})
    return out


def format_tables(summary: list[dict], shares) -> str:
    lines = []
    for lm, task in dict.fromkeys((r["lm"], r["task"]) for r in summary):
        rows = [r for r in summary if r["lm"] == lm and r["task"] == task]
        lines.append(f"\n{lm}, task={task}: precision@k of planted rows (k = number planted), mean ± std over seeds")
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
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lms", nargs="+", default=["wordnet_lm", "smollm2"], choices=sorted(WORLDS))
    ap.add_argument("--tasks", nargs="+", default=["classify_lm", "lm"], choices=sorted(SEEDS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shares", type=float, nargs="+", default=[0.02, 0.07, 0.20])
    ap.add_argument("--n-other", type=int, default=2000, help="other-topic seed rows")
    ap.add_argument("--n-plant", type=int, default=500, help="planted rows available (half trained, half unseen)")
    ap.add_argument("--selectors", nargs="+", default=list(SELECTORS))
    ap.add_argument("--diagnostics", action="store_true", help="also SELECT and top-k on every gradient variant")
    ap.add_argument("--head-only", action="store_true", help="also worlds whose θf trains the LM head alone")
    ap.add_argument("--out", default="outputs/bench/recovery")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every world")
    args = ap.parse_args(argv)
    offline_env()

    from src.config import compose_config
    from src.selectors.registry import build_selectors
    from src.checks import without_classes

    out = Path(args.out) / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    thetafs = {"full": []} | ({"head-only": HEAD_ONLY} if args.head_only else {})
    for lm, task, (thetaf, extra), rng in itertools.product(args.lms, args.tasks, thetafs.items(), args.seeds):
        t0 = time.perf_counter()
        base = world_overrides(lm, task, rng, args.n_other, args.n_plant) + extra + list(args.overrides)
        cfg = compose_config(base)
        selectors = build_selectors(compose_config([*base, f"baselines=[{','.join(args.selectors)}]"]))
        for name in without_classes(cfg, selectors):  # no autolabel classes to balance over (task=lm)
            del selectors[name]
        variants = default_variants(cfg, selectors)
        if args.diagnostics:
            variants.update({name: (compose_config([*base, *o]), ["select", "topk"])
                             for name, o in VARIANTS.items() if "exact" not in name or task in EXACT_TASKS})
        print(f"{lm} {task} θf={thetaf} rng={rng}", flush=True)
        for r in score_world(cfg, selectors, variants, args.shares):
            rows.append({"lm": lm if thetaf == "full" else f"{lm}, {thetaf} θf", "task": task, "rng": rng, **r})
        print(f"  done in {time.perf_counter() - t0:.0f}s", flush=True)
        (out / "recovery.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    summary = summarise(rows)
    text = format_tables(summary, args.shares)
    (out / "recovery.json").write_text(json.dumps({"args": vars(args), "rows": rows, "summary": summary}, indent=2))
    (out / "summary.txt").write_text(text + "\n")
    print(f"\nwritten to {out}{text}")


if __name__ == "__main__":
    main()
