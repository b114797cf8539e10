"""Per-example gradients of the loss w.r.t. a linear last layer, projected: one path for every task.

Every task's loss is a cross-entropy of a linear last layer z = W h (+ b) at some *positions*: one
per example for a classifier (its head's pooled input) and for a label word (the answer position),
every response token for SFT, every token for language modelling. Example i's gradient is

    G_i = Σ_{t ∈ i} (p_t − e_{y_t}) ĥ_tᵀ,   p_t = softmax(W h_t + b),   ĥ_t = [h_t; 1] (bias) or h_t,

a closed form in the head's inputs: one forward pass, no autograd graph, the body never
differentiated. Each position counts once (a token *sum*): θf is trained on the token *mean* of a
batch, Σ_i Σ_t ℓ_it / Σ_i n_i, so example i's share of a step is Σ_t ∇ℓ_it over the batch's token
count, a factor every example of the batch shares; a per-example mean would divide by n_i instead
and under-weight long examples by their length.

G_i is never formed for an LM head (V×H): a ``FactoredProjector`` maps it as
Σ_t (A e_t)(B ĥ_t)ᵀ (``project_rows``); a dense JL map gets the flattened outer products a few
positions at a time, with the same row-major layout ``flat_layer`` gives the weight delta.

Preconditioning (``factors`` = (r, c)): θf is an Adam trajectory, so θf − θ0 is close to
−η Σ g/√v (v: Adam's second moment), not to −η Σ g. With Adafactor's rank-1 estimate
v̂ = r cᵀ/Σr (row and column means of the squared per-position gradients over a seed subsample,
``second_moments``), g/√v̂ ∝ Σ_t (e_t/√r)(ĥ_t/√c)ᵀ keeps every term rank-1, so the factored
projection still applies; the constant √Σr drops out of every cosine.

The dense autograd references are in ``src.reference``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from src.errors import UserError


@dataclass
class Positions:
    """The last layer's inputs where the loss is: position k belongs to example ``example[k]`` of n."""

    h: torch.Tensor        # [m, H] the layer's input (at least float32)
    target: torch.Tensor   # [m] the class / token the loss wants there
    example: torch.Tensor  # [m] the example each position belongs to
    n: int                 # examples in the batch


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def layer(model, name: str) -> torch.nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as e:
        names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-5:]
        raise UserError(f"{type(model).__name__} has no module '{name}' to use as the last layer (model.head); "
                        f"its last Linear modules are {names}") from e


# -- capturing the last layer's input -------------------------------------------------------------
def pooled_positions(model, batch, head: str) -> Positions:
    """A classifier: one position per example, the head's input (pooled at the last real token when
    the model applies its head to every token, as decoder sequence classifiers do)."""
    module = layer(model, head)
    captured = {}
    handle = module.register_forward_hook(lambda m, inp, out: captured.__setitem__("h", inp[0]))
    try:
        model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        handle.remove()
    h = captured["h"]
    if h.dim() == 3:
        h = h[torch.arange(h.shape[0], device=h.device), batch["attention_mask"].sum(1) - 1]
    h = h.to(_acc(h))
    return Positions(h, batch["labels"], torch.arange(h.shape[0], device=h.device), h.shape[0])


def head_inputs(model, batch, head: str) -> torch.Tensor:
    """[n, T, H]: the input of a causal LM's head at every position, under the caller's grad mode.

    A pre-hook captures it and trims the model's own head call to one position, so the [n, T, V]
    logits are never computed (they are recomputed where needed, from exactly these numbers).
    """
    module = layer(model, head)
    captured = {}

    def pre_hook(m, args):
        captured["h"] = args[0]
        return (args[0][:, :1],) + tuple(args[1:]) if args[0].dim() == 3 else None

    handle = module.register_forward_pre_hook(pre_hook)
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        handle.remove()
    return captured["h"]


