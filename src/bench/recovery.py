"""Recovery benchmark: how many planted true rows each selector finds, measured directly, no retraining.

    python -m src.bench.recovery [--lms wordnet_lm smollm2] [--texts wordnet fortunes] [--tasks classify_lm lm]
                                 [--seeds 0 1 2 3 4 5] [--shares 0.02 0.07 0.2] [--diagnostics] [--out DIR]
                                 [-- overrides]

A *world* is one (base LM, text, task, rng): θf is θ0 finetuned on the task's true rows; the seed corpus is
``--n-other`` rows of topics the task does not have (WordNet glosses or Debian fortunes; ``SEEDS``) plus
``--n-plant`` true-distribution rows, half of them rows θf trained on (``seed.leak_fraction``) and half
rows it never saw (``seed.unseen_rows``). θf, the autolabels and every gradient variant go through the
pipeline's cached stages, so a rerun scores every selector in seconds.

What separates planted rows from the others must be only what θf was finetuned on (their topic). So the
worlds have no topic marker in the text, one part of speech, rows θ0 never saw on both sides (the embedded
LM's pretraining leaves out the half of WordNet the worlds draw from), and for each planted share the
candidates are a *matched* draw of the other rows (``candidates``) plus a seeded draw of planted rows
(half of each kind) making up that share, both sides thinned to one joint distribution of length and θ0's
NLL of the text (novelty). Each selector picks k = the number planted; its precision@k
(= recall) is the share of its picks that are planted. Give-away detectors (``length``, ``novelty``: θ0's
NLL) know nothing of θf; a world where one differs from random by more than one standard deviation is
flagged CONFOUNDED in the output. Seeds 0–2 are development seeds (defaults were chosen on them), 3–5
held out, 6–8 fresh (for options first seen on 3–5); the tables report each set on its own.

Writes ``<out>/<time>/recovery.json`` (every number) and ``summary.txt`` (the tables).
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from src.bench.common import offline_env
from src.bench.recovery_report import DETECTORS, FRESH, HELDOUT, format_tables, summarise

# Per base LM: the finetuning recipe, and the true rows θf is finetuned on per (text, task). SmolLM2 is a
# real pretrained LM: full finetuning at the small LM's 1e-3 would wreck it, so it uses the paper's 1e-4.
WORLDS = {
    "wordnet_lm": {"n_train": {("wordnet", "classify_lm"): 1600, ("wordnet", "lm"): 1200,
                               ("fortunes", "classify_lm"): None, ("fortunes", "lm"): None}, "overrides": []},
    "smollm2": {"n_train": {("wordnet", "classify_lm"): 800, ("wordnet", "lm"): 600,
                            ("fortunes", "classify_lm"): 800, ("fortunes", "lm"): 600},
                "overrides": ["finetune=paper", "finetune.epochs=2", "gradient.batch_size=32"]},
}  # None: the dataset config's own n_train
SPLITS = {("wordnet", "classify_lm"): ["dataset.n_test=400", "dataset.n_val=200"],
          ("wordnet", "lm"): ["dataset.n_test=300", "dataset.n_val=100"]}
# (true data, other-topic seed corpus) per text and task. Each seed config says what separates its rows
# from the planted ones.
SEEDS = {("wordnet", "classify_lm"): ("wordnet_topics", "wordnet_other_topics"),
         ("wordnet", "lm"): ("wordnet_documents", "wordnet_documents_other_topics"),
         ("fortunes", "classify_lm"): ("fortunes_topics", "fortunes_other_topics"),
         ("fortunes", "lm"): ("fortunes_documents", "fortunes_documents_other_topics")}
TEXTS = sorted({t for t, _ in SEEDS})
TASKS = sorted({k for _, k in SEEDS})
# Two-model token statistics (src/scores/token_stats.py); token_ratio is likelihood_ratio itself on task=lm.
TOKEN_STATS = ("token_ratio", "ez_ratio", "mink_ratio", "label_kl")
SELECTORS = ("random", *DETECTORS, "topk", "likelihood", "likelihood_balanced", "random_balanced",
             "likelihood_ratio", *TOKEN_STATS, "select_paper",
             "select_centered", "select_shared", "select", "select_balanced", "topk_layers", "select_layers", "select_layers_balanced",
             "select_layers_theta0", "select_fused",
             "select_balanced_fused", "probe_balanced")
# Gradient variants for the diagnostics: (name, overrides). Each keys its own store; θf and autolabels are shared.
VARIANTS = {
    "θf, raw": ["checkpoints=theta_f", "P=1", "gradient.precondition=none"],
    "θf, Adafactor": ["checkpoints=theta_f", "P=1", "gradient.precondition=adafactor"],
    "θ0, raw": ["checkpoints=theta_0", "P=1", "gradient.precondition=none"],
    "θ0, Adafactor": ["checkpoints=theta_0", "P=1", "gradient.precondition=adafactor"],
    "path P=3, raw": ["checkpoints=theta_f", "P=3", "gradient.precondition=none"],
    "θf, raw, exact": ["checkpoints=theta_f", "P=1", "gradient.precondition=none", "gradient.projection=exact"],
}
# Whole-model gradient variants (--layer-variants): which layers, dims per layer, per-layer norm and weights.
LAYER_VARIANTS = {
    "all d256 unit/equal": ["gradient.layers=all", "gradient.layer_d=256"],
    "all d1024 unit/equal": ["gradient.layers=all", "gradient.layer_d=1024"],
    "all d1024 unit/delta": ["gradient.layers=all", "gradient.layer_d=1024", "gradient.layer_weights=delta"],
    "all d1024 raw/delta": ["gradient.layers=all", "gradient.layer_d=1024", "gradient.layer_norm=none",
                            "gradient.layer_weights=delta"],
    "last:1 d1024 unit/equal": ["gradient.layers=last:1", "gradient.layer_d=1024"],
}
EXACT_TASKS = ("classify_lm",)  # projection=exact needs one-position gradients
# The head-only diagnostic is a world of its own: θf trains the LM head alone (on frozen features), the case
# where per-example last-layer gradients model θf − θ0 exactly.
HEAD_ONLY = ["finetune.train=head", "finetune.lr=1e-3"]  # a head alone moves little at the body's 1e-4


def world_overrides(lm: str, task: str, rng: int, n_other: int, n_plant: int, text: str = "wordnet",
                    n_train: int | None = None) -> list[str]:
    dataset, seed = SEEDS[(text, task)]
    n_train = n_train or WORLDS[lm]["n_train"][(text, task)]
    if n_train is None:  # the dataset config's own size
        from src.config import compose_config

        n_train = int(compose_config([f"task={task}", f"dataset={dataset}"]).dataset.n_train)
    return [f"task={task}", f"model={lm}", f"dataset={dataset}", f"seed={seed}", "logger=none",
            "trainer.progress_bar=false", f"rng={rng}", f"dataset.n_train={n_train}", f"seed.max_examples={n_other}",
            f"seed.leak_fraction={n_plant // 2 / n_train}", f"seed.unseen_rows={n_plant - n_plant // 2}",
            *SPLITS.get((text, task), []), *WORLDS[lm]["overrides"]]


def matched(other, planted, features, g, bins: int | None = None):
    """Seeded thinnings of the ``other`` and ``planted`` rows to one joint distribution of ``features`` (a
    list of per-row values, e.g. length and θ0's NLL): per cell of the features' quantile bins, the overlap of
    the two sides (min of their shares), each side keeping as many rows as its scarcest cell allows. Those
    features alone then tell planted rows from the others no better than chance."""
    import torch

    feats = [torch.as_tensor(f, dtype=torch.float64) for f in features]
    bins = bins or (20 if len(feats) == 1 else 6)
    both = torch.cat([other, planted])
    cells = [torch.zeros(len(other), dtype=torch.long), torch.zeros(len(planted), dtype=torch.long)]
    n_cells = 1
    for f in feats:
        edges = torch.quantile(f[both], torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1]).unique()
        nb = len(edges) + 1
        cells = [c * nb + torch.bucketize(f[rows], edges) for c, rows in zip(cells, (other, planted))]
        n_cells *= nb
    counts = [torch.bincount(c, minlength=n_cells).double() for c in cells]
    w = torch.minimum(counts[0] / len(other), counts[1] / len(planted))
    w = w / w.sum()
    out = []
    for rows, c, cnt in zip((other, planted), cells, counts):
        total = float((cnt[w > 0] / w[w > 0]).min())
        keep = [rows[c == i][torch.randperm(int(cnt[i]), generator=g)[: int(w[i] * total)]] for i in range(n_cells)]
        out.append(torch.cat(keep).sort().values)
    return out[0], out[1]


def candidates(leaked, unseen, share: float, rng: int, features=None):
    """Row indices (sorted) of the other-topic rows plus a seeded draw of planted rows, half of each kind,
    making up ``share`` of the candidates; and the number planted (= k). With ``features`` (per-row values,
    e.g. length and θ0's NLL) both sides are first thinned to one joint distribution of them (``matched``),
    and the other rows subsampled if the planted rows left cannot make up the share."""
    import torch

    g = torch.Generator().manual_seed(7919 + rng)
    other = (~leaked & ~unseen).nonzero().squeeze(1)
    lk, un = leaked.nonzero().squeeze(1), unseen.nonzero().squeeze(1)
    if features is not None:
        other, kept = matched(other, torch.cat([lk, un]), features, g)
        lk, un = kept[leaked[kept]], kept[unseen[kept]]
        fits = int(2 * min(len(lk), len(un)) * (1 - share) / share)  # the most other rows the planted rows allow
        if fits < len(other):
            other = other[torch.randperm(len(other), generator=g)[:fits]].sort().values
    n = round(share / (1 - share) * len(other))
    if n - n // 2 > min(len(lk), len(un)):
        raise ValueError(f"share {share}: {n} planted rows needed, the corpus has {len(lk)} + {len(un)}")
    picked = [lk[torch.randperm(len(lk), generator=g)[: n // 2]], un[torch.randperm(len(un), generator=g)[: n - n // 2]]]
    return torch.cat([other, *picked]).sort().values, n


def load_world(opts):
    """One world's cached stages: (data, task, pair, labels, leaked, unseen, match), where ``leaked`` and
    ``unseen`` mark the planted rows of each kind and ``match`` is what ``candidates`` matches them on."""
    import torch

    from src.stages import autolabel, load_models, load_task_data

    data, task = load_task_data(opts)
    pair = load_models(opts, data, task)
    labels = autolabel(opts, pair, data, task)
    leaked, unseen = torch.tensor(data.seed["leaked"]), torch.tensor(data.seed["unseen"])
    # What the candidates are matched on: length and, where the task scores the text under θ0, its novelty
    # to θ0 (planted topics can be rarer text for θ0 without any finetuning: species names, say).
    match = [[len(t) for t in data.seed["text"]]] + ([labels["stat_nll_0"]] if "stat_nll_0" in labels else [])
    return data, task, pair, labels, leaked, unseen, match


def score_world(opts, selectors: dict, variants: dict, shares, log=print) -> list[dict]:
    """Every (variant, selector, share) of one world: precision@k and the planted kinds picked."""
    from src.selectors.base import SelectionContext
    from src.selectors.rows import TensorRows
    from src.stages import gradients

    data, task, pair, labels, leaked, unseen, match = load_world(opts)
    out = []
    for vname, (vopts, names) in variants.items():
        G, target = gradients(opts, pair, data, labels, task, vopts.gradient)
        for share in shares:
            idx, k = candidates(leaked, unseen, share, int(opts.rng), features=match)
            ctx = SelectionContext(n_seed=len(idx), labels=None if labels.get("labels") is None else labels["labels"][idx],
                                   logp_f=labels["logp_f"][idx], logp_0=labels["logp_0"][idx],
                                   stats={n.removeprefix("stat_"): v[idx] for n, v in labels.items()
                                          if n.startswith("stat_")},
                                   grads=TensorRows(G[:, idx]), target=target, rng=int(opts.rng), progress=False)
            for name in names:
                picks = idx[selectors[name](ctx, k).indices]
                row = {"variant": vname, "selector": name, "share": share, "k": k, "n": len(idx),
                       "precision": float((leaked | unseen)[picks].float().mean()),
                       "trained": float(leaked[picks].float().mean()), "unseen": float(unseen[picks].float().mean())}
                out.append(row)
        log(f"  {vname}: " + ", ".join(f"{r['selector']} {r['precision']:.2f}" for r in out
                                       if r["variant"] == vname and r["share"] == shares[len(shares) // 2]))
    return out


def default_variants(opts, selectors: dict) -> dict:
    """The run's own options ("default") and one variant per distinct ``gradients:`` set a selector
    config names (e.g. select_paper's raw gradients), as the pipeline's ``selection_contexts``."""
    from dataclasses import replace

    groups: dict[str, list[str]] = {}
    for name, sel in selectors.items():
        # Options equal to the run's own name the run's gradients (e.g. select_paper's raw ones on a raw run).
        own = {k: v for k, v in (sel.gradients or {}).items() if getattr(opts.gradient, k, None) != v}
        groups.setdefault(json.dumps(own, sort_keys=True) if sel.needs_gradients and own else "", []).append(name)
    out = {}
    for key, names in groups.items():
        options = json.loads(key) if key else {}
        label = "default" if not key else ", ".join(f"{k}={v}" for k, v in options.items())
        out[label] = (replace(opts, gradient=opts.gradient.with_selector(options)) if key else opts, names)
    return out


def world_arguments(ap, seeds: list[int], out: str) -> None:
    """The world options the diagnostic benches share (layer groups, ceiling): base LMs, texts, seeds,
    planted shares and this bench's reduced SmolLM2 sizes, an output folder and trailing Hydra overrides."""
    ap.add_argument("--lms", nargs="+", default=["smollm2"], choices=sorted(WORLDS))
    ap.add_argument("--texts", nargs="+", default=["wordnet"], choices=TEXTS)
    ap.add_argument("--seeds", type=int, nargs="+", default=seeds)
    ap.add_argument("--shares", type=float, nargs="+", default=[0.07, 0.20])
    ap.add_argument("--n-other", type=int, default=1500)
    ap.add_argument("--n-plant", type=int, default=300)
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--out", default=out)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every world (e.g. P=1)")


def applicable(opts, selectors: dict) -> dict:
    """Drop what a task cannot run: class balance without classes, label-word statistics without label
    words, and token_ratio where it is likelihood_ratio itself (task=lm)."""
    from src.checks import without_classes

    drop = set(without_classes(opts, selectors))
    if opts.task.name != "classify_lm":
        drop |= {"label_kl", "token_ratio"}
    return {n: s for n, s in selectors.items() if n not in drop}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lms", nargs="+", default=["wordnet_lm", "smollm2"], choices=sorted(WORLDS))
    ap.add_argument("--texts", nargs="+", default=list(TEXTS), choices=TEXTS)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5],
                    help=f"random seeds; {list(HELDOUT)} are reported as held out, {list(FRESH)} as fresh")
    ap.add_argument("--shares", type=float, nargs="+", default=[0.02, 0.07, 0.20])
    ap.add_argument("--n-other", type=int, default=2500, help="other-topic seed rows (before the length-matched draw)")
    ap.add_argument("--n-plant", type=int, default=500, help="planted rows available (half trained, half unseen)")
    ap.add_argument("--n-train", type=int, default=None, help="θf's true rows (default: per world, WORLDS)")
    ap.add_argument("--selectors", nargs="+", default=list(SELECTORS))
    ap.add_argument("--diagnostics", action="store_true", help="also SELECT and top-k on every gradient variant")
    ap.add_argument("--head-only", action="store_true", help="also worlds whose θf trains the LM head alone")
    ap.add_argument("--layer-variants", action="store_true", help="also SELECT and top-k on whole-model variants")
    ap.add_argument("--out", default="outputs/bench/recovery")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every world")
    args = ap.parse_args(argv)
    offline_env()

    from src.config import compose_config, run_options
    from src.selectors.registry import build_selectors

    out = Path(args.out) / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    thetafs = {"full": []} | ({"head-only": HEAD_ONLY} if args.head_only else {})
    for lm, text, task, (thetaf, extra), rng in itertools.product(args.lms, args.texts, args.tasks, thetafs.items(),
                                                                  args.seeds):
        t0 = time.perf_counter()
        base = world_overrides(lm, task, rng, args.n_other, args.n_plant, text, args.n_train) + extra + list(args.overrides)
        opts = run_options(compose_config(base))
        names = list(dict.fromkeys([*args.selectors, *(["select", "topk"] if args.diagnostics else []),
                                    *(["select_balanced" if task == "classify_lm" else "select", "topk"]
                                      if args.layer_variants else [])]))  # what the variants run
        specs = run_options(compose_config([*base, f"baselines=[{','.join(names)}]"])).selectors
        selectors = applicable(opts, build_selectors(specs))
        variants = default_variants(opts, selectors)
        if args.diagnostics:
            variants.update({name: (run_options(compose_config([*base, *o])), ["select", "topk"])
                             for name, o in VARIANTS.items() if "exact" not in name or task in EXACT_TASKS})
        if args.layer_variants:
            greedy = "select_balanced" if task == "classify_lm" else "select"
            variants.update({name: (run_options(compose_config([*base, "gradient.precondition=none", *o])),
                                    [greedy, "topk"])
                             for name, o in LAYER_VARIANTS.items()})
        print(f"{lm} {text} {task} θf={thetaf} rng={rng}", flush=True)
        for r in score_world(opts, selectors, variants, args.shares):
            rows.append({"lm": lm if thetaf == "full" else f"{lm}, {thetaf} θf", "text": text, "task": task,
                         "rng": rng, **r})
        print(f"  done in {time.perf_counter() - t0:.0f}s", flush=True)
        (out / "recovery.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    summary = summarise(rows)
    text = format_tables(summary, args.shares)
    (out / "recovery.json").write_text(json.dumps({"args": vars(args), "rows": rows, "summary": summary}, indent=2))
    (out / "summary.txt").write_text(text + "\n")
    print(f"\nwritten to {out}{text}")


if __name__ == "__main__":
    main()
