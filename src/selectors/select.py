"""SELECT: greedy selection of examples whose running gradient sum aligns with −(θf − θ0).

With G[j, i] the projected gradient of example i at synthetic checkpoint θ̂_j and t the
projected target, the subset S is grown one example at a time:

    i* = argmax_{i ∉ S}  (1/P) Σ_j cos(s_j + G[j, i], t)

where s_j is the running gradient sum of S. Because the objective is a cosine of a *sum*,
an example pointing the same way as what S already has adds little, so redundant
examples stop paying off, unlike top-k, which scores each example alone.

Choices the paper leaves open are config options (defaults in conf/selector/select.yaml):
- ``running_sum``: ``per_checkpoint`` (s_j = Σ_{m∈S} G[j, m], the gradient of S at θ̂_j; the
  objective above) or ``shared``: every example's gradient is first averaged over the checkpoints,
  ḡ_i = (1/P) Σ_j G[j, i], and greedy runs on those single rows, maximising cos(Σ_{m∈S} ḡ_m, t)
  (as the authors' public code does: it sums each example's gradients over its pseudo-experts,
  then selects). Both objectives are functions of the set S alone, so a pick order never changes
  the value reported for a set; the options below apply to the averaged rows as to any rows.
- ``reset_every``: restart the running sum every B picks, so each block of B examples
  matches the target on its own (one optimiser batch at a time); ``null`` never resets.
- ``normalize``: unit-normalise each G[j, i] first, so long gradients (confidently wrong
  autolabels) do not dominate the sum.
- ``center``: subtract the seed mean ḡ_j = (1/N) Σ_i G[j, i] from every gradient at each
  checkpoint (before normalising), and remove from the target its component along ḡ_j,
  t_j = t − (t·ḡ_j / ‖ḡ_j‖²) ḡ_j, so the target may differ per checkpoint. A direction every
  seed example shares (e.g. the LM head's push towards frequent tokens) then neither scores
  nor fills the running sum; only what sets an example apart from the corpus does.

- ``balance``: ``none``, ``classes``: an equal share of the k picks per autolabel class (a class with too
  few rows gives what it cannot fill to the others), each share picked by greedy within its class, so a
  class whose gradients dominate the target cannot take every pick (label-word and fresh-head tasks),
  or ``auto``: ``classes`` where the task has class autolabels and ``none`` where it has none (lm, sft), so
  one selector config serves every task.
  The objective then reported is the formula above for the union of the picks, in pick order. With
  ``center``, each class's greedy centres on its own class mean.

- ``shared``: ``none``, ``drop`` or ``ridge``: first down-weight the ``shared_rank`` directions that
  hold most of every candidate's gradient (removed, or TRAK-style whitened with ``shared_ridge``),
  in the rows and the target alike (src/selectors/shared.py). Measured: it lowers recovery on the
  SmolLM2 label-word world (docs/results.md), so it is off by default.

- ``method``: ``exact`` (default) scores every candidate at every step, one pass over the matrix
  per pick; for corpora where k passes are too slow, ``batched`` runs exact steps inside a pool of
  the ``pool`` best-scoring rows and one pass per ``batch`` picks (src/selectors/batched.py), and
  ``stochastic`` scores a random ⌈(N/k)·ln(1/``epsilon``)⌉ rows per step (src/selectors/greedy.py).

``greedy_select`` is the fast path (math in src/selectors/greedy.py, passes in passes.py): it
keeps c_j[i] = s_j · G[j, i] and updates it with one matrix–vector product per step (O(P·N·d) a
step), reading the matrix block by block from memory or the store, on the selection device.
``src.reference.greedy_select_naive`` recomputes every candidate's norm from scratch in float64 and
is the reference the tests compare against.
"""
from __future__ import annotations

import time

import torch

from src.errors import UserError
from src.selectors.base import Selection, SelectionContext, Selector, state_path
from src.selectors.greedy import METHODS, MODES, greedy
from src.selectors.rows import SubsetRows, as_rows, checkpoint_mean
from src.selectors.shared import check_options, shared_map


def greedy_select(grads, target: torch.Tensor, k: int, *, running_sum: str = "per_checkpoint",
                  reset_every: int | None = None, normalize: bool = False, center: bool = False, chunk: int = 16384,
                  device=None, **kw):
    """Fast greedy. grads: [P, N, d] (or [N, d]) tensor or a ``Rows`` source, target: [d].

    Returns (indices [k], objective [k]). ``grads`` stays in its stored dtype and is read in blocks of
    ``chunk`` rows (see src/selectors/passes.py for the precision); ``device`` is where blocks are
    multiplied (default: where ``grads`` lives). Further options (``method``, ``epsilon``, ``seed``,
    ``precision``, ``progress``, ``checkpoint``, ...) are those of ``src.selectors.greedy.greedy``.
    """
    rows = as_rows(grads, device=device, block_rows=chunk)
    return greedy(rows, target, k, running_sum=running_sum, reset_every=reset_every, normalize=normalize,
                  center=center, **kw)


BALANCE = ("none", "classes", "auto")


def class_quotas(labels: torch.Tensor, k: int) -> dict[int, int]:
    """Picks per class: an equal share of k (the largest classes take the remainder), and what a class
    cannot fill from its own rows spread over the classes that can."""
    classes, sizes = torch.unique(labels, return_counts=True)
    quota = {int(c): 0 for c in classes}
    room = {int(c): int(n) for c, n in zip(classes, sizes)}
    left = int(k)
    while left > 0 and any(room[c] > quota[c] for c in quota):
        open_ = sorted((c for c in quota if room[c] > quota[c]), key=lambda c: -room[c])
        share, extra = divmod(left, len(open_))
        for i, c in enumerate(open_):
            add = min(share + (i < extra), room[c] - quota[c])
            quota[c] += add
            left -= add
    return {c: n for c, n in quota.items() if n}


