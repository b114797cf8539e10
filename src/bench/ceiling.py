"""Supervised ceiling: how many planted rows a probe that *knows* them finds from each gradient feature set.

    python -m src.bench.ceiling [--lms smollm2] [--texts wordnet] [--seeds 3] [--shares 0.07 0.2]
                                [--features head all] [--n-train N --n-other N --n-plant N] [-- overrides]

Not a selector: per autolabel class, a k-fold cross-validated L2 logistic regression on the unit gradient
rows is trained on the planted labels themselves, and each row is scored by the fold that did not see it.
Its precision@k says what the rows carry at most for a linear reader, so a target above it cannot be met by
any selector that reads those rows alone. Reported two ways: each class taking its own (oracle) planted
count, and each class taking select_balanced's quotas (``class_quotas``), beside θf's likelihood read the
same two ways. Label-word worlds (``task=classify_lm``); the worlds, θf and gradients are the recovery
bench's (``src/bench/recovery.py``) and come from the same caches.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from src.bench.common import offline_env
from src.bench.recovery import candidates, load_world, world_arguments, world_overrides

# Gradient options per feature set, on top of the world's own (``GradientOptions.with_selector``): the
# last-layer rows select_balanced reads and the whole-model rows select_layers reads.
FEATURES = {"head": {"precondition": "none"},
            "all": {"precondition": "none", "layers": "all", "layer_norm": "unit", "layer_weights": "equal"}}


def cv_scores(X: torch.Tensor, y: torch.Tensor, folds: int = 5, l2: float = 0.01, seed: int = 0) -> torch.Tensor:
    """[n] out-of-fold logits of an L2 logistic regression on the unit rows of ``X`` against 0/1 ``y``;
    folds are stratified (each holds its share of both labels), seeded. l2 = 0.01 on unit rows is
    scikit-learn's C = 1 on rows scaled to norm 10: weak enough that a few dozen positives can be fitted."""
    from src.selectors.probe import fit_logistic

    X = X.double() / X.double().norm(dim=1, keepdim=True).clamp_min(1e-30)
    y = y.double()
    g = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(y), dtype=torch.long)
    for value in (0.0, 1.0):  # stratified: each side dealt round-robin over the folds in a seeded order
        rows = torch.nonzero(y == value)[:, 0]
        fold[rows[torch.randperm(len(rows), generator=g)]] = torch.arange(len(rows)) % folds
    out = torch.zeros(len(y), dtype=torch.float64)
    for f in range(folds):
        test, train = fold == f, fold != f
        if not test.any():
            continue
        w, b = fit_logistic(X[train], y[train], l2)
        out[test] = X[test] @ w + b
    return out


def hits(score: torch.Tensor, planted: torch.Tensor, labels: torch.Tensor, quotas: dict[int, int]) -> tuple[int, int]:
    """(hits with each class taking its own planted count, hits with each class taking ``quotas[c]``) when
    each class's rows are taken in ``score`` order."""
    oracle = balanced = 0
    for c in torch.unique(labels).tolist():
        m = torch.nonzero(labels == c)[:, 0]
        order = m[torch.argsort(-score[m].double(), stable=True)]
        oracle += int(planted[order[: int(planted[m].sum())]].sum())
        balanced += int(planted[order[: quotas.get(c, 0)]].sum())
    return oracle, balanced


def world_ceiling(opts, features: list[str], shares, folds: int = 5) -> list[dict]:
    from src.selectors.select import class_quotas
    from src.stages import gradients

    data, task, pair, labels, leaked, unseen, match = load_world(opts)
    planted = leaked | unseen
    G = {}
    for name in features:  # each feature set keys its own gradient store
        g = opts.gradient.with_selector(FEATURES[name])
        G[name] = gradients(opts, pair, data, labels, task, g)[0].float().mean(0)
    rows = []
    for share in shares:
        idx, k = candidates(leaked, unseen, share, int(opts.rng), features=match)
        lab, pl = labels["labels"][idx].long(), planted[idx].long()
        quotas = class_quotas(lab, k)
        scores = {"likelihood": labels["logp_f"][idx].double()}
        for name in features:
            s, feats = torch.zeros(len(idx), dtype=torch.float64), G[name][idx]
            for c in torch.unique(lab).tolist():  # one probe per class, as probe_balanced fits
                m = torch.nonzero(lab == c)[:, 0]
                if 2 <= int(pl[m].sum()) <= len(m) - 2:
                    s[m] = cv_scores(feats[m], pl[m], min(folds, int(pl[m].sum())), seed=int(opts.rng))
            scores[f"supervised probe, {name}"] = s
        for name, s in scores.items():
            o, b = hits(s, pl, lab, quotas)
            rows.append({"share": share, "k": k, "score": name, "oracle_counts": o / k, "balanced_quotas": b / k})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    world_arguments(ap, seeds=[3], out="outputs/bench/ceiling")
    ap.add_argument("--features", nargs="+", default=list(FEATURES), choices=list(FEATURES))
    args = ap.parse_args(argv)
    offline_env()
    from src.config import compose_config, run_options

    out = Path(args.out) / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for lm, text, rng in itertools.product(args.lms, args.texts, args.seeds):
        base = world_overrides(lm, "classify_lm", rng, args.n_other, args.n_plant, text, args.n_train)
        for r in world_ceiling(run_options(compose_config(base + list(args.overrides))), args.features, args.shares):
            rows.append({"lm": lm, "text": text, "rng": rng, **r})
            print(f"{lm} {text} rng={rng} {r['share']:.0%} k={r['k']} {r['score']:<26} oracle counts "
                  f"{r['oracle_counts']:.3f}  balanced quotas {r['balanced_quotas']:.3f}", flush=True)
        (out / "ceiling.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"written to {out}")

if __name__ == "__main__":
    main()
