"""The selection as a dataset a user can read, filter, re-rank and train on.

For every selector a run writes, next to ``selections/<name>.json`` (indices and ids)::

    selections/<name>/selection.jsonl     one row per pick, in pick order
    selections/<name>/selection.parquet   the same rows
    scores.parquet                        every seed row: alignment, log p_θf, log p_θ0, group (once per run)

Columns of a selection: ``rank`` (1 = first pick), ``row`` (index into the seed corpus, or the true
data for ``source == "true"``), ``source``, ``id``, then the task's own training columns exactly as
retraining uses them (``task.seed_examples``: text + autolabel for classification, prompt + generated
response for SFT, ...; ``label_name`` when the label is a class index), the corpus's other columns
(e.g. ``group``), then

- ``objective``: SELECT's objective of the picks so far (src/selectors/select.py). For a SELECT selector
  (``select``, ``select_centered``, ...) it is the value its own greedy step maximised, with its own
  options; for any other selector it is evaluated along that selector's order with the options of the
  run's main SELECT selector (plain SELECT's when the run has none), so the columns compare;
- ``alignment``: this pick's own (1/P) Σ_j cos(g_ij, t), the top-k score;
- ``logp_f`` / ``logp_0``: log-likelihood of the autolabel under θf / θ0.

Scores are null where they do not exist (picks from the true data; no gradient pass). Files are written
to a temporary name and renamed, so a killed run leaves no half-written selection.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import datasets
import torch

from src.selectors.greedy import objective_trace
from src.selectors.topk import alignment

log = logging.getLogger(__name__)


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
    if "group" in seed.column_names:  # the corpus's own topic of each row: base rates for the picks' groups
        cols["group"] = list(seed["group"])
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
        # Selectors that are not SELECT are scored with the main SELECT's objective, so the columns compare.
        self.objective_kw = next((s.objective_options for s in selectors.values() if isinstance(s, SelectSelector)),
                                 {})
        write_scores(self.out_dir, data.seed, labels, self.align)

    def __call__(self, name: str, sel, examples: dict, ctx=None) -> datasets.Dataset:
        """Write one selector's picks; ``ctx`` is the context it selected in (its own gradients, when it
        asked for other gradient options than the run's: its alignment and objective columns use them)."""
        ctx = ctx or self.ctx
        idx = sel.indices.tolist()
        seed = sel.source == "seed"
        pool = self.data.seed if seed else self.data.task.train
        trace = None
        grads = ctx.grads if ctx.grads is not None else self.ctx.grads
        target = ctx.target if ctx.grads is not None else self.ctx.target
        if seed and sel.objective is not None:  # a SELECT selector: the objective its own steps maximised
            trace = sel.objective.tolist()
        elif seed and grads is not None:
            trace = objective_trace(grads, target, idx, **self.objective_kw)
        align = self.align if ctx is self.ctx or ctx.grads is None else seed_alignment(ctx)
        cols = selection_columns(examples, idx, pool, sel.source, self.data.task.classes, self.labels,
                                 align, trace)
        return write_table(cols, self.out_dir / "selections" / name, "selection")
