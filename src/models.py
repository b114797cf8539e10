"""θ0 / θf loading, compatibility checks and synthetic checkpoints.

A model config names a Hugging Face id or local path (``name_or_path``), a package
that ships a model (``pkg:<module>``, whose ``get_model_path()`` returns the folder),
or ``random:<model_type>`` for a tiny randomly initialised model built from ``config``
(what the tests use).
"""
from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from src.errors import UserError
from src.options import CHECKPOINT_GRIDS, ModelOptions

log = logging.getLogger(__name__)


def resolve_path(name: str) -> str:
    if name.startswith("pkg:"):
        module = name[4:]
        try:
            return str(importlib.import_module(module).get_model_path())
        except ImportError as e:
            raise UserError(f"model package '{module}' is not installed (pip install {module.replace('_', '-')})") from e
    return name


def _from_hub(loader, name: str, **kw):
    """Call a from_pretrained loader, turning 'not found / offline' into a one-line error."""
    try:
        return loader(resolve_path(name), **kw)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"could not load model '{name}' ({first[:200]}). If it is a hub id, this machine needs the hub "
            "or a local copy in the HF cache; otherwise pass a local path"
        ) from e


def load_tokenizer(model: ModelOptions):
    tok = _from_hub(AutoTokenizer.from_pretrained, model.tokenizer or model.name_or_path)
    if tok.pad_token is None:  # GPT-2 / Llama ship without one
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def build_classifier(opts: ModelOptions, num_labels: int, head_seed: int,
                     require_head: bool = False) -> torch.nn.Module:
    """θ0 for a classification task: the base model with a new head, initialised from ``head_seed``.

    The head seed is part of θ0: θf is finetuned from exactly this model, so the head delta is meaningful.
    With ``require_head`` (θf given, not finetuned here from this seed) a checkpoint without its head
    is an error: θf − θ0 on the head would be measured from a random initialisation θf never started from.
    """
    torch.manual_seed(head_seed)
    if opts.name_or_path.startswith("random:"):
        config = AutoConfig.for_model(opts.name_or_path[7:], num_labels=num_labels, **dict(opts.config or {}))
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        model, info = _from_hub(AutoModelForSequenceClassification.from_pretrained, opts.name_or_path,
                                num_labels=num_labels, output_loading_info=True)
        fresh = sorted(k for k in info["missing_keys"] if k.startswith(f"{opts.head}."))
        if require_head and fresh:
            raise UserError(
                f"θ0 '{opts.name_or_path}' has no trained '{opts.head}' layer (its checkpoint lacks {fresh[0]}), so "
                "θf − θ0 there would be measured from a random initialisation; pass as the base model the one θf "
                "was finetuned from, saved with its classification head")
    if model.config.pad_token_id is None and model.config.eos_token_id is not None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


def load_finetuned(path: str, num_labels: int) -> torch.nn.Module:
    return _from_hub(AutoModelForSequenceClassification.from_pretrained, path, num_labels=num_labels)


def get_module(model: torch.nn.Module, dotted: str) -> torch.nn.Module:
    try:
        return model.get_submodule(dotted)
    except AttributeError as e:
        names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-5:]
        raise UserError(f"model has no module '{dotted}' to use as the last layer; last Linear modules: {names}") from e


def check_compatible(state0: dict, statef: dict) -> None:
    """θ0 and θf must be the same architecture: same parameter names and shapes."""
    missing = sorted(set(state0) ^ set(statef))
    if missing:
        raise UserError(f"base and finetuned models are different architectures: they differ in parameters, "
                        f"e.g. {missing[:3]} (present in only one)")
    for k, v in state0.items():
        if v.shape != statef[k].shape:
            raise UserError(f"base and finetuned models differ in shape at '{k}': {tuple(v.shape)} vs "
                            f"{tuple(statef[k].shape)} (different architectures or vocabularies)")


def check_same_family(base_config, finetuned: str) -> None:
    """Compare θ0's config with θf's config.json before θf's weights are loaded: a model of another
    architecture or vocabulary fails here in one line, not in a shape error later."""
    path = Path(finetuned) / "config.json"
    if base_config is None or not path.is_file():
        return  # hub ids and adapters: the state-dict comparison catches them after loading
    other = json.loads(path.read_text())
    for key in ("model_type", "vocab_size", "hidden_size", "n_embd", "num_hidden_layers", "n_layer"):
        a, b = getattr(base_config, key, None), other.get(key)
        if a is not None and b is not None and a != b:
            raise UserError(f"base and finetuned models are different architectures or vocabularies: "
                            f"{key} is {a!r} in the base and {b!r} in {finetuned}")


def interpolate(state0: dict, statef: dict, alpha: float) -> dict:
    """θ0 + α(θf − θ0) for floating tensors; integer buffers (position ids) are taken from θ0."""
    return {k: (v + alpha * (statef[k] - v)) if v.is_floating_point() else v for k, v in state0.items()}


def checkpoint_alphas(P: int, grid: str = "theta_f") -> list[float]:
    """The synthetic checkpoints θ̂ = θ0 + α(θf − θ0) on the line from θ0 to θf.

    ``theta_f``: α_j = j/P, j = 1..P, so θf is on the grid and θ0 is not (the paper's formula;
    the authors' code computes the same set as 1 − i/P, i = 0..P−1). ``theta_0``: α_j = (j−1)/P,
    so θ0 is on the grid and θf is not (the other reading of "i/P, i = 0..P−1"). P = 1 is then
    θf alone or θ0 alone.
    """
    if int(P) < 1:
        raise UserError(f"P (number of synthetic checkpoints) must be >= 1, got {P}")
    if grid not in CHECKPOINT_GRIDS:
        raise UserError(f"checkpoints must be one of {CHECKPOINT_GRIDS}, got {grid!r}")
    shift = 0 if grid == "theta_f" else 1
    return [(j - shift) / P for j in range(1, P + 1)]


@dataclass
class ModelPair:
    """θ0 and θf as state dicts around one working module (weights swapped in as needed)."""

    model: torch.nn.Module
    tokenizer: object
    state0: dict
    statef: dict
    head_name: str
    key: str  # hash of what produced θf

    def load(self, alpha: float) -> torch.nn.Module:
        self.model.load_state_dict(interpolate(self.state0, self.statef, alpha))
        return self.model

    @property
    def head(self) -> torch.nn.Module:
        return get_module(self.model, self.head_name)

    def fresh(self, alpha: float = 0.0) -> torch.nn.Module:
        """An independent copy of θ̂_α (for retraining, which must not touch the pair)."""
        import copy

        m = copy.deepcopy(self.model)
        m.load_state_dict(interpolate(self.state0, self.statef, alpha))
        return m
