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


def projected_target(pair, projector) -> torch.Tensor:
    """The direction the gradient sum should align with: −P(θf − θ0), last layer only.

    Gradient descent moves θ by −η Σ g, so data that produced θf has Σ g ∝ −(θf − θ0).
    """
    return -projector.project(pair.head_delta()[None])[0]
