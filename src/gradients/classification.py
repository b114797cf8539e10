"""The gradient pass for classifiers: forward through θ̂_j, closed-form head gradient, project.

Only the last layer's gradient is needed, and for a linear head it is a function of
the head's input h and the logits, so each checkpoint costs one forward pass with no
autograd graph: the body is never differentiated.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from src.gradients.head import head_grads
from src.store import ShardStore
from src.training import predict

log = logging.getLogger(__name__)


def head_inputs(model, head_name: str, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, logits) at the last layer, h captured by a forward hook on the head module.

    Sequence classifiers built on decoders (GPT-2, Llama) apply the head to every token and
    pool the last non-padding one; we pool h the same way (right padding).
    """
    head = model.get_submodule(head_name)
    captured = {}
    handle = head.register_forward_hook(lambda m, inp, out: captured.__setitem__("h", inp[0]))
    try:
        model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        handle.remove()
    h = captured["h"]
    if h.dim() == 3:
        h = h[torch.arange(h.shape[0], device=h.device), batch["attention_mask"].sum(1) - 1]
    h = h.float()
    # Recompute logits from h so gradient and logits come from exactly the same numbers.
    logits = F.linear(h, head.weight.float(), None if head.bias is None else head.bias.float())
    return h, logits


def projected_head_grads_fn(head_name: str, projector, bias: bool):
    def fn(model, batch):
        h, logits = head_inputs(model, head_name, batch)
        g = head_grads(h, logits, batch["labels"], bias=bias)
        return {"g": projector.project(g), "logits": logits}

    return fn


def gradient_pass(pair, texts: list[str], labels: torch.Tensor, projector, alphas: list[float], store: ShardStore,
                  *, batch_size: int, max_length: int, trainer_cfg, store_dtype=torch.float32) -> torch.Tensor:
    """Projected per-example head gradients at each θ̂_j: [P, N, d], resumable shard by shard."""
    bias = pair.head.bias is not None
    fn = projected_head_grads_fn(pair.head_name, projector, bias)
    for j, alpha in enumerate(alphas, start=1):
        loaded = []

        def compute(rows, alpha=alpha, loaded=loaded):
            if not loaded:  # swap weights in only if some shard of this checkpoint is missing
                pair.load(alpha)
                loaded.append(True)
            out = predict(pair.model, pair.tokenizer, [texts[i] for i in rows], fn, batch_size=batch_size,
                          max_length=max_length, trainer_cfg=trainer_cfg, labels=labels[rows.start:rows.stop])
            return {"g": out["g"].to(store_dtype), "logits": out["logits"]}

        n = store.fill(f"ckpt{j}", compute)
        log.info("gradient pass: checkpoint %d/%d (alpha=%.3f): %d of %d shards computed, rest from cache",
                 j, len(alphas), alpha, n, store.n_shards)
    return torch.stack([store.load(f"ckpt{j}")["g"].float() for j in range(1, len(alphas) + 1)])


def projected_target(pair, projector) -> torch.Tensor:
    """The direction the gradient sum should align with: −P(θf − θ0), last layer only.

    Gradient descent moves θ by −η Σ g, so data that produced θf has Σ g ∝ −(θf − θ0).
    """
    return -projector.project(pair.head_delta()[None])[0]
