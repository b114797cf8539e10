"""Label-word classification through a causal LM's head: logits at the answer position, the
closed-form LM-head gradient there, and its (optionally preconditioned) projection.

An example is a prompt ("<text>\\nTopic:") whose next token should be the label word of its
class (" animal"). With h ∈ R^H the head's input at the last prompt position, p = softmax(W h)
over the *whole* vocabulary and y the label word's token, the loss is −log p_y and its gradient
w.r.t. the head weight W (V×H) is the rank-1 matrix

    G = (p − e_y) hᵀ.

So a factored JL map P(G) = vec(A (p − e_y) (B h)ᵀ) never forms the V×H matrix, and the
dense reference is ``naive_label_word_grads`` (autograd through a copy of W).

Preconditioning (``adafactor``): θf is an Adam trajectory, so the head delta is close to
−η Σ g/√v (v: Adam's second moment), not to −η Σ g. Aligning Σ g/√v̂ with −(θf − θ0) fits the
delta far better. v̂ = r cᵀ / Σr is Adafactor's rank-1 estimate from row and column sums of the
mean squared seed gradient; with it g/√v̂ ∝ ((p − e_y)/√r)(h/√c)ᵀ stays rank-1, so the factored
projection still applies. r and c come from ``second_moment_factors`` over a seed subsample.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def answer_hidden(model, batch, head) -> torch.Tensor:
    """h at each example's last real token (right padding): [n, H], differentiable if grad is on.

    A pre-hook on the head captures its input and trims the model's own head call to one
    position, so the [n, T, V] logits are never computed.
    """
    captured = {}

    def pre_hook(module, args):
        captured["h"] = args[0]
        return (args[0][:, :1],) + tuple(args[1:]) if args[0].dim() == 3 else None

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        handle.remove()
    h = captured["h"]
    last = batch["attention_mask"].sum(1) - 1
    return h[torch.arange(h.shape[0], device=h.device), last]


def answer_logits(model, batch, head) -> torch.Tensor:
    """[n, V] next-token logits at the answer position (float32 at least)."""
    h = answer_hidden(model, batch, head)
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    return F.linear(h.to(acc), head.weight.to(acc), None if head.bias is None else head.bias.to(acc))


def answer_error(h: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor) -> torch.Tensor:
    """p − e_y at the answer position: [n, V], p over the whole vocabulary."""
    err = torch.softmax(F.linear(h, weight.to(h.dtype), None if bias is None else bias.to(h.dtype)), -1)
    err[torch.arange(len(targets), device=err.device), targets] -= 1
    return err


def second_moment_factors(errs: list[torch.Tensor], hs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column means (r [V], c [H]) of mean_i G_i∘G_i for G_i = err_i h_iᵀ.

    Σ_k (err_v h_k)² = err_v² ‖h‖² and Σ_v (err_v h_k)² = ‖err‖² h_k², so neither needs V×H.
    """
    n = sum(len(e) for e in errs)
    r = sum((e.double() ** 2 * (h.double() ** 2).sum(1, keepdim=True)).sum(0) for e, h in zip(errs, hs)) / n
    c = sum(((e.double() ** 2).sum(1, keepdim=True) * h.double() ** 2).sum(0) for e, h in zip(errs, hs)) / n
    return r.float(), c.float()


def precondition(err: torch.Tensor, h: torch.Tensor, factors) -> tuple[torch.Tensor, torch.Tensor]:
    """(err/√r, h/√c): the factors of G/√v̂ up to the constant √Σr (cosines ignore it)."""
    if factors is None:
        return err, h
    r, c = factors
    # A floor relative to the largest entry: rows/columns that never carry gradient get no infinite weight.
    r = r.to(err).clamp_min(float(r.max()) * 1e-12 + 1e-30)
    c = c.to(h).clamp_min(float(c.max()) * 1e-12 + 1e-30)
    return err / r.sqrt(), h / c.sqrt()


def project_label_word_grads(err: torch.Tensor, h: torch.Tensor, projector, chunk: int = 16) -> torch.Tensor:
    """P((p − e_y) hᵀ) for every row: [n, d]. Factored maps use the factors; a dense map gets the
    flattened outer product ``chunk`` rows at a time (V·H numbers each: slow, but d means what
    it means for a dense JL map)."""
    if hasattr(projector, "project_rows"):
        return projector.project_rows(err, h, torch.arange(len(err), device=err.device), len(err))
    return torch.cat([projector.project((err[lo:lo + chunk, :, None] * h[lo:lo + chunk, None, :]).flatten(1))
                      for lo in range(0, len(err), chunk)])


def naive_label_word_grads(model, batch, head, targets: torch.Tensor) -> torch.Tensor:
    """Reference: dense ∂(−log p_y)/∂W per example, [n, V, H], by autograd through a copy of W."""
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        one = {k: v[i:i + 1] for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            h = answer_hidden(model, one, head).double()
        W = head.weight.detach().double().clone().requires_grad_()
        b = None if head.bias is None else head.bias.detach().double()
        loss = F.cross_entropy(F.linear(h, W, b), targets[i:i + 1])
        rows.append(torch.autograd.grad(loss, W)[0])
    return torch.stack(rows)
