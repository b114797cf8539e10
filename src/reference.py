"""Naive, obviously-correct float64 references for every optimised path, in one place the tests import.

Each is slow by design (autograd per example, dense matrices, every candidate rescored from scratch)
and is what a fast path is tested against:

- ``naive_head_grads`` / ``head_grads_vmap``: a classifier head's per-example gradient by one full
  backward per example / by ``torch.func``, for ``src.gradients.last_layer.projected_grads``;
- ``naive_lm_head_grads``: a causal LM head's per-example gradient of the response loss by autograd
  through a copy of W (dense [V, H]), for SFT, LM and label-word classification;
- ``dense_layer_grads``: the closed form of last_layer.py materialised as dense flat rows;
- ``greedy_select_naive`` / ``center_naive`` / ``alignment_naive`` / ``set_objective``: SELECT, its
  centring, top-k alignment and the stated objective of a set, from scratch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from src.errors import UserError
from src.gradients.last_layer import Positions, errors, flat_layer


# -- last-layer gradients ------------------------------------------------------------------------------
def dense_layer_grads(pos: Positions, weight: torch.Tensor, bias, with_bias: bool = False) -> torch.Tensor:
    """[n, C·(H+bias)]: Σ_{t∈i} (p_t − e_{y_t}) ĥ_tᵀ per example, flattened row-major, in float64."""
    h = pos.h.double()
    err = errors(h, pos.target, weight.detach().double(), None if bias is None else bias.detach().double())
    hh = torch.cat([h, torch.ones_like(h[:, :1])], 1) if with_bias else h
    out = torch.zeros(pos.n, err.shape[1] * hh.shape[1], dtype=torch.float64)
    return out.index_add_(0, pos.example, (err[:, :, None] * hh[:, None, :]).flatten(1))


def naive_head_grads(model: torch.nn.Module, head: torch.nn.Module, batches: list[dict], labels: torch.Tensor):
    """A classifier's head gradient [n, C·(H+1)], one full forward/backward per example (``batches``:
    one tokenized example each, a dict of [1, T] tensors), read from the head's ``.grad``."""
    rows = []
    model.eval()  # dropout off, as in the fast path
    for inputs, y in zip(batches, labels):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(**inputs).logits, y[None]).backward()
        rows.append(flat_layer(head.weight.grad, head.bias.grad if head.bias is not None else None).detach().clone())
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def head_grads_vmap(head: torch.nn.Module, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The same per-example head gradients by ``torch.func.grad`` + ``vmap`` of the head module alone."""
    params = {k: v.detach() for k, v in head.named_parameters()}

    def loss(p, x, y):
        return F.cross_entropy(functional_call(head, p, (x[None],)), y[None])

    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, h, labels)
    return torch.stack([flat_layer(w, b) for w, b in zip(g["weight"], g.get("bias", [None] * len(h)))])


def naive_lm_head_grads(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, prompt_lengths,
                        reduction: str = "sum", head_name: str = "lm_head", dtype=torch.float64) -> torch.Tensor:
    """Dense per-example ∂L/∂W_head, [n, V, H] in ``dtype``, by autograd, one example at a time.

    Each example runs alone without its padding; h comes from the body under no_grad, and the loss
    (the standard recipe: labels = tokens with the prompt set to −100, shifted by one) is
    differentiated through a fresh float64 copy of W only, so a tied embedding's gradient is
    excluded. ``reduction``: "sum" over the response tokens (what the fast path computes: each
    token's share of θf's token-mean batch loss) or "mean" (divided by the example's token count).
    """
    if reduction not in ("mean", "sum"):
        raise UserError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    model.eval()
    head = model.get_submodule(head_name)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    plen = torch.as_tensor(prompt_lengths, dtype=torch.long)
    captured = {}
    handle = head.register_forward_hook(lambda m, inp, out: captured.__setitem__("h", inp[0]))
    rows = []
    try:
        for i in range(input_ids.shape[0]):
            ids = input_ids[i][attention_mask[i].bool()]
            with torch.no_grad():
                model(input_ids=ids[None])
            h = captured["h"][0].detach().to(dtype)
            W = head.weight.detach().to(dtype).clone().requires_grad_()
            b = None if head.bias is None else head.bias.detach().to(dtype)
            labels = ids.clone()
            labels[:int(plen[i])] = -100
            n_resp = int((labels[1:] != -100).sum())
            if not n_resp:
                rows.append(torch.zeros_like(W))
                continue
            loss = F.cross_entropy(F.linear(h, W, b)[:-1], labels[1:], ignore_index=-100, reduction="sum")
            if reduction == "mean":
                loss = loss / n_resp
            rows.append(torch.autograd.grad(loss, W)[0])
    finally:
        handle.remove()
    return torch.stack([r.detach() for r in rows])


# -- selection -----------------------------------------------------------------------------------------
def center_naive(G: torch.Tensor, t: torch.Tensor):
    """G − ḡ_j (materialised) and t_j = t − (t·ḡ_j/‖ḡ_j‖²) ḡ_j; t: [P, d]."""
    gbar = G.mean(1)                                                       # [P, d]
    gg = (gbar * gbar).sum(-1, keepdim=True)
    coef = torch.where(gg > 0, (gbar * t).sum(-1, keepdim=True) / gg.clamp_min(1e-300), torch.zeros_like(gg))
    return G - gbar[:, None], t - coef * gbar


def _prepare(grads, target, normalize, mode, center=False):
    """float64 G [P, N, d] (averaged over checkpoints for ``shared``, centred, then normalised, as asked)
    and unit targets t_j [P, d]."""
    if mode not in ("per_checkpoint", "shared"):
        raise UserError(f"select: running_sum must be 'per_checkpoint' or 'shared', got '{mode}'")
    G = grads.double()
    if G.dim() == 2:
        G = G[None]
    if mode == "shared":
        G = G.mean(0, keepdim=True)
    t = target.double()[None].expand(G.shape[0], -1)
    if center:
        G, t = center_naive(G, t)
    if normalize:
        G = F.normalize(G, dim=-1)
    return G, F.normalize(t, dim=-1)


def set_objective(grads, target, S, *, running_sum="per_checkpoint", normalize=False, center=False) -> float:
    """SELECT's objective of the set S, from scratch: (1/P) Σ_j cos(Σ_{m∈S} g'_jm, t_j) (src/selectors/select.py)."""
    G, t = _prepare(grads, target, normalize, running_sum, center)
    return float(F.cosine_similarity(G[:, list(S)].sum(1), t, dim=-1, eps=1e-300).mean())


def greedy_select_naive(grads: torch.Tensor, target: torch.Tensor, k: int, *, running_sum: str = "per_checkpoint",
                        reset_every: int | None = None, normalize: bool = False, center: bool = False,
                        groups=None, caps=None):
    """At every step, form s_j + G[j, i] for every candidate and take its cosine directly (with ``groups``
    and ``caps``: only candidates whose group has fewer picks than its cap)."""
    G, t = _prepare(grads, target, normalize, running_sum, center)
    P, N, d = G.shape
    s = torch.zeros(P, d, dtype=G.dtype)
    picks, objective = [], []
    for step in range(int(k)):
        if reset_every and step % int(reset_every) == 0:
            s = torch.zeros(P, d, dtype=G.dtype)
        score = F.cosine_similarity(s[:, None, :] + G, t[:, None, :], dim=-1, eps=1e-300).mean(0)
        for m in picks:
            score[m] = -float("inf")
        if groups is not None:
            for i in range(N):
                g = int(groups[i])
                if sum(int(groups[m]) == g for m in picks) >= int(caps.get(g, 0)):
                    score[i] = -float("inf")
        m = int(torch.argmax(score))
        picks.append(m)
        objective.append(float(score[m]))
        s = s + G[:, m]
    return torch.tensor(picks, dtype=torch.long), torch.tensor(objective, dtype=torch.float64)


def alignment_naive(grads: torch.Tensor, target: torch.Tensor, *, center: bool = False) -> torch.Tensor:
    """Top-k's score (1/P) Σ_j cos(g_ij, t_j), float64, the centred copy materialised."""
    G = grads.double() if grads.dim() == 3 else grads.double()[None]
    t = target.double()[None].expand(G.shape[0], -1)
    if center:
        G, t = center_naive(G, t)
    return F.cosine_similarity(G, t[:, None], dim=-1).mean(0)


def naive_layer_grads(model, batch, loss_fn, names, projectors, factors=None) -> dict:
    """{layer: [n, d_l]}: each example alone (unpadded), its dense weight gradient by autograd, divided
    elementwise by √(r cᵀ) where ``factors`` {layer: (r, c)} are given, then the layer's map
    (``project_matrix``): what ``src.gradients.layers.per_layer_grads`` computes in one pass."""
    mods = dict(model.named_modules())
    out = {name: [] for name in names}
    for i in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][i].sum())
        one = {k: (v[i:i + 1, :n] if k in ("input_ids", "attention_mask") else v[i:i + 1]) for k, v in batch.items()}
        with torch.enable_grad():
            weights = [mods[name].weight for name in names]
            grads = torch.autograd.grad(loss_fn(model, one).sum(), weights, allow_unused=True)
        for name, w, g in zip(names, weights, grads):
            g = torch.zeros_like(w) if g is None else g
            if factors is not None:
                r, c = (f.clamp_min(float(f.max()) * 1e-12 + 1e-30) for f in factors[name])
                g = g / (r[:, None] * c[None, :]).sqrt()
            out[name].append(projectors[name].project_matrix(g[None])[0])
    return {name: torch.stack(v) for name, v in out.items()}
