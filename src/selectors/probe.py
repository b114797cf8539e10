"""A self-trained gradient probe: θf's confidence labels a linear probe on the gradient rows, per class.

On label words the rows θf trained on (and more of their kind) sit in its autolabel classes beside many
off-topic rows θf merely had to label something. Within a class, θf's likelihood of its own label ranks
them (``likelihood_balanced``), and the gradient rows carry more than their alignment with −(θf − θ0)
extracts (a probe that knew the planted rows would separate them far better than any score does). This
selector uses no planted labels: within each class it takes θf's ``positives`` × quota most confident
rows as positives and its least confident ``negatives`` share as negatives, fits an L2-regularised
logistic regression on the unit-normalised, checkpoint-averaged gradient rows, scores every row of the
class with it, and picks each class's quota by the average of the two ranks (``fuse: rank_average``) or
by the probe alone (``fuse: probe``). So the probe generalises θf's confident rows to rows whose
gradients look like theirs; the rank average keeps θf's own ranking as the other half.

Quotas are select_balanced's (``class_quotas``); a task without classes (lm, sft) is one class with k.
The fit sees at most ``max_rows`` rows per class (a seeded sample of the negatives), and scoring is one
pass over the rows, so the selector runs out of core like greedy.
"""
from __future__ import annotations

import torch

from src.errors import UserError
from src.selectors.base import Selection, SelectionContext, Selector
from src.selectors.rows import as_rows, checkpoint_mean
from src.selectors.select import class_quotas
from src.selectors.topk_balanced import balanced_top

FUSE = ("rank_average", "probe")


def fit_logistic(X: torch.Tensor, y: torch.Tensor, l2: float = 1.0, iters: int = 200):
    """(w [d], b): argmin Σ_i BCE(w·x_i + b, y_i) + (l2 / 2)‖w‖² (bias unpenalised), by L-BFGS in float64.
    The loss is convex, so the optimum is unique; the tests check its gradient vanishes there."""
    X, y = X.double(), y.double()
    w = torch.zeros(X.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=iters, tolerance_grad=1e-10, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")
    n = len(y)

    def closure():
        opt.zero_grad()
        z = X @ w[:-1] + w[-1]
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="sum")
                + 0.5 * l2 * (w[:-1] ** 2).sum()) / n  # /n: a well-scaled objective for the line search
        loss.backward()
        return loss

    opt.step(closure)
    w = w.detach()
    return w[:-1], w[-1]


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """0 for the highest score; ties keep row order (stable). Integers, unlike ``fusion.ranks``' [0, 1]
    fractions, so a sum of two ranks ties exactly where the integer sums do."""
    r = torch.empty(len(x), dtype=torch.long)
    r[torch.argsort(-x.double(), stable=True)] = torch.arange(len(x))
    return r


class ProbeSelector(Selector):
    name = "probe_balanced"
    needs_gradients = True

    def __init__(self, positives: float = 1.0, negatives: float = 0.5, l2: float = 1.0, fuse: str = "rank_average",
                 max_rows: int = 20000, name: str = "probe_balanced"):
        if not float(positives) > 0:
            raise UserError(f"{name}: positives (a multiple of each class's quota) must be positive, got {positives}")
        if not 0 < float(negatives) < 1:
            raise UserError(f"{name}: negatives (a share of each class's rows) must be in (0, 1), got {negatives}")
        if not float(l2) > 0:
            raise UserError(f"{name}: l2 must be positive, got {l2}")
        if fuse not in FUSE:
            raise UserError(f"{name}: fuse must be one of {list(FUSE)}, got {fuse!r}")
        self.positives, self.negatives, self.l2 = float(positives), float(negatives), float(l2)
        self.fuse, self.max_rows, self.name = fuse, int(max_rows), name

    def _training_rows(self, conf: torch.Tensor, rows: torch.Tensor, quota: int, gen) -> tuple:
        """(row ids, 0/1 labels): the class's most confident rows as positives, a sample of its least
        confident share as negatives (no row is both)."""
        order = rows[torch.argsort(-conf[rows].double(), stable=True)]
        n_pos = max(1, min(int(round(self.positives * quota)), len(rows) // 3))
        n_neg = max(1, min(int(self.negatives * len(rows)), len(rows) - n_pos))
        neg = order[len(order) - n_neg:]
        room = max(1, self.max_rows - n_pos)
        if len(neg) > room:
            neg = neg[torch.randperm(len(neg), generator=gen)[:room]].sort().values
        ids = torch.cat([order[:n_pos], neg])
        return ids, torch.cat([torch.ones(n_pos), torch.zeros(len(neg))])

    def select(self, ctx: SelectionContext, k: int) -> Selection:
        rows = checkpoint_mean(as_rows(ctx.grads, device=ctx.device, block_rows=ctx.block_rows))
        N = rows.shape[1]
        labels = torch.zeros(N, dtype=torch.long) if ctx.labels is None else ctx.labels.long().cpu()
        quotas = class_quotas(labels, k)
        conf, gen = ctx.logp_f.cpu(), torch.Generator().manual_seed(int(ctx.rng))
        classes = sorted(quotas)
        members = {c: torch.nonzero(labels == c)[:, 0] for c in classes}
        W = torch.zeros(len(classes), rows.shape[2], dtype=torch.float64)
        B = torch.zeros(len(classes), dtype=torch.float64)
        for i, c in enumerate(classes):
            if quotas[c] >= len(members[c]):  # the class gives every row: nothing to rank
                continue
            ids, y = self._training_rows(conf, members[c], quotas[c], gen)
            X = rows.gather(ids.sort().values)[0].double()
            X = X[torch.argsort(ids).argsort()]  # gather returns rows in sorted order: back to ``ids`` order
            W[i], B[i] = fit_logistic(X / X.norm(dim=1, keepdim=True).clamp_min(1e-30), y, self.l2)
        # Each row's probe is its class's (a class without quota has no picks: any probe will do).
        lookup = torch.zeros(int(labels.max()) + 1, dtype=torch.long)
        lookup[torch.as_tensor(classes)] = torch.arange(len(classes))
        column = lookup[labels]
        probe = torch.empty(N, dtype=torch.float64)
        for _, lo, blk in rows.blocks():  # one pass: each row scored by its own class's probe
            b = blk.double().cpu()
            s = (b / b.norm(dim=1, keepdim=True).clamp_min(1e-30)) @ W.T + B
            probe[lo:lo + len(b)] = s.gather(1, column[lo:lo + len(b), None])[:, 0]
        # Within-class ranks (integers, so equal rank sums tie exactly and fall to row order), negated so
        # higher is better, then each class's quota by balanced_top, as likelihood_balanced picks.
        fused = torch.zeros(N, dtype=torch.float64)
        for c, m in members.items():
            rank = _ranks(probe[m]) if self.fuse == "probe" else _ranks(conf[m]) + _ranks(probe[m])
            fused[m] = -rank.double()
        return Selection(balanced_top(fused, labels, k), info={"fuse": self.fuse, "classes": len(quotas)})
