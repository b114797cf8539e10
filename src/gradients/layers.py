"""Per-example gradients of many layers at once, each projected with its own factored map (LoGra-style).

A linear layer applied at every position t computes y_t = W x_t (+ b), so one example's weight gradient is
Σ_t δ_t x_tᵀ with δ_t = ∂L/∂y_t. Projecting both sides first, P(G) = Σ_t (A δ_t)(B x_t)ᵀ (a Kronecker map,
``FactoredProjector.project_outer``), never forms the per-example out×in matrix. The inputs x_t come from a
forward hook, the δ_t from a hook on the layer's output during ONE backward pass of the batch's summed loss
(examples are independent, so ∂(Σ_i L_i)/∂y_{i,t} = ∂L_i/∂y_{i,t}); each layer's block is projected inside
its hook, so only [n, d_l] per layer is kept. δ_t is non-zero at every position that a scored token
attends to, not only at scored positions: every real token counts.

Layers (``gradient.layers``): ``head`` (the LM head alone), ``all`` (every linear layer: ``nn.Linear`` and
GPT-2's ``Conv1D``), ``last:N`` (those of the last N transformer blocks, plus the head) or a regular
expression on module names. GPT-2's ``Conv1D`` stores W as [in, out] (y = x W): its map is laid out in the
weight's own [in, out] order, so the target −P(θf − θ0) is projected from the stored delta as it is.

The reference (``src.reference.naive_layer_grads``): per-example autograd, the dense weight gradient of
each layer, then the same map; tested equal.
"""
from __future__ import annotations

import re
import zlib

import torch

from src.cache import tensor_digest
from src.errors import UserError
from src.gradients.last_layer import precondition
from src.gradients.projectors import FactoredProjector


