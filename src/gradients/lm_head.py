"""Per-example LM-head gradients for causal LMs (SFT), projected without materialising them.

For one example with hidden states h_t ∈ R^H (the input of ``lm_head``), next-token
probabilities p_t = softmax(W h_t [+ b]) ∈ R^V and targets y_t = token t+1, the gradient of the
token cross-entropy over *response* positions w.r.t. the head weight W (V×H) is

    G = Σ_t w_t (p_t − e_{y_t}) h_tᵀ,   w_t = m_t / n_resp (``reduction="mean"``) or m_t ("sum"),

where m_t = 1 iff position t predicts a response token (prompt and padding are masked). For
GPT-2-medium G is 50257×1024 per example, so we never build it: with a ``FactoredProjector``
P(G) = Σ_t w_t (A e_t)(B h_t)ᵀ needs only the d_V- and d_H-dimensional images of the factors
(``projected_lm_head_grads``). ``naive_lm_head_grads`` is the dense autograd reference.

Conventions
- ``prompt_lengths[i]``: number of real (non-padding) prompt tokens of example i; everything
  after them up to the end of the real tokens is the response. Padding may be on either side:
  positions are counted among real tokens (``attention_mask``), not by absolute index.
- Logits at position t predict token t+1 (the causal shift), so ``mask[:, t]`` marks position t
  when token t+1 is a real response token (and t itself is real); the last column is always 0.
- Only the head *weight* gradient is computed (GPT-2's head has no bias; a bias, if present,
  enters the logits but its gradient is not part of G).
- Tied heads (GPT-2: ``lm_head.weight is transformer.wte.weight``): the gradient here is the one
  flowing through the head's use only. The weight delta θf − θ0 of a tied matrix also contains
  the embedding-use gradient, which these per-example gradients do not model.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from src.errors import UserError

log = logging.getLogger(__name__)

_NOT_MODEL_INPUTS = ("labels", "prompt_lengths")


def _as_long(x, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.long, device=like.device)


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    """At least float32 (half/bf16 logits are upcast), float64 kept."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# -- masking ---------------------------------------------------------------------------
def response_mask(input_ids: torch.Tensor, prompt_lengths, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[n, T] bool: position t's next-token prediction (of token t+1) is a response token.

    input_ids: [n, T]; prompt_lengths: [n] real prompt tokens per example;
    attention_mask: [n, T] (None = no padding).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    real = attention_mask.bool()
    plen = _as_long(prompt_lengths, input_ids)
    if plen.shape != input_ids.shape[:1]:
        raise ValueError(f"prompt_lengths must have shape [{input_ids.shape[0]}], got {tuple(plen.shape)}")
    rank = real.long().cumsum(1) - 1                     # index of each real token among the real ones
    is_response = real & (rank >= plen[:, None])         # token j is a real response token
    mask = torch.zeros_like(real)
    mask[:, :-1] = real[:, :-1] & is_response[:, 1:]     # position t predicts token t+1
    return mask


def response_counts(mask: torch.Tensor) -> torch.Tensor:
    """[n] number of response tokens (= masked prediction positions) per example."""
    return mask.long().sum(1)


def token_weights(mask: torch.Tensor, reduction: str = "mean", dtype=torch.float32) -> torch.Tensor:
    """[n, T] loss weight of each position: m_t / n_resp ("mean") or m_t ("sum").

    Examples without response tokens get weight 0 everywhere (zero gradient), not NaN.
    """
    m = mask.to(dtype)
    if reduction == "sum":
        return m
    if reduction == "mean":
        return m / response_counts(mask).clamp(min=1).to(dtype)[:, None]
    raise UserError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _next_tokens(input_ids: torch.Tensor) -> torch.Tensor:
    """[n, T]: token t+1 at position t (0 at the last position, which is always masked)."""
    return torch.cat([input_ids[:, 1:], torch.zeros_like(input_ids[:, :1])], dim=1)


def lm_head_error(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor,
                  reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """(err, counts): err[n, t] = w_t (p_t − onehot(token t+1)), zero where masked; counts [n].

    The dense [n, T, V] error, for small V or a chunk of positions; the gradient is
    G = Σ_t err_t h_tᵀ. p is computed with log_softmax in (at least) float32.
    """
    acc = _acc_dtype(logits)
    err = torch.log_softmax(logits.to(acc), dim=-1).exp_()
    err.scatter_add_(-1, _next_tokens(input_ids)[..., None],
                     -torch.ones(*input_ids.shape, 1, dtype=acc, device=logits.device))
    err *= token_weights(mask, reduction, acc)[..., None]
    return err, response_counts(mask)


# -- the projected pass ------------------------------------------------------------------
def projected_lm_head_grads(h: torch.Tensor, logits: torch.Tensor | None, input_ids: torch.Tensor,
                            mask: torch.Tensor, projector, *, reduction: str = "mean",
                            weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                            max_chunk_elems: int = 2**24) -> torch.Tensor:
    """P(G_i) for every example: [n, d], via ``projector.project_rows`` (``project_outer``
    restricted to the response rows); G_i is never formed.

    h: [n, T, H] head inputs; logits: [n, T, V], or None to compute them from ``weight``
    (and ``bias``) at the response positions only (saves the [n, T, V] tensor).
    Only masked positions are processed, ``max_chunk_elems // V`` at a time, so beyond the
    inputs memory is O(max_chunk_elems + chunk·d): bounded for V = 50257 and any n·T.
    """
    if logits is None and weight is None:
        raise ValueError("pass logits, or the head weight to compute them from h")
    n, V = h.shape[0], (logits.shape[-1] if logits is not None else weight.shape[0])
    wide = h.dtype == torch.float64 or (logits is not None and logits.dtype == torch.float64)
    acc = torch.float64 if wide else torch.float32
    w = token_weights(mask, reduction, acc)
    rows_n, rows_t = mask.nonzero(as_tuple=True)
    targets = input_ids[rows_n, rows_t + 1]
    out = torch.zeros(n, projector.d, dtype=acc, device=h.device)
    K = max(1, int(max_chunk_elems) // V)
    for lo in range(0, rows_n.numel(), K):
        i, t = rows_n[lo:lo + K], rows_t[lo:lo + K]
        hs = h[i, t].to(acc)                                                   # [k, H]
        z = logits[i, t] if logits is not None else F.linear(
            hs, weight.to(acc), None if bias is None else bias.to(acc))        # [k, V]
        err = torch.log_softmax(z.to(acc), dim=-1).exp_()
        err[torch.arange(err.shape[0], device=err.device), targets[lo:lo + K]] -= 1
        if hasattr(projector, "project_rows"):   # same map, summed per example without K×d outer products
            out += projector.project_rows(err, hs, i, n, weights=w[i, t]).to(acc)
        else:
            err *= w[i, t][:, None]
            out.index_add_(0, i, projector.project_outer(err[:, None], hs[:, None]).to(acc))
    return out


def _head_and_name(model, head_name: str | None):
    if head_name is None:
        head = model.get_output_embeddings()
        if head is None:
            raise UserError(f"{type(model).__name__} has no output embeddings (lm_head); pass head_name")
        return head
    return model.get_submodule(head_name)


def hidden_and_logits(model, batch, head_name: str | None = None,
                      with_logits: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(h [n, T, H], logits [n, T, V] or None) at the LM head of a HF causal LM, under no_grad.

    h is captured by a forward pre-hook on the head (``head_name``; default the model's output
    embeddings), which also trims the model's own head call to one position — the logits we
    return are recomputed from h (at least float32) so gradient and logits use exactly the same
    numbers, and with ``with_logits=False`` the V-wide product is never computed at all
    (pass ``weight=`` to ``projected_lm_head_grads`` instead). Call ``model.eval()`` first.
    """
    head = _head_and_name(model, head_name)
    captured = {}

    def pre_hook(module, args):
        captured["h"] = args[0]
        if args[0].dim() == 3:  # [n, T, H]: let the model's own head call do one position only
            return (args[0][:, :1],) + tuple(args[1:])
        return None

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        with torch.no_grad():
            model(**{k: v for k, v in batch.items() if k not in _NOT_MODEL_INPUTS})
    finally:
        handle.remove()
    h = captured["h"]
    h = h.to(_acc_dtype(h))
    if not with_logits:
        return h, None
    with torch.no_grad():
        logits = F.linear(h, head.weight.to(h.dtype), None if head.bias is None else head.bias.to(h.dtype))
    return h, logits


def projected_lm_head_grads_fn(projector, head_name: str | None = None, reduction: str = "mean"):
    """``fn(model, batch) -> {"g": [n, d], "counts": [n]}`` for ``src.training.predict``-style loops.

    ``batch`` holds input_ids, attention_mask and prompt_lengths.
    """
    def fn(model, batch):
        head = _head_and_name(model, head_name)
        mask = response_mask(batch["input_ids"], batch["prompt_lengths"], batch.get("attention_mask"))
        h, _ = hidden_and_logits(model, batch, head_name, with_logits=False)
        g = projected_lm_head_grads(h, None, batch["input_ids"], mask, projector, reduction=reduction,
                                    weight=head.weight.detach(), bias=None if head.bias is None else head.bias.detach())
        return {"g": g, "counts": response_counts(mask)}

    return fn


# -- the dense reference -----------------------------------------------------------------
def naive_lm_head_grads(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, prompt_lengths,
                        reduction: str = "mean", head_name: str | None = None) -> torch.Tensor:
    """Reference: dense per-example ∂L/∂W_head, [n, V, H], by autograd, one example at a time.

    Each example is run alone without its padding; h comes from the body under no_grad, and the
    loss (standard SFT recipe: labels = tokens with the prompt set to −100, shifted by one) is
    differentiated through a fresh copy of W only, so a tied embedding's gradient is excluded.
    """
    if reduction not in ("mean", "sum"):
        raise UserError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    model.eval()
    head = _head_and_name(model, head_name)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    plen = _as_long(prompt_lengths, input_ids)
    captured = {}
    handle = head.register_forward_hook(lambda m, inp, out: captured.__setitem__("h", inp[0]))
    rows = []
    try:
        for i in range(input_ids.shape[0]):
            ids = input_ids[i][attention_mask[i].bool()]
            with torch.no_grad():
                model(input_ids=ids[None])
            h = captured["h"][0].detach()
            W = head.weight.detach().clone().requires_grad_()
            b = None if head.bias is None else head.bias.detach()
            logits = F.linear(h.to(W.dtype), W, b)
            labels = ids.clone()
            labels[:int(plen[i])] = -100
            n_resp = int((labels[1:] != -100).sum())
            loss = F.cross_entropy(logits[:-1].to(_acc_dtype(logits)), labels[1:], ignore_index=-100, reduction="sum")
            if reduction == "mean":
                loss = loss / max(n_resp, 1)
            rows.append(torch.autograd.grad(loss, W, allow_unused=True)[0] if n_resp else torch.zeros_like(W))
    finally:
        handle.remove()
    return torch.stack([r.detach() for r in rows])


# -- the target ----------------------------------------------------------------------------
def lm_head_delta(state0: dict, statef: dict, name: str = "lm_head") -> torch.Tensor:
    """θf − θ0 of the LM head weight, [V, H] float32 (``name`` with or without ``.weight``)."""
    key = name if name.endswith(".weight") else f"{name}.weight"
    missing = [which for which, sd in (("state0", state0), ("statef", statef)) if key not in sd]
    if missing:
        from src.errors import did_you_mean

        raise UserError(f"{key!r} not in {' and '.join(missing)}." +
                        did_you_mean(key, [k for k in state0 if k.endswith(".weight")]))
    return (statef[key].float() - state0[key].float())


def projected_lm_head_target(state0: dict, statef: dict, projector, name: str = "lm_head") -> torch.Tensor:
    """−P(θf − θ0) on the LM head: [d]. Descent moves W by −η Σ G, so the data's Σ P(G) ∝ this."""
    return -projector.project_matrix(lm_head_delta(state0, statef, name)[None])[0]
