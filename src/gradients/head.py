"""Per-example gradients of the cross-entropy loss w.r.t. a linear last layer.

For logits z = W h + b and loss CE(z, y), the gradient of one example is
``∂L/∂W = (p − e_y) hᵀ`` and ``∂L/∂b = p − e_y`` with p = softmax(z). We lay it out as
one row of length C·(H+1): row c holds [∂L/∂W_c, ∂L/∂b_c] (bias last), the same layout
``flat_head`` uses for the weight delta θf − θ0, so the target is projected by the same map.

Three implementations, fastest first, which tests check agree:
- ``head_grads``: the closed form, one batched outer product.
- ``head_grads_vmap``: ``torch.func.grad`` + ``vmap`` of the head alone (for heads we can't write by hand).
- ``naive_head_grads``: one full-model backward per example (the obviously-correct reference).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap


def _augment(h: torch.Tensor, bias: bool) -> torch.Tensor:
    return torch.cat([h, torch.ones_like(h[:, :1])], dim=1) if bias else h


def head_grads(h: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """h: [n, H], logits: [n, C], labels: [n] -> per-example gradients [n, C*(H+bias)]."""
    err = logits.float().softmax(-1).to(h.dtype) - F.one_hot(labels, logits.shape[-1]).to(h.dtype)
    return (err[:, :, None] * _augment(h, bias)[:, None, :]).reshape(h.shape[0], -1)


def flat_head(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Flatten head parameters ([C, H] and [C]) into the layout ``head_grads`` uses."""
    return (torch.cat([weight, bias[:, None]], dim=1) if bias is not None else weight).reshape(-1)


def head_grads_vmap(head: torch.nn.Module, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Same as ``head_grads`` via torch.func on the head module itself."""
    params = {k: v.detach() for k, v in head.named_parameters()}

    def loss(p, x, y):
        z = functional_call(head, p, (x[None],))
        return F.cross_entropy(z, y[None])

    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, h, labels)
    return torch.stack([flat_head(w, b) for w, b in zip(g["weight"], g.get("bias", [None] * len(h)))])


def naive_head_grads(model: torch.nn.Module, head: torch.nn.Module, batches: list[dict], labels: torch.Tensor) -> torch.Tensor:
    """Reference: a full forward/backward per example, reading the head's .grad.

    ``batches`` holds one tokenized example per entry (a dict of [1, T] tensors).
    """
    rows = []
    model.eval()  # dropout off, as in the fast path
    for inputs, y in zip(batches, labels):
        model.zero_grad(set_to_none=True)
        logits = model(**inputs).logits
        F.cross_entropy(logits, y[None]).backward()
        rows.append(flat_head(head.weight.grad, head.bias.grad if head.bias is not None else None).detach().clone())
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)
