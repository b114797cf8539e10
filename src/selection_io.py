"""The selection as a dataset a user can read, filter, re-rank and train on.

For every selector a run writes, next to ``selections/<name>.json`` (indices and ids)::

    selections/<name>/selection.jsonl     one row per pick, in pick order
    selections/<name>/selection.parquet   the same rows
    scores.parquet                        every seed row: alignment, log p_θf, log p_θ0 (once per run)

Columns of a selection: ``rank`` (1 = first pick), ``row`` (index into the seed corpus, or the true
data for ``source == "true"``), ``source``, ``id``, then the task's own training columns exactly as
retraining uses them (``task.seed_examples``: text + autolabel for classification, prompt + generated
response for SFT, ...; ``label_name`` when the label is a class index), the corpus's other columns
(e.g. ``group``), then

- ``objective``: SELECT's greedy objective after this pick, (1/P) Σ_j cos(s_j + g_ij, t) with s_j the
  running sum of the earlier picks, evaluated along this selector's order with the run's SELECT settings
  (running_sum / reset_every / normalize); for ``select`` it is the value its greedy step maximised;
- ``alignment``: this pick's own (1/P) Σ_j cos(g_ij, t), the top-k score;
- ``logp_f`` / ``logp_0``: log-likelihood of the autolabel under θf / θ0.

Scores are null where they do not exist (picks from the true data; no gradient pass). Files are written
to a temporary name and renamed, so a killed run leaves no half-written selection.
"""
from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F

from src.selectors.rows import as_rows
from src.selectors.topk import alignment

log = logging.getLogger(__name__)


def objective_trace(grads: torch.Tensor, target: torch.Tensor, idx, *, running_sum: str = "per_checkpoint",
                    reset_every: int | None = None, normalize: bool = False, center: bool = False,
                    chunk: int = 16384) -> list[float]:
    """SELECT's objective after each pick of ``idx`` (in order): O(k·P·d), plus one pass over the corpus
    for ``center`` (the seed mean ḡ_j is removed from every gradient, and the target's component along
    ḡ_j from t_j, as SELECT's ``center`` option does)."""
    rows = as_rows(grads, block_rows=chunk)  # a tensor or the on-disk store, read block by block
    G = rows.gather(torch.as_tensor(idx, dtype=torch.long)).double().cpu()  # [P, k, d]
    t = target.double().cpu()[None].expand(G.shape[0], -1)                  # [P, d]
    if center:
        gbar = torch.zeros(G.shape[0], G.shape[2], dtype=torch.float64)
        for j, _, blk in rows.blocks():
            gbar[j] += blk.double().sum(0).cpu()
        gbar = gbar / max(rows.shape[1], 1)
        gg = (gbar * gbar).sum(-1, keepdim=True)
        coef = torch.where(gg > 0, (gbar * t).sum(-1, keepdim=True) / gg.clamp_min(1e-300), torch.zeros_like(gg))
        G, t = G - gbar[:, None], t - coef * gbar
    if normalize:
        G = F.normalize(G, dim=-1)
    t = F.normalize(t, dim=-1)
    s = torch.zeros(G.shape[0], G.shape[2], dtype=torch.float64)
    out = []
    for r in range(G.shape[1]):
        if reset_every and r % int(reset_every) == 0:
            s.zero_()
        out.append(float(F.cosine_similarity(s + G[:, r], t, dim=-1).mean()))
        s += G[:, r] if running_sum == "per_checkpoint" else G[:, r].mean(0, keepdim=True)
    return out


def selection_columns(examples: dict, idx: list[int], pool, source: str, classes, labels: dict,
                      align: torch.Tensor | None, trace: list[float] | None) -> dict:
    """One column per field; the task's ``examples`` (what retraining sees) are written as they are."""
    k = len(idx)
    cols = {"rank": list(range(1, k + 1)), "row": list(idx), "source": [source] * k,
            "id": [pool["id"][i] for i in idx]}
    cols.update({name: list(values) for name, values in examples.items()})
    for name in pool.column_names:  # what else the corpus holds (e.g. text, group): for filtering picks
        if name not in cols:
            column = pool[name]
            cols[name] = [column[i] for i in idx]
    if classes and "label" in examples and all(isinstance(y, int) for y in examples["label"]):
        cols["label_name"] = [classes[y] if 0 <= y < len(classes) else None for y in examples["label"]]
    seed = source == "seed"
    cols["objective"] = list(trace) if seed and trace is not None else [None] * k
    cols["alignment"] = align[idx].tolist() if seed and align is not None else [None] * k
    for key in ("logp_f", "logp_0"):
        cols[key] = labels[key][torch.as_tensor(idx, dtype=torch.long)].tolist() if seed else [None] * k
    return cols


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(str(tmp))
    os.replace(tmp, path)


def write_table(cols: dict, folder: Path, stem: str, jsonl: bool = True) -> datasets.Dataset:
    folder.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_dict(cols)
    _atomic(folder / f"{stem}.parquet", ds.to_parquet)
    if jsonl:
        _atomic(folder / f"{stem}.jsonl", lambda p: ds.to_json(p, lines=True, force_ascii=False))
    return ds


def write_scores(out_dir: Path, seed, labels: dict, align: torch.Tensor | None) -> None:
    """Every seed row's scores, so picks can be re-ranked or thresholded without rerunning."""
    cols = {"row": list(range(len(seed))), "id": list(seed["id"]), "text": list(seed["text"])}
    if align is not None:
        cols["alignment"] = align.tolist()
    cols["logp_f"], cols["logp_0"] = labels["logp_f"].tolist(), labels["logp_0"].tolist()
    write_table(cols, out_dir, "scores", jsonl=False)


def seed_alignment(ctx) -> torch.Tensor | None:
    return alignment(ctx.grads, ctx.target) if ctx.grads is not None else None


class SelectionWriter:
    """Writes ``scores.parquet`` once and each selector's selection files (see the module docstring)."""

    def __init__(self, out_dir: Path, task, data, labels: dict, ctx, selectors: dict):
        from src.selectors.select import SelectSelector

        self.out_dir, self.task, self.data, self.labels, self.ctx = Path(out_dir), task, data, labels, ctx
        self.align = seed_alignment(ctx)
        # One set of SELECT settings for every selector's objective column, so the columns compare.
        kw = next((s.kw for s in selectors.values() if isinstance(s, SelectSelector)), {})
        known = inspect.signature(objective_trace).parameters
        self.objective_kw = {k: v for k, v in kw.items() if k in known}
        if set(kw) - set(known):  # a SELECT option this column does not model: say so rather than mislabel
            log.warning("selection files: the objective column ignores SELECT option(s) %s", sorted(set(kw) - set(known)))
        write_scores(self.out_dir, data.seed, labels, self.align)

    def __call__(self, name: str, sel, examples: dict) -> datasets.Dataset:
        idx = sel.indices.tolist()
        seed = sel.source == "seed"
        pool = self.data.seed if seed else self.data.task.train
        trace = (objective_trace(self.ctx.grads, self.ctx.target, idx, **self.objective_kw)
                 if seed and self.ctx.grads is not None else None)
        cols = selection_columns(examples, idx, pool, sel.source, self.data.task.classes, self.labels,
                                 self.align, trace)
        return write_table(cols, self.out_dir / "selections" / name, "selection")