class SelectSelector(Selector):
    name = "select"
    needs_gradients = True

    def __init__(self, running_sum: str = "per_checkpoint", reset_every: int | None = None, normalize: bool = False,
                 center: bool = False, method: str = "exact", epsilon: float = 0.01, batch: int = 100,
                 pool: int = 1000, balance: str = "none", name: str = "select", prefilter: str | None = None,
                 prefilter_keep: float = 0.5, shared: str = "none", shared_rank: int = 16, shared_ridge: float = 1.0):
        # Checked here, when the job's selectors are built, before any data or model is loaded.
        if running_sum not in MODES:
            raise UserError(f"select: running_sum must be one of {list(MODES)}, got '{running_sum}'")
        if method not in METHODS:
            raise UserError(f"select: method must be one of {list(METHODS)}, got '{method}'")
        if not 0 < float(epsilon) < 1:
            raise UserError(f"select: epsilon must be in (0, 1), got {epsilon}")
        if balance not in BALANCE:
            raise UserError(f"select: balance must be one of {list(BALANCE)}, got '{balance}'")
        if prefilter is not None and not 0 < float(prefilter_keep) <= 1:
            raise UserError(f"select: prefilter_keep must be in (0, 1], got {prefilter_keep}")
        # prefilter: greedy runs on the rows a token statistic ranks in its top ``prefilter_keep`` share only
        # (a fusion of what θf's likelihoods and its gradients say; None = every row).
        self.prefilter, self.prefilter_keep = prefilter, float(prefilter_keep)
        # shared: down-weight the directions every candidate shares (src/selectors/shared.py) first.
        check_options(shared, shared_rank, shared_ridge)
        self.shared = dict(how=shared, rank=int(shared_rank), ridge=float(shared_ridge))
        self.balance = balance
        self.needs_classes = balance == "classes"
        self.name = name  # a variant's config (e.g. select_centered) names its own result row
        self.kw = dict(running_sum=running_sum, reset_every=reset_every, normalize=normalize, center=center,
                       method=method, epsilon=epsilon, batch=batch, pool=pool)

    @property
    def objective_options(self) -> dict:
        """The options that define the objective (the rest say only how it is maximised)."""
        return {k: self.kw[k] for k in ("running_sum", "reset_every", "normalize", "center")}

    def _greedy(self, ctx, rows, target, k, **caps):
        # The prefilter and the shared-direction map are part of the checkpoint's key: another statistic
        # keeping as many rows would otherwise resume from this one's picks.
        options = {**self.kw, "prefilter": self.prefilter, "prefilter_keep": self.prefilter_keep, **(
            {"shared": self.shared} if self.shared["how"] != "none" else {})}
        return greedy(rows, target, k, seed=ctx.rng, precision=ctx.precision, progress=ctx.progress,
                      checkpoint=state_path(ctx, self.name, options), checkpoint_every_s=ctx.checkpoint_every_s,
                      **caps, **self.kw)

    def _pool(self, ctx, k: int):
        """Row indices greedy may pick from: all, or the top ``prefilter_keep`` share (at least k) by the
        ``prefilter`` statistic: likelihood (log p_θf), likelihood_ratio, or a token statistic's name."""
        if self.prefilter is None:
            return None
        if self.prefilter == "likelihood":
            score = ctx.logp_f
        elif self.prefilter == "likelihood_ratio":
            score = ctx.logp_f - ctx.logp_0
        elif self.prefilter in ctx.stats:
            score = ctx.stats[self.prefilter]
        else:
            raise UserError(f"{self.name}: prefilter '{self.prefilter}' is not likelihood, likelihood_ratio or a "
                            f"token statistic of this task ({sorted(ctx.stats) or 'none'})")
        n = max(int(k), round(self.prefilter_keep * ctx.n_seed))
        return torch.argsort(-score.double(), stable=True)[:n].sort().values

    def select(self, ctx: SelectionContext, k: int) -> Selection:
        rows = as_rows(ctx.grads, device=ctx.device, block_rows=ctx.block_rows)
        t0 = time.perf_counter()
        pool = self._pool(ctx, k)
        labels = ctx.labels
        if pool is not None:  # greedy on the pool's rows; its picks map back to corpus rows below
            rows, labels = SubsetRows(rows, pool), None if labels is None else labels[pool]
        target = ctx.target
        if self.shared["how"] != "none":  # fitted on the rows greedy scores: the pool, every class
            if self.kw["running_sum"] == "shared":  # the map is linear: map the checkpoint mean once
                rows = checkpoint_mean(rows)
            rows, target = shared_map(rows, target, seed=ctx.rng, **self.shared)
        if self.balance == "classes" or (self.balance == "auto" and labels is not None):
            if labels is None:
                raise UserError(f"{self.name}: balance=classes needs class autolabels; this task has none")
            # One greedy over every row, each class capped at its quota: the objective, rank and trace
            # reported are those of the greedy that ran.
            idx, obj = self._greedy(ctx, rows, target, k, groups=labels, caps=class_quotas(labels, k))
        else:
            idx, obj = self._greedy(ctx, rows, target, k)
        if pool is not None:
            idx = pool[idx]
        return Selection(idx, objective=obj, info={"objective_first": float(obj[0]), "objective_last": float(obj[-1]),
                                    "objective_max": float(obj.max()), "device": str(rows.device),
                                    "method": self.kw["method"], "seconds": time.perf_counter() - t0})

