"""The math of gradient selection on a ``Rows`` source: row statistics, top-k scores, exact and stochastic greedy.

Plain torch; runs on whatever device the source hands blocks out on. Notation as in
src/selectors/select.py: g'_ij = (g_ij − ḡ_j)·r_ij is a candidate's (centred, scaled) gradient,
r_ij = 1/‖g_ij − ḡ_j‖ under ``normalize`` else 1, t̂_j the unit target of checkpoint j. Kept per
row: a_ij = g'_ij·t̂_j and b_ij = ‖g'_ij‖² (fixed), c_ij = s_j·g'_ij (the running sum's overlap).

- exact greedy: each step scores every row from (a, b, c) and updates c with one pass over G.
- stochastic greedy (``method="stochastic"``): each step scores only a uniform sample of
  ⌈(N/k)·ln(1/ε)⌉ rows not yet picked, computing their c from the running sum directly, so the
  whole selection reads about ln(1/ε) matrices' worth of rows instead of k. For monotone
  submodular objectives this keeps (1 − 1/e − ε) of the optimum in expectation (Mirzasoleiman et
  al., 2015); the cosine objective is not submodular, so its quality is measured, not assumed.
- batched greedy (``method="batched"``, src/selectors/batched.py): exact greedy steps inside a pool
  of the ``pool`` best rows, one pass over G per ``batch`` picks.

Progress: a tqdm bar over steps. Resume: with ``checkpoint`` set, the full loop state (picks,
objective values, running sums, c, sampler state) is written atomically every
``checkpoint_every_s`` seconds and at the end; a rerun with the same inputs and options continues
from it and gives the same picks as an uninterrupted run (for exact greedy, a finished file answers
any k ≤ its length: its picks do not depend on k).
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from src.errors import UserError
from src.selectors.batched import batched_greedy
from src.selectors.passes import acc_dtype, centred_pass, centred_products, gathered_products, products, stats_pass
from src.selectors.rows import as_rows, checkpoint_mean

MODES = ("per_checkpoint", "shared")
METHODS = ("exact", "stochastic", "batched")
_GATHER = 512  # sampled rows gathered at a time: the copy stays in cache for its product


def prepare(rows, target, *, normalize=False, center=False, precision="stored", progress=False) -> dict:
    """Fixed per-row quantities: one pass (two widened passes when centring; one more for ‖g‖² when
    not stored and not centring)."""
    if precision not in ("stored", "float32"):
        raise UserError(f"selection.precision must be 'stored' or 'float32', got '{precision}'")
    P, N, d = rows.shape
    acc, dev = acc_dtype(rows.dtype), rows.device
    sq = rows.sq_norms()
    sq = sq.to(dev, acc) if sq is not None else None
    t = target.to(dev, acc)
    gbar = torch.zeros(P, d, dtype=acc, device=dev)
    e = None
    if center:
        # ḡ and every statistic of g − ḡ come from widened passes (see passes.centred_pass): with a
        # dominant seed mean, ‖g − ḡ‖² from ‖g‖² − 2⟨g, ḡ⟩ + ‖ḡ‖² would cancel.
        _, gbar = stats_pass(rows, acc, need_sq=False, need_mean=True, progress=progress)
        gg = (gbar * gbar).sum(-1, keepdim=True)
        coef = torch.where(gg > 0, (gbar @ t)[:, None] / gg.clamp_min(torch.finfo(acc).tiny), torch.zeros_like(gg))
        T = F.normalize(t[None] - coef * gbar, dim=-1)                   # t̂_j ⟂ ḡ_j
        a, b, e, sq_ = centred_pass(rows, gbar, T, acc, progress)        # ⟨g − ḡ, t̂⟩, ‖g − ḡ‖², ⟨g − ḡ, ḡ⟩
        sq = sq if sq is not None else sq_
    else:
        if sq is None:
            sq, _ = stats_pass(rows, acc, need_sq=True, need_mean=False, progress=progress)
        T = F.normalize(t, dim=0)[None].expand(P, d)
        (a,) = products(rows, [T], sq, precision, progress, "target")
        b = sq
    r = b.clamp_min(torch.finfo(acc).tiny).rsqrt() if normalize else torch.ones_like(b)
    return {"acc": acc, "sq": sq, "gbar": gbar, "gg": (gbar * gbar).sum(-1, keepdim=True), "e": e, "T": T,
            "a": a * r, "b": b * r * r, "r": r, "center": center}


def top_scores(rows, target, *, center=False, precision="stored", progress=False) -> torch.Tensor:
    """[N] on the CPU: (1/P) Σ_j cos(g'_ij, t̂_j), one pass when the store carries ‖g‖²."""
    st = prepare(rows, target, normalize=True, center=center, precision=precision, progress=progress)
    return st["a"].mean(0).cpu()


def _increment(rows, st, m):
    """What picking m adds to each checkpoint's running sum: g'_m, [P, d] in the accumulation dtype."""
    return (rows.gather(torch.tensor([m]))[:, 0].to(st["acc"]) - st["gbar"]) * st["r"][:, m, None]


def selection_rows(rows, running_sum: str):
    """The rows greedy works on: ``shared`` is greedy on each row's checkpoint mean (see select.py)."""
    if running_sum not in MODES:
        raise UserError(f"select: running_sum must be one of {MODES}, got '{running_sum}'")
    return checkpoint_mean(rows) if running_sum == "shared" else rows


def objective_trace(grads, target, idx, *, running_sum="per_checkpoint", reset_every=None, normalize=False,
                    center=False, block_rows: int = 16384) -> list[float]:
    """SELECT's objective (select.py's formula, with these options) after each pick of ``idx``, in order.

    Evaluated from scratch in float64 on the picked rows (plus one widened pass for the seed mean when
    centring), so it is the value of each prefix *set*, whatever picked it: for SELECT it equals what its
    greedy steps maximised, for any other selector it scores its picks on the same scale.
    """
    rows = selection_rows(as_rows(grads, block_rows=block_rows), running_sum)
    G = rows.gather(torch.as_tensor(list(idx), dtype=torch.long)).double().cpu()  # [P, k, d]
    t = target.double().cpu()[None].expand(G.shape[0], -1)                     # [P, d]
    if center:
        _, gbar = stats_pass(rows, torch.float64, need_sq=False, need_mean=True)
        gbar = gbar.cpu()
        gg = (gbar * gbar).sum(-1, keepdim=True)
        coef = torch.where(gg > 0, (gbar * t).sum(-1, keepdim=True) / gg.clamp_min(1e-300), torch.zeros_like(gg))
        G, t = G - gbar[:, None], t - coef * gbar
    if normalize:
        G = F.normalize(G, dim=-1)
    s = torch.zeros(G.shape[0], G.shape[2], dtype=torch.float64)
    out = []
    for r in range(G.shape[1]):
        if reset_every and r % int(reset_every) == 0:
            s.zero_()
        s += G[:, r]
        out.append(float(F.cosine_similarity(s, t, dim=-1, eps=1e-300).mean()))
    return out


def _key(rows, target, opts) -> str:
    h = hashlib.sha256(repr((tuple(rows.shape), str(rows.dtype), sorted(opts.items()))).encode())
    h.update(target.detach().double().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _load(path: Path) -> dict | None:
    try:
        return torch.load(path, weights_only=False)
    except Exception:  # unreadable (e.g. from another torch version): start over rather than fail
        return None


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save({k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}, tmp)
    os.replace(tmp, path)


def greedy(rows, target, k: int, *, running_sum="per_checkpoint", reset_every=None, normalize=False, center=False,
           method="exact", epsilon=0.01, seed=0, precision="stored", progress=False, checkpoint=None,
           checkpoint_every_s=10.0, on_step=None, batch=100, pool=1000, groups=None, caps=None):
    """Greedy selection on a ``Rows`` source. Returns (indices [k] long, objective [k] float64), on the CPU.

    ``groups`` ([N] ints) with ``caps`` ({group: most picks}): one greedy over every row in which a group
    that has its cap of picks takes no more (class-balanced SELECT), so the objective returned is the one
    that greedy maximised.
    """
    if method not in METHODS:
        raise UserError(f"select: method must be one of {METHODS}, got '{method}'")
    if groups is not None and method == "batched":
        raise UserError("select: per-class caps (balance=classes) need method=exact or stochastic, not batched")
    rows = selection_rows(rows, running_sum)
    P, N, d = rows.shape
    k = int(k)
    opts = dict(running_sum=running_sum, reset_every=reset_every, normalize=normalize, center=center, method=method,
                epsilon=float(epsilon), seed=int(seed), precision=precision)
    if groups is not None:
        opts["caps"] = sorted((int(g), int(n)) for g, n in caps.items())
        opts["groups"] = hashlib.sha256(torch.as_tensor(groups).cpu().numpy().tobytes()).hexdigest()
    if method == "stochastic":
        opts["k"] = k  # the sample size depends on k, so a prefix of a longer run is not this run
    if method == "batched":
        opts.update(k=k, batch=int(batch), pool=int(pool))  # batch boundaries depend on k
    key = _key(rows, target, opts)
    path = Path(checkpoint) if checkpoint else None
    saved = _load(path) if path and path.exists() else None
    if saved is not None and saved.get("key") != key:
        saved = None  # another selection's state: start over (the file is overwritten)
    if saved is not None and len(saved["picks"]) >= k:
        return torch.tensor(saved["picks"][:k], dtype=torch.long), torch.tensor(saved["objective"][:k],
                                                                                dtype=torch.float64)
    st = prepare(rows, target, normalize=normalize, center=center, precision=precision, progress=progress)
    if method == "batched":
        return batched_greedy(rows, st, k, reset_every=reset_every, batch=batch, pool=pool,
                              saved=saved, save=lambda state: path and _save(path, {"key": key, **state}),
                              progress=progress, checkpoint_every_s=checkpoint_every_s, on_step=on_step,
                              precision=precision)
    acc, dev, T, a, b = st["acc"], rows.device, st["T"], st["a"], st["b"]
    tiny = torch.finfo(acc).tiny
    gen = torch.Generator().manual_seed(int(seed))
    sample = max(1, math.ceil(N / max(k, 1) * math.log(1 / float(epsilon)))) if method == "stochastic" else N
    s = torch.zeros(P, d, dtype=acc, device=dev)
    c = torch.zeros(P, N, dtype=acc, device=dev) if method == "exact" else None
    taken = torch.zeros(N, dtype=torch.bool, device=dev)  # picked, or in a group that has its cap
    groups = None if groups is None else torch.as_tensor(groups).to(dev)
    count: dict[int, int] = {}

    def take(m: int) -> None:
        taken[m] = True
        if groups is not None:
            g = int(groups[m])
            count[g] = count.get(g, 0) + 1
            if count[g] >= int(caps.get(g, 0)):
                taken[groups == g] = True

    if groups is not None:
        for g in torch.unique(groups).tolist():  # a group without a cap takes nothing
            if int(caps.get(g, 0)) <= 0:
                taken[groups == g] = True
    picks, objective = [], []
    if saved is not None:
        picks, objective = list(saved["picks"]), list(saved["objective"])
        s = saved["s"].to(dev)
        c = saved["c"].to(dev) if c is not None else None
        for m in picks:
            take(int(m))
        gen.set_state(saved["rng"])
    state = lambda: {"key": key, "picks": picks, "objective": objective, "s": s, "c": c, "rng": gen.get_state()}  # noqa: E731
    last = time.monotonic()
    bar = tqdm(total=k, initial=len(picks), desc=f"select ({method})", unit="pick", disable=not progress,
               mininterval=1.0)
    for step in range(len(picks), k):
        if reset_every and step % int(reset_every) == 0:
            s.zero_()
            if c is not None:
                c.zero_()
        st_, ss = (s * T).sum(-1), (s * s).sum(-1)                              # [P]
        if method == "exact":
            norm = (ss[:, None] + 2 * c + b).clamp_min(tiny).sqrt()          # ‖s_j + g'_ij‖
            score = ((st_[:, None] + a) / norm).mean(0)
            score[taken] = -float("inf")
            m = int(torch.argmax(score))
            best = float(score[m])
        else:
            cand = _sample(taken, sample, gen, N - step)
            score = torch.cat([_sample_scores(rows, st, s, cand[lo:lo + _GATHER], st_, ss, precision)
                               for lo in range(0, len(cand), _GATHER)])
            i = int(torch.argmax(score))
            m, best = int(cand[i]), float(score[i])
        picks.append(m)
        objective.append(best)
        take(m)
        u = _increment(rows, st, m)                                             # [P, d]
        if c is not None:
            c += centred_products(rows, st, u, precision)                       # c_j += G'_j u_j: one pass
        s += u
        bar.update()
        if on_step is not None:
            on_step(step, m)
        if path and time.monotonic() - last >= checkpoint_every_s:
            _save(path, state())
            last = time.monotonic()
    bar.close()
    if path:
        _save(path, state())
    return torch.tensor(picks, dtype=torch.long), torch.tensor(objective, dtype=torch.float64)


def _sample_scores(rows, st, s, cand, st_, ss, precision):
    """Exact scores of the rows ``cand`` against the running sum s, from the rows themselves (gathered)."""
    if st["center"]:  # widened, like every centred product (a sample is small: widening it is cheap)
        cc = torch.einsum("pmd,pd->pm", rows.gather(cand).to(st["acc"]) - st["gbar"][:, None], s) * st["r"][:, cand]
    else:
        cc = gathered_products(rows.gather(cand), s, st["sq"][:, cand], st["acc"], precision) * st["r"][:, cand]
    norm = (ss[:, None] + 2 * cc + st["b"][:, cand]).clamp_min(torch.finfo(st["acc"]).tiny).sqrt()
    return ((st_[:, None] + st["a"][:, cand]) / norm).mean(0)


def _sample(taken: torch.Tensor, size: int, gen: torch.Generator, remaining: int) -> torch.Tensor:
    """A uniform sample (sorted, for locality) of about ``size`` rows not yet taken; all of them if fewer."""
    N = len(taken)
    if size >= remaining:
        return (~taken).nonzero().squeeze(1)
    idx = torch.unique(torch.randint(0, N, (size,), generator=gen)).to(taken.device)
    idx = idx[~taken[idx]]
    return idx if len(idx) else (~taken).nonzero().squeeze(1)[:1]
