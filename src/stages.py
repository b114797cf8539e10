"""The expensive upstream stages, each cached on disk by a hash of what produced it.

data ──► models (θ0, θf) ──► autolabel ──► gradients (+ target)

A sweep that changes only the selector or k finds all of these in ``cache_dir``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import load_file, save

from src.cache import atomic_write_bytes, atomic_write_json, file_sha256, stable_hash, text_fingerprint
from src.data.loading import TaskData, load_seed, load_task
from src.errors import UserError
from src.gradients.classification import gradient_pass, projected_target
from src.models import ModelPair, build_classifier, check_compatible, checkpoint_alphas, load_finetuned, load_tokenizer
from src.store import ShardStore
from src.training import fit_classifier, logits_fn, predict

log = logging.getLogger(__name__)


@dataclass
class Data:
    task: TaskData
    seed: object  # datasets.Dataset with text, id


def load_data(cfg) -> Data:
    task = load_task(cfg.dataset, cfg.rng)
    exclude = set(task.train["id"]) | set(task.test["id"]) if cfg.seed.get("exclude_true") else set()
    seed = load_seed(cfg.seed, cfg.rng, exclude)
    log.info("data: %d true train / %d test examples in %d classes; seed corpus %d examples",
             len(task.train), len(task.test), len(task.classes), len(seed))
    return Data(task, seed)


def _cached_tensors(path: Path, compute, what: str) -> dict[str, torch.Tensor]:
    """Load a checksummed safetensors file, or compute and write it. A bad file is recomputed."""
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        try:
            if json.loads(meta.read_text())["sha256"] == file_sha256(path):
                log.info("%s: reusing %s", what, path)
                return load_file(path)
        except (OSError, KeyError, json.JSONDecodeError):
            pass
        log.warning("%s: cache file %s is corrupt or incomplete, recomputing", what, path)
    out = compute()
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in out.items()}))
    atomic_write_json(meta, {"sha256": file_sha256(path), "what": what})
    return out


def load_models(cfg, data: Data) -> ModelPair:
    """θ0 (base + head seeded by rng) and θf (given, or finetuned on the true data and cached)."""
    n_cls = len(data.task.classes)
    tok = load_tokenizer(cfg.model)
    model = build_classifier(cfg.model, n_cls, head_seed=cfg.rng)
    state0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if cfg.model.get("finetuned"):
        statef = load_finetuned(cfg.model.finetuned, n_cls).state_dict()
        key = stable_hash("given", cfg.model.finetuned)
    else:
        key = stable_hash("thetaf", cfg.model, cfg.dataset, cfg.finetune, cfg.rng)

        def finetune():
            log.info("models: finetuning θ0 on %d true examples to make θf (cached as %s)", len(data.task.train), key)
            m = build_classifier(cfg.model, n_cls, head_seed=cfg.rng)
            fit_classifier(m, tok, data.task.train["text"], data.task.train["label"], cfg.finetune, cfg.trainer,
                           rng=cfg.rng, prefix="finetune")
            return {k: v.detach().clone() for k, v in m.state_dict().items()}

        statef = _cached_tensors(Path(cfg.cache_dir) / "thetaf" / f"{key}.safetensors", finetune, "θf")
    check_compatible(state0, statef)
    return ModelPair(model=model, tokenizer=tok, state0=state0, statef=statef, head_name=cfg.model.head, key=key)


@dataclass
class Autolabels:
    labels: torch.Tensor  # [N] argmax class under θf
    logp_f: torch.Tensor  # [N] log p_θf(label | x)
    logp_0: torch.Tensor  # [N] log p_θ0(label | x)
    key: str


def autolabel(cfg, pair: ModelPair, data: Data) -> Autolabels:
    texts = data.seed["text"]
    # The texts' fingerprint, not the config, pins the corpus: exclusion and sampling happen before this.
    key = stable_hash("autolabel", pair.key, cfg.model.max_length, text_fingerprint(texts))

    def compute():
        kw = dict(batch_size=cfg.gradient.batch_size, max_length=cfg.model.max_length, trainer_cfg=cfg.trainer)
        lf = predict(pair.load(1.0), pair.tokenizer, texts, logits_fn, **kw)["logits"].log_softmax(-1)
        l0 = predict(pair.load(0.0), pair.tokenizer, texts, logits_fn, **kw)["logits"].log_softmax(-1)
        y = lf.argmax(-1)
        return {"labels": y, "logp_f": lf.gather(1, y[:, None])[:, 0], "logp_0": l0.gather(1, y[:, None])[:, 0]}

    out = _cached_tensors(Path(cfg.cache_dir) / "autolabel" / f"{key}.safetensors", compute, "autolabel")
    counts = torch.bincount(out["labels"], minlength=len(data.task.classes)).tolist()
    log.info("autolabel: class counts on the seed corpus %s", dict(zip(data.task.classes, counts)))
    return Autolabels(out["labels"].long(), out["logp_f"], out["logp_0"], key)


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def gradients(cfg, pair: ModelPair, data: Data, labels: Autolabels) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected last-layer gradients at θ̂_1..θ̂_P ([P, N, d]) and the projected target ([d])."""
    in_dim = pair.head_delta().numel()
    projector = instantiate(cfg.projector)(in_dim=in_dim, d=cfg.d)
    if cfg.gradient.store_dtype not in _DTYPES:
        raise UserError(f"gradient.store_dtype must be one of {sorted(_DTYPES)}")
    alphas = checkpoint_alphas(cfg.P)
    store_cfg = {"autolabel": labels.key, "alphas": alphas, "projector": projector.describe(),
                 "head": cfg.model.head, "dtype": cfg.gradient.store_dtype}
    root = Path(cfg.cache_dir) / "grads" / stable_hash(store_cfg)
    store = ShardStore(root, store_cfg, n_rows=len(data.seed), shard_size=cfg.gradient.shard_size)
    G = gradient_pass(pair, data.seed["text"], labels.labels, projector, alphas, store,
                      batch_size=cfg.gradient.batch_size, max_length=cfg.model.max_length,
                      trainer_cfg=cfg.trainer, store_dtype=_DTYPES[cfg.gradient.store_dtype])
    return G, projected_target(pair, projector)


def to_plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