def _is_conv1d(module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def linear_modules(model) -> dict[str, torch.nn.Module]:
    """Every linear layer by name, in model order: ``nn.Linear`` and transformers' ``Conv1D``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) or _is_conv1d(m)}


def _block_index(name: str) -> int | None:
    """The transformer block a module belongs to (``...layers.7.mlp`` / ``...h.3.attn``), else None."""
    m = re.search(r"\.(?:h|layers|layer|blocks|block)\.(\d+)\.", f".{name}.")
    return int(m.group(1)) if m else None


def choose_layers(model, spec: str, head: str) -> list[str]:
    """Module names of the layers ``spec`` names (see the module docstring), in model order."""
    mods = linear_modules(model)
    spec = str(spec)
    if spec == "head":
        return [head]
    if spec == "all":
        names = list(mods)
    elif spec.startswith("last:"):
        try:
            n = int(spec[5:])
        except ValueError:
            raise UserError(f"gradient.layers={spec!r}: last:N needs an integer N") from None
        blocks = sorted({b for b in map(_block_index, mods) if b is not None})
        keep = set(blocks[-n:]) if n > 0 else set()
        names = [name for name in mods if _block_index(name) in keep or name == head]
    else:
        try:
            pattern = re.compile(spec)
        except re.error as e:
            raise UserError(f"gradient.layers={spec!r} is not head, all, last:N or a valid regular expression ({e})") \
                from None
        names = [name for name in mods if pattern.search(name)]
    if not names:
        raise UserError(f"gradient.layers={spec!r} names no linear layer; some are {list(mods)[-6:]}")
    return names


def layer_shape(module) -> tuple[int, int]:
    """(V, H) of the layer's weight as stored: [out, in] for nn.Linear, [in, out] for Conv1D."""
    return tuple(module.weight.shape)


def layer_projectors(model, names: list[str], layer_d: int, seed: int) -> dict[str, FactoredProjector]:
    """One factored map per layer, seeded by (seed, layer name): reproducible and independent of the set."""
    mods = dict(model.named_modules())
    out = {}
    for name in names:
        V, H = layer_shape(mods[name])
        out[name] = FactoredProjector(V, H, d=min(int(layer_d), V * H), seed=int(seed) * 1_000_003 + zlib.crc32(name.encode()))
    return out


class _Capture:
    """Forward hooks that keep each layer's input and output; the caller differentiates w.r.t. the outputs."""

    def __init__(self, model, names):
        mods = dict(model.named_modules())
        self.inputs, self.outputs, self.handles = {}, {}, []
        for name in names:
            self.handles.append(mods[name].register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def hook(module, args, output):
            self.inputs[name] = args[0].detach()
            self.outputs[name] = output
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def _output_grads(model, batch, loss_fn, names: list[str]):
    """({layer: input x [n, T, H_in]}, {layer: δ = ∂Σ_i L_i/∂y [n, T, out]}) from one forward and one backward."""
    mods = dict(model.named_modules())
    cap = _Capture(model, names)
    # The chosen layers' outputs must be in the graph (a predict loop or a frozen model has no grad on its
    # weights); only the outputs are differentiated, so no .grad is written.
    frozen = [mods[n].weight for n in names if not mods[n].weight.requires_grad]
    for w in frozen:
        w.requires_grad_(True)
    try:
        with torch.enable_grad():
            losses = loss_fn(model, batch)
            outs = [cap.outputs[n] for n in names]
            deltas = torch.autograd.grad(losses.sum(), outs, allow_unused=True)
    finally:
        cap.close()
        for w in frozen:
            w.requires_grad_(False)
    # A layer the loss does not depend on (e.g. past the scored positions) has a zero gradient.
    return cap.inputs, {n: (torch.zeros_like(cap.outputs[n]) if d is None else d).detach()
                        for n, d in zip(names, deltas)}


def _weight_layout(module, delta, x):
    """(err, h) with the weight's own [V, H] layout: (δ, x) for nn.Linear, (x, δ) for Conv1D."""
    return (x, delta) if _is_conv1d(module) else (delta, x)


def per_layer_grads(model, batch, loss_fn, names: list[str], projectors: dict, mask=None,
                    factors: dict | None = None) -> dict[str, torch.Tensor]:
    """{layer: [n, d_l]} projected per-example weight gradients of ``loss_fn(model, batch)`` ([n] per-example
    losses), from one forward and one backward pass. ``mask`` [n, T] (default the attention mask) marks the
    positions that exist; ``factors`` {layer: (r, c)} divides each layer's gradient by Adafactor's √(r cᵀ)
    (``layer_second_moments``), which keeps every position's term rank-1."""
    mods = dict(model.named_modules())
    inputs, deltas = _output_grads(model, batch, loss_fn, names)
    m = batch["attention_mask"] if mask is None else mask
    rows = {}
    for name in names:
        err, h = _weight_layout(mods[name], deltas[name], inputs[name])
        if factors is not None:
            err, h = precondition(err, h, factors[name])
        rows[name] = projectors[name].project_outer(err, h, m)
    return rows


def layer_second_moments(model, batch, loss_fn, names: list[str], mask=None) -> dict[str, torch.Tensor]:
    """{"r:<layer>": Σ_t r_t [V], "c:<layer>": Σ_t c_t [H], "m": positions}: each layer's row and column sums
    of its squared per-position gradients (e_t h_tᵀ)∘(e_t h_tᵀ), float64, as ``second_moments`` does for
    the last layer: Σ_k (e_v h_k)² = e_v² ‖h‖² and Σ_v (e_v h_k)² = ‖e‖² h_k², so no V×H matrix is formed."""
    mods = dict(model.named_modules())
    inputs, deltas = _output_grads(model, batch, loss_fn, names)
    m = (batch["attention_mask"] if mask is None else mask).double()
    out = {"m": m.sum()}
    for name in names:
        err, h = _weight_layout(mods[name], deltas[name], inputs[name])
        e2, h2 = err.double() ** 2, h.double() ** 2
        out[f"r:{name}"] = torch.einsum("ntv,nt->v", e2, h2.sum(-1) * m)
        out[f"c:{name}"] = torch.einsum("nth,nt->h", h2, e2.sum(-1) * m)
    return out


def layer_factors(means: dict, names: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (r, c)}, what ``per_layer_grads(..., factors=)`` takes, from ``layer_second_moments``' keys
    once each sum is divided by its position count (and averaged over checkpoints, where there are several)."""
    return {n: (means[f"r:{n}"].float(), means[f"c:{n}"].float()) for n in names}


def projected_deltas(state0: dict, statef: dict, names: list[str], projectors: dict) -> dict[str, torch.Tensor]:
    """{layer: [d_l]} −P(θf − θ0) of each layer's weight (descent moves W by −η Σ G)."""
    out = {}
    for name in names:
        key = f"{name}.weight"
        if key not in state0 or key not in statef:
            raise UserError(f"{key!r} is not in θ0 and θf (a PEFT adapter changes only some layers: name them in "
                            "gradient.layers)")
        dw = statef[key].float() - state0[key].float()
        out[name] = -projectors[name].project_matrix(dw[None])[0]
    return out


def combine(blocks: dict[str, torch.Tensor], names: list[str], *, unit: bool, weights: dict | None = None):
    """Concatenate layer blocks ([n, d_l] or [d_l]) in ``names`` order; ``unit`` scales each block to unit
    norm (per row), ``weights`` then multiplies block l by weights[l]."""
    parts = []
    for name in names:
        b = blocks[name].float()
        if unit:
            b = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        if weights is not None:
            b = b * float(weights[name])
        parts.append(b)
    return torch.cat(parts, -1)


class LayersSpec:
    """A ``GradientSpec`` for many layers (same duck type: ``items``, ``collate``, ``target``, ``exact``,
    ``describe()``, ``spec(model, batch) -> {"g": [n, d]}``): each row is the concatenation of the chosen
    layers' projected blocks, per-row unit-normalised per block with ``unit``; the target is the same
    concatenation of −P(θf − θ0), each block unit-normalised (``weights="equal"``) or left at its own norm
    (``"delta"``: layers weighted by how far finetuning moved them). ``factors`` {layer: (r, c)} (Adafactor's,
    fitted by the task on a seed subsample) preconditions every row; the target stays −P(θf − θ0), which an Adam trajectory
    makes close to a sum of preconditioned gradients. Pickles (DDP workers)."""

    exact = False
    needs_grad = True  # the gradient pass runs it outside inference mode

    def __init__(self, *, items, collate, loss_fn, names, projectors, state0, statef, unit: bool, weights: str,
                 key: dict, factors: dict | None = None):
        if weights not in ("equal", "delta"):
            raise UserError(f"gradient.layer_weights must be equal or delta, got {weights!r}")
        self.items, self.collate, self.loss_fn = items, collate, loss_fn
        self.names, self.projectors, self.unit, self.weights, self.key = list(names), projectors, bool(unit), weights, key
        self.factors = factors
        deltas = projected_deltas(state0, statef, self.names, projectors)
        if all(not bool(deltas[n].any()) for n in self.names):  # a zero target makes every alignment noise
            raise UserError(f"θf is identical to θ0 on every layer gradient.layers chose ({len(self.names)}: "
                            f"{self.names[:3]}...), so the target −(θf − θ0) is zero; choose layers θf changed")
        self.target = combine(deltas, self.names, unit=weights == "equal")
        self.d = int(self.target.numel())

    def __call__(self, model, batch) -> dict:
        rows = per_layer_grads(model, batch, self.loss_fn, self.names, self.projectors, factors=self.factors)
        return {"g": combine(rows, self.names, unit=self.unit)}

    def describe(self) -> dict:
        return {"layers": self.names, "projectors": [self.projectors[n].describe() for n in self.names],
                "layer_norm": "unit" if self.unit else "none", "layer_weights": self.weights,
                # The preconditioner by content: a refit on other rows must not reuse these shards.
                "factors": None if self.factors is None else
                {n: [tensor_digest(f) for f in self.factors[n]] for n in self.names}, **self.key}