def response_mask(input_ids: torch.Tensor, prompt_lengths, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[n, T] bool: position t predicts a real response token (token t+1).

    ``prompt_lengths[i]`` counts example i's real prompt tokens; positions are counted among real
    tokens (``attention_mask``), so padding may be on either side. The last column is always False.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    real = attention_mask.bool()
    plen = torch.as_tensor(prompt_lengths, dtype=torch.long, device=input_ids.device)
    if plen.shape != input_ids.shape[:1]:
        raise ValueError(f"prompt_lengths must have shape [{input_ids.shape[0]}], got {tuple(plen.shape)}")
    rank = real.long().cumsum(1) - 1                     # index of each real token among the real ones
    is_response = real & (rank >= plen[:, None])
    mask = torch.zeros_like(real)
    mask[:, :-1] = real[:, :-1] & is_response[:, 1:]
    return mask


def response_positions(model, batch, head: str) -> Positions:
    """A causal LM trained on responses (SFT, LM, a label word as a one-token response): every
    position that predicts a response token, with that token as its target."""
    h = head_inputs(model, batch, head)
    mask = response_mask(batch["input_ids"], batch["prompt_lengths"], batch["attention_mask"])
    i, t = mask.nonzero(as_tuple=True)
    return Positions(h[i, t].to(_acc(h)), batch["input_ids"][i, t + 1], i, h.shape[0])


def answer_logits(model, batch, head: str) -> torch.Tensor:
    """[n, V] next-token logits (at least float32) at each example's last prompt token, the position
    whose next token is the answer (right padding; the batch may or may not hold the answer)."""
    h = head_inputs(model, batch, head)
    at = torch.as_tensor(batch["prompt_lengths"], device=h.device).long() - 1
    h = h[torch.arange(h.shape[0], device=h.device), at]
    module = layer(model, head)
    acc = _acc(h)
    return F.linear(h.to(acc), module.weight.to(acc), None if module.bias is None else module.bias.to(acc))


# -- the closed form, projected ----------------------------------------------------------------------
def errors(h: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """p − e_y per position: [m, C] with p = softmax(W h + b) over all C outputs (classes or vocabulary)."""
    err = torch.softmax(F.linear(h, weight.to(h.dtype), None if bias is None else bias.to(h.dtype)), -1)
    err[torch.arange(len(target), device=err.device), target] -= 1
    return err


def _augment(h: torch.Tensor, with_bias: bool) -> torch.Tensor:
    return torch.cat([h, torch.ones_like(h[:, :1])], dim=1) if with_bias else h


def precondition(err: torch.Tensor, h: torch.Tensor, factors) -> tuple[torch.Tensor, torch.Tensor]:
    """(err/√r, ĥ/√c): the factors of G/√v̂ up to the constant √Σr (cosines ignore it)."""
    if factors is None:
        return err, h
    r, c = factors
    # A floor relative to the largest entry: rows/columns that never carry gradient get no infinite weight.
    r = r.to(err).clamp_min(float(r.max()) * 1e-12 + 1e-30)
    c = c.to(h).clamp_min(float(c.max()) * 1e-12 + 1e-30)
    return err / r.sqrt(), h / c.sqrt()


def _chunks(pos: Positions, weight, bias, with_bias: bool, rows: int):
    for lo in range(0, len(pos.target), rows):
        h = pos.h[lo:lo + rows]
        yield (errors(h, pos.target[lo:lo + rows], weight, bias), _augment(h, with_bias),
               pos.example[lo:lo + rows])


def projected_grads(pos: Positions, weight: torch.Tensor, bias, projector, *, with_bias: bool = False,
                    factors=None, max_chunk_elems: int = 2**24) -> torch.Tensor:
    """P(G_i) for every example: [n, d] (float32, or float64 for float64 inputs).

    ``weight`` [C, H] / ``bias`` [C] are the layer's; its bias gradient is part of G only
    ``with_bias``. Positions are processed so that at most ``max_chunk_elems`` numbers of p (or, for a
    dense projector, of the flattened outer products) exist at once, for any vocabulary and length.
    """
    C, width = weight.shape[0], weight.shape[1] + int(with_bias)
    factored = hasattr(projector, "project_rows")
    per_row = C if factored else C * width
    out = torch.zeros(pos.n, projector.d, dtype=pos.h.dtype, device=pos.h.device)
    for err, h, ex in _chunks(pos, weight.detach(), None if bias is None else bias.detach(), with_bias,
                              max(1, int(max_chunk_elems) // per_row)):
        err, h = precondition(err, h, factors)
        if factored:
            out += projector.project_rows(err, h, ex, pos.n).to(out.dtype)
        else:
            out.index_add_(0, ex, projector.project((err[:, :, None] * h[:, None, :]).flatten(1)).to(out.dtype))
    return out


def second_moments(pos: Positions, weight: torch.Tensor, bias, with_bias: bool = False,
                   max_chunk_elems: int = 2**24) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(Σ r_t [C], Σ c_t [H(+1)], m): row and column sums of (e_t ĥ_tᵀ)∘(e_t ĥ_tᵀ) over positions, float64.

    Σ_k (e_v ĥ_k)² = e_v² ‖ĥ‖² and Σ_v (e_v ĥ_k)² = ‖e‖² ĥ_k², so neither needs the C×H matrix.
    Divide by m for Adafactor's means.
    """
    r = torch.zeros(weight.shape[0], dtype=torch.float64, device=pos.h.device)
    c = torch.zeros(weight.shape[1] + int(with_bias), dtype=torch.float64, device=pos.h.device)
    for err, h, _ in _chunks(pos, weight.detach(), None if bias is None else bias.detach(), with_bias,
                             max(1, int(max_chunk_elems) // weight.shape[0])):
        e2, h2 = err.double() ** 2, h.double() ** 2
        r += (e2 * h2.sum(1, keepdim=True)).sum(0)
        c += (e2.sum(1, keepdim=True) * h2).sum(0)
    return r, c, len(pos.target)


# -- the target --------------------------------------------------------------------------------------
def flat_layer(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """[C, H] (+ [C]) → the flat row-major layout of ``G_i`` (row c = [∂W_c, ∂b_c])."""
    return (torch.cat([weight, bias[:, None]], dim=1) if bias is not None else weight).reshape(-1)


def layer_delta(state0: dict, statef: dict, head: str, with_bias: bool = False) -> tuple:
    """(θf − θ0 of the layer's weight [C, H], of its bias [C] or None), float32."""
    key = f"{head}.weight"
    missing = [which for which, sd in (("θ0", state0), ("θf", statef)) if key not in sd]
    if missing:
        from src.errors import did_you_mean

        raise UserError(f"{key!r} is not in {' and '.join(missing)}." +
                        did_you_mean(key, [k for k in state0 if k.endswith(".weight")]))
    dw = statef[key].float() - state0[key].float()
    b = f"{head}.bias"
    db = statef[b].float() - state0[b].float() if with_bias and b in state0 else None
    return dw, db


def projected_target(state0: dict, statef: dict, head: str, projector, with_bias: bool = False) -> torch.Tensor:
    """−P(θf − θ0) on the last layer: [d]. Descent moves W by −η Σ G, so the data's Σ P(G) ∝ this."""
    dw, db = layer_delta(state0, statef, head, with_bias)
    if hasattr(projector, "project_matrix") and db is None:
        return -projector.project_matrix(dw[None])[0]
    return -projector.project(flat_layer(dw, db)[None])[0]
