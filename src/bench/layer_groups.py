"""Which layers' gradients point at the planted rows: recovery of each layer group of the whole-model store.

    python -m src.bench.layer_groups [--lms smollm2] [--texts wordnet] [--tasks classify_lm] [--seeds 0]
                                     [--checkpoints theta_f theta_0] [--shares 0.07 0.2] [-- overrides]

Same worlds as ``src.bench.recovery`` (θf, autolabels and the whole-model gradient store come from the same
cached stages). Each row of the store is one projected block per linear layer (``gradient.layers=all``);
``layer_cosines`` turns it into one cosine per (row, layer) with that layer's block of −P(θf − θ0). A layer
group (a kind of layer such as ``k_proj``, or a third of the blocks by depth) then ranks the candidates by
the mean over its layers of the cosine standardised over the candidates (every layer one vote, whatever
the spread of its cosines), and its precision@k says how much of the planted rows that group's gradients
alone point at. A diagnostic: it chooses nothing; a group is named in ``gradient.layers`` as a pattern.
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
import time
from pathlib import Path

import torch

from src.bench.common import offline_env
from src.bench.recovery import candidates, load_world, world_arguments, world_overrides


def layer_cosines(rows: torch.Tensor, target: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """[N, L]: the cosine of each row's block l (``sizes[l]`` columns, in order) with the target's block l."""
    if sum(sizes) != rows.shape[1] or rows.shape[1] != target.shape[0]:
        raise ValueError(f"blocks {sum(sizes)} columns, rows {rows.shape[1]}, target {target.shape[0]}")
    out, lo = [], 0
    for n in sizes:
        g, t = rows[:, lo:lo + n].double(), target[lo:lo + n].double()
        out.append(g @ t / (g.norm(dim=1) * t.norm()).clamp_min(1e-30))
        lo += n
    return torch.stack(out, 1).float()


def layer_groups(names: list[str], head: str, parts: int = 3) -> dict[str, list[int]]:
    """Layer indices per group: ``head``; each kind of layer (the module name's last part, e.g. ``k_proj``);
    and ``depth i/parts``, the blocks split into ``parts`` runs by depth."""
    groups: dict[str, list[int]] = {"head": [i for i, n in enumerate(names) if n == head]}
    for i, n in enumerate(names):
        if n != head:
            groups.setdefault(n.rsplit(".", 1)[-1], []).append(i)
    depth = {i: int(m.group(1)) for i, n in enumerate(names)
             if (m := re.search(r"\.(?:h|layers|layer|blocks|block)\.(\d+)\.", f".{n}."))}
    if depth:
        top = max(depth.values()) + 1
        for i, b in depth.items():
            groups.setdefault(f"depth {b * parts // top + 1}/{parts}", []).append(i)
    return {g: ix for g, ix in groups.items() if ix}


def group_scores(cos: torch.Tensor, groups: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """{group: [N]} the mean over the group's layers of each layer's cosine standardised over the rows;
    ``all`` is every layer's vote."""
    z = (cos - cos.mean(0)) / cos.std(0).clamp_min(1e-12)
    return {"all": z.mean(1), **{g: z[:, ix].mean(1) for g, ix in groups.items()}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    world_arguments(ap, seeds=[0], out="outputs/bench/layer_groups")
    ap.add_argument("--tasks", nargs="+", default=["classify_lm"])
    ap.add_argument("--checkpoints", nargs="+", default=["theta_f", "theta_0"])
    ap.add_argument("--layer-d", type=int, default=256)
    args = ap.parse_args(argv)
    offline_env()

    from src.config import compose_config, run_options
    from src.gradients.layers import choose_layers, layer_projectors
    from src.stages import gradients

    out = Path(args.out) / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for lm, text, task_name, rng in itertools.product(args.lms, args.texts, args.tasks, args.seeds):
        opts = run_options(compose_config(world_overrides(lm, task_name, rng, args.n_other, args.n_plant, text,
                                                          args.n_train) + list(args.overrides)))
        data, task, pair, labels, leaked, unseen, match = load_world(opts)
        head = opts.task.model.head
        names = choose_layers(pair.model, "all", head)
        sizes = [p.d for p in layer_projectors(pair.model, names, args.layer_d, int(opts.gradient.projector.seed)).values()]
        groups = layer_groups(names, head)
        for ck in args.checkpoints:
            g = opts.gradient.with_selector({"precondition": "none", "layers": "all", "layer_norm": "unit",
                                             "layer_weights": "equal", "layer_d": args.layer_d, "P": 1,
                                             "checkpoints": ck})
            G, target = gradients(opts, pair, data, labels, task, g)
            cos = layer_cosines(G[0].float(), target.float(), sizes)
            for share in args.shares:
                idx, k = candidates(leaked, unseen, share, rng, features=match)
                planted = (leaked | unseen)[idx]
                for name, s in group_scores(cos[idx], groups).items():
                    top = s.topk(k).indices
                    rows.append({"lm": lm, "text": text, "task": task_name, "rng": rng, "checkpoint": ck,
                                 "group": name, "n_layers": len(groups.get(name, names)), "share": share, "k": k,
                                 "precision": float(planted[top].float().mean()),
                                 "trained": float(leaked[idx][top].float().mean()),
                                 "unseen": float(unseen[idx][top].float().mean())})
            (out / "layer_groups.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(format_table(rows, args.shares))
    print(f"written to {out}")


def format_table(rows: list[dict], shares) -> str:
    """One line per (world, checkpoint, group): precision@k per share, mean over the seeds."""
    keyed: dict[tuple, dict] = {}
    for r in rows:
        k = (r["lm"], r["text"], r["task"], r["checkpoint"], r["group"])
        keyed.setdefault(k, {}).setdefault(r["share"], []).append(r["precision"])
    lines = [f"{'world':36s} {'gradients at':12s} {'group':14s} " + " ".join(f"{s:>6.0%}" for s in shares)]
    for (lm, text, task, ck, grp), by in keyed.items():
        cells = " ".join(f"{sum(by[s]) / len(by[s]):6.3f}" if s in by else "     –" for s in shares)
        lines.append(f"{f'{lm}, {text}, {task}':36s} {ck:12s} {grp:14s} {cells}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
